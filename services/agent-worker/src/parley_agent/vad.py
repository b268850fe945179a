"""The worker's VAD: Silero run natively, its per-window inference on the session's event loop,
and no inference at all on settled silence.

Runtime: livekit's `inference.VAD` runs the same Silero model (same probabilities to 1e-6)
through livekit-local-inference's native runtime, ~20 us per 32 ms window against ~180 us for
the silero plugin's onnxruntime call from Python. On audio that is never silent (a noisy room)
a session's VAD stream costs 0.010 instead of 0.017 cores on this machine (bench/ notes in the
README). Its segmentation logic is the plugin's, without the plugin's smoothing of the
probability; the plugin's 0.55 s minimum silence is kept (livekit's native default is 0.25 s,
which would end turns on shorter pauses). `PARLEY_AGENT_VAD_RUNTIME=onnx` restores the plugin.

Inline: both hand every window to a thread pool and await the result. For a model that small
the hand-off costs more than the inference: a queue put, a thread wake-up, the GIL moving twice
and a self-pipe write to wake the loop, 31 times a second per stream. Running the inference in
place keeps the VAD's logic (thresholds, padding, speech buffers, events) untouched and
removes the hops; the loop is held for the inference (~20 us native, ~0.13 ms onnx).
`PARLEY_AGENT_VAD_INLINE=false` restores the thread-pool path.

Silence: a session's microphone is silent most of the time (the user listens, thinks, or is
muted behind noise suppression and DTX, whose decoded audio is near zero), and the VAD still
ran its model on every 32 ms window of it, with the per-window bookkeeping around it: about
0.018 cores per session on this machine with the onnx runtime, a fifth of a streaming session's
CPU. `SilenceSkippingVAD` stops feeding the model once the audio has stayed below a floor (-60
dBFS peak by default) for `SETTLE_S` and the stream is not in speech; the first frame above the
floor is fed again, so speech is detected by the same model from the state it reached on the
silence. The settle time is longer than Silero's 0.55 s minimum silence, so any speech has
ended (its END_OF_SPEECH emitted) before a frame is skipped. Audio with room noise above the
floor is never skipped; it costs what it did. `PARLEY_AGENT_VAD_SKIP_SILENCE=false` feeds
every frame.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any, Literal, TypeVar, cast

import numpy as np
from livekit import rtc
from livekit.agents import inference
from livekit.agents import vad as agents_vad
from livekit.plugins import silero

from .metrics import VAD_SKIPPED_SECONDS

T = TypeVar("T")


class _InlineExecutorLoop:
    """The stream's event loop, except that `run_in_executor` runs the call in place.

    Everything else is the loop itself. The call's exception, if any, travels in the future
    exactly as it would from the pool."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.inline_calls = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loop, name)

    def run_in_executor(
        self, executor: Executor | None, func: Callable[..., T], *args: Any
    ) -> asyncio.Future[T]:
        fut: asyncio.Future[T] = self._loop.create_future()
        self.inline_calls += 1
        try:
            fut.set_result(func(*args))
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting stream as-is
            fut.set_exception(exc)
        return fut


class InlineExecutor(Executor):
    """Runs each submitted call in place and returns its finished future: for livekit's
    `inference.VAD`, which awaits `loop.run_in_executor(executor, ...)` per window."""

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        fut: Future[T] = Future()
        try:
            fut.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting stream as-is
            fut.set_exception(exc)
        return fut


class InlineSileroVAD(silero.VAD):
    """`silero.VAD` whose streams run their inference on the event loop (see module doc).

    Built with `InlineSileroVAD.load(...)`, which takes the plugin's arguments."""

    def stream(self) -> silero.VADStream:
        stream = super().stream()
        loop = getattr(stream, "_loop", None)
        if not isinstance(loop, asyncio.AbstractEventLoop):
            # the plugin's internals moved: keep its own (correct, slower) path
            return stream
        stream._loop = _InlineExecutorLoop(loop)  # type: ignore[assignment]
        return stream


# Continuous audio below the floor before the model is skipped: longer than Silero's minimum
# silence (0.55 s), so speech has ended and its END_OF_SPEECH is out before anything is skipped.
SETTLE_S = 1.0


def peak_floor(dbfs: float) -> int:
    """The 16-bit sample magnitude of a peak level in dBFS (-60 dBFS: 33)."""
    return int(round(32768 * 10 ** (dbfs / 20)))


def below_floor(frame: rtc.AudioFrame, floor: int) -> bool:
    """Whether every sample of a non-empty 16-bit frame is within +-floor."""
    pcm = np.frombuffer(frame.data, dtype=np.int16)
    return pcm.size > 0 and int(pcm.max()) <= floor and int(pcm.min()) >= -floor


class VADStreamProxy:
    """Another VAD's stream passed through unchanged; wrappers override what they change.

    Duck-typed as an `agents_vad.VADStream`: the session only pushes frames, flushes, ends the
    input, iterates events and closes it."""

    def __init__(self, inner: agents_vad.VADStream) -> None:
        self._inner = inner

    def push_frame(self, frame: rtc.AudioFrame) -> None:
        self._inner.push_frame(frame)

    def flush(self) -> None:
        self._inner.flush()

    def end_input(self) -> None:
        self._inner.end_input()

    async def aclose(self) -> None:
        await self._inner.aclose()

    def __aiter__(self) -> VADStreamProxy:
        return self

    async def __anext__(self) -> agents_vad.VADEvent:
        return await self._inner.__anext__()


class _SilenceSkippingStream(VADStreamProxy):
    """The base VAD's stream, fed only the frames that are not settled silence."""

    def __init__(self, owner: SilenceSkippingVAD, inner: agents_vad.VADStream) -> None:
        super().__init__(inner)
        self._owner = owner
        self._quiet_samples = 0  # audio below the floor pushed since the last louder frame
        self._in_speech = False  # per the newest event the session has read
        self.skipped_s = 0.0

    def push_frame(self, frame: rtc.AudioFrame) -> None:
        if below_floor(frame, self._owner.floor):
            settled = self._quiet_samples >= self._owner.settle_s * frame.sample_rate
            if settled and not self._in_speech:
                self.skipped_s += frame.duration
                VAD_SKIPPED_SECONDS.inc(frame.duration)
                return
            self._quiet_samples += frame.samples_per_channel
        else:
            self._quiet_samples = 0
        self._inner.push_frame(frame)

    def flush(self) -> None:
        self._quiet_samples = 0  # the inner stream resets: let it settle again
        self._inner.flush()

    async def __anext__(self) -> agents_vad.VADEvent:
        ev = await self._inner.__anext__()
        self._in_speech = ev.speaking or ev.raw_accumulated_speech > 0
        return ev


class VADWrapper(agents_vad.VAD):
    """A VAD over another one: the same capabilities, model and provider, and the base's
    metrics re-emitted here (the session listens on the VAD it was given)."""

    def __init__(self, base: agents_vad.VAD) -> None:
        super().__init__(capabilities=base.capabilities)
        self._base = base

    @property
    def base(self) -> agents_vad.VAD:
        return self._base

    @property
    def model(self) -> str:
        return self._base.model

    @property
    def provider(self) -> str:
        return self._base.provider

    def _forward_metrics(self, *args: Any, **kwargs: Any) -> None:
        self.emit("metrics_collected", *args, **kwargs)


class SilenceSkippingVAD(VADWrapper):
    """A VAD whose streams skip the model on settled silence (see the module doc)."""

    def __init__(
        self, base: agents_vad.VAD, *, floor_dbfs: float = -60.0, settle_s: float = SETTLE_S
    ) -> None:
        super().__init__(base)
        self.floor = peak_floor(floor_dbfs)
        self.settle_s = settle_s
        # the base is this wrapper's own (one per job process): no listener to remove
        base.on("metrics_collected", self._forward_metrics)

    def stream(self) -> agents_vad.VADStream:
        return cast(agents_vad.VADStream, _SilenceSkippingStream(self, self._base.stream()))


VADRuntime = Literal["native", "onnx"]
# The silero plugin's segmentation defaults, which the worker has always used.
MIN_SILENCE_S = 0.55


def load_vad(
    *,
    runtime: VADRuntime = "native",
    inline: bool = True,
    skip_silence: bool = True,
    silence_dbfs: float = -60.0,
) -> agents_vad.VAD:
    """The worker's VAD, loaded once per job process at prewarm."""
    base: agents_vad.VAD
    if runtime == "native":
        base = inference.VAD(
            min_silence_duration=MIN_SILENCE_S, executor=InlineExecutor() if inline else None
        )
    else:
        base = InlineSileroVAD.load() if inline else silero.VAD.load()
    return SilenceSkippingVAD(base, floor_dbfs=silence_dbfs) if skip_silence else base
