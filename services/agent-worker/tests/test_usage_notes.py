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

    by_kind = {(e.WhichOneof("usage"), e.idempotency_key) for e in first + second}
    assert ("stt", "sess-1:AJ_1:stt:1") in by_kind and ("stt", "sess-1:AJ_1:stt:2") in by_kind
    assert ("tts", "sess-1:AJ_1:tts:1") in by_kind
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


def recorder_events(recorder: NullUsageRecorder) -> list[Any]:
    return [e for _, e in recorder.events]


def test_event_encoding_stays_under_data_packet_limit() -> None:
    big = encode_event({"type": "turn", "text": "x" * 50_000})
    assert len(big) <= MAX_EVENT_BYTES
    decoded = decode_event(big)
    assert decoded is not None and decoded["truncated"] is True
    assert decode_event(b"not json") is None and decode_event(b"[1]") is None


async def test_notetaker_summarises_every_n_turns_and_at_the_end(
    backends: FakeBackends, router_channel: grpc.aio.Channel
) -> None:
    backends.router.responder = lambda req: text_events(
        f"- summary of {sum(1 for m in req.messages)} messages"
    )
    router = RouterLLM(channel=router_channel, options=RouterLLMOptions(
        session_id="sess-1", tenant_id="acme",
        hints=router_pb2.RoutingHints(max_tier=router_pb2.TIER_SIMPLE)))
    published: list[dict[str, Any]] = []

    async def publish(event_type: str, **fields: Any) -> None:
        published.append({"type": event_type, **fields})

    notes = NoteTaker(router=router, options=NoteTakerOptions(summary_every_turns=2),
                      publish=publish)
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
