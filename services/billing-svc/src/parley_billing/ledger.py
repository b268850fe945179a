"""The billing ledger's use cases: ingest, reports, savings, bills and budgets.

Shared by the gRPC and REST front ends; transport-free. A batch is validated and priced as a
whole before anything is written, so a batch with one bad event changes nothing.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol

from parley_runtime.errors import InvalidArgument, NotFound
from parley_runtime.ids import check_id
from parley_runtime.tenants import TENANT_ID_RE, TenantRegistry

from . import metrics
from .budgets import Budget, BudgetState, BudgetStatus, StatusCache, evaluate, month_bounds
from .events import EventError, Usage, validate
from .log import logger
from .pricing import LEVERS, PICO, Priced, Pricer, usd
from .reports import (
    CostReport,
    CostRow,
    Dimension,
    Period,
    ReportTooLarge,
    Savings,
    SessionBill,
    line_items,
)

# Keys named in one conflict warning (keys are at most 200 characters).
_MAX_LOGGED_CONFLICTS = 20


class BadEvent(InvalidArgument):
    """One event of a batch is invalid; nothing of the batch was applied."""

    def __init__(self, index: int, key: str, reason: str) -> None:
        shown = f" ({key[:60]!r})" if key else ""
        super().__init__(f"events[{index}]{shown}: {reason}; the batch was not applied")
        self.index = index


class ReportTooLargeError(InvalidArgument):
    pass


class LedgerStore(Protocol):
    async def ingest(self, tenant: str, batch: Sequence[tuple[Usage, Priced]]) -> Any: ...

    async def cost_rows(
        self, tenant: str, period: Period, group_by: Sequence[Dimension], *, max_rows: int
    ) -> list[CostRow]: ...

    async def savings_sums(self, tenant: str, period: Period) -> dict[str, Any]: ...

    async def session_groups(self, tenant: str, session_id: str) -> list[dict[str, Any]]: ...

    async def month_spend(
        self, tenant: str, first_day: dt.date, next_month: dt.date
    ) -> Decimal: ...

    async def get_budget(self, tenant: str) -> Budget | None: ...

    async def set_budget(self, tenant: str, budget: Budget, updated_by: str) -> None: ...

    async def record_alert(
        self, tenant: str, month: dt.date, level: str, spent: Decimal, limit: Decimal
    ) -> bool: ...


@dataclass(frozen=True, slots=True)
class IngestResult:
    accepted: int
    duplicates: int


@dataclass(frozen=True, slots=True)
class Limits:
    max_batch_events: int = 5000
    max_event_age: dt.timedelta = dt.timedelta(days=400)
    max_future_skew: dt.timedelta = dt.timedelta(minutes=5)
    report_max_rows: int = 50_000


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Ledger:
    def __init__(
        self,
        *,
        store: LedgerStore,
        pricer: Pricer,
        registry: TenantRegistry | None = None,
        budget_defaults: dict[str, Budget] | None = None,
        budget_cache_s: float = 5.0,
        metrics_max_tenants: int = 50,
        limits: Limits | None = None,
        clock: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        self.store = store
        self.pricer = pricer
        self.registry = registry
        self.budget_defaults = dict(budget_defaults or {})
        self.limits = limits or Limits()
        self.clock = clock
        self.tenant_label = metrics.TenantLabels(metrics_max_tenants)
        self._status = StatusCache(budget_cache_s)
        self._refreshing: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._alerted: set[tuple[str, dt.date, str]] = set()

    # ------------------------------------------------------------------------ tenants

    def check_tenant(self, tenant: str) -> None:
        # With a tenants file, every id not in it is unknown (NOT_FOUND), however it is spelled,
        # as in the other services (TenantRegistry.get) and for the usage client, which moves
        # a NOT_FOUND batch to its dead-letter file. Without one, any well-formed id is a
        # tenant, and the format check is what keeps ids sane (they key row-level security and
        # label metrics).
        if self.registry is not None:
            if tenant not in self.registry:
                raise NotFound(f"unknown tenant {tenant[:70]!r}")
            return
        if not TENANT_ID_RE.match(tenant):
            raise InvalidArgument(
                f"tenant id {tenant[:70]!r} is not a valid tenant id: it must match "
                f"{TENANT_ID_RE.pattern}"
            )

    # ------------------------------------------------------------------------- ingest

    async def ingest(self, tenant: str, usages: Sequence[Usage]) -> IngestResult:
        self.check_tenant(tenant)
        if len(usages) > self.limits.max_batch_events:
            raise InvalidArgument(
                f"batch of {len(usages)} events exceeds the limit of "
                f"{self.limits.max_batch_events}; split it"
            )
        metrics.BATCH_SIZE.observe(len(usages))
        now = self.clock()
        priced: list[tuple[Usage, Priced]] = []
        seen: dict[str, bytes] = {}
        conflicts: set[str] = set()
        for index, usage in enumerate(usages):
            try:
                validate(usage, now=now, max_age=self.limits.max_event_age,
                         max_future_skew=self.limits.max_future_skew)
                price = self.pricer.price(usage)
            except EventError as exc:
                metrics.EVENTS.labels("rejected").inc(len(usages))
                raise BadEvent(index, usage.idempotency_key, str(exc)) from None
            # A key repeated inside one batch counts once, like a key repeated across batches.
            first = seen.get(usage.idempotency_key)
            if first is not None:
                if first != usage.raw:
                    conflicts.add(usage.idempotency_key)
                continue
            seen[usage.idempotency_key] = usage.raw
            priced.append((usage, price))
        if not priced:
            return IngestResult(0, len(usages))
        stored = await self.store.ingest(tenant, priced)
        inserted: frozenset[str] = stored.inserted_keys
        conflicts.update(stored.conflicting_keys)
        if conflicts:
            self._report_conflicts(tenant, conflicts)
        self._observe(tenant, priced, inserted)
        if inserted:
            self._after_spend(tenant)
        return IngestResult(len(inserted), len(usages) - len(inserted))

    def _report_conflicts(self, tenant: str, keys: set[str]) -> None:
        """Keys re-sent with other content still count once (the contract), but that is a
        sender bug that loses usage: warn with the keys (never the events, which are the
        tenant's data) and count it per tenant for alerting."""
        metrics.IDEMPOTENCY_CONFLICTS.labels(self.tenant_label(tenant)).inc(len(keys))
        shown = sorted(keys)[:_MAX_LOGGED_CONFLICTS]  # one line per batch, bounded
        logger.warning(
            "idempotency key re-sent with different content: the first event counts, the new "
            "one was dropped; the sender must use a new key per metered occurrence",
            extra={"tenant": tenant, "idempotency_keys": shown, "conflicts": len(keys)},
        )

    def _observe(
        self, tenant: str, priced: Sequence[tuple[Usage, Priced]], inserted: frozenset[str]
    ) -> None:
        metrics.EVENTS.labels("accepted").inc(len(inserted))
        metrics.EVENTS.labels("duplicate").inc(len(priced) - len(inserted))
        label = self.tenant_label(tenant)
        cost: dict[str, int] = defaultdict(int)
        usage: dict[tuple[str, str], float] = defaultdict(float)
        saved: dict[str, int] = defaultdict(int)
        now = self.clock()
        observe_lag = metrics.INGEST_LAG.observe
        dedup = fps = caching = routing = embedding = 0
        for u, p in priced:
            if u.idempotency_key not in inserted:
                continue
            cost[p.model_id] += p.cost
            usage[(p.model_id, p.unit)] += p.quantity
            dedup += p.saved_dedup
            fps += p.saved_adaptive_fps
            caching += p.saved_caching
            routing += p.saved_routing
            embedding += p.saved_embedding_cache
            observe_lag(max(0.0, (now - u.occurred_at).total_seconds()))
        saved.update(dedup=dedup, adaptive_fps=fps, caching=caching, routing=routing,
                     embedding_cache=embedding)
        for model, pico in cost.items():
            metrics.COST.labels(label, model).inc(pico / PICO)
        for (model, unit), quantity in usage.items():
            metrics.USAGE.labels(label, model, unit).inc(quantity)
        for lever, pico in saved.items():
            if pico > 0:
                metrics.SAVED.labels(label, lever).inc(pico / PICO)

    def _after_spend(self, tenant: str) -> None:
        """Re-evaluate the tenant's budget soon after new spend (fires alerts), at most one
        evaluation per tenant per cache period."""
        if self._status.get(tenant) is not None or tenant in self._refreshing:
            return
        self._refreshing.add(tenant)

        async def refresh() -> None:
            try:
                await self.check_budget(tenant)
            except Exception:
                logger.exception("budget evaluation failed", extra={"tenant": tenant})
            finally:
                self._refreshing.discard(tenant)

        task = asyncio.get_running_loop().create_task(refresh())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------------ reports

    async def cost_report(
        self, tenant: str, period: Period, group_by: Sequence[Dimension]
    ) -> CostReport:
        self.check_tenant(tenant)
        if len(set(group_by)) != len(group_by):
            raise InvalidArgument("group_by lists a dimension twice")
        try:
            rows = await self.store.cost_rows(
                tenant, period, group_by, max_rows=self.limits.report_max_rows
            )
        except ReportTooLarge as exc:
            raise ReportTooLargeError(
                f"the report has more than {exc.rows} rows: narrow the period or group by "
                "fewer dimensions"
            ) from None
        total = sum((r.cost_usd for r in rows), Decimal(0))
        return CostReport(tuple(group_by), rows, total, sum(r.events for r in rows))

    async def savings(self, tenant: str, period: Period) -> Savings:
        self.check_tenant(tenant)
        return Savings.from_sums(await self.store.savings_sums(tenant, period))

    async def session_bill(self, tenant: str, session_id: str) -> SessionBill:
        self.check_tenant(tenant)
        # The rule ingest applies to stored session ids: anything else cannot have a bill, and
        # a NUL would fail inside the database driver (INTERNAL); the message does not echo
        # the value (a long one would overflow the status trailer).
        check_id("session_id", session_id, required=True)
        groups = await self.store.session_groups(tenant, session_id)
        if not groups:
            raise NotFound(f"no usage recorded for session {session_id!r}")
        sums: dict[str, Any] = defaultdict(Decimal)
        for g in groups:
            for key in ("cost_pusd", "naive_pusd", *(f"saved_{lever}_pusd" for lever in LEVERS)):
                sums[key] += Decimal(g[key])
        return SessionBill(
            session_id=session_id,
            items=line_items(groups, self.pricer),
            total_usd=usd(sums["cost_pusd"]),
            savings=Savings.from_sums(sums),
            first_event_at=min(g["first_at"] for g in groups),
            last_event_at=max(g["last_at"] for g in groups),
            events=sum(int(g["events"]) for g in groups),
        )

    # ------------------------------------------------------------------------ budgets

    async def effective_budget(self, tenant: str) -> Budget | None:
        stored = await self.store.get_budget(tenant)
        return stored if stored is not None else self.budget_defaults.get(tenant)

    async def get_budget(self, tenant: str) -> BudgetStatus:
        """Fresh (uncached) budget and this month's spend."""
        self.check_tenant(tenant)
        budget = await self.effective_budget(tenant)
        first, following = month_bounds(self.clock())
        spent = await self.store.month_spend(tenant, first, following)
        status = BudgetStatus(budget, spent, evaluate(budget, spent), first)
        self._status.put(tenant, status)
        await self._alert(tenant, status)
        return status

    async def set_budget(self, tenant: str, budget: Budget, updated_by: str) -> BudgetStatus:
        self.check_tenant(tenant)
        await self.store.set_budget(tenant, budget, updated_by)
        self._status.invalidate(tenant)
        logger.info("budget set", extra={"tenant": tenant, "by": updated_by,
                                         "limit_usd": str(budget.monthly_limit_usd),
                                         "hard": budget.hard_limit})
        return await self.get_budget(tenant)

    async def check_budget(self, tenant: str) -> BudgetStatus:
        """The cheap check: answers from a cache refreshed every few seconds."""
        self.check_tenant(tenant)
        cached = self._status.get(tenant)
        if cached is not None:
            return cached
        return await self.get_budget(tenant)

    async def _alert(self, tenant: str, status: BudgetStatus) -> None:
        budget = status.budget
        label = self.tenant_label(tenant)
        if budget is None:
            return
        limit = budget.monthly_limit_usd
        if limit > 0:
            metrics.BUDGET_USED.labels(label).set(float(status.spent_usd / limit))
        levels = []
        if status.state is not BudgetState.OK:
            levels.append("soft")
        if status.spent_usd >= limit:
            levels.append("hard")
        for level in levels:
            key = (tenant, status.month, level)
            if key in self._alerted:
                continue
            self._alerted.add(key)
            if await self.store.record_alert(tenant, status.month, level, status.spent_usd,
                                             limit):
                metrics.BUDGET_ALERTS.labels(label, level).inc()
                logger.warning(
                    "budget alert: monthly spend reached the %s threshold", level,
                    extra={"tenant": tenant, "level": level, "spent_usd": str(status.spent_usd),
                           "limit_usd": str(limit), "hard_limit": budget.hard_limit,
                           "month": status.month.isoformat()},
                )

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
