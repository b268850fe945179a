"""One VAD per voice session: the session's stream also cuts the batch STT's utterances."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from livekit import rtc
from livekit.agents import stt, utils, vad
from livekit.agents.types import DEFAULT_API_CONNECT_OPTIONS, NOT_GIVEN, APIConnectOptions
from parley_agent.config import TenantAgentConfig, WorkerSettings
from parley_agent.local_stt import LocalWhisperSTT
from parley_agent.speech import build_speech
from parley_agent.utterances import SessionVAD, UtteranceSTT
from parley_agent.vad import InlineSileroVAD

pytestmark = pytest.mark.unit


class CountingVAD(InlineSileroVAD):
    """The worker's VAD, counting the streams (each one an inference per window) it opens."""

    opened = 0

    def stream(self) -> Any:
        type(self).opened += 1
        return super().stream()


class RecordingSTT(stt.STT[Any]):
    """A batch STT that 'recognises' an utterance as its length in samples."""

    def __init__(self) -> None:
        super().__init__(capabilities=stt.STTCapabilities(streaming=False, interim_results=False))
        self.utterances: list[int] = []

    async def _recognize_impl(
        self, buffer: utils.AudioBuffer, *, language: Any = NOT_GIVEN,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
    ) -> stt.SpeechEvent:
        frame = rtc.combine_audio_frames(buffer) if isinstance(buffer, list) else buffer
        self.utterances.append(frame.samples_per_channel)
        return stt.SpeechEvent(
            type=stt.SpeechEventType.FINAL_TRANSCRIPT,
            alternatives=[stt.SpeechData(language="en", text=f"{frame.samples_per_channel}")],
        )


async def run_session(model: vad.VAD, speech_to_text: stt.STT[Any],
                      frames: list[rtc.AudioFrame]) -> tuple[list[vad.VADEventType], list[Any]]:
    """What a voice session does: the same audio into its VAD stream and its STT stream."""
    vad_stream = model.stream()
    stt_stream = speech_to_text.stream()
    vad_events: list[vad.VADEventType] = []
    stt_events: list[Any] = []

    async def read_vad() -> None:
        async for ev in vad_stream:
            if ev.type != vad.VADEventType.INFERENCE_DONE:
                vad_events.append(ev.type)

    async def read_stt() -> None:
        async for ev in stt_stream:
            stt_events.append((ev.type, ev.alternatives[0].text if ev.alternatives else None))

    readers = [asyncio.create_task(read_vad()), asyncio.create_task(read_stt())]
    for f in frames:
        vad_stream.push_frame(f)
        stt_stream.push_frame(f)
        await asyncio.sleep(0)
    vad_stream.end_input()
    await readers[0]
    await asyncio.sleep(0.05)  # the last recognition
    stt_stream.end_input()
    await asyncio.wait_for(readers[1], 10)
    await vad_stream.aclose()
    await stt_stream.aclose()
    return vad_events, stt_events


async def test_one_vad_stream_gives_the_adapters_utterances(
    conversation: list[rtc.AudioFrame],
) -> None:
    frames = conversation
    CountingVAD.opened = 0
    adapter_stt = RecordingSTT()
    adapter_vad, adapter_events = await run_session(
        CountingVAD.load(), stt.StreamAdapter(stt=adapter_stt, vad=CountingVAD.load()), frames)
    assert CountingVAD.opened == 2  # livekit's adapter: the session's stream and its own

    CountingVAD.opened = 0
    shared_stt = RecordingSTT()
    session_vad = SessionVAD(CountingVAD.load())
    shared_vad, shared_events = await run_session(
        session_vad, UtteranceSTT(stt=shared_stt, vad=session_vad), frames)
    assert CountingVAD.opened == 1

    assert shared_vad == adapter_vad  # the session sees the same VAD events
    kinds = [k for k, _ in shared_events]
    assert kinds == [k for k, _ in adapter_events]
    assert kinds.count(stt.SpeechEventType.FINAL_TRANSCRIPT) == 2  # the two questions
    # Same utterances: the adapter's stream starts a few frames later than the session's, so
    # its segments can differ by a window; each one is a whole question (> 1.5 s of audio).
    assert len(shared_stt.utterances) == len(adapter_stt.utterances) == 2
    for a, b in zip(shared_stt.utterances, adapter_stt.utterances, strict=True):
        assert a > 1.5 * 16000
        assert abs(a - b) <= 2 * 512


async def test_offline_whisper_hears_both_questions_through_the_session_vad(
    conversation: list[rtc.AudioFrame],
) -> None:
    session_vad = SessionVAD(InlineSileroVAD.load())
    _, events = await run_session(
        session_vad, UtteranceSTT(stt=LocalWhisperSTT(), vad=session_vad), conversation)
    texts = [t.lower() for k, t in events if k == stt.SpeechEventType.FINAL_TRANSCRIPT]
    assert len(texts) == 2
    assert "laptop" in texts[0] and "travel" in texts[1]


async def test_only_the_newest_stream_feeds_the_stt(conversation: list[rtc.AudioFrame]) -> None:
    """A handoff opens the next agent's VAD stream before the last one has closed: one
    utterance must not be transcribed twice."""
    session_vad = SessionVAD(InlineSileroVAD.load())
    segments = session_vad.subscribe()
    old, new = session_vad.stream(), session_vad.stream()
    frames = conversation

    async def drain(stream: vad.VADStream) -> None:
        async for _ in stream:
            pass

    for s in (old, new):
        for f in frames:
            s.push_frame(f)
        s.end_input()
    await asyncio.gather(drain(old), drain(new))
    await old.aclose()
    await new.aclose()
    session_vad.unsubscribe(segments)
    got = [ev.type async for ev in segments]
    assert got == [vad.VADEventType.START_OF_SPEECH, vad.VADEventType.END_OF_SPEECH] * 2


async def test_closed_streams_and_sessions_release_everything(
    conversation: list[rtc.AudioFrame],
) -> None:
    base = InlineSileroVAD.load()
    session_vad = SessionVAD(base)
    seen: list[Any] = []
    session_vad.on("metrics_collected", seen.append)
    speech_to_text = UtteranceSTT(stt=RecordingSTT(), vad=session_vad)
    stream = speech_to_text.stream()
    vad_stream = session_vad.stream()
    for f in conversation[:40]:  # 2 s: the base reports metrics once a second
        vad_stream.push_frame(f)
    vad_stream.end_input()
    async for _ in vad_stream:
        pass
    await vad_stream.aclose()
    assert seen, "the session hears the base VAD's metrics"
    await stream.aclose()
    assert not session_vad._subscribers
    session_vad.close()
    assert not base._events.get("metrics_collected")  # the process's VAD outlives the session


def test_build_speech_uses_the_session_vad_only_when_given_one() -> None:
    settings = WorkerSettings()
    agent = TenantAgentConfig()
    base = InlineSileroVAD.load()
    shared = build_speech(agent, settings, vad_model=SessionVAD(base)).stt
    assert isinstance(shared, UtteranceSTT)
    assert isinstance(shared.wrapped_stt, LocalWhisperSTT)
    assert type(build_speech(agent, settings, vad_model=base).stt) is stt.StreamAdapter
