"""Session usage to billing-svc: agent session minutes, STT audio seconds, TTS characters.

The meter turns livekit's cumulative `session.usage` into deltas and records one UsageEvent per
kind and period, periodically and at the session's end, each with an idempotency key
`<session_id>:<job_id>:<kind>:<sequence>` so a resent batch counts once. LLM tokens are not
reported here: router-svc reports every model call itself.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from dataclasses import dataclass

from google.protobuf.timestamp_pb2 import Timestamp
from livekit.agents.metrics.usage import AgentSessionUsage, STTModelUsage, TTSModelUsage
from parley.billing.v1 import billing_pb2
from parley_runtime.usage import UsageRecorder

from .log import logger

_MAX_KEY_LEN = 200  # billing-svc's limit for an idempotency key

SERVICE = "agent-worker"


@dataclass(frozen=True, slots=True)
class MeteredModels:
    stt_model_id: str | None
    stt_provider: str | None
    tts_model_id: str | None
    tts_provider: str | None


def _now_ts(wall: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int(wall * 1e9))
    return ts


class SessionUsageMeter:
    def __init__(
        self,
        *,
        recorder: UsageRecorder,
        tenant_id: str,
        session_id: str,
        job_id: str,
        models: MeteredModels,
        kind_prefix: str = "",
    ) -> None:
        self._recorder = recorder
        self._tenant = tenant_id
        self._session = session_id
        self._job = job_id
        self._models = models
        self._prefix = kind_prefix
        # This meter's own run: LiveKit re-dispatches a job to another worker with the same job
        # id when its worker fails, and the new meter counts from 1 again; without the run, its
        # first events would reuse keys billing already took and be dropped as duplicates.
        self._run = uuid.uuid4().hex[:12]
        self._seq: dict[str, int] = {}
        self._started = time.monotonic()
        self._last_minutes_at = self._started
        self._stt_seconds = 0.0
        self._tts_chars = 0
        self._reported_stt = 0.0
        self._reported_tts = 0
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.recorded: list[billing_pb2.UsageEvent] = []

    def observe(self, usage: AgentSessionUsage) -> None:
        """Take the session's cumulative usage (from `session_usage_updated`)."""
        stt = sum(u.audio_duration for u in usage.model_usage if isinstance(u, STTModelUsage))
        tts = sum(u.characters_count for u in usage.model_usage if isinstance(u, TTSModelUsage))
        # Cumulative figures only grow; ignore a reset (e.g. a restarted session object).
        self._stt_seconds = max(self._stt_seconds, stt)
        self._tts_chars = max(self._tts_chars, tts)

    def _key(self, kind: str) -> str:
        seq = self._seq.get(kind, 0) + 1
        self._seq[kind] = seq
        key = f"{self._session}:{self._job}:{self._run}:{self._prefix}{kind}:{seq}"
        if len(key) > _MAX_KEY_LEN:  # a long session id: billing takes keys up to 200
            digest = hashlib.sha256(f"{self._session}:{self._job}".encode()).hexdigest()[:32]
            key = f"{digest}:{self._run}:{self._prefix}{kind}:{seq}"
        return key

    def _event(self, kind: str, wall: float) -> billing_pb2.UsageEvent:
        return billing_pb2.UsageEvent(
            idempotency_key=self._key(kind),
            occurred_at=_now_ts(wall),
            session_id=self._session,
            service=SERVICE,
        )

    def emit(self) -> list[billing_pb2.UsageEvent]:
        """Record the deltas since the last emit; returns the events recorded."""
        wall = time.time()
        now = time.monotonic()
        events: list[billing_pb2.UsageEvent] = []

        minutes = (now - self._last_minutes_at) / 60.0
        if minutes > 0:
            ev = self._event("session", wall)
            ev.session.minutes = minutes
            events.append(ev)
            self._last_minutes_at = now

        stt_delta = self._stt_seconds - self._reported_stt
        if stt_delta > 0 and self._models.stt_model_id:
            ev = self._event("stt", wall)
            ev.stt.provider = self._models.stt_provider or ""
            ev.stt.model_id = self._models.stt_model_id
            ev.stt.audio_seconds = stt_delta
            events.append(ev)
            self._reported_stt = self._stt_seconds

        tts_delta = self._tts_chars - self._reported_tts
        if tts_delta > 0 and self._models.tts_model_id:
            ev = self._event("tts", wall)
            ev.tts.provider = self._models.tts_provider or ""
            ev.tts.model_id = self._models.tts_model_id
            ev.tts.characters = tts_delta
            events.append(ev)
            self._reported_tts = self._tts_chars

        for ev in events:
            self._recorder.record(self._tenant, ev)
        self.recorded.extend(events)
        return events

    def start(self, interval_s: float) -> None:
        self._task = asyncio.create_task(self._periodic(interval_s), name="usage-meter")

    async def _periodic(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                self.emit()
            except Exception:
                logger.exception("usage emit failed")

    async def aclose(self, *, flush_timeout_s: float = 10.0) -> None:
        """Stop the periodic task, record the remainder and flush it to billing-svc."""
        if self._closed:
            return
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self.emit()
        try:
            ok = await self._recorder.flush(timeout=flush_timeout_s)
        except Exception:
            logger.exception("usage flush failed")
            ok = False
        if not ok:
            logger.warning(
                "usage not yet acknowledged by billing-svc at session end",
                extra={"session_id": self._session},
            )
