"""Silero VAD with its per-window inference run on the session's event loop.

livekit's silero plugin hands every 32 ms window (about 0.13 ms of ONNX work on one core) to
the loop's default thread pool and awaits the result. For a model that small the hand-off
costs more than the inference: a queue put, a thread wake-up, the GIL moving twice and a
self-pipe write to wake the loop, 31 times a second per stream, and a voice session has two
streams (the session's own and the one the STT adapter cuts utterances with). Running the
inference in place keeps the plugin's logic (thresholds, padding, speech buffers, events)
untouched and removes the hops; the loop is held for the inference's ~0.13 ms.

`PARLEY_AGENT_VAD_INLINE=false` restores the plugin's thread-pool path.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, TypeVar

from livekit.agents import vad as agents_vad
from livekit.plugins import silero

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


def load_vad(*, inline: bool = True) -> agents_vad.VAD:
    """The worker's VAD, loaded once per job process at prewarm."""
    return InlineSileroVAD.load() if inline else silero.VAD.load()
