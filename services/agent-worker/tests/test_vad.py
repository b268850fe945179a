"""The worker's VAD: silero's own logic, its inference run on the event loop."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest
from livekit import rtc
from livekit.agents import vad
from livekit.plugins import silero
from parley_agent.vad import InlineSileroVAD, _InlineExecutorLoop, load_vad

pytestmark = pytest.mark.unit


async def run_stream(model: vad.VAD, frames: list[rtc.AudioFrame]) -> tuple[list, vad.VADStream]:
    stream = model.stream()
    for f in frames:
        stream.push_frame(f)
    stream.end_input()
    events = [(ev.type, round(ev.timestamp, 3), round(ev.speech_duration, 3),
               round(ev.probability, 5), sum(fr.samples_per_channel for fr in ev.frames))
              async for ev in stream]
    await stream.aclose()
    return events, stream


async def test_inline_vad_matches_the_plugin_event_for_event(
    conversation: list[rtc.AudioFrame],
) -> None:
    frames = conversation
    stock, _ = await run_stream(silero.VAD.load(), frames)
    inline, stream = await run_stream(InlineSileroVAD.load(), frames)
    starts = [e for e in stock if e[0] == vad.VADEventType.START_OF_SPEECH]
    ends = [e for e in stock if e[0] == vad.VADEventType.END_OF_SPEECH]
    assert len(starts) == 2 and len(ends) == 2, "the two questions are two utterances"
    assert inline == stock
    loop = stream._loop  # type: ignore[attr-defined]
    assert isinstance(loop, _InlineExecutorLoop)
    assert loop.inline_calls > 100  # every 32 ms window of ~9 s of audio


async def test_inference_runs_on_the_loop_thread(conversation: list[rtc.AudioFrame]) -> None:
    model = InlineSileroVAD.load()
    stream = model.stream()
    threads: set[int] = set()
    inner = stream._model  # type: ignore[attr-defined]

    class Spy:
        def __getattr__(self, name: str) -> object:
            return getattr(inner, name)

        def __call__(self, x: np.ndarray) -> float:
            threads.add(threading.get_ident())
            return float(inner(x))

    stream._model = Spy()  # type: ignore[attr-defined]
    for f in conversation[:20]:
        stream.push_frame(f)
    stream.end_input()
    async for _ in stream:
        pass
    await stream.aclose()
    assert threads == {threading.get_ident()}


async def test_an_inference_error_reaches_the_stream_like_the_pool_path() -> None:
    loop = _InlineExecutorLoop(asyncio.get_running_loop())

    def boom() -> float:
        raise RuntimeError("onnx failed")

    with pytest.raises(RuntimeError, match="onnx failed"):
        await loop.run_in_executor(None, boom)
    assert loop.time() > 0  # everything else is the loop itself


def test_load_vad_switch() -> None:
    assert isinstance(load_vad(inline=True), InlineSileroVAD)
    plain = load_vad(inline=False)
    assert type(plain) is silero.VAD
