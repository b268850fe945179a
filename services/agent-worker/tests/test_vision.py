"""Video frames to vision-svc and kept frames to user turns."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from typing import Any

import grpc
import numpy as np
import pytest
from livekit import rtc
from livekit.agents import llm
from parley.common.v1 import common_pb2
from parley.vision.v1 import vision_pb2
from parley_agent.config import VisionAttachOptions, VisionOverrides
from parley_agent.testing import FakeBackends, FakeVision
from parley_agent.vision import (
    FrameStreamer,
    KeptFrameStore,
    UnchangedFrameFilter,
    attach_frames,
    encode_frame_request,
    process_frames_method,
)
from parley_runtime.client import make_channel
from parley_runtime.testing import signed_as

pytestmark = pytest.mark.unit

OPTS = VisionAttachOptions()


def img(ref: str) -> common_pb2.Image:
    return common_pb2.Image(data=b"\xff\xd8jpeg", mime_type="image/jpeg", width=4, height=4,
                            source_ref=ref)


def test_attach_when_changed_or_referenced() -> None:
    store = KeptFrameStore()
    store.update("TR_screen", "screen_share", "alice", img("vision:s/TR_screen/1"), now=100.0)

    # a new kept frame: attached to the next turn whatever is said
    first = store.select_for_turn("how are sales going", OPTS, now=101.0)
    assert [(a.frame.track_sid, a.reason) for a in first] == [("TR_screen", "changed")]
    # unchanged and not referred to: nothing
    assert store.select_for_turn("and the weather?", OPTS, now=102.0) == []
    # unchanged but referred to
    again = store.select_for_turn("what is on this slide?", OPTS, now=103.0)
    assert [a.reason for a in again] == ["referenced"]
    # too old: never
    assert store.select_for_turn("look at the screen", OPTS, now=100.0 + OPTS.max_age_s + 1) == []
    # screen share before camera, at most max_images
    store.update("TR_cam", "camera", "alice", img("vision:s/TR_cam/1"), now=104.0)
    store.update("TR_screen", "screen_share", "alice", img("vision:s/TR_screen/2"), now=104.0)
    both = store.select_for_turn("see", VisionAttachOptions(max_images=1), now=105.0)
    assert [a.frame.track_sid for a in both] == ["TR_screen"]
    assert store.select_for_turn("x", VisionAttachOptions(enabled=False), now=105.0) == []


def test_attach_frames_adds_image_content() -> None:
    store = KeptFrameStore()
    store.update("TR_screen", "screen_share", "alice", img("vision:s/TR_screen/1"))
    msg = llm.ChatMessage(role="user", content=["what do you see here?"])
    added = attach_frames(msg, store, OPTS)
    assert len(added) == 1
    image = msg.content[-1]
    assert isinstance(image, llm.ImageContent) and image.id == "vision:s/TR_screen/1"
    assert isinstance(image.image, str) and image.image.startswith("data:image/jpeg;base64,")


def picture(luma: np.ndarray) -> rtc.VideoFrame:
    """An I420 frame of this luma (height x width) with neutral chroma."""
    height, width = luma.shape
    uv = np.full(2 * ((width + 1) // 2) * ((height + 1) // 2), 128, dtype=np.uint8)
    return rtc.VideoFrame(width, height, rtc.VideoBufferType.I420,
                          np.concatenate([luma.astype(np.uint8).ravel(), uv]).tobytes())


def i420(width: int, height: int, value: int) -> rtc.VideoFrame:
    return picture(np.full((height, width), value))


async def frames(items: Iterable[tuple[rtc.VideoFrame, int]]) -> AsyncIterator[rtc.VideoFrameEvent]:
    for frame, ts in items:
        yield rtc.VideoFrameEvent(frame, ts, rtc.VideoRotation.VIDEO_ROTATION_0)
        await asyncio.sleep(0)


def streamer(channel: grpc.aio.Channel, source: AsyncIterator[Any], store: KeptFrameStore,
             speaking: bool = True, max_fps: float = 0, unchanged: int = 0,
             heartbeat_s: float = 1.0) -> FrameStreamer:
    return FrameStreamer(
        process_frames=process_frames_method(channel), frames=source, tenant_id="acme",
        session_id="sess-1", participant="alice", track_sid="TR_screen", kind="screen_share",
        store=store, speaking=lambda: speaking, overrides=VisionOverrides(speaking_fps=10),
        max_send_fps=max_fps, backoff_max_s=0.2, unchanged_threshold=unchanged,
        heartbeat_s=heartbeat_s,
    )


async def test_frames_stream_and_garbage_is_rejected_not_fatal(backends: FakeBackends) -> None:
    channel = make_channel(backends.addr("vision"), signer=signed_as("agent-worker"))
    store = KeptFrameStore()
    garbage = rtc.VideoFrame(64, 48, rtc.VideoBufferType.I420, b"\x00" * 10)
    items = [
        (i420(64, 48, 20), 1_000_000),
        (i420(64, 48, 20), 1_033_000),  # duplicate
        (garbage, 1_066_000),           # rejected by vision-svc, stream goes on
        (i420(64, 48, 200), 1_100_000),  # a real change
    ]
    s = streamer(channel, frames(items), store)
    try:
        await asyncio.wait_for(s.run(), 10)
    finally:
        await channel.close()
    vision = backends.vision
    assert vision.configs[0].session_id == "sess-1"
    assert vision.configs[0].source == common_pb2.TRACK_SOURCE_SCREEN_SHARE
    assert vision.configs[0].settings.speaking_fps == 10
    assert [f.timestamp_us for f in vision.frames] == [t for _, t in items]
    assert all(f.speaking for f in vision.frames)
    assert s.stats.decisions == {"keep": 2, "drop_duplicate": 1, "rejected": 1}
    (kept,) = store.latest()
    assert kept.version == 2 and kept.image.source_ref.endswith("/4")


async def test_send_rate_cap_uses_frame_timestamps(backends: FakeBackends) -> None:
    channel = make_channel(backends.addr("vision"), signer=signed_as("agent-worker"))
    items = [(i420(32, 32, i), 1_000_000 + i * 33_333) for i in range(30)]  # 1 s at 30 fps
    s = streamer(channel, frames(items), KeptFrameStore(), max_fps=5)
    try:
        await asyncio.wait_for(s.run(), 10)
    finally:
        await channel.close()
    assert 5 <= len(backends.vision.frames) <= 6


class DroppingVision(FakeVision):
    """Fails the first stream after one frame, like a vision-svc restart."""

    def __init__(self) -> None:
        super().__init__()
        self.streams = 0

    async def ProcessFrames(self, request_iterator: Any, context: Any) -> AsyncIterator[Any]:  # noqa: N802
        self.streams += 1
        if self.streams == 1:
            async for _req in request_iterator:
                break
            await context.abort(grpc.StatusCode.UNAVAILABLE, "restarting")
        async for resp in super().ProcessFrames(request_iterator, context):
            yield resp


async def test_stream_failure_is_retried_with_backoff() -> None:
    fakes = await FakeBackends(vision=DroppingVision()).start()
    channel = make_channel(fakes.addr("vision"), signer=signed_as("agent-worker"))
    store = KeptFrameStore()

    async def slow() -> AsyncIterator[rtc.VideoFrameEvent]:
        for i in range(6):
            yield rtc.VideoFrameEvent(i420(32, 32, 40 * i), 1_000_000 + i * 100_000,
                                      rtc.VideoRotation.VIDEO_ROTATION_0)
            await asyncio.sleep(0.1)

    s = streamer(channel, slow(), store)
    try:
        await asyncio.wait_for(s.run(), 15)
    finally:
        await channel.close()
        await fakes.stop()
    assert s.stats.errors == 1 and s.stats.reconnects == 1
    assert isinstance(fakes.vision, DroppingVision) and fakes.vision.streams == 2
    assert store.latest(), "frames after the reconnect were kept"
    assert fakes.vision.configs, "the new stream started with its config"


@pytest.mark.parametrize(
    ("width", "height", "sequence", "timestamp_us", "speaking"),
    [
        (0, 0, 1, 0, False),  # no pixels at all
        (8, 8, 127, 1, True),  # 96 bytes: one-byte lengths
        (10, 10, 128, -5, False),  # 150 bytes: two-byte lengths, a negative timestamp
        (1280, 720, 2**40, 1_700_000_000_000_000, True),  # 1.4 MB: three-byte lengths
        (3840, 2160, 2**64 - 1, 2**63 - 1, False),  # 12 MB: four-byte lengths, largest values
    ],
)
def test_encoded_frame_request_parses_as_the_protobuf_built_one(
    width: int, height: int, sequence: int, timestamp_us: int, speaking: bool
) -> None:
    rng = np.random.default_rng(width + height)
    pixels = bytearray(rng.integers(0, 256, width * height * 3 // 2, dtype=np.uint8).tobytes())
    expected = vision_pb2.ProcessFramesRequest()
    frame = expected.frame
    frame.sequence, frame.timestamp_us = sequence, timestamp_us
    frame.format = vision_pb2.FRAME_FORMAT_I420
    frame.width, frame.height, frame.data, frame.speaking = width, height, bytes(pixels), speaking
    encoded = encode_frame_request(
        sequence=sequence, timestamp_us=timestamp_us, width=width, height=height,
        data=memoryview(pixels), speaking=speaking,
    )
    parsed = vision_pb2.ProcessFramesRequest.FromString(encoded)
    assert parsed.WhichOneof("payload") == "frame"
    assert parsed == expected
    assert len(encoded) == expected.ByteSize()
    # the pixels are copied out: changing the source afterwards does not change the request
    if pixels:
        pixels[0] ^= 0xFF
        assert vision_pb2.ProcessFramesRequest.FromString(encoded).frame.data[0] != pixels[0]


# -- frames that show nothing new -------------------------------------------------------------

W, H = 320, 180


def slide(seed: int) -> np.ndarray:
    """Dark text-like blocks on a light page."""
    rng = np.random.default_rng(seed)
    page = np.full((H, W), 235, dtype=np.int16)
    for _ in range(40):
        y, x = rng.integers(0, H - 8), rng.integers(0, W - 30)
        page[y : y + 8, x : x + rng.integers(6, 30)] = 30
    return page


def flicker(page: np.ndarray, i: int, amplitude: int = 15) -> np.ndarray:
    """What VP8 does to a still picture frame after frame: small changes here and there (two
    frames differ by up to 30 levels; measured on decoded 720p slides: up to ~20)."""
    rng = np.random.default_rng(1000 + i)
    noise = rng.integers(-amplitude, amplitude + 1, page.shape) * (rng.random(page.shape) < 0.01)
    return np.clip(page + noise, 0, 255)


MS = 1000


def test_still_frames_are_left_out_until_the_heartbeat() -> None:
    f = UnchangedFrameFilter(threshold=32, heartbeat_us=1000 * MS)
    page = slide(1)
    out = [f.admit(picture(flicker(page, i)), now_us=i * 200 * MS) for i in range(11)]  # 5 fps
    # the first frame, then one a second standing for the four left out before it
    assert out == [0, None, None, None, None, 4, None, None, None, None, 4]
    assert out.count(None) == 8


def test_a_small_change_is_sent_with_the_frame_after_it() -> None:
    f = UnchangedFrameFilter(threshold=32, heartbeat_us=1000 * MS)
    page = slide(2)
    assert f.admit(picture(page), now_us=0) == 0
    assert f.admit(picture(flicker(page, 1)), now_us=200 * MS) is None
    typed = page.copy()
    typed[100:112, 50:58] = 30  # one character typed
    assert f.admit(picture(typed), now_us=400 * MS) == 1
    # the picture stopped moving: sent once so vision-svc sees it settle, then left out again
    assert f.admit(picture(flicker(typed, 2)), now_us=600 * MS) == 0
    assert f.admit(picture(flicker(typed, 3)), now_us=800 * MS) is None
    assert f.admit(picture(slide(3)), now_us=900 * MS) == 1  # a new slide


def test_a_slow_drift_is_caught_against_the_last_frame_sent() -> None:
    f = UnchangedFrameFilter(threshold=32, heartbeat_us=10_000 * MS)
    page = slide(4)
    sent = []
    for i in range(20):  # the page darkens by 3 levels a frame: never 32 between two frames
        if f.admit(picture(page - 3 * i), now_us=i * 100 * MS) is not None:
            sent.append(i)
    assert sent[0] == 0 and 1 < len(sent) < 20
    assert all(b - a <= 11 for a, b in zip(sent, sent[1:], strict=False))


def test_size_changes_unreadable_frames_and_new_streams_are_sent() -> None:
    f = UnchangedFrameFilter(threshold=32, heartbeat_us=1000 * MS)
    page = slide(5)
    assert f.admit(picture(page), now_us=0) == 0
    assert f.admit(picture(page), now_us=100 * MS) is None
    assert f.admit(i420(64, 48, 235), now_us=200 * MS) == 1  # another size
    short = rtc.VideoFrame(W, H, rtc.VideoBufferType.I420, b"\x00" * 10)
    assert f.admit(short, now_us=300 * MS) == 0  # vision-svc rejects it, with its reason
    assert f.admit(picture(page), now_us=400 * MS) == 0
    assert f.admit(picture(page), now_us=500 * MS) is None
    f.reset()
    assert f.admit(picture(page), now_us=600 * MS) == 0
    off = UnchangedFrameFilter(threshold=0, heartbeat_us=1000 * MS)
    assert [off.admit(picture(page), now_us=i) for i in range(3)] == [0, 0, 0]
    with pytest.raises(ValueError):
        UnchangedFrameFilter(threshold=128, heartbeat_us=1000 * MS)


@pytest.mark.parametrize("threshold", [1, 32, 127])
def test_the_comparison_is_exact_at_the_threshold(threshold: int) -> None:
    """A pixel that moved by exactly the threshold is still; one more level is a change, up and
    down, at both ends of the range."""
    for base in (0, 100, 255):
        for step in (threshold, threshold + 1):
            for sign in (1, -1):
                moved = base + sign * step
                if not 0 <= moved <= 255:
                    continue
                f = UnchangedFrameFilter(threshold=threshold, heartbeat_us=1000 * MS)
                page = np.full((H, W), base)
                assert f.admit(picture(page), now_us=0) == 0
                assert f.admit(picture(page), now_us=MS) is None
                page[H // 2, W // 3] = moved
                result = f.admit(picture(page), now_us=2 * MS)
                assert (result is not None) == (step > threshold), (base, step, sign)


async def test_a_still_screen_reaches_vision_svc_once_a_second(backends: FakeBackends) -> None:
    """Through gRPC to the fake vision-svc: the frames left out are accounted for on the frames
    sent, and every change arrives."""
    channel = make_channel(backends.addr("vision"), signer=signed_as("agent-worker"))
    a, b = slide(6), 255 - slide(7)  # a dark slide: the fake vision-svc keeps on mean luma
    items = [(picture(flicker(a if i < 25 else b, i)), 1_000_000 + i * 100_000)
             for i in range(40)]  # 4 s at 10 fps, a new slide at 2.5 s

    async def paced() -> AsyncIterator[rtc.VideoFrameEvent]:
        async for ev in frames(items):
            yield ev
            await asyncio.sleep(0.1)

    s = streamer(channel, paced(), KeptFrameStore(), unchanged=32, heartbeat_s=1.0)
    try:
        await asyncio.wait_for(s.run(), 20)
    finally:
        await channel.close()
    sent = backends.vision.frames
    assert 4 <= len(sent) <= 10, [f.timestamp_us for f in sent]
    assert 3_500_000 in [f.timestamp_us for f in sent]  # the new slide, on its first frame
    assert len(sent) + sum(f.unchanged_skipped for f in sent) + s._unchanged.pending == 40
    assert s.stats.unchanged_skipped == 40 - len(sent)
    assert backends.vision.kept == 2


async def test_send_rate_cap_holds_when_the_source_leaves_timestamps_at_zero(
    backends: FakeBackends,
) -> None:
    channel = make_channel(backends.addr("vision"), signer=signed_as("agent-worker"))

    async def paced() -> AsyncIterator[rtc.VideoFrameEvent]:
        for i in range(30):  # ~1 s at 30 fps, every timestamp 0
            yield rtc.VideoFrameEvent(i420(32, 32, i), 0, rtc.VideoRotation.VIDEO_ROTATION_0)
            await asyncio.sleep(1 / 30)

    s = streamer(channel, paced(), KeptFrameStore(), max_fps=5)
    try:
        await asyncio.wait_for(s.run(), 15)
    finally:
        await channel.close()
    # the local clock paces them (a frame every 200 ms or more), not one frame for the stream
    assert 3 <= len(backends.vision.frames) <= 10


class _FakeVideoStream:
    """Stands in for rtc.VideoStream: frames pushed by the test, ended by aclose()."""

    opened: list[_FakeVideoStream] = []

    def __init__(self, track: Any, **_: Any) -> None:
        self.queue: asyncio.Queue[rtc.VideoFrameEvent | None] = asyncio.Queue()
        _FakeVideoStream.opened.append(self)

    def __aiter__(self) -> _FakeVideoStream:
        return self

    async def __anext__(self) -> rtc.VideoFrameEvent:
        item = await self.queue.get()
        if item is None:
            raise StopAsyncIteration
        return item

    async def aclose(self) -> None:
        self.queue.put_nowait(None)


class _Room:
    remote_participants: dict[str, Any] = {}

    def on(self, *_: Any) -> None: ...

    def off(self, *_: Any) -> None: ...


async def test_a_track_subscribed_again_streams_again(
    backends: FakeBackends, monkeypatch: pytest.MonkeyPatch
) -> None:
    from types import SimpleNamespace

    from parley_agent import vision as vision_mod

    monkeypatch.setattr(vision_mod.rtc, "VideoStream", _FakeVideoStream)
    _FakeVideoStream.opened.clear()
    channel = make_channel(backends.addr("vision"), signer=signed_as("agent-worker"))
    capture = vision_mod.VisionCapture(
        room=_Room(), channel=channel, tenant_id="acme", session_id="s",  # type: ignore[arg-type]
        store=KeptFrameStore(), speaking=lambda: False, overrides=VisionOverrides(),
        max_send_fps=0, backoff_max_s=0.2,
    )
    track = SimpleNamespace(sid="TR_cam", kind=rtc.TrackKind.KIND_VIDEO)
    pub = SimpleNamespace(source=rtc.TrackSource.SOURCE_CAMERA)
    alice = SimpleNamespace(kind=rtc.ParticipantKind.PARTICIPANT_KIND_STANDARD, identity="alice")
    try:
        for round_ in range(2):
            capture._on_track_subscribed(track, pub, alice)  # type: ignore[arg-type]
            assert len(_FakeVideoStream.opened) == round_ + 1, "a new stream for the track"
            _FakeVideoStream.opened[-1].queue.put_nowait(
                rtc.VideoFrameEvent(i420(32, 32, 50 + round_), 1_000 + round_,
                                    rtc.VideoRotation.VIDEO_ROTATION_0))
            for _ in range(100):
                if len(backends.vision.frames) == round_ + 1:
                    break
                await asyncio.sleep(0.02)
            assert len(backends.vision.frames) == round_ + 1
            capture._on_track_unsubscribed(track, pub, alice)  # type: ignore[arg-type]
            await asyncio.sleep(0.05)
    finally:
        await capture.aclose()
        await channel.close()
    assert [f.timestamp_us for f in backends.vision.frames] == [1_000, 1_001]
