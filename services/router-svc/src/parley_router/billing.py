"""Budget checks against billing-svc (CheckBudget), cached per tenant.

A fresh answer is reused for `ttl_s`; a stale one is still used while a refresh runs in the
background, so only a tenant's very first turn (or the first after a long pause) waits, and
then at most `timeout_s`. When billing-svc is unreachable the turn proceeds (logged, at most
once per `failure_backoff_s` per tenant): a billing outage never fails or slows turns.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from parley.billing.v1 import billing_pb2, billing_pb2_grpc
from parley_runtime.context import TENANT_HEADER

from .budget import BudgetState, BudgetStatus

logger = logging.getLogger(__name__)

__all__ = ["BillingBudgetClient"]

_STATES = {
    billing_pb2.BUDGET_STATE_OK: BudgetState.OK,
    billing_pb2.BUDGET_STATE_SOFT_EXCEEDED: BudgetState.SOFT_EXCEEDED,
    billing_pb2.BUDGET_STATE_HARD_EXCEEDED: BudgetState.HARD_EXCEEDED,
    billing_pb2.BUDGET_STATE_NO_BUDGET: BudgetState.NO_BUDGET,
}


@dataclass(slots=True)
class _Entry:
    status: BudgetStatus | None
    fresh_until: float
    refreshing: bool = False


class BillingBudgetClient:
    def __init__(
        self,
        channel: grpc.aio.Channel,
        *,
        ttl_s: float = 5.0,
        timeout_s: float = 0.25,
        failure_backoff_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._channel = channel
        self._stub = billing_pb2_grpc.BillingServiceStub(channel)
        self._ttl = ttl_s
        self._timeout = timeout_s
        self._backoff = failure_backoff_s
        self._clock = clock
        self._cache: dict[str, _Entry] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    async def check(self, tenant_id: str) -> BudgetStatus | None:
        entry = self._cache.get(tenant_id)
        now = self._clock()
        if entry is not None:
            if now >= entry.fresh_until and not entry.refreshing:
                entry.refreshing = True
                # A fresh context: no inbound deadline or tenant leaks into the refresh.
                task = asyncio.create_task(self._refresh(tenant_id),
                                           context=contextvars.Context())
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            return entry.status
        return await self._refresh(tenant_id)

    async def _refresh(self, tenant_id: str) -> BudgetStatus | None:
        status: BudgetStatus | None
        try:
            resp = await self._stub.CheckBudget(
                billing_pb2.CheckBudgetRequest(),
                metadata=((TENANT_HEADER, tenant_id),),
                timeout=self._timeout,
            )
            status = BudgetStatus(
                _STATES.get(resp.state, BudgetState.NO_BUDGET),
                resp.spent_this_month_usd,
                resp.monthly_limit_usd,
            )
            ttl = self._ttl
        except (TimeoutError, grpc.aio.AioRpcError, OSError) as exc:
            previous = self._cache.get(tenant_id)
            status = previous.status if previous is not None else None
            ttl = self._backoff
            code = exc.code().name if isinstance(exc, grpc.aio.AioRpcError) else repr(exc)
            logger.warning(
                "billing-svc budget check failed; proceeding without it",
                extra={"tenant": tenant_id, "error": code},
            )
        self._cache[tenant_id] = _Entry(status, self._clock() + ttl)
        return status

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._channel.close()
