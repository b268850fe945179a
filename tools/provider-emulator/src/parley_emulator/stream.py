"""Paced SSE delivery with fault behaviour (ttft, inter-token delay, stall, cut, in-stream error).

The response is a raw ASGI callable (a Starlette ``Response`` subclass) so it can end the HTTP
exchange abruptly: a *cut* returns without the final chunk, which makes uvicorn close the socket
and the client see an incomplete chunked body.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from .faults import Decision

_CUTTING: contextvars.ContextVar[bool] = contextvars.ContextVar("emulator_cutting", default=False)
_INCOMPLETE_MSG = "ASGI callable returned without completing response."


class _CutLogFilter(logging.Filter):
    """Silence uvicorn's complaint about the deliberately incomplete responses of cut streams."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (_CUTTING.get() and record.getMessage().startswith(_INCOMPLETE_MSG))


_FILTER = _CutLogFilter()


def install_log_filter() -> None:
    logger = logging.getLogger("uvicorn.error")
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)


@dataclass
class Event:
    data: bytes
    tokens: int = 0  # output tokens carried by this event
    content: bool = False  # a content delta (paced, counted for stall/cut thresholds)


@dataclass
class Outcome:
    tokens_sent: int = 0
    completed: bool = False
    cut: bool = False
    stalled: bool = False
    stream_error: bool = False
    disconnected: bool = False


SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


@dataclass
class _Watch:
    gone: asyncio.Event = field(default_factory=asyncio.Event)


class EmulatedStream(Response):
    def __init__(
        self,
        events: list[Event],
        decision: Decision,
        error_event: Callable[[int], bytes],
        on_done: Callable[[Outcome], None],
        extra_headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        # Starlette's Response.__init__ is not used: this class speaks ASGI directly.
        self.events = events
        self.decision = decision
        self.error_event = error_event
        self.on_done = on_done
        self.status_code = 200
        self.background = None
        self.raw_headers = SSE_HEADERS + (extra_headers or [])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        outcome = Outcome()
        d = self.decision
        timing = d.timing
        watch: _Watch | None = None
        watcher: asyncio.Task[None] | None = None
        if timing.ttft_ms > 0 or timing.inter_token_ms > 0 or d.stall_after_tokens is not None:
            watch = _Watch()
            watcher = asyncio.create_task(_watch_disconnect(receive, watch))

        async def body(data: bytes, more: bool = True) -> None:
            await send({"type": "http.response.body", "body": data, "more_body": more})

        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            content_started = False
            stalled = False
            for event in self.events:
                if event.content or content_started:
                    # fault checkpoints: before every content delta, and after the content
                    n = d.stream_error_after_tokens
                    if n is not None and outcome.tokens_sent >= n:
                        outcome.stream_error = True
                        await body(self.error_event(d.stream_error_status), more=False)
                        return
                    n = d.cut_after_tokens
                    if n is not None and outcome.tokens_sent >= n:
                        outcome.cut = True
                        _CUTTING.set(True)  # see _CutLogFilter
                        return
                    n = d.stall_after_tokens
                    if event.content and not stalled and n is not None and outcome.tokens_sent >= n:
                        stalled = outcome.stalled = True
                        if watch is not None and await _wait_gone(watch, d.stall_s):
                            outcome.disconnected = True
                            return
                if event.content:
                    if not content_started:
                        delay = timing.ttft_ms
                        content_started = True
                    else:
                        delay = timing.inter_token_ms * max(event.tokens, 1)
                    if delay > 0:
                        await asyncio.sleep(delay / 1000.0)
                        if watch is not None and watch.gone.is_set():
                            outcome.disconnected = True
                            return
                    await body(event.data)
                    outcome.tokens_sent += event.tokens
                else:
                    await body(event.data)
            await body(b"", more=False)
            outcome.completed = True
        finally:
            if watcher is not None:
                watcher.cancel()
            self.on_done(outcome)


async def _watch_disconnect(receive: Receive, watch: _Watch) -> None:
    while True:
        message: Any = await receive()
        if message.get("type") == "http.disconnect":
            watch.gone.set()
            return


async def _wait_gone(watch: _Watch, seconds: float) -> bool:
    try:
        await asyncio.wait_for(watch.gone.wait(), timeout=seconds)
    except TimeoutError:
        return False
    return True
