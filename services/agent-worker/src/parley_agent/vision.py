"""Video capture: camera and screen-share tracks streamed to vision-svc, and the kept frames
attached to user turns when they matter.

One `FrameStreamer` per subscribed video track sends I420 frames (with the user's speaking state
and the frame's own timestamp) over a ProcessFrames stream; vision-svc answers every frame with a
decision and returns the kept ones encoded. The latest kept frame per track waits in a
`KeptFrameStore` until a user turn needs it: when it changed since the last turn, or when the user
refers to what they show. Bad frames are rejected one by one by vision-svc; a failed stream is
retried with backoff; nothing here can end the session.
"""

from __future__ import annotations

import asyncio
import base64
import random
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field

import grpc
import numpy as np
from livekit import rtc
from livekit.agents import llm
from parley.common.v1 import common_pb2
from parley.vision.v1 import vision_pb2
from parley_runtime.context import TENANT_HEADER

from .config import VisionAttachOptions, VisionOverrides
from .log import logger
from .metrics import (
    IMAGES_ATTACHED,
    VISION_FRAMES,
    VISION_FRAMES_UNCHANGED,
    VISION_STREAM_ERRORS,
)

_DECISION_LABELS = {
    vision_pb2.DECISION_KEEP: "keep",
    vision_pb2.DECISION_DROP_RATE: "drop_rate",
    vision_pb2.DECISION_DROP_DUPLICATE: "drop_duplicate",
    vision_pb2.DECISION_KEEP_STALE_FORCED: "keep_stale",
    vision_pb2.DECISION_REJECTED: "rejected",
}
_WORD = re.compile(r"[a-z']+")

TrackKind = str  # "camera" | "screen_share"


@dataclass(frozen=True, slots=True)
class KeptFrame:
    track_sid: str
    kind: TrackKind
    participant: str
    image: common_pb2.Image
    kept_at: float
    version: int


@dataclass(frozen=True, slots=True)
class Attachment:
    frame: KeptFrame
    reason: str  # "changed" | "referenced"


class KeptFrameStore:
    """The latest kept frame of each track and which version each turn has already seen."""

    def __init__(self) -> None:
        self._frames: dict[str, KeptFrame] = {}
        self._versions: dict[str, int] = {}
        self._attached: dict[str, int] = {}

    def update(
        self, track_sid: str, kind: TrackKind, participant: str, image: common_pb2.Image,
        *, now: float | None = None,
    ) -> KeptFrame:
        version = self._versions.get(track_sid, 0) + 1
        self._versions[track_sid] = version
        frame = KeptFrame(
            track_sid=track_sid, kind=kind, participant=participant, image=image,
            kept_at=time.monotonic() if now is None else now, version=version,
        )
        self._frames[track_sid] = frame
        return frame

    def remove(self, track_sid: str) -> None:
        self._frames.pop(track_sid, None)

    def latest(self) -> list[KeptFrame]:
        return list(self._frames.values())

    def select_for_turn(
        self, text: str | None, options: VisionAttachOptions, *, now: float | None = None
    ) -> list[Attachment]:
        """Frames to attach to a user turn, and mark them seen.

        A frame qualifies when it changed since the last turn that saw its track, or when the
        turn's words refer to what is shown (the options' keywords). Screen shares come first,
        then cameras; at most `max_images`; never older than `max_age_s`.
        """
        if not options.enabled:
            return []
        now = time.monotonic() if now is None else now
        words = set(_WORD.findall((text or "").lower()))
        referenced = bool(words & set(options.keywords))
        candidates = sorted(
            self._frames.values(),
            key=lambda f: (f.kind != "screen_share", -f.kept_at),
        )
        chosen: list[Attachment] = []
        for frame in candidates:
            if len(chosen) >= options.max_images:
                break
            if now - frame.kept_at > options.max_age_s:
                continue
            if frame.version != self._attached.get(frame.track_sid):
                chosen.append(Attachment(frame, "changed"))
            elif referenced:
                chosen.append(Attachment(frame, "referenced"))
        for att in chosen:
            self._attached[att.frame.track_sid] = att.frame.version
        return chosen


def image_content(frame: KeptFrame) -> llm.ImageContent:
    img = frame.image
    mime = img.mime_type or "image/jpeg"
    data_url = f"data:{mime};base64,{base64.b64encode(img.data).decode()}"
    return llm.ImageContent(
        id=img.source_ref or f"img_{uuid.uuid4().hex[:12]}",
        image=data_url,
        mime_type=mime,
        inference_width=img.width or None,
        inference_height=img.height or None,
    )


def attach_frames(
    message: llm.ChatMessage, store: KeptFrameStore, options: VisionAttachOptions
) -> list[Attachment]:
    """Append the relevant kept frames to a user message (in place); returns what was added."""
    chosen = store.select_for_turn(message.text_content, options)
    for att in chosen:
        message.content.append(image_content(att.frame))
        IMAGES_ATTACHED.labels(att.reason).inc()
    return chosen


# ProcessFrames with requests that may arrive already serialised (see encode_frame_request).
_PROCESS_FRAMES_PATH = "/{}/{}".format(
    vision_pb2.DESCRIPTOR.services_by_name["VisionService"].full_name, "ProcessFrames"
)
_REQUEST_FRAME_FIELD = vision_pb2.ProcessFramesRequest.DESCRIPTOR.fields_by_name["frame"].number
_FRAME_DATA_FIELD = vision_pb2.Frame.DESCRIPTOR.fields_by_name["data"].number
_LENGTH_DELIMITED = 2


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if not value:
            out.append(low)
            return bytes(out)
        out.append(low | 0x80)


_REQUEST_FRAME_KEY = _varint(_REQUEST_FRAME_FIELD << 3 | _LENGTH_DELIMITED)
_FRAME_DATA_KEY = _varint(_FRAME_DATA_FIELD << 3 | _LENGTH_DELIMITED)


def encode_frame_request(
    *, sequence: int, timestamp_us: int, width: int, height: int,
    data: bytes | bytearray | memoryview, speaking: bool, unchanged_skipped: int = 0,
) -> bytes:
    """A serialised ProcessFramesRequest carrying one I420 frame, with one copy of the pixels.

    protobuf's Python runtime copies a bytes field into the message when it is set and again when
    the message is serialised, each into freshly allocated memory: about 2.7 ms of CPU per 720p
    frame (1.4 MB), most of what streaming video cost the agent. Here the frame's small fields go
    through protobuf and the pixels are appended as their own wire-format field. A protobuf parser
    reads the result exactly as the message built field by field (fields may come in any order).
    """
    head = vision_pb2.Frame(
        sequence=sequence, timestamp_us=timestamp_us, format=vision_pb2.FRAME_FORMAT_I420,
        width=width, height=height, speaking=speaking, unchanged_skipped=unchanged_skipped,
    ).SerializeToString()
    pixels = memoryview(data).cast("B")
    # proto3 leaves an empty bytes field out, and so does this
    data_head = _FRAME_DATA_KEY + _varint(pixels.nbytes) if pixels.nbytes else b""
    frame_len = len(head) + len(data_head) + pixels.nbytes
    return b"".join((_REQUEST_FRAME_KEY, _varint(frame_len), head, data_head, pixels))


def _serialize_request(request: vision_pb2.ProcessFramesRequest | bytes) -> bytes:
    return request if isinstance(request, bytes) else request.SerializeToString()


def process_frames_method(channel: grpc.aio.Channel) -> grpc.aio.StreamStreamMultiCallable:
    """VisionService.ProcessFrames on `channel`, taking protobuf requests or encoded frames."""
    return channel.stream_stream(
        _PROCESS_FRAMES_PATH,
        request_serializer=_serialize_request,
        response_deserializer=vision_pb2.ProcessFramesResponse.FromString,
    )


def i420_frame(frame: rtc.VideoFrame) -> rtc.VideoFrame:
    if frame.type == rtc.VideoBufferType.I420:
        return frame
    return frame.convert(rtc.VideoBufferType.I420)


class UnchangedFrameFilter:
    """Leaves out the frames of a track that show nothing new since the last frame sent.

    A shared screen sits still most of the time, yet its decoded VP8 frames are never
    bit-identical (the encoder keeps refining): consecutive frames of a still 720p slide differ
    by at most ~20 luma levels here, a slide change by ~200 over thousands of pixels. Sending
    each to vision-svc moves 1.4 MB per 720p frame through gRPC and makes vision-svc hash it;
    comparing its luma with the last frame sent costs the agent ~0.06 ms.

    A frame is sent when any pixel's luma moved by more than `threshold` levels from the last
    frame sent (so a slow drift is caught too), when its size changed, right after a changed
    frame (vision-svc sees the picture stop moving: its settle keep), and at least every
    `heartbeat_us`, so whatever this judged too small is still judged by vision-svc within that
    time. Each frame sent carries the count of frames left out before it; vision-svc counts
    them as seen duplicates. `threshold` 0 sends every frame.
    """

    def __init__(self, *, threshold: int, heartbeat_us: int) -> None:
        if not 0 <= threshold <= 127:
            raise ValueError(f"threshold must be 0-127 luma levels, not {threshold}")
        self._threshold = threshold
        self._heartbeat_us = heartbeat_us
        self._ref: np.ndarray | None = None
        self._scratch: np.ndarray | None = None
        self._last_sent_us: int | None = None
        self._after_change = False
        self.pending = 0

    def reset(self) -> None:
        """A new stream: the first frame goes out whatever it shows."""
        self._ref = None
        self._last_sent_us = None
        self._after_change = False
        self.pending = 0

    def _release(self) -> int:
        """The frame about to be sent stands for the frames left out since the previous one."""
        skipped, self.pending = self.pending, 0
        if skipped:
            # counted once a frame is sent: a multiprocess counter write costs ~0.1 ms
            VISION_FRAMES_UNCHANGED.inc(skipped)
        return skipped

    def _moved(self, luma: np.ndarray) -> bool:
        """Whether any pixel's luma moved past the threshold from the last frame sent (of the
        same size)."""
        ref = self._ref
        assert ref is not None
        if self._scratch is None or self._scratch.shape != luma.shape:
            self._scratch = np.empty_like(luma)
        d = self._scratch
        # In uint8 arithmetic (mod 256), |ref - luma| <= t exactly when (ref - luma + t) <= 2t:
        # two passes and a max, ~0.06 ms for a 720p frame.
        t = self._threshold
        np.subtract(ref, luma, out=d)
        np.add(d, np.uint8(t), out=d)
        return int(d.max()) > 2 * t

    def admit(self, frame: rtc.VideoFrame, now_us: int | None = None) -> int | None:
        """None: leave the I420 `frame` out; otherwise send it, standing for that many frames
        left out before it. The heartbeat runs on the local clock (`now_us`, monotonic), not
        on the frames' timestamps, which a source may leave at zero."""
        if self._threshold <= 0:
            return 0
        now = time.monotonic_ns() // 1000 if now_us is None else now_us
        w, h = frame.width, frame.height
        data = memoryview(frame.data).cast("B")
        if w <= 0 or h <= 0 or data.nbytes < w * h:
            # not a frame this can read: vision-svc judges it (and rejects it with a reason)
            self._ref = None
            return self._release()
        luma = np.frombuffer(data, dtype=np.uint8, count=w * h).reshape(h, w)
        comparable = self._ref is not None and self._ref.shape == luma.shape
        changed = comparable and self._moved(luma)
        since = None if self._last_sent_us is None else now - self._last_sent_us
        due = since is None or not 0 <= since < self._heartbeat_us
        if comparable and not (changed or due or self._after_change):
            self.pending += 1
            return None
        self._after_change = changed
        self._last_sent_us = now
        if comparable:
            assert self._ref is not None
            np.copyto(self._ref, luma)
        else:
            self._ref = luma.copy()
        return self._release()


@dataclass
class StreamerStats:
    sent: int = 0
    unchanged_skipped: int = 0
    decisions: dict[str, int] = field(default_factory=dict)
    errors: int = 0
    reconnects: int = 0


class FrameStreamer:
    """Streams one video track's frames to vision-svc until the track ends or `aclose()`."""

    def __init__(
        self,
        *,
        process_frames: grpc.aio.StreamStreamMultiCallable,
        frames: AsyncIterator[rtc.VideoFrameEvent],
        tenant_id: str,
        session_id: str,
        participant: str,
        track_sid: str,
        kind: TrackKind,
        store: KeptFrameStore,
        speaking: Callable[[], bool],
        overrides: VisionOverrides,
        max_send_fps: float,
        backoff_max_s: float,
        source_fps: float = 30.0,
        unchanged_threshold: int = 0,
        heartbeat_s: float = 1.0,
    ) -> None:
        self._process_frames = process_frames
        self._frames = frames
        self._tenant_id = tenant_id
        self._session_id = session_id
        self._participant = participant
        self._track_sid = track_sid
        self._kind = kind
        self._store = store
        self._speaking = speaking
        self._overrides = overrides
        self._min_interval_us = int(1_000_000 / max_send_fps) if max_send_fps > 0 else 0
        self._backoff_max = backoff_max_s
        self._source_fps = source_fps
        self._sequence = 0
        self._last_sent_us: int | None = None
        self._last_sent_local_us = 0
        self._unchanged = UnchangedFrameFilter(
            threshold=unchanged_threshold, heartbeat_us=int(heartbeat_s * 1_000_000)
        )
        self._ended = False
        self.stats = StreamerStats()

    def _config(self) -> vision_pb2.StreamConfig:
        settings = vision_pb2.VisionSettings(
            **{k: v for k, v in self._overrides.model_dump().items() if v is not None}
        )
        return vision_pb2.StreamConfig(
            session_id=self._session_id,
            participant_id=self._participant,
            track_id=self._track_sid,
            source=(
                common_pb2.TRACK_SOURCE_SCREEN_SHARE
                if self._kind == "screen_share"
                else common_pb2.TRACK_SOURCE_CAMERA
            ),
            source_fps=self._source_fps,
            settings=settings,
        )

    def _to_request(self, event: rtc.VideoFrameEvent) -> bytes | None:
        ts = int(event.timestamp_us)
        local_us = time.monotonic_ns() // 1000
        if self._min_interval_us and self._last_sent_us is not None:
            elapsed = ts - self._last_sent_us
            if elapsed <= 0:
                # The source's timestamps stand still or went back (some leave them at zero):
                # the local clock measures the interval instead.
                elapsed = local_us - self._last_sent_local_us
            if elapsed < self._min_interval_us:
                return None
        try:
            frame = i420_frame(event.frame)
            skipped = self._unchanged.admit(frame)
            if skipped is None:
                self.stats.unchanged_skipped += 1
                return None
            request = encode_frame_request(
                sequence=self._sequence + 1, timestamp_us=ts, width=frame.width,
                height=frame.height, data=frame.data, speaking=bool(self._speaking()),
                unchanged_skipped=skipped,
            )
        except Exception:
            logger.debug("video frame could not be converted; skipped", exc_info=True)
            return None
        self._last_sent_us = ts
        self._last_sent_local_us = local_us
        self._sequence += 1
        return request

    async def _requests(self) -> AsyncIterator[vision_pb2.ProcessFramesRequest | bytes]:
        self._unchanged.reset()  # a new stream starts from a frame, whatever it shows
        yield vision_pb2.ProcessFramesRequest(config=self._config())
        while True:
            try:
                event = await self._frames.__anext__()
            except StopAsyncIteration:
                self._ended = True
                return
            req = self._to_request(event)
            if req is not None:
                self.stats.sent += 1
                yield req

    def _on_response(self, resp: vision_pb2.ProcessFramesResponse) -> None:
        if resp.HasField("stats"):
            s = resp.stats.stats
            logger.info(
                "vision stream stats",
                extra={
                    "track_sid": self._track_sid, "frames_seen": s.frames_seen, "kept": s.kept,
                    "dropped_rate": s.dropped_rate, "dropped_duplicate": s.dropped_duplicate,
                    "rejected": s.rejected,
                },
            )
            return
        decision = resp.decision
        label = _DECISION_LABELS.get(decision.decision, "unspecified")
        self.stats.decisions[label] = self.stats.decisions.get(label, 0) + 1
        VISION_FRAMES.labels(label).inc()
        if decision.decision in (vision_pb2.DECISION_KEEP, vision_pb2.DECISION_KEEP_STALE_FORCED):
            if decision.kept.image.data:
                self._store.update(
                    self._track_sid, self._kind, self._participant, decision.kept.image
                )
        elif decision.decision == vision_pb2.DECISION_REJECTED:
            if self.stats.decisions[label] in (1, 10, 100, 1000):
                logger.warning(
                    "vision-svc rejected frames",
                    extra={
                        "track_sid": self._track_sid, "rejected": self.stats.decisions[label],
                        "code": decision.error_code, "reason": decision.error_message,
                    },
                )

    async def run(self) -> None:
        attempt = 0
        while not self._ended:
            started = time.monotonic()
            call = self._process_frames(
                self._requests(), metadata=((TENANT_HEADER, self._tenant_id),)
            )
            try:
                async for resp in call:
                    self._on_response(resp)
                if self._ended:
                    return
                raise ConnectionError("vision-svc ended the frame stream")
            except asyncio.CancelledError:
                raise
            except (grpc.aio.AioRpcError, ConnectionError) as exc:
                self.stats.errors += 1
                VISION_STREAM_ERRORS.inc()
                if time.monotonic() - started > 30:
                    attempt = 0
                delay = min(self._backoff_max, 0.5 * 2**attempt) * (0.5 + random.random() / 2)
                attempt += 1
                logger.warning(
                    "vision stream failed; retrying",
                    extra={
                        "track_sid": self._track_sid,
                        "code": exc.code().name if isinstance(exc, grpc.aio.AioRpcError)
                        else "closed",
                        "retry_in_s": round(delay, 2),
                    },
                )
                await asyncio.sleep(delay)
                self.stats.reconnects += 1
            finally:
                if not call.done():
                    call.cancel()


class VisionCapture:
    """Owns one FrameStreamer task per subscribed camera/screen-share track of the room's users."""

    def __init__(
        self,
        *,
        room: rtc.Room,
        channel: grpc.aio.Channel,
        tenant_id: str,
        session_id: str,
        store: KeptFrameStore,
        speaking: Callable[[], bool],
        overrides: VisionOverrides,
        max_send_fps: float,
        backoff_max_s: float,
        unchanged_threshold: int = 0,
        heartbeat_s: float = 1.0,
    ) -> None:
        self._room = room
        self._process_frames = process_frames_method(channel)
        self._tenant_id = tenant_id
        self._session_id = session_id
        self._store = store
        self._speaking = speaking
        self._overrides = overrides
        self._max_send_fps = max_send_fps
        self._backoff_max = backoff_max_s
        self._unchanged_threshold = unchanged_threshold
        self._heartbeat_s = heartbeat_s
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._streams: dict[str, rtc.VideoStream] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._ending: set[asyncio.Task[None]] = set()
        self.streamers: dict[str, FrameStreamer] = {}
        self._closed = False

    def start(self) -> None:
        self._room.on("track_subscribed", self._on_track_subscribed)
        self._room.on("track_unsubscribed", self._on_track_unsubscribed)
        for participant in self._room.remote_participants.values():
            for pub in participant.track_publications.values():
                if pub.track is not None and pub.subscribed:
                    self._on_track_subscribed(pub.track, pub, participant)

    @staticmethod
    def kind_of(publication: rtc.RemoteTrackPublication) -> TrackKind | None:
        if publication.source == rtc.TrackSource.SOURCE_SCREENSHARE:
            return "screen_share"
        if publication.source == rtc.TrackSource.SOURCE_CAMERA:
            return "camera"
        return None

    def _on_track_subscribed(
        self,
        track: rtc.Track,
        publication: rtc.RemoteTrackPublication,
        participant: rtc.RemoteParticipant,
    ) -> None:
        if self._closed or track.kind != rtc.TrackKind.KIND_VIDEO:
            return
        if participant.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT:
            return
        kind = self.kind_of(publication)
        if kind is None or track.sid in self._tasks:
            # already streaming this track (an unsubscribed track's task has left _tasks)
            return
        stream = rtc.VideoStream(track, format=rtc.VideoBufferType.I420, capacity=2)
        streamer = FrameStreamer(
            process_frames=self._process_frames, frames=stream.__aiter__(),
            tenant_id=self._tenant_id,
            session_id=self._session_id, participant=participant.identity,
            track_sid=track.sid, kind=kind, store=self._store, speaking=self._speaking,
            overrides=self._overrides, max_send_fps=self._max_send_fps,
            backoff_max_s=self._backoff_max, unchanged_threshold=self._unchanged_threshold,
            heartbeat_s=self._heartbeat_s,
        )
        self._streams[track.sid] = stream
        self.streamers[track.sid] = streamer
        task = asyncio.create_task(self._guard(track.sid, streamer), name=f"vision-{track.sid}")
        self._tasks[track.sid] = task
        logger.info(
            "video track streaming to vision-svc",
            extra={"track_sid": track.sid, "kind": kind, "participant": participant.identity},
        )

    async def _guard(self, track_sid: str, streamer: FrameStreamer) -> None:
        try:
            await streamer.run()
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("video streaming stopped", extra={"track_sid": track_sid})

    def _on_track_unsubscribed(
        self,
        track: rtc.Track,
        publication: rtc.RemoteTrackPublication,
        participant: rtc.RemoteParticipant,
    ) -> None:
        stream = self._streams.pop(track.sid, None)
        if stream is not None:
            # Ends the frame iterator: the streamer closes its stream and collects the stats.
            task = asyncio.create_task(stream.aclose(), name=f"vision-close-{track.sid}")
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        streaming = self._tasks.pop(track.sid, None)
        if streaming is not None:
            # It ends with its frames; the same track subscribed again gets a new streamer.
            self._ending.add(streaming)
            streaming.add_done_callback(self._ending.discard)
        self._store.remove(track.sid)

    async def aclose(self) -> None:
        self._closed = True
        self._room.off("track_subscribed", self._on_track_subscribed)
        self._room.off("track_unsubscribed", self._on_track_unsubscribed)
        await asyncio.gather(*self._closing, return_exceptions=True)
        tasks = [*self._tasks.values(), *self._ending]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for stream in self._streams.values():
            try:
                await stream.aclose()
            except Exception:
                logger.debug("video stream close failed", exc_info=True)
        self._tasks.clear()
        self._streams.clear()


def describe(attachments: Iterable[Attachment]) -> list[dict[str, object]]:
    return [
        {"track_sid": a.frame.track_sid, "kind": a.frame.kind, "reason": a.reason,
         "source_ref": a.frame.image.source_ref}
        for a in attachments
    ]
