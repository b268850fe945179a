"""Typed chat messages into user turns, at a pace a session can take.

Each chat message used to become its own turn: interrupt the agent, start a reply, call the
model. A burst of messages (a paste split into lines, a script, a stuck key) became a burst of
model calls that the tenant's rate limit refused, and enough refusals close livekit's session.
Here a message becomes a turn right away when the last one is at least `min_interval_s` old;
messages arriving sooner are merged, in order, into the next turn. Every message is cut to
`max_chars`, and so is a merged turn (its newest text kept): a 1 MB paste is not sent whole to
the model on every turn after it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from .log import logger

_CUT = " [...]"


def _cut(text: str, max_chars: int) -> str:
    return text if len(text) <= max_chars else text[: max_chars - len(_CUT)] + _CUT


class ChatPacer:
    def __init__(
        self,
        submit: Callable[[str], Awaitable[None]],
        *,
        min_interval_s: float = 1.0,
        max_chars: int = 4000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._submit = submit
        self._interval = min_interval_s
        self._max = max_chars
        self._clock = clock
        self._pending: list[str] = []
        self._last: float | None = None
        self._task: asyncio.Task[None] | None = None
        self.merged = 0  # messages that rode along in another's turn
        self.cut = 0  # messages (or merged turns) shortened

    def push(self, text: str) -> None:
        text = text.strip()
        if not text:
            return
        if len(text) > self._max:
            self.cut += 1
            logger.warning("chat message cut", extra={"chars": len(text), "max": self._max})
            text = _cut(text, self._max)
        self._pending.append(text)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._flush(), name="chat-turn")

    async def _flush(self) -> None:
        while self._pending:
            if self._last is not None:
                wait = self._last + self._interval - self._clock()
                if wait > 0:
                    await asyncio.sleep(wait)
            texts, self._pending = self._pending, []
            if len(texts) > 1:
                self.merged += len(texts) - 1
                logger.info("chat messages merged into one turn", extra={"messages": len(texts)})
            text = "\n".join(texts)
            if len(text) > self._max:  # keep the newest words
                self.cut += 1
                text = _CUT.strip() + " " + text[-(self._max - len(_CUT)):]
            self._last = self._clock()
            try:
                await self._submit(text)
            except Exception:
                logger.exception("chat turn failed")

    async def aclose(self) -> None:
        task, self._task = self._task, None
        self._pending.clear()
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
