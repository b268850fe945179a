"""The worker's VAD: silero's own logic, its inference run on the event loop, and no inference on
settled silence."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest
from livekit import rtc
from livekit.agents import inference, vad
from livekit.agents.metrics import VADMetrics
from livekit.plugins import silero
from parley_agent.sim import espeak_pcm
from parley_agent.vad import (
    MIN_SILENCE_S,
    SETTLE_S,
    InlineExecutor,
    InlineSileroVAD,
    SilenceSkippingVAD,
    _InlineExecutorLoop,
    load_vad,
    peak_floor,
)

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
    default = load_vad()
    assert isinstance(default, SilenceSkippingVAD)
    assert isinstance(default.base, inference.VAD)
    assert default.base.min_silence_duration == MIN_SILENCE_S
    assert isinstance(default.base._executor, InlineExecutor)
    assert default.floor == peak_floor(-60.0) == 33
    threaded = load_vad(inline=False, skip_silence=False)
    assert isinstance(threaded, inference.VAD) and threaded._executor is None
    assert isinstance(load_vad(runtime="onnx", skip_silence=False), InlineSileroVAD)
    plain = load_vad(runtime="onnx", inline=False, skip_silence=False)
    assert type(plain) is silero.VAD
    assert load_vad(silence_dbfs=-40.0).floor == 328  # type: ignore[attr-defined]


async def test_native_inline_matches_the_native_thread_pool_event_for_event(
    conversation: list[rtc.AudioFrame],
) -> None:
    pooled, _ = await run_stream(load_vad(inline=False, skip_silence=False), conversation)
    inline, _ = await run_stream(load_vad(skip_silence=False), conversation)
    assert len(speech_events(pooled)) == 4
    assert inline == pooled


async def test_native_runtime_cuts_the_utterances_the_plugin_cuts(
    conversation: list[rtc.AudioFrame],
) -> None:
    """Same model, same segmentation; the plugin also smooths the probability (35% of the
    previous window), which moves a boundary by a window or two."""
    window = 512 / 16000
    plugin = speech_events((await run_stream(silero.VAD.load(), conversation))[0])
    native = speech_events((await run_stream(load_vad(skip_silence=False), conversation))[0])
    assert [e[0] for e in native] == [e[0] for e in plugin] == [
        vad.VADEventType.START_OF_SPEECH, vad.VADEventType.END_OF_SPEECH] * 2
    for a, b in zip(plugin, native, strict=True):
        assert abs(a[1] - b[1]) <= 3 * window + 1e-6, (a, b)  # when
        assert abs(a[2] - b[2]) <= 3 * window + 1e-6, (a, b)  # speech duration
        assert abs(a[4] - b[4]) <= 3 * 512, (a, b)  # utterance samples for the STT


async def test_an_inline_executor_error_reaches_the_awaiting_stream() -> None:
    def boom() -> float:
        raise RuntimeError("native VAD failed")

    with pytest.raises(RuntimeError, match="native VAD failed"):
        await asyncio.get_running_loop().run_in_executor(InlineExecutor(), boom)


def frames_of(audio: np.ndarray, rate: int, ms: int = 100) -> list[rtc.AudioFrame]:
    step = rate * ms // 1000
    audio = np.concatenate([audio, np.zeros(-len(audio) % step, dtype=np.int16)])
    return [rtc.AudioFrame(audio[i:i + step].tobytes(), rate, 1, step)
            for i in range(0, len(audio), step)]


@pytest.fixture(scope="module")
def silent_gaps() -> list[rtc.AudioFrame]:
    """Two questions with 3 s of digital silence before, between and after (100 ms frames, as
    the worker receives the room's audio)."""
    rate = 16000
    parts = [np.zeros(3 * rate, dtype=np.int16)]
    for text in ("What is the laptop policy for new hires?", "Who approves travel expenses?"):
        pcm, src = espeak_pcm(text)
        resampler = rtc.AudioResampler(src, rate, num_channels=1)
        out = [*resampler.push(rtc.AudioFrame(pcm.tobytes(), src, 1, len(pcm))),
               *resampler.flush()]
        parts += [np.concatenate([np.frombuffer(f.data, dtype=np.int16) for f in out]),
                  np.zeros(3 * rate, dtype=np.int16)]
    return frames_of(np.concatenate(parts), rate)


def speech_events(events: list) -> list:
    return [e for e in events if e[0] != vad.VADEventType.INFERENCE_DONE]


async def test_settled_silence_skips_the_model_and_speech_is_cut_the_same(
    silent_gaps: list[rtc.AudioFrame],
) -> None:
    """Speech is cut as the plain VAD cuts it. The plain VAD's own cut moves by a few windows
    when the same audio starts a few samples later (its 512-sample window grid lands
    elsewhere), and a skipped 100 ms frame moves the grid by 64 samples; so the reference is
    the plain VAD's range over every grid offset."""
    window = 512 / 16000
    refs = []
    for shift in range(0, 512, 64):
        lead = [rtc.AudioFrame(b"\x00\x00" * shift, 16000, 1, shift)] if shift else []
        every, _ = await run_stream(load_vad(skip_silence=False), lead + silent_gaps)
        refs.append(speech_events(every))
    skipping, stream = await run_stream(load_vad(), silent_gaps)
    got = speech_events(skipping)
    assert [e[0] for e in got] == [e[0] for e in refs[0]] == [
        vad.VADEventType.START_OF_SPEECH, vad.VADEventType.END_OF_SPEECH] * 2
    for i, ev in enumerate(got):
        durations = [r[i][2] for r in refs]
        lengths = [r[i][4] for r in refs]
        # speech duration and the utterance length handed to the STT
        assert min(durations) - window - 1e-6 <= ev[2] <= max(durations) + window + 1e-6
        assert min(lengths) - 512 <= ev[4] <= max(lengths) + 512
    # Each of the three quiet runs (the 3 s gaps, with espeak's own silence at either end of
    # the speech) is fed for SETTLE_S and skipped after that.
    skipped = stream.skipped_s  # type: ignore[attr-defined]
    floor = peak_floor(-60.0)
    quiet = sum(f.duration for f in silent_gaps
                if np.abs(np.frombuffer(f.data, dtype=np.int16).astype(np.int32)).max() <= floor)
    assert 3 * (3.0 - SETTLE_S - 0.1) <= skipped <= quiet - 3 * SETTLE_S + 1e-6
    inferences = [e for e in skipping if e[0] == vad.VADEventType.INFERENCE_DONE]
    total = sum(f.duration for f in silent_gaps)
    assert abs(len(inferences) - (total - skipped) / window) <= 2


async def test_audio_above_the_floor_is_never_skipped(
    conversation: list[rtc.AudioFrame],
) -> None:
    """The shared fixture's pauses are low noise (peaks ~-45 dBFS): every window is inferred,
    event for event as without the skip."""
    every, _ = await run_stream(load_vad(skip_silence=False), conversation)
    skipping, stream = await run_stream(load_vad(), conversation)
    assert skipping == every
    assert stream.skipped_s == 0  # type: ignore[attr-defined]


class ScriptedStream:
    """A stand-in inner stream: records what reaches the model, replays scripted events."""

    def __init__(self, speaking: bool) -> None:
        self.pushed = 0
        self.flushed = 0
        self.speaking = speaking

    def push_frame(self, frame: rtc.AudioFrame) -> None:
        self.pushed += 1

    def flush(self) -> None:
        self.flushed += 1

    async def __anext__(self) -> vad.VADEvent:
        return vad.VADEvent(
            type=vad.VADEventType.INFERENCE_DONE, samples_index=0, timestamp=0.0,
            speech_duration=0.0, silence_duration=0.0, speaking=self.speaking,
            raw_accumulated_speech=0.0,
        )


class ScriptedVAD(vad.VAD):
    def __init__(self, inner: ScriptedStream) -> None:
        super().__init__(capabilities=vad.VADCapabilities(update_interval=0.032))
        self.inner = inner

    def stream(self) -> vad.VADStream:
        return self.inner  # type: ignore[return-value]


async def test_quiet_audio_is_fed_while_the_model_reports_speech() -> None:
    inner = ScriptedStream(speaking=True)
    stream = SilenceSkippingVAD(ScriptedVAD(inner)).stream()
    quiet = rtc.AudioFrame(b"\x05\x00" * 1600, 16000, 1, 1600)
    await stream.__anext__()  # the session read an event: in speech
    for _ in range(30):
        stream.push_frame(quiet)
    assert inner.pushed == 30  # never skipped: the end of speech needs the silence
    inner.speaking = False
    await stream.__anext__()
    for _ in range(30):
        stream.push_frame(quiet)
    assert inner.pushed == 30  # the model has had its 3 s of silence: skipped from now on
    stream.flush()  # the inner stream resets: it must see the silence settle again
    for _ in range(30):
        stream.push_frame(quiet)
    assert inner.flushed == 1
    settle = round(SETTLE_S / 0.1)
    assert inner.pushed == 30 + settle
    loud = rtc.AudioFrame(np.full(1600, 2000, dtype=np.int16).tobytes(), 16000, 1, 1600)
    stream.push_frame(loud)
    stream.push_frame(quiet)
    assert inner.pushed == 30 + settle + 2  # the louder frame restarts the settle


async def test_the_base_vad_metrics_reach_the_session() -> None:
    inner = ScriptedStream(speaking=False)
    base = ScriptedVAD(inner)
    wrapper = SilenceSkippingVAD(base)
    seen: list[object] = []
    wrapper.on("metrics_collected", seen.append)
    m = VADMetrics(label="silero", timestamp=0.0, idle_time=0.0, inference_duration_total=0.0,
                   inference_count=1)
    base.emit("metrics_collected", m)
    assert seen == [m]
    assert wrapper.capabilities.update_interval == 0.032
