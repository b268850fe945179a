"""One track's frame selection: validate, rate-gate, deduplicate, force stale keeps, encode.

State per stream is fixed-size (the kept frame's cell means and hashes, a few counters), so a
stream that never ends holds the same memory after an hour as after a second.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field

from parley_runtime.errors import ParleyError

from .dedup import ChangeReport, ContentKind, FrameDeduplicator, is_still
from .encode import EncodedFrame, KeptFrameEncoder, estimate_image_tokens, fit_size
from .frames import FloatArray, FrameDecoder, FrameLayout, RawFrame, error_reason
from .phash import FrameSignature, compute_signature
from .rate import AdaptiveRateGate, StreamClock
from .stats import FrameStats
from .tenant_config import VisionConfig

# No video source is faster: bounds a sender's count of frames it left out as unchanged.
_MAX_SOURCE_FPS = 120


class DecisionKind(enum.Enum):
    KEEP = "keep"
    DROP_RATE = "drop_rate"
    DROP_DUPLICATE = "drop_duplicate"
    KEEP_STALE_FORCED = "keep_stale_forced"
    REJECTED = "rejected"

    @property
    def keeps(self) -> bool:
        return self is DecisionKind.KEEP or self is DecisionKind.KEEP_STALE_FORCED


@dataclass(frozen=True, slots=True)
class FrameInput:
    sequence: int
    timestamp_us: int
    speaking: bool
    raw: RawFrame
    # Unchanged frames the sender left out since its previous frame (Frame.unchanged_skipped).
    unchanged_skipped: int = 0


@dataclass(slots=True)
class FrameDecision:
    sequence: int
    timestamp_us: int
    kind: DecisionKind
    reason: str
    hamming: int = 0
    changed_tiles: int = 0
    error_code: str = ""
    error_message: str = ""
    encoded: EncodedFrame | None = None
    # Set on keeps until committed: what to encode and the new reference.
    layout: FrameLayout | None = field(default=None, repr=False)
    signature: FrameSignature | None = field(default=None, repr=False)
    stream_time_us: int = 0


class TrackFrameSelector:
    """Decides, frame by frame, which frames of one track are worth sending to a model.

    Call `decide()` for each frame in order; for a keep, `encode()` it (CPU-bound: run it off
    the event loop) and then `commit()` it before deciding the next frame. `process()` does all
    three.

    Naive baseline: every frame the source produced at `source_fps` (when the caller sends
    fewer, each frame stands for the source frames since the previous one; a gap longer than a
    second counts as a pause, not as frames, unless the sender says it left out unchanged frames
    in it), each encoded like a kept frame.
    """

    def __init__(
        self,
        *,
        config: VisionConfig,
        kind: ContentKind,
        source_fps: float = 0.0,
        decoder: FrameDecoder,
        encoder: KeptFrameEncoder | None = None,
        tenant_stats: FrameStats | None = None,
    ) -> None:
        self.config = config
        self.kind = kind
        self.source_fps = source_fps
        self._decoder = decoder
        self._encoder = encoder or KeptFrameEncoder(decoder)
        self._dedup = FrameDeduplicator(
            kind=kind,
            hamming_threshold=config.hamming_threshold,
            tile_hamming_threshold=config.tile_hamming_threshold,
        )
        self._gate = AdaptiveRateGate(
            speaking_fps=config.speaking_fps,
            idle_fps=config.idle_fps,
            sustained_fps=config.sustained_fps,
            burst=config.keep_burst,
            settle_debt=config.settle_debt,
        )
        # A frame was dropped for rate without being compared, so the picture may have moved
        # on from the kept one; and the previous frame's cell means when they were computed,
        # to see the picture stop moving (dedup.is_still).
        self._unseen_change = False
        self._prev_cells: FloatArray | None = None
        self._clock = StreamClock()
        self._staleness_us = int(config.max_staleness_s * 1_000_000)
        self.stats = FrameStats()
        self._tenant = tenant_stats
        self._last_valid_us: int | None = None
        self._kept_bytes = 0
        self._kept_count = 0
        self._unpriced_naive_frames = 0
        self.first_timestamp_us: int | None = None
        self.last_stream_time_us = 0

    # ----------------------------------------------------------------------------------------

    def _bump(self, name: str, n: int = 1) -> None:
        setattr(self.stats, name, getattr(self.stats, name) + n)
        if self._tenant is not None:
            setattr(self._tenant, name, getattr(self._tenant, name) + n)

    def decide(self, frame: FrameInput) -> FrameDecision:
        """The decision for one frame (no encoding). Never raises for a bad frame."""
        self._bump("frames_seen")
        if self.first_timestamp_us is None:
            self.first_timestamp_us = frame.timestamp_us
        try:
            layout = self._decoder.inspect(frame.raw)
        except ParleyError as exc:
            return self._reject(frame, exc)
        t = self._clock(frame.timestamp_us)
        self.last_stream_time_us = t
        skipped = self._credible_skips(frame.unchanged_skipped, t)
        if skipped:
            # frames the sender judged unchanged: seen, and dropped as duplicates of its last
            self._bump("frames_seen", skipped)
            self._bump("dropped_duplicate", skipped)
        self._count_naive(t, layout, skipped)

        last_keep = self._gate.last_keep_us
        stale = (
            self._staleness_us > 0
            and last_keep is not None
            and t - last_keep >= self._staleness_us
        )
        if not stale:
            verdict = self._gate.check(t, speaking=frame.speaking)
            if not verdict.open and verdict.settle_open and self._unseen_change:
                settled = self._settled_decision(frame, layout, t)
                if settled is not None:
                    return settled
            if not verdict.open:
                self._unseen_change = True
                self._bump("dropped_rate")
                state = "speaking" if frame.speaking else "idle"
                fps = self.config.speaking_fps if frame.speaking else self.config.idle_fps
                if verdict.min_interval_us < 0:
                    reason = f"rate: {state} fps is 0"
                elif verdict.since_keep_us + 500 < verdict.min_interval_us:
                    reason = (
                        f"rate: {verdict.since_keep_us / 1000:.0f} ms since last keep < "
                        f"{verdict.min_interval_us / 1000:.0f} ms ({state}, {fps:g} fps)"
                    )
                else:
                    reason = (
                        f"rate: burst of {self.config.keep_burst} used, sustained "
                        f"{self.config.sustained_fps:g} fps ({state})"
                    )
                return FrameDecision(
                    frame.sequence, frame.timestamp_us, DecisionKind.DROP_RATE, reason,
                    stream_time_us=t,
                )
        try:
            cells = self._decoder.luma_cells(layout)
        except ParleyError as exc:
            return self._reject(frame, exc)
        self._prev_cells = cells
        report, sig = self._dedup.check(cells, layout.width, layout.height, t)
        if report.changed:
            kind = DecisionKind.KEEP
            reason = report.reason
        elif stale:
            kind = DecisionKind.KEEP_STALE_FORCED
            assert last_keep is not None
            reason = f"stale: {(t - last_keep) / 1e6:.1f} s since last keep; {report.reason}"
        else:
            return self._duplicate(frame, report, report.reason, t)
        return self._keep(frame, layout, cells, report, sig, kind, reason, t)

    def _settled_decision(
        self, frame: FrameInput, layout: FrameLayout, t: int
    ) -> FrameDecision | None:
        """While frames go unexamined because of the sustained rate (a screen in continuous
        change), look for the moment the picture stops moving: a frame equal to the one before
        it. If that settled picture differs from the kept one it is kept now (a settle keep,
        borrowing from the rate bucket); if not, nothing is pending any more. None: not
        settled (or not decidable), the caller drops the frame for rate."""
        try:
            cells = self._decoder.luma_cells(layout)
        except ParleyError:
            return None
        prev, self._prev_cells = self._prev_cells, cells
        if prev is None or not is_still(self.kind, prev, cells, layout.width, layout.height):
            return None
        report, sig = self._dedup.check(cells, layout.width, layout.height, t)
        if not report.changed:
            self._unseen_change = False
            return self._duplicate(
                frame, report, f"settled on the kept picture; {report.reason}", t
            )
        return self._keep(
            frame, layout, cells, report, sig, DecisionKind.KEEP,
            f"settled after continuous change: {report.reason}", t,
        )

    def _duplicate(
        self, frame: FrameInput, report: ChangeReport, reason: str, t: int
    ) -> FrameDecision:
        self._bump("dropped_duplicate")
        return FrameDecision(
            frame.sequence, frame.timestamp_us, DecisionKind.DROP_DUPLICATE, reason,
            hamming=report.hamming, changed_tiles=report.changed_tiles, stream_time_us=t,
        )

    @staticmethod
    def _keep(
        frame: FrameInput,
        layout: FrameLayout,
        cells: FloatArray,
        report: ChangeReport,
        sig: FrameSignature | None,
        kind: DecisionKind,
        reason: str,
        t: int,
    ) -> FrameDecision:
        """A keep, carrying what commit() needs: the frame to encode and its signature."""
        if sig is None:
            sig = compute_signature(cells, layout.width, layout.height)
        return FrameDecision(
            frame.sequence, frame.timestamp_us, kind, reason,
            hamming=report.hamming, changed_tiles=report.changed_tiles,
            layout=layout, signature=sig, stream_time_us=t,
        )

    def encode(self, decision: FrameDecision) -> EncodedFrame:
        """JPEG of a kept frame (CPU-bound, touches no selector state: safe in a thread)."""
        assert decision.layout is not None
        return self._encoder.encode(
            decision.layout,
            quality=self.config.jpeg_quality,
            max_side=self.config.max_image_side,
        )

    def commit(self, decision: FrameDecision, encoded: EncodedFrame) -> FrameDecision:
        """Record a keep: the new reference, the rate gate, the stats."""
        assert decision.signature is not None
        self._dedup.accept(decision.signature, decision.stream_time_us)
        self._gate.record_keep(decision.stream_time_us)
        self._unseen_change = False
        self._bump("kept" if decision.kind is DecisionKind.KEEP else "kept_stale_forced")
        self._bump("bytes_sent", encoded.byte_size)
        self._bump("image_tokens_sent", encoded.estimated_image_tokens)
        self._kept_bytes += encoded.byte_size
        self._kept_count += 1
        if self._unpriced_naive_frames:
            self._bump("naive_bytes", self._unpriced_naive_frames * encoded.byte_size)
            self._unpriced_naive_frames = 0
        decision.encoded = encoded
        decision.layout = None
        decision.signature = None
        return decision

    def fail_encoding(self, decision: FrameDecision, exc: Exception) -> FrameDecision:
        """A keep whose image could not be produced becomes a rejection."""
        err = (
            exc if isinstance(exc, ParleyError)
            else ParleyError(f"could not encode the kept frame: {error_reason(exc)}")
        )
        return self._reject_decided(decision.sequence, decision.timestamp_us, err)

    def process(self, frame: FrameInput) -> FrameDecision:
        """decide + encode + commit, synchronously."""
        decision = self.decide(frame)
        if not decision.kind.keeps:
            return decision
        try:
            encoded = self.encode(decision)
        except Exception as exc:  # noqa: BLE001 - a frame must not end the stream
            return self.fail_encoding(decision, exc)
        return self.commit(decision, encoded)

    # ----------------------------------------------------------------------------------------

    def _reject(self, frame: FrameInput, exc: ParleyError) -> FrameDecision:
        return self._reject_decided(frame.sequence, frame.timestamp_us, exc)

    def _reject_decided(self, sequence: int, ts: int, exc: ParleyError) -> FrameDecision:
        self._bump("rejected")
        return FrameDecision(
            sequence, ts, DecisionKind.REJECTED, "rejected",
            error_code=exc.code.name, error_message=exc.message,
        )

    def _credible_skips(self, claimed: int, t: int) -> int:
        """The sender's count of frames it left out as unchanged, bounded by what the time
        since its previous frame can hold (no source runs faster than _MAX_SOURCE_FPS); the
        first frame of a stream stands for none."""
        if claimed <= 0 or self._last_valid_us is None:
            return 0
        gap_us = max(0, t - self._last_valid_us)
        return min(claimed, math.ceil(gap_us * _MAX_SOURCE_FPS / 1e6))

    def _count_naive(self, t: int, layout: FrameLayout, skipped: int = 0) -> None:
        credit = 1
        if self._last_valid_us is not None and self.source_fps > 0:
            frames = round((t - self._last_valid_us) * self.source_fps / 1e6)
            # A gap the sender filled with unchanged frames is not a pause: it sends one at
            # least every second, so up to two seconds count as frames.
            limit = 2 if skipped else 1
            credit = min(max(1, frames), max(1, math.ceil(self.source_fps * limit)))
        elif skipped:
            credit = skipped + 1  # no nominal rate: the sender's own count
        self._last_valid_us = t
        size = fit_size(layout.width, layout.height, self.config.max_image_side)
        self._bump("naive_image_tokens", credit * estimate_image_tokens(*size))
        if self._kept_count:
            self._bump("naive_bytes", credit * (self._kept_bytes // self._kept_count))
        else:
            self._unpriced_naive_frames += credit
