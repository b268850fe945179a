"""VisionService through a real grpc.aio server, signed channel and all."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Iterable
from typing import Any

import grpc
import numpy as np
import pytest
from parley.common.v1 import common_pb2
from parley.vision.v1 import vision_pb2, vision_pb2_grpc
from parley_runtime import context
from parley_runtime.ids import MAX_ID_LEN, MAX_IDEMPOTENCY_KEY_LEN, is_valid_id
from parley_runtime.server import GrpcServiceHost
from parley_runtime.tenants import TenantRegistry
from parley_runtime.testing import signed_channel, start_test_host
from parley_runtime.usage import NullUsageRecorder
from parley_vision.config import Settings
from parley_vision.metrics import FRAMES
from parley_vision.server import VisionServicer
from parley_vision.tenant_config import load_vision_configs
from PIL import Image
from vision_corpus import _document, _slide, rgb_to_i420

pytestmark = pytest.mark.unit

W, H = 1280, 720
TENANTS = {
    "tenants": {
        "acme": {},
        "globex": {"vision": {"jpeg_quality": 50, "max_image_side": 384}},
        "offline": {"vision": {"enabled": False}},
    }
}


class Harness:
    def __init__(self, host: GrpcServiceHost, servicer: VisionServicer,
                 usage: NullUsageRecorder) -> None:
        self.host, self.servicer, self.usage = host, servicer, usage

    async def run(self, messages: Iterable[vision_pb2.ProcessFramesRequest], tenant: str = "acme"
                  ) -> list[vision_pb2.ProcessFramesResponse]:
        async def requests() -> AsyncIterator[vision_pb2.ProcessFramesRequest]:
            for m in messages:
                yield m

        token = context.tenant_id_var.set(tenant)
        try:
            async with signed_channel(self.host.port, service="agent-worker") as ch:
                stub = vision_pb2_grpc.VisionServiceStub(ch)
                return [r async for r in stub.ProcessFrames(requests(), timeout=60)]
        finally:
            context.tenant_id_var.reset(token)


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    usage = NullUsageRecorder()
    settings = Settings(usage_period_s=1.0, max_active_streams=4)
    registry = TenantRegistry.from_dict(TENANTS)
    servicer = VisionServicer(settings=settings, tenants=registry,
                              vision_configs=load_vision_configs(registry), usage=usage)

    def register(host: GrpcServiceHost) -> None:
        vision_pb2_grpc.add_VisionServiceServicer_to_server(servicer, host.server)
        host.add_service_name("parley.vision.v1.VisionService")

    host = await start_test_host(settings, register)
    yield Harness(host, servicer, usage)
    await host.stop(0)


def config(**settings: Any) -> vision_pb2.ProcessFramesRequest:
    return vision_pb2.ProcessFramesRequest(config=vision_pb2.StreamConfig(
        session_id="sess-1", participant_id="alice", track_id="TR_screen",
        source=common_pb2.TRACK_SOURCE_SCREEN_SHARE, source_fps=30,
        settings=vision_pb2.VisionSettings(**settings)))


def frame(seq: int, t_ms: float, data: bytes, fmt: int = vision_pb2.FRAME_FORMAT_I420,
          w: int = W, h: int = H, strides: tuple[int, ...] = (), speaking: bool = False
          ) -> vision_pb2.ProcessFramesRequest:
    return vision_pb2.ProcessFramesRequest(frame=vision_pb2.Frame(
        sequence=seq, timestamp_us=int(t_ms * 1000), format=fmt, width=w, height=h,
        strides=list(strides), data=data, speaking=speaking))


def slide(k: int) -> bytes:
    return rgb_to_i420(np.asarray(_slide(k, f"{k + 1} / 9", 30 + k)))[0]


async def test_a_screen_share_stream_end_to_end(harness: Harness) -> None:
    a, b = slide(0), slide(1)
    typed = _slide(1, "2 / 9", 31).copy()
    from PIL import ImageDraw
    ImageDraw.Draw(typed).text((700, 650), "x", fill=(0, 0, 0))
    c = rgb_to_i420(np.asarray(typed))[0]
    msgs = [config()]
    pictures = [a] * 30 + [b] * 30 + [c] * 30
    msgs += [frame(i, i * 1000 / 30, p) for i, p in enumerate(pictures)]
    kept_before = FRAMES.labels("keep")._value.get()
    out = await harness.run(msgs)

    decisions = [r.decision for r in out[:-1]]
    assert [d.sequence for d in decisions] == list(range(90))
    kept = [d for d in decisions if d.decision == vision_pb2.DECISION_KEEP]
    assert [d.sequence for d in kept] == [0, 30, 60]
    assert "cell" in kept[2].reason  # the typed "x": found by cells, not by the hash
    img = kept[0].kept.image
    assert img.mime_type == "image/jpeg" and (img.width, img.height) == (768, 432)
    assert img.source_ref == "vision:sess-1/TR_screen/0"
    assert Image.open(io.BytesIO(img.data)).size == (768, 432)
    assert kept[0].kept.byte_size == len(img.data)
    assert kept[0].kept.estimated_image_tokens == 258
    assert 0 < kept[0].kept.interestingness < 1
    drops = {d.decision for d in decisions} - {vision_pb2.DECISION_KEEP}
    assert drops == {vision_pb2.DECISION_DROP_RATE, vision_pb2.DECISION_DROP_DUPLICATE}

    final = out[-1]
    assert final.WhichOneof("payload") == "stats"
    s = final.stats.stats
    assert (final.stats.session_id, final.stats.track_id) == ("sess-1", "TR_screen")
    assert s.frames_seen == 90 and s.kept == 3 and s.rejected == 0
    assert s.image_tokens_sent == 3 * 258 and s.naive_image_tokens == 90 * 258
    assert FRAMES.labels("keep")._value.get() == kept_before + 3

    # Usage: one event per second of stream time and the remainder at the end, all for acme,
    # with distinct keys that add up to the stream's totals.
    events = [e for t, e in harness.usage.events if t == "acme"]
    assert len(events) == 3
    keys = [e.idempotency_key for e in events]
    assert len(set(keys)) == 3
    stream_id = keys[0].split("/")[3]
    assert len(stream_id) == 32
    assert keys == [f"vision-svc/sess-1/TR_screen/{stream_id}/{p}" for p in range(3)]
    assert sum(e.vision.frames_seen for e in events) == 90
    assert sum(e.vision.frames_kept for e in events) == 3
    assert sum(e.vision.naive_image_tokens for e in events) == 90 * 258
    assert all(e.service == "vision-svc" and e.session_id == "sess-1" for e in events)
    assert events[0].vision.model_id == "gemini-2.5-flash"


async def test_frames_a_sender_left_out_as_unchanged_count_as_seen(harness: Harness) -> None:
    """The agent sends a still screen once a second, the frame after each change and every
    change; with the counts it left out, the stream's stats and usage are those of every frame."""
    a, b = slide(0), slide(1)
    pictures = [a] * 45 + [b] * 45  # 3 s at 30 fps
    sent = [0, 1, 30, 45, 46, 76, 89]
    msgs = [config()]
    prev = None
    for i in sent:
        req = frame(i, i * 1000 / 30, pictures[i])
        req.frame.unchanged_skipped = 0 if prev is None else i - prev - 1
        msgs.append(req)
        prev = i
    out = await harness.run(msgs)
    keep = vision_pb2.DECISION_KEEP
    kept = [r.decision.sequence for r in out[:-1] if r.decision.decision == keep]
    assert kept == [0, 45]
    s = out[-1].stats.stats
    assert s.frames_seen == 90 and s.kept == 2
    assert s.dropped_duplicate + s.dropped_rate == 88
    assert s.naive_image_tokens == 90 * 258
    events = [e for t, e in harness.usage.events if t == "acme"]
    assert sum(e.vision.frames_seen for e in events) == 90
    assert sum(e.vision.naive_image_tokens for e in events) == 90 * 258


async def test_bad_frames_are_rejected_and_the_stream_goes_on(harness: Harness) -> None:
    a = slide(2)
    jpeg = io.BytesIO()
    Image.fromarray(np.asarray(_document(2).crop((0, 0, 640, 360)))).save(jpeg, "JPEG")
    msgs = [
        config(),
        frame(0, 0, a),
        frame(1, 33, a[:1000]),  # truncated
        frame(2, 66, a, w=1920, h=1080),  # wrong size
        frame(3, 99, a, strides=(100, 640, 640)),  # stride shorter than a row
        frame(4, 132, a, fmt=vision_pb2.FRAME_FORMAT_UNSPECIFIED),
        frame(5, 165, a, w=100_000, h=100_000),  # giant
        frame(6, 198, b"\xff\xd8garbage", fmt=vision_pb2.FRAME_FORMAT_JPEG, w=0, h=0),
        vision_pb2.ProcessFramesRequest(),  # empty
        frame(7, 400, a),
        frame(8, 500, jpeg.getvalue(), fmt=vision_pb2.FRAME_FORMAT_JPEG, w=0, h=0),
    ]
    out = await harness.run(msgs)
    d = [r.decision for r in out[:-1]]
    assert d[0].decision == vision_pb2.DECISION_KEEP
    for r in d[1:8]:
        assert r.decision == vision_pb2.DECISION_REJECTED, r
        assert r.error_code == "INVALID_ARGUMENT" and r.error_message
    assert "truncated" in d[1].error_message
    assert "unknown or unspecified" in d[4].error_message
    assert "above the limit" in d[5].error_message
    assert "empty ProcessFramesRequest" in d[7].error_message
    # A JPEG Pillow cannot open: the reason, not Pillow's repr of its BytesIO.
    assert d[6].error_message.startswith("frame data is not a decodable JPEG: no JPEG image")
    assert " at 0x" not in d[6].error_message
    assert d[8].decision == vision_pb2.DECISION_DROP_DUPLICATE
    assert d[9].decision == vision_pb2.DECISION_KEEP  # a JPEG frame of another size
    assert "resolution changed" in d[9].reason
    assert out[-1].stats.stats.rejected == 6  # the empty message is not a frame


@pytest.mark.parametrize(
    "messages, code, fragment",
    [
        ([frame(0, 0, b"x")], grpc.StatusCode.INVALID_ARGUMENT, "first ProcessFramesRequest"),
        ([], grpc.StatusCode.INVALID_ARGUMENT, "first ProcessFramesRequest"),
        ([config(speaking_fps=500)], grpc.StatusCode.INVALID_ARGUMENT, "speaking_fps"),
        ([config(), config()], grpc.StatusCode.INVALID_ARGUMENT, "only be sent once"),
        ([vision_pb2.ProcessFramesRequest(config=vision_pb2.StreamConfig(track_id="t"))],
         grpc.StatusCode.INVALID_ARGUMENT, "session_id is required"),
    ],
)
async def test_protocol_errors(harness: Harness, messages: list[Any], code: grpc.StatusCode,
                               fragment: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await harness.run(messages)
    assert err.value.code() == code
    assert fragment in (err.value.details() or "")


def billed_frames(events: list[Any]) -> int:
    """Frames billing would count: it stores each idempotency key once."""
    by_key = {e.idempotency_key: e.vision.frames_seen for e in events}
    return sum(by_key.values())


async def test_a_reconnected_stream_is_billed_as_a_new_stream(harness: Harness) -> None:
    """A client that reconnects with the same session, track and timestamps from 0 (relative
    capture times) sends a new stream: billing must count both."""
    a = slide(5)
    await harness.run([config()] + [frame(i, i * 33, a) for i in range(2)])
    await harness.run([config()] + [frame(i, i * 33, a) for i in range(5)])
    events = [e for t, e in harness.usage.events if t == "acme"]
    assert [e.vision.frames_seen for e in events] == [2, 5]
    assert billed_frames(events) == 7
    assert all(is_valid_id(e.idempotency_key, MAX_IDEMPOTENCY_KEY_LEN) for e in events)


async def test_longest_ids_give_keys_billing_accepts(harness: Harness) -> None:
    session, track = "s" * MAX_ID_LEN, "t" * MAX_ID_LEN
    cfg = config()
    cfg.config.session_id, cfg.config.track_id = session, track
    a = slide(6)
    # Three periods of a second: each report's key differs, all within billing's limit.
    await harness.run([cfg] + [frame(i, i * 500, a) for i in range(8)])
    await harness.run([cfg] + [frame(0, 0, a)])
    events = [e for t, e in harness.usage.events if t == "acme"]
    keys = [e.idempotency_key for e in events]
    assert len(events) >= 3 and len(set(keys)) == len(keys)
    assert all(is_valid_id(k, MAX_IDEMPOTENCY_KEY_LEN) for k in keys), keys
    assert all(e.session_id == session and e.vision.track_id == track for e in events)
    assert billed_frames(events) == 9


@pytest.mark.parametrize(
    "field, value",
    [
        ("session_id", "vision session x"),
        ("session_id", "v\u00e9-x"),
        ("session_id", "s" * (MAX_ID_LEN + 1)),
        ("session_id", "tab\there"),
        ("track_id", "cam 1"),
        ("track_id", "x" * 256),
    ],
)
async def test_ids_billing_would_refuse_are_invalid_argument(
    harness: Harness, field: str, value: str
) -> None:
    """Session and track ids go into every usage event and its key: one billing refuses would
    be answered here and its usage dead-lettered there."""
    cfg = config()
    setattr(cfg.config, field, value)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await harness.run([cfg, frame(0, 0, slide(7))])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = err.value.details() or ""
    assert f"StreamConfig.{field} must be 1-{MAX_ID_LEN} printable ASCII" in details
    assert value not in details  # a long value is not echoed back
    assert harness.usage.events == []


async def test_tenants(harness: Harness) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await harness.run([config()], tenant="nobody")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await harness.run([config()], tenant="offline")
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    # globex's own settings apply to its streams (quality 50, 384 px).
    out = await harness.run([config(), frame(0, 0, slide(3))], tenant="globex")
    img = out[0].decision.kept.image
    assert (img.width, img.height) == (384, 216)
    # Each tenant sees only its own stats.
    await harness.run([config(), frame(0, 0, slide(3)), frame(1, 50, slide(3))], tenant="acme")
    for tenant, seen in (("globex", 1), ("acme", 2)):
        token = context.tenant_id_var.set(tenant)
        try:
            async with signed_channel(harness.host.port) as ch:
                resp = await vision_pb2_grpc.VisionServiceStub(ch).GetTenantStats(
                    vision_pb2.GetTenantStatsRequest(), timeout=5)
        finally:
            context.tenant_id_var.reset(token)
        assert resp.stats.frames_seen == seen and resp.active_streams == 0


async def test_1080p_rgba_fits_in_one_message_and_overrides_apply(harness: Harness) -> None:
    rgb = np.asarray(_document(4).crop((0, 0, 1920, 1080)).convert("RGB"))
    rgba = np.concatenate([rgb, np.full((1080, 1920, 1), 255, np.uint8)], axis=2).tobytes()
    assert len(rgba) > 8_000_000
    out = await harness.run([
        config(max_image_side=1024, jpeg_quality=60),
        frame(0, 0, rgba, fmt=vision_pb2.FRAME_FORMAT_RGBA, w=1920, h=1080),
    ])
    kept = out[0].decision.kept
    assert (kept.image.width, kept.image.height) == (1024, 576)
    assert kept.estimated_image_tokens == 2 * 258


async def test_stream_limit_is_resource_exhausted(harness: Harness) -> None:
    harness.servicer.stats._active["acme"] = 4  # as if four streams were running
    try:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await harness.run([config()])
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        harness.servicer.stats._active["acme"] = 0


async def test_a_cancelled_stream_still_reports_its_usage(harness: Harness) -> None:
    import asyncio

    a = slide(4)
    token = context.tenant_id_var.set("acme")
    try:
        async with signed_channel(harness.host.port) as ch:
            call = vision_pb2_grpc.VisionServiceStub(ch).ProcessFrames()
            await call.write(config())
            for i in range(5):
                await call.write(frame(i, i * 33, a))
            for _ in range(5):
                assert (await call.read()).WhichOneof("payload") == "decision"
            assert harness.servicer.stats.active_streams("acme") == 1
            call.cancel()
    finally:
        context.tenant_id_var.reset(token)
    for _ in range(100):
        if harness.usage.events:
            break
        await asyncio.sleep(0.02)
    (tenant, event), = harness.usage.events
    assert tenant == "acme" and event.vision.frames_seen == 5 and event.vision.frames_kept == 1
    assert harness.servicer.stats.active_streams("acme") == 0
