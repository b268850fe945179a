"""The gRPC face of billing-svc: protobuf to and from the ledger's domain objects.

Authentication and the tenant come from the runtime's interceptor (the token's tenant; a
mismatching x-parley-tenant-id is PERMISSION_DENIED before any of this runs). Errors are
ParleyErrors mapped to status codes by the interceptor.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from parley.billing.v1 import billing_pb2, billing_pb2_grpc
from parley_runtime import context
from parley_runtime.errors import InvalidArgument

from .budgets import Budget, BudgetState, BudgetStatus
from .events import EventError, Usage, UsageType
from .ledger import BadEvent, Ledger
from .reports import Dimension, Period, Savings

SERVICE_NAME = "parley.billing.v1.BillingService"
# Trailing metadata naming the index of the event that made a batch invalid.
BAD_EVENT_TRAILER = "x-parley-bad-event-index"

_DIMENSIONS = {
    billing_pb2.DIMENSION_DAY: Dimension.DAY,
    billing_pb2.DIMENSION_SESSION: Dimension.SESSION,
    billing_pb2.DIMENSION_SERVICE: Dimension.SERVICE,
    billing_pb2.DIMENSION_MODEL: Dimension.MODEL,
    billing_pb2.DIMENSION_USAGE_TYPE: Dimension.USAGE_TYPE,
}
_STATES = {
    BudgetState.OK: billing_pb2.BUDGET_STATE_OK,
    BudgetState.SOFT_EXCEEDED: billing_pb2.BUDGET_STATE_SOFT_EXCEEDED,
    BudgetState.HARD_EXCEEDED: billing_pb2.BUDGET_STATE_HARD_EXCEEDED,
    BudgetState.NO_BUDGET: billing_pb2.BUDGET_STATE_NO_BUDGET,
}
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_KINDS = {k.value: k for k in UsageType}


def _time(ts: Timestamp, name: str) -> dt.datetime:
    seconds, nanos = ts.seconds, ts.nanos
    if not 0 <= nanos < 1_000_000_000:
        raise EventError(f"{name} has invalid nanos")
    try:
        return _EPOCH + dt.timedelta(seconds=seconds, microseconds=nanos // 1000)
    except OverflowError:
        raise EventError(f"{name} is out of range") from None


def _stamp(value: dt.datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


def usage_from_pb(ev: billing_pb2.UsageEvent, caller: str | None) -> Usage:
    """The domain view of one event; EventError when its shape is wrong."""
    kind = ev.WhichOneof("usage")
    if kind is None:
        raise EventError(
            "unknown or missing usage type: set one of llm, vision, stt, tts, embedding, session"
        )
    if not ev.HasField("occurred_at"):
        raise EventError("occurred_at is required")
    u = Usage(
        idempotency_key=ev.idempotency_key,
        occurred_at=_time(ev.occurred_at, "occurred_at"),
        session_id=ev.session_id,
        service=ev.service or caller or "",
        usage_type=_KINDS[kind],
        raw=ev.SerializeToString(),
    )
    if kind == "llm":
        m = ev.llm
        u.provider, u.model_id, u.tier = m.provider, m.model_id, m.tier
        u.input_tokens, u.cached_input_tokens = m.input_tokens, m.cached_input_tokens
        u.cache_write_tokens, u.output_tokens, u.images = (
            m.cache_write_tokens, m.output_tokens, m.images
        )
        u.latency_ms = m.latency_ms
    elif kind == "vision":
        v = ev.vision
        u.model_id = v.model_id
        u.frames_seen, u.frames_kept = v.frames_seen, v.frames_kept
        u.dropped_rate, u.dropped_duplicate = v.dropped_rate, v.dropped_duplicate
        u.image_tokens_sent, u.naive_image_tokens = v.image_tokens_sent, v.naive_image_tokens
        u.source_fps = v.source_fps
    elif kind == "stt":
        u.provider, u.model_id, u.audio_seconds = ev.stt.provider, ev.stt.model_id, (
            ev.stt.audio_seconds
        )
    elif kind == "tts":
        u.provider, u.model_id, u.characters = ev.tts.provider, ev.tts.model_id, (
            ev.tts.characters
        )
    elif kind == "embedding":
        e = ev.embedding
        u.provider, u.model_id, u.input_tokens = e.provider, e.model_id, e.tokens
        u.cached_texts, u.embedded_texts = e.cached_texts, e.embedded_texts
    else:
        u.minutes = ev.session.minutes
    return u


def period_from_pb(start: Timestamp | None, end: Timestamp | None) -> Period:
    try:
        return Period(
            _time(start, "from") if start is not None else None,
            _time(end, "to") if end is not None else None,
        )
    except (EventError, ValueError) as exc:
        raise InvalidArgument(f"bad period: {exc}") from None


def savings_pb(s: Savings) -> billing_pb2.Savings:
    return billing_pb2.Savings(
        actual_usd=float(s.actual_usd),
        naive_usd=float(s.naive_usd),
        levers=[billing_pb2.LeverSaving(lever=k, saved_usd=float(v)) for k, v in s.levers.items()],
    )


def budget_pb(b: Budget) -> billing_pb2.Budget:
    return billing_pb2.Budget(
        monthly_limit_usd=float(b.monthly_limit_usd),
        soft_limit_ratio=b.soft_limit_ratio,
        hard_limit=b.hard_limit,
    )


def _money(value: Decimal) -> float:
    return float(value)


class BillingServicer(billing_pb2_grpc.BillingServiceServicer):
    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger

    async def IngestUsage(
        self, request: billing_pb2.IngestUsageRequest, ctx: grpc.aio.ServicerContext[Any, Any]
    ) -> billing_pb2.IngestUsageResponse:
        tenant = context.require_tenant()
        caller = context.current().caller
        usages: list[Usage] = []
        try:
            for index, ev in enumerate(request.events):
                try:
                    usages.append(usage_from_pb(ev, caller))
                except EventError as exc:
                    raise BadEvent(index, ev.idempotency_key, str(exc)) from None
            result = await self._ledger.ingest(tenant, usages)
        except BadEvent as exc:
            ctx.set_trailing_metadata(((BAD_EVENT_TRAILER, str(exc.index)),))
            raise
        return billing_pb2.IngestUsageResponse(
            accepted=result.accepted, duplicates=result.duplicates
        )

    async def GetCostReport(
        self, request: billing_pb2.GetCostReportRequest, ctx: grpc.aio.ServicerContext[Any, Any]
    ) -> billing_pb2.GetCostReportResponse:
        tenant = context.require_tenant()
        period = period_from_pb(
            getattr(request, "from") if request.HasField("from") else None,
            request.to if request.HasField("to") else None,
        )
        dims = []
        for d in request.group_by:
            if d not in _DIMENSIONS:
                raise InvalidArgument(f"group_by has an unknown dimension ({d})")
            dims.append(_DIMENSIONS[d])
        report = await self._ledger.cost_report(tenant, period, dims)
        return billing_pb2.GetCostReportResponse(
            rows=[billing_pb2.CostRow(keys=list(r.keys), cost_usd=_money(r.cost_usd),
                                      events=r.events) for r in report.rows],
            total_usd=_money(report.total_usd),
        )

    async def GetSessionBill(
        self, request: billing_pb2.GetSessionBillRequest, ctx: grpc.aio.ServicerContext[Any, Any]
    ) -> billing_pb2.GetSessionBillResponse:
        tenant = context.require_tenant()
        bill = await self._ledger.session_bill(tenant, request.session_id)
        return billing_pb2.GetSessionBillResponse(
            session_id=bill.session_id,
            items=[
                billing_pb2.LineItem(
                    usage_type=i.usage_type, service=i.service, model_id=i.model_id,
                    quantity=float(i.quantity), unit=i.unit, cost_usd=_money(i.cost_usd),
                    price_version=i.price_version,
                )
                for i in bill.items
            ],
            total_usd=_money(bill.total_usd),
            savings=savings_pb(bill.savings),
            first_event_at=_stamp(bill.first_event_at),
            last_event_at=_stamp(bill.last_event_at),
        )

    async def GetSavings(
        self, request: billing_pb2.GetSavingsRequest, ctx: grpc.aio.ServicerContext[Any, Any]
    ) -> billing_pb2.GetSavingsResponse:
        tenant = context.require_tenant()
        period = period_from_pb(
            getattr(request, "from") if request.HasField("from") else None,
            request.to if request.HasField("to") else None,
        )
        return billing_pb2.GetSavingsResponse(
            savings=savings_pb(await self._ledger.savings(tenant, period))
        )

    async def SetBudget(
        self, request: billing_pb2.SetBudgetRequest, ctx: grpc.aio.ServicerContext[Any, Any]
    ) -> billing_pb2.SetBudgetResponse:
        tenant = context.require_tenant()
        if not request.HasField("budget"):
            raise InvalidArgument("budget is required")
        b = request.budget
        try:
            budget = Budget.checked(b.monthly_limit_usd, b.soft_limit_ratio, b.hard_limit)
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from None
        status = await self._ledger.set_budget(tenant, budget, context.current().caller or "")
        assert status.budget is not None
        return billing_pb2.SetBudgetResponse(budget=budget_pb(status.budget))

    async def GetBudget(
        self, request: billing_pb2.GetBudgetRequest, ctx: grpc.aio.ServicerContext[Any, Any]
    ) -> billing_pb2.GetBudgetResponse:
        tenant = context.require_tenant()
        status = await self._ledger.get_budget(tenant)
        resp = billing_pb2.GetBudgetResponse(spent_this_month_usd=_money(status.spent_usd))
        if status.budget is not None:
            resp.budget.CopyFrom(budget_pb(status.budget))
        return resp

    async def CheckBudget(
        self, request: billing_pb2.CheckBudgetRequest, ctx: grpc.aio.ServicerContext[Any, Any]
    ) -> billing_pb2.CheckBudgetResponse:
        tenant = context.require_tenant()
        return check_budget_pb(await self._ledger.check_budget(tenant))


def check_budget_pb(status: BudgetStatus) -> billing_pb2.CheckBudgetResponse:
    return billing_pb2.CheckBudgetResponse(
        state=_STATES[status.state],
        spent_this_month_usd=_money(status.spent_usd),
        monthly_limit_usd=(
            _money(status.budget.monthly_limit_usd) if status.budget is not None else 0.0
        ),
    )


def register(server: grpc.aio.Server, ledger: Ledger) -> None:
    billing_pb2_grpc.add_BillingServiceServicer_to_server(BillingServicer(ledger), server)

