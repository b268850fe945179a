"""gRPC VisionService: protobuf <-> domain, error mapping, stream lifecycle.

Hashing and deciding a frame (~0.2-0.5 ms of numpy) runs on the event loop: handing it to a
thread costs about as much as the work and numpy holds the GIL for arrays this small. JPEG
encoding of kept frames (several ms, GIL released by Pillow) runs in a small thread pool.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from concurrent.futures import Executor
from typing import Any

import grpc
from parley.common.v1 import common_pb2
from parley.vision.v1 import vision_pb2, vision_pb2_grpc
from parley_runtime.context import require_tenant
from parley_runtime.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from parley_runtime.ids import check_id
from parley_runtime.tenants import TenantRegistry
from parley_runtime.usage import UsageRecorder

from .config import Settings
from .dedup import ContentKind
from .frames import FrameDecoder, PixelFormat, RawFrame
from .metrics import ACTIVE_STREAMS, DECIDE_SECONDS, FRAMES, IMAGE_TOKENS
from .selector import DecisionKind, FrameDecision, FrameInput, TrackFrameSelector
from .stats import FrameStats, TenantStatsBook
from .tenant_config import VisionConfig
from .usage import VisionUsageReporter

logger = logging.getLogger(__name__)

_FORMATS = {
    vision_pb2.FRAME_FORMAT_I420: PixelFormat.I420,
    vision_pb2.FRAME_FORMAT_NV12: PixelFormat.NV12,
    vision_pb2.FRAME_FORMAT_RGBA: PixelFormat.RGBA,
    vision_pb2.FRAME_FORMAT_BGRA: PixelFormat.BGRA,
    vision_pb2.FRAME_FORMAT_RGB24: PixelFormat.RGB24,
    vision_pb2.FRAME_FORMAT_JPEG: PixelFormat.JPEG,
}
_DECISIONS = {
    DecisionKind.KEEP: vision_pb2.DECISION_KEEP,
    DecisionKind.DROP_RATE: vision_pb2.DECISION_DROP_RATE,
    DecisionKind.DROP_DUPLICATE: vision_pb2.DECISION_DROP_DUPLICATE,
    DecisionKind.KEEP_STALE_FORCED: vision_pb2.DECISION_KEEP_STALE_FORCED,
    DecisionKind.REJECTED: vision_pb2.DECISION_REJECTED,
}
_OVERRIDABLE = (
    "speaking_fps",
    "idle_fps",
    "hamming_threshold",
    "tile_hamming_threshold",
    "max_staleness_s",
    "jpeg_quality",
    "max_image_side",
)
_FRAME_COUNTERS = {k: FRAMES.labels(k.value) for k in DecisionKind}
_SENT_TOKENS = IMAGE_TOKENS.labels("sent")
_NAIVE_TOKENS = IMAGE_TOKENS.labels("naive")


def stats_to_proto(stats: FrameStats) -> vision_pb2.FrameStats:
    return vision_pb2.FrameStats(
        frames_seen=stats.frames_seen,
        dropped_rate=stats.dropped_rate,
        dropped_duplicate=stats.dropped_duplicate,
        kept=stats.kept,
        kept_stale_forced=stats.kept_stale_forced,
        rejected=stats.rejected,
        bytes_sent=stats.bytes_sent,
        image_tokens_sent=stats.image_tokens_sent,
        naive_image_tokens=stats.naive_image_tokens,
        naive_bytes=stats.naive_bytes,
    )


def frame_from_proto(frame: vision_pb2.Frame) -> FrameInput:
    raw = RawFrame(
        format=_FORMATS.get(frame.format),
        width=frame.width,
        height=frame.height,
        data=frame.data,
        strides=tuple(frame.strides),
    )
    return FrameInput(
        frame.sequence, frame.timestamp_us, frame.speaking, raw,
        unchanged_skipped=frame.unchanged_skipped,
    )


def decision_to_proto(d: FrameDecision, source_ref: str) -> vision_pb2.FrameDecision:
    out = vision_pb2.FrameDecision(
        sequence=d.sequence,
        timestamp_us=d.timestamp_us,
        decision=_DECISIONS[d.kind],
        reason=d.reason,
        hamming_distance=d.hamming,
        changed_tiles=d.changed_tiles,
        error_code=d.error_code,
        error_message=d.error_message,
    )
    if d.encoded is not None:
        e = d.encoded
        out.kept.CopyFrom(
            vision_pb2.KeptFrame(
                image=common_pb2.Image(
                    data=e.data,
                    mime_type="image/jpeg",
                    width=e.width,
                    height=e.height,
                    source_ref=f"{source_ref}/{d.sequence}",
                ),
                byte_size=e.byte_size,
                estimated_image_tokens=e.estimated_image_tokens,
                interestingness=e.interestingness,
            )
        )
    return out


def _check_id(name: str, value: str) -> str:
    """`value` if billing would accept it as an id; INVALID_ARGUMENT naming the field if not.

    Session and track ids go into every usage event and its idempotency key: one billing
    refuses would be answered here and then dead-lettered by billing, its usage lost.
    """
    check_id(f"StreamConfig.{name}", value, required=True)
    return value


class _StreamEnd:
    """Closes a stream's books exactly once: final usage report, stats, gauge, log."""

    def __init__(
        self,
        book: TenantStatsBook,
        tenant_id: str,
        selector: TrackFrameSelector,
        reporter: VisionUsageReporter,
        log_extra: dict[str, str],
    ) -> None:
        self._book = book
        self._tenant_id = tenant_id
        self._selector = selector
        self._reporter = reporter
        self._log_extra = log_extra
        self._done = False

    def __call__(self) -> None:
        if self._done:
            return
        self._done = True
        s = self._selector.stats
        try:
            self._reporter.final(s)
        finally:
            _NAIVE_TOKENS.inc(s.naive_image_tokens)
            self._book.stream_ended(self._tenant_id)
            ACTIVE_STREAMS.dec()
            logger.info(
                "stream ended",
                extra={
                    **self._log_extra,
                    "frames_seen": s.frames_seen,
                    "frames_kept": s.frames_kept,
                    "rejected": s.rejected,
                    "image_tokens_sent": s.image_tokens_sent,
                    "naive_image_tokens": s.naive_image_tokens,
                },
            )


class VisionServicer(vision_pb2_grpc.VisionServiceServicer):
    """ProcessFrames and GetTenantStats for the calling tenant."""

    def __init__(
        self,
        *,
        settings: Settings,
        tenants: TenantRegistry,
        vision_configs: dict[str, VisionConfig],
        usage: UsageRecorder,
        encode_executor: Executor | None = None,
        stats: TenantStatsBook | None = None,
    ) -> None:
        self._settings = settings
        self._tenants = tenants
        self._configs = vision_configs
        self._usage = usage
        self._executor = encode_executor
        self.stats = stats or TenantStatsBook()
        self._decoder = FrameDecoder(max_pixels=settings.max_frame_pixels)

    def _tenant_config(self) -> tuple[str, VisionConfig]:
        tenant_id = require_tenant()
        self._tenants.get(tenant_id)  # NOT_FOUND for unknown tenants
        config = self._configs.get(tenant_id)
        if config is None:
            raise NotFound(f"tenant {tenant_id!r} has no vision settings loaded")
        return tenant_id, config

    async def _next(
        self, requests: AsyncIterator[vision_pb2.ProcessFramesRequest], timeout: float
    ) -> vision_pb2.ProcessFramesRequest | None:
        """The next request; None at the end of the stream. TimeoutError when idle too long."""
        try:
            async with asyncio.timeout(timeout):
                return await anext(requests)
        except StopAsyncIteration:
            return None

    async def ProcessFrames(  # noqa: N802 - gRPC method name
        self,
        request_iterator: AsyncIterator[vision_pb2.ProcessFramesRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[vision_pb2.ProcessFramesResponse]:
        tenant_id, base = self._tenant_config()
        if not base.enabled:
            raise FailedPrecondition(f"vision is disabled for tenant {tenant_id!r}")
        if self.stats.total_active() >= self._settings.max_active_streams:
            raise ResourceExhausted(
                f"vision-svc replica is serving its maximum of "
                f"{self._settings.max_active_streams} streams; retry on another replica",
                retry_after_s=1.0,
            )
        idle = self._settings.stream_idle_timeout_s
        try:
            first = await self._next(request_iterator, idle)
        except TimeoutError:
            raise InvalidArgument(
                f"no StreamConfig within {idle:g} s of opening the stream"
            ) from None
        if first is None or first.WhichOneof("payload") != "config":
            raise InvalidArgument(
                "the first ProcessFramesRequest must carry a StreamConfig (session_id, track_id, "
                "source), then frames"
            )
        cfg = first.config
        session_id = _check_id("session_id", cfg.session_id)
        track_id = _check_id("track_id", cfg.track_id)
        if not 0 <= cfg.source_fps <= 240:
            raise InvalidArgument("StreamConfig.source_fps must be within 0..240")
        overrides = {f: getattr(cfg.settings, f) for f in _OVERRIDABLE if cfg.settings.HasField(f)}
        config = base.with_overrides(overrides)
        kind = (
            ContentKind.SCREEN
            if cfg.source == common_pb2.TRACK_SOURCE_SCREEN_SHARE
            else ContentKind.CAMERA
        )
        selector = TrackFrameSelector(
            config=config,
            kind=kind,
            source_fps=cfg.source_fps,
            decoder=self._decoder,
            tenant_stats=self.stats.stats(tenant_id),
        )
        reporter = VisionUsageReporter(
            recorder=self._usage,
            tenant_id=tenant_id,
            session_id=session_id,
            track_id=track_id,
            source_fps=cfg.source_fps,
            model_id=config.model_id,
            period_us=int(self._settings.usage_period_s * 1_000_000),
        )
        source_ref = f"vision:{session_id}/{track_id}"
        loop = asyncio.get_running_loop()
        log_extra = {
            "session_id": session_id, "track_id": track_id, "stream_id": reporter.stream_id,
            "source": kind.value,
        }
        ended = _StreamEnd(self.stats, tenant_id, selector, reporter, log_extra)
        # A client that cancels while a response is being written leaves this generator
        # suspended at its `yield`: the RPC's done callback still closes the books.
        context.add_done_callback(lambda _ctx: ended())
        self.stats.stream_started(tenant_id)
        ACTIVE_STREAMS.inc()
        logger.info("stream started", extra=log_extra)
        try:
            while True:
                try:
                    req = await self._next(request_iterator, idle)
                except TimeoutError:
                    logger.warning("stream idle, closing", extra={**log_extra, "idle_s": idle})
                    break
                if req is None:
                    break
                which = req.WhichOneof("payload")
                if which == "config":
                    raise InvalidArgument(
                        "StreamConfig may only be sent once, as the first message"
                    )
                if which != "frame":
                    yield vision_pb2.ProcessFramesResponse(
                        decision=vision_pb2.FrameDecision(
                            decision=vision_pb2.DECISION_REJECTED,
                            reason="rejected",
                            error_code=grpc.StatusCode.INVALID_ARGUMENT.name,
                            error_message="empty ProcessFramesRequest: set config or frame",
                        )
                    )
                    continue
                frame = frame_from_proto(req.frame)
                # Only the frame's bytes stay referenced while it is decided and encoded: the
                # parsed message (another copy of them) goes now.
                del req
                started = time.perf_counter()
                decision = selector.decide(frame)
                del frame
                DECIDE_SECONDS.observe(time.perf_counter() - started)
                if decision.kind.keeps:
                    try:
                        encoded = await loop.run_in_executor(
                            self._executor, selector.encode, decision
                        )
                    except Exception as exc:  # noqa: BLE001 - one frame must not end the stream
                        logger.warning("encoding failed", extra={**log_extra, "error": str(exc)})
                        decision = selector.fail_encoding(decision, exc)
                    else:
                        decision = selector.commit(decision, encoded)
                        _SENT_TOKENS.inc(encoded.estimated_image_tokens)
                _FRAME_COUNTERS[decision.kind].inc()
                reporter.maybe_report(selector.stats, decision.stream_time_us)
                yield vision_pb2.ProcessFramesResponse(
                    decision=decision_to_proto(decision, source_ref)
                )
            yield vision_pb2.ProcessFramesResponse(
                stats=vision_pb2.StreamStats(
                    session_id=session_id, track_id=track_id, stats=stats_to_proto(selector.stats)
                )
            )
        finally:
            ended()

    async def GetTenantStats(  # noqa: N802 - gRPC method name
        self,
        request: vision_pb2.GetTenantStatsRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> vision_pb2.GetTenantStatsResponse:
        tenant_id, _ = self._tenant_config()
        return vision_pb2.GetTenantStatsResponse(
            stats=stats_to_proto(self.stats.stats(tenant_id)),
            active_streams=self.stats.active_streams(tenant_id),
        )
