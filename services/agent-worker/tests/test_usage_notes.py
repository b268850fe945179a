"""Usage events to billing-svc and the note-taker's summaries."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from livekit.agents.metrics.usage import (
    AgentSessionUsage,
    LLMModelUsage,
    STTModelUsage,
    TTSModelUsage,
)
from parley.router.v1 import router_pb2
from parley_agent.config import NoteTakerOptions
from parley_agent.coordination import MAX_EVENT_BYTES, decode_event, encode_event
from parley_agent.notetaker import NoteTaker
from parley_agent.router_llm import RouterLLM, RouterLLMOptions
from parley_agent.testing import FakeBackends, text_events
from parley_agent.usage import MeteredModels, SessionUsageMeter
from parley_runtime.usage import NullUsageRecorder

pytestmark = pytest.mark.unit


def usage(stt_s: float, chars: int) -> AgentSessionUsage:
    return AgentSessionUsage(model_usage=[
        STTModelUsage(provider="local", model="local-stt", audio_duration=stt_s),
        TTSModelUsage(provider="local", model="espeak-ng", characters_count=chars),
        LLMModelUsage(provider="fake", model="fake", input_tokens=100, output_tokens=10),
    ])


async def test_meter_emits_deltas_with_idempotency_keys() -> None:
    recorder = NullUsageRecorder()
    meter = SessionUsageMeter(
        recorder=recorder, tenant_id="acme", session_id="sess-1", job_id="AJ_1",
        models=MeteredModels("local-stt", "local", "espeak-ng", "local"),
    )
    meter.observe(usage(3.5, 120))
    first = meter.emit()
    meter.observe(usage(5.0, 120))
    meter.observe(usage(4.0, 100))  # an out-of-order (smaller) snapshot never goes backwards
    second = meter.emit()
    await meter.aclose()

    run = meter._run
    by_kind = {(e.WhichOneof("usage"), e.idempotency_key) for e in first + second}
    assert ("stt", f"sess-1:AJ_1:{run}:stt:1") in by_kind
    assert ("stt", f"sess-1:AJ_1:{run}:stt:2") in by_kind
    assert ("tts", f"sess-1:AJ_1:{run}:tts:1") in by_kind
    stt = [e.stt for e in recorder_events(recorder) if e.HasField("stt")]
    assert [round(s.audio_seconds, 2) for s in stt] == [3.5, 1.5]
    assert stt[0].model_id == "local-stt"
    tts = [e.tts for e in recorder_events(recorder) if e.HasField("tts")]
    assert [t.characters for t in tts] == [120]
    assert not any(e.HasField("llm") for e in recorder_events(recorder)), "router reports LLM"
    minutes = sum(e.session.minutes for e in recorder_events(recorder) if e.HasField("session"))
    assert minutes > 0
    keys = [e.idempotency_key for e in recorder_events(recorder)]
    assert len(keys) == len(set(keys))
    assert all(t == "acme" for t, _ in recorder.events)
    assert all(e.session_id == "sess-1" and e.service == "agent-worker"
               for e in recorder_events(recorder))


async def test_a_resumed_job_does_not_reuse_its_first_runs_keys() -> None:
    """LiveKit re-dispatches a failed worker's job with the same job id to a new process."""
    keys: list[str] = []
    for _ in range(2):
        recorder = NullUsageRecorder()
        meter = SessionUsageMeter(
            recorder=recorder, tenant_id="acme", session_id="sess-1", job_id="AJ_1",
            models=MeteredModels("local-stt", "local", "espeak-ng", "local"),
        )
        meter.observe(usage(2.0, 50))
        meter.emit()
        await meter.aclose()
        keys += [e.idempotency_key for e in recorder_events(recorder)]
    assert len(keys) == len(set(keys)) >= 4


async def test_keys_stay_within_billings_limit_for_the_longest_session_id() -> None:
    recorder = NullUsageRecorder()
    meter = SessionUsageMeter(
        recorder=recorder, tenant_id="acme", session_id="s" * 128, job_id="AJ_" + "x" * 40,
        models=MeteredModels("local-stt", "local", "espeak-ng", "local"), kind_prefix="notes-",
    )
    meter.observe(usage(2.0, 50))
    meter.emit()
    await meter.aclose()
    keys = [e.idempotency_key for e in recorder_events(recorder)]
    assert keys and all(len(k) <= 200 for k in keys) and len(keys) == len(set(keys))


def recorder_events(recorder: NullUsageRecorder) -> list[Any]:
    return [e for _, e in recorder.events]


def test_event_encoding_stays_under_data_packet_limit() -> None:
    big = encode_event({"type": "turn", "text": "x" * 50_000})
    assert len(big) <= MAX_EVENT_BYTES
    decoded = decode_event(big)
    assert decoded is not None and decoded["truncated"] is True
    assert decode_event(b"not json") is None and decode_event(b"[1]") is None


def note_taker(
    router_channel: grpc.aio.Channel, options: NoteTakerOptions
) -> tuple[NoteTaker, list[dict[str, Any]]]:
    """A note-taker summarising through the fake router; the events it publishes collect in the
    returned list."""
    router = RouterLLM(channel=router_channel, options=RouterLLMOptions(
        session_id="sess-1", tenant_id="acme",
        hints=router_pb2.RoutingHints(max_tier=router_pb2.TIER_SIMPLE)))
    published: list[dict[str, Any]] = []

    async def publish(event_type: str, **fields: Any) -> None:
        published.append({"type": event_type, **fields})

    return NoteTaker(router=router, options=options, publish=publish), published


async def test_notetaker_summarises_every_n_turns_and_at_the_end(
    backends: FakeBackends, router_channel: grpc.aio.Channel
) -> None:
    backends.router.responder = lambda req: text_events(
        f"- summary of {sum(1 for m in req.messages)} messages"
    )
    notes, published = note_taker(router_channel, NoteTakerOptions(summary_every_turns=2))
    turns = [("user", "What is the laptop policy?"), ("assistant", "14-inch within 3 days."),
             ("user", "And phones?"), ("assistant", "Phones on request."),
             ("user", "Thanks")]
    for seq, (role, text) in enumerate(turns, 1):
        notes.on_turn_event({"type": "turn", "session_id": "sess-1", "seq": seq, "role": role,
                             "text": text})
        if seq == 4:  # two user turns: a summary is under way
            for _ in range(200):
                if published:
                    break
                await asyncio.sleep(0.01)
    notes.on_turn_event({"type": "turn", "session_id": "sess-1", "seq": 1, "role": "user",
                         "text": "duplicate"})  # redelivered: ignored
    await notes.aclose()

    assert [p["final"] for p in published] == [False, True]
    assert published[0]["turns_covered"] == 2 and published[1]["turns_covered"] == 3
    assert "duplicate" not in "\n".join(notes.transcript)
    # summaries are capped at the simple tier and carry the transcript
    req = backends.router.requests[-1]
    assert req.hints.max_tier == router_pb2.TIER_SIMPLE
    assert "laptop policy" in req.messages[-1].parts[0].text


async def test_the_worker_ships_spools_its_ended_job_processes_left(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    from parley_agent.config import WorkerSettings
    from parley_agent.testing import FakeBackends
    from parley_agent.worker import ship_orphans_forever
    from parley_runtime.testing import TEST_KEYS, free_port, signed_as
    from parley_runtime.usage import DurableUsageRecorder, UsageClientSettings

    monkeypatch.setenv("PARLEY_USAGE_SPOOL_DIR", str(tmp_path / "spool"))
    # two job processes whose sessions ended while billing was down
    dead = UsageClientSettings(billing_addr=f"127.0.0.1:{free_port()}", close_timeout_s=0.1)
    for job in range(2):
        rec = DurableUsageRecorder(service="agent-worker", signer=signed_as("agent-worker"),
                                   settings=dead)
        meter = SessionUsageMeter(
            recorder=rec, tenant_id="acme", session_id="sess-1", job_id=f"AJ_{job}",
            models=MeteredModels("local-stt", "local", "espeak-ng", "local"),
        )
        meter.observe(usage(2.0, 50))
        meter.emit()
        await rec.close()
    fakes = await FakeBackends(services=("billing",)).start()
    settings = WorkerSettings(billing_addr=fakes.addr("billing"), auth_keys=dict(TEST_KEYS),
                              auth_kid="agent-worker", agent_orphan_spool_interval_s=0.05)
    shipper = asyncio.create_task(ship_orphans_forever(settings))
    try:
        for _ in range(200):
            if len(fakes.billing.events) >= 6:
                break
            await asyncio.sleep(0.05)
        keys = list(fakes.billing.events)
        assert len(keys) == 6, keys  # session, stt and tts of each job
        assert {k.split(":")[1] for k in keys} == {"AJ_0", "AJ_1"}
    finally:
        shipper.cancel()
        await asyncio.gather(shipper, return_exceptions=True)
        await fakes.stop()


class _Room:
    """Records what the note-taker publishes; publishing after `disconnect()` goes nowhere, as
    in livekit (it leaves the room before running the job's shutdown callbacks)."""

    def __init__(self) -> None:
        self.connected = True
        self.delivered: list[dict[str, Any]] = []
        self.local_participant = self

    async def publish_data(self, data: bytes, **_: Any) -> None:
        if not self.connected:
            raise RuntimeError("not connected")
        event = decode_event(data)
        assert event is not None
        self.delivered.append(event)

    def on(self, *_: Any) -> None: ...

    def off(self, *_: Any) -> None: ...


async def test_the_final_summary_is_published_before_the_job_leaves_the_room(
    backends: FakeBackends,
) -> None:
    from types import SimpleNamespace

    from parley_agent.config import WorkerSettings
    from parley_agent.metadata import JobIdentity
    from parley_agent.session import Backends, NoteTakerRuntime
    from parley_agent.tenancy import TenantDirectory
    from parley_agent.worker import _RUNTIME_KEY, session_end
    from parley_runtime.testing import signed_as

    backends.router.responder = lambda req: text_events("- the user asked about laptops")
    settings = WorkerSettings(router_addr=backends.addr("router"),
                              vision_addr=backends.addr("vision"), kb_addr=backends.addr("kb"))
    import pathlib
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / "tenants.yaml"
        path.write_text("tenants:\n  acme:\n    agent: {notetaker: {summary_every_turns: 10}}\n")
        profile = TenantDirectory(path).profile("acme")
    identity = JobIdentity(tenant_id="acme", user_id="u", session_id="sess-9", role="notetaker",
                           extra={})
    channels = Backends.connect(settings, signed_as("agent-worker"))
    runtime = NoteTakerRuntime(
        identity=identity, profile=profile, settings=settings, backends=channels,
        recorder=NullUsageRecorder(), session_id="sess-9", job_id="AJ_9",
    )
    room = _Room()
    notes = runtime.start(room)  # type: ignore[arg-type]
    notes.on_turn_event({"type": "turn", "session_id": "sess-9", "seq": 1, "role": "user",
                         "text": "What laptop do new hires get?"})
    ctx = SimpleNamespace(proc=SimpleNamespace(userdata={_RUNTIME_KEY: runtime}))
    # livekit's order: the session-end hook, then leave the room, then the shutdown callbacks
    await session_end(ctx)  # type: ignore[arg-type]
    room.connected = False
    await runtime.aclose()
    await channels.aclose()

    summaries = [e for e in room.delivered if e["type"] == "summary"]
    assert len(summaries) == 1 and summaries[0]["final"] is True
    assert summaries[0]["summary"].startswith("- the user asked")
    assert len(backends.router.requests) == 1, "one summary call, not a second after leaving"


async def test_summaries_wait_for_their_minimum_interval_and_take_every_turn_since(
    backends: FakeBackends, router_channel: grpc.aio.Channel
) -> None:
    backends.router.responder = lambda req: text_events("- summary")
    notes, published = note_taker(router_channel, NoteTakerOptions(
        summary_every_turns=1, min_summary_interval_s=0.5))
    for seq in range(1, 41):  # 40 user turns in a burst
        notes.on_turn_event({"type": "turn", "session_id": "s", "seq": seq, "role": "user",
                             "text": f"turn {seq}"})
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.8)
    await notes.aclose()
    # one at once, one after the interval covering the rest; not one per turn
    assert 2 <= len(backends.router.requests) <= 3
    assert published[-1]["turns_covered"] == 40
