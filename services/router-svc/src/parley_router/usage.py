"""Usage records: one billing UsageEvent per provider call, through the shared recorder.

The recorder never blocks and never raises into the turn (parley_runtime.usage); the
idempotency key is made once per provider call, when its event is made, from the call id the
router generated for the StreamChat call and the attempt number: a re-shipped event counts
once, and a caller reusing a turn id still pays for each call (the turn id stays in the key
for attribution only).
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid

from google.protobuf.timestamp_pb2 import Timestamp
from parley.billing.v1 import billing_pb2
from parley_runtime.catalog import ModelEntry
from parley_runtime.ids import is_valid_id
from parley_runtime.usage import UsageRecorder

from .complexity import Tier
from .failover import AttemptReport
from .providers.base import CallContext
from .router import Turn

logger = logging.getLogger(__name__)

__all__ = ["DiscardingUsageRecorder", "RecorderUsageSink", "idempotency_key"]

SERVICE = "router-svc"


# Longest caller-chosen part kept verbatim in a key; longer ones are hashed, so a key stays
# well under billing's 200 printable characters (parley_runtime.ids.MAX_IDEMPOTENCY_KEY_LEN).
_KEY_PART_MAX = 64


def key_part(value: str) -> str:
    """`value` as a piece of an idempotency key: itself when short and printable, else a
    digest of it (attribution survives, the key's length and alphabet stay billing's)."""
    if is_valid_id(value, _KEY_PART_MAX):
        return value
    return "h-" + hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def idempotency_key(turn_id: str, call_id: str, attempt: int) -> str:
    """Key of one provider call: `call_id` is unique per StreamChat call (server-generated),
    so it alone makes the key unique; `turn_id` only tells a reader which turn it was."""
    return f"{SERVICE}:llm:{key_part(turn_id)}:{key_part(call_id)}:{attempt}"


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
            idempotency_key=idempotency_key(turn.turn_id, turn.call_id, report.attempt),
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
        if usage.estimated:
            # LlmUsage has no field to say so: the log keeps which records are estimates.
            logger.info("usage of an early-ended call recorded with estimated counts",
                        extra={"idempotency_key": event.idempotency_key,
                               "outcome": report.outcome})
        self._recorder.record(turn.tenant_id, event)

    def record_cache_creation(self, ctx: CallContext, model: ModelEntry, tokens: int) -> None:
        """An explicit Gemini cache was created: its tokens are billed as a cache write.

        Each creation is its own occurrence (a turn id a caller reuses, or a cache made again
        after it expired, must not dedupe it away): the key gets a fresh id, made once here,
        so re-shipping the spooled event still counts once.
        """
        key = f"{SERVICE}:gcache:{key_part(ctx.turn_id)}:{uuid.uuid4().hex}"
        event = billing_pb2.UsageEvent(
            idempotency_key=key,
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
