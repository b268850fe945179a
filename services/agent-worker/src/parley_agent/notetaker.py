"""The note-taker: a second agent in the room that keeps the transcript and summarises it.

It listens to the assistant's `parley.turns` events (so it does not transcribe the audio a second
time), and every few user turns, and once more when the room ends, asks router-svc (capped at
the simple tier: summaries do not need a large model) for a summary, which it publishes on
`parley.notes`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from livekit.agents import llm

from .config import NoteTakerOptions
from .log import logger
from .router_llm import RouterLLM, complete_text

SUMMARY_INSTRUCTIONS = (
    "You are a meeting note-taker. Summarise the conversation below for someone who missed it: "
    "the user's questions, the answers and facts given, decisions, and open follow-ups. Use "
    "short bullet points; no preamble."
)

Publish = Callable[..., Awaitable[Any]]


class NoteTaker:
    def __init__(
        self,
        *,
        router: RouterLLM,
        options: NoteTakerOptions,
        publish: Publish,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._router = router
        self._opts = options
        self._publish = publish
        self._lines: list[str] = []
        self._seen: set[tuple[str, int]] = set()
        self._user_turns = 0
        self._turns_at_last_summary = 0
        self._task: asyncio.Task[None] | None = None
        self._finished = False
        self._clock = clock
        self._last_summary_at: float | None = None
        self._lock = asyncio.Lock()
        self.summaries: list[str] = []

    @property
    def transcript(self) -> list[str]:
        return list(self._lines)

    def on_turn_event(self, event: dict[str, Any]) -> None:
        """Take a `parley.turns` event (duplicates by (session, seq) are ignored)."""
        if event.get("type") != "turn":
            return
        key = (str(event.get("session_id")), int(event.get("seq") or 0))
        if key in self._seen:
            return
        self._seen.add(key)
        text = str(event.get("text") or "").strip()
        if not text:
            return
        speaker = "User" if event.get("role") == "user" else "Assistant"
        self._lines.append(f"{speaker}: {text}")
        if event.get("role") == "user":
            self._user_turns += 1
            if self._user_turns - self._turns_at_last_summary >= self._opts.summary_every_turns:
                self._schedule()

    def _schedule(self) -> None:
        if self._finished or (self._task is not None and not self._task.done()):
            return
        self._task = asyncio.create_task(self._summarise_when_due(), name="notes")

    async def _summarise_when_due(self) -> None:
        # while this waits, turns keep arriving and no other summary is scheduled: they all go
        # into this one
        if self._last_summary_at is not None:
            wait = self._last_summary_at + self._opts.min_summary_interval_s - self._clock()
            if wait > 0:
                await asyncio.sleep(wait)
        await self._summarise_guarded(final=False)

    async def _summarise_guarded(self, *, final: bool) -> None:
        try:
            await self.summarise(final=final)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.warning("summary failed", exc_info=True)

    def _transcript_text(self) -> str:
        text = "\n".join(self._lines)
        limit = self._opts.max_transcript_chars
        return text if len(text) <= limit else "…" + text[-limit:]

    async def summarise(self, *, final: bool) -> str | None:
        async with self._lock:
            if not self._lines:
                return None
            covered = self._user_turns
            self._last_summary_at = self._clock()
            ctx = llm.ChatContext()
            ctx.add_message(role="system", content=SUMMARY_INSTRUCTIONS)
            ctx.add_message(role="user", content=self._transcript_text())
            summary = (await complete_text(self._router, ctx)).strip()
            if not summary:
                return None
            self._turns_at_last_summary = covered
            self.summaries.append(summary)
            await self._publish("summary", summary=summary, turns_covered=covered, final=final)
            return summary

    async def aclose(self) -> None:
        """Let a running summary finish (bounded), then write the final one if turns remain.
        Once: a second call does nothing."""
        if self._finished:
            return
        self._finished = True
        task, self._task = self._task, None
        if task is not None:
            await asyncio.wait({task}, timeout=15)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self._user_turns > self._turns_at_last_summary:
            await self._summarise_guarded(final=True)
