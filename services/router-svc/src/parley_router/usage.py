"""Usage records: one billing UsageEvent per provider call, through the shared recorder.

The recorder never blocks and never raises into the turn (parley_runtime.usage); the
idempotency key is derived from the turn id and the attempt number, so a retried shipment
counts once.
"""

from __future__ import annotations

import time

from google.protobuf.timestamp_pb2 import Timestamp
from parley.billing.v1 import billing_pb2
from parley_runtime.catalog import ModelEntry
from parley_runtime.usage import UsageRecorder

from .complexity import Tier
from .failover import AttemptReport
from .providers.base import CallContext
from .router import Turn

__all__ = ["DiscardingUsageRecorder", "RecorderUsageSink", "idempotency_key"]

SERVICE = "router-svc"


def idempotency_key(turn_id: str, attempt: int) -> str:
    return f"{SERVICE}:llm:{turn_id}:{attempt}"


def _now() -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(time.time_ns())
    return ts


class DiscardingUsageRecorder:
    """Counts and drops events: for runs without billing-svc (BILLING_ADDR unset).

    The runtime's NullUsageRecorder keeps every event in a list (it serves tests); a
    long-running router without billing must not grow without bound.
    """

    def __init__(self) -> None:
        self.dropped = 0

    def record(self, tenant_id: str, event: billing_pb2.UsageEvent) -> None:
        self.dropped += 1

    async def flush(self, timeout: float | None = None) -> bool:
        return True

    async def close(self) -> None:
        return None


class RecorderUsageSink:
    def __init__(self, recorder: UsageRecorder) -> None:
        self._recorder = recorder

    def record_call(
        self, *, turn: Turn, report: AttemptReport, tier: Tier, fallback_used: bool
    ) -> None:
        usage = report.usage
        if usage is None:
            return
        event = billing_pb2.UsageEvent(
            idempotency_key=idempotency_key(turn.turn_id, report.attempt),
            occurred_at=_now(),
            session_id=turn.session_id,
            service=SERVICE,
            llm=billing_pb2.LlmUsage(
                provider=report.model.provider,
                model_id=report.model.model_id,
                tier=tier.label,
                input_tokens=usage.input_tokens,
                cached_input_tokens=usage.cached_input_tokens,
                cache_write_tokens=usage.cache_write_tokens,
                output_tokens=usage.output_tokens,
                images=usage.images,
                fallback_used=fallback_used,
                latency_ms=report.total_s * 1000.0,
            ),
        )
        self._recorder.record(turn.tenant_id, event)

    def record_cache_creation(self, ctx: CallContext, model: ModelEntry, tokens: int) -> None:
        """An explicit Gemini cache was created: its tokens are billed as a cache write."""
        event = billing_pb2.UsageEvent(
            idempotency_key=f"{SERVICE}:gcache:{ctx.turn_id}:{model.model_id}",
            occurred_at=_now(),
            session_id=ctx.session_id,
            service=SERVICE,
            llm=billing_pb2.LlmUsage(
                provider=model.provider,
                model_id=model.model_id,
                tier="cache",
                input_tokens=tokens,
                cache_write_tokens=tokens,
            ),
        )
        self._recorder.record(ctx.tenant_id, event)
