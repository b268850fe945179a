"""Budgets: tenant-file defaults, SetBudget/GetBudget, the cached CheckBudget, alerts."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging

import grpc
import pytest
from parley.billing.v1 import billing_pb2
from parley_billing import metrics
from parley_billing.testing import billing_stub, llm_event, start_billing, tenant_md
from parley_runtime.tenants import TenantRegistry

pytestmark = pytest.mark.integration

TENANTS = TenantRegistry.from_dict({"tenants": {
    "acme": {"billing": {"monthly_budget_usd": 1.0, "soft_limit_ratio": 0.5,
                         "hard_limit": True}},
    "globex": {},
}})


def _dollars(n: float, key: str, at: dt.datetime | None = None) -> billing_pb2.UsageEvent:
    # claude-sonnet-4-6 input at 3.00 per Mtok: n dollars of input tokens.
    return llm_event(key, at=at, model="claude-sonnet-4-6", input_tokens=int(n * 1e6 / 3),
                     output_tokens=0)


async def test_budget_lifecycle(billing_dsns: tuple[str, str],
                                caplog: pytest.LogCaptureFixture) -> None:
    h = await start_billing(*billing_dsns, registry=TENANTS, budget_cache_s=0.3)
    soft_before = metrics.BUDGET_ALERTS.labels("acme", "soft")._value.get()
    try:
        async with billing_stub(h.port) as stub:
            acme, globex = tenant_md("acme"), tenant_md("globex")
            check = await stub.CheckBudget(billing_pb2.CheckBudgetRequest(), metadata=acme)
            assert check.state == billing_pb2.BUDGET_STATE_OK
            assert check.monthly_limit_usd == 1.0
            got = await stub.GetBudget(billing_pb2.GetBudgetRequest(), metadata=acme)
            assert got.budget.soft_limit_ratio == 0.5 and got.budget.hard_limit
            none = await stub.CheckBudget(billing_pb2.CheckBudgetRequest(), metadata=globex)
            assert none.state == billing_pb2.BUDGET_STATE_NO_BUDGET
            assert not (await stub.GetBudget(billing_pb2.GetBudgetRequest(),
                                             metadata=globex)).HasField("budget")

            # Last month's spend does not count against this month.
            last_month = dt.datetime.now(dt.UTC).replace(day=1) - dt.timedelta(days=3)
            await stub.IngestUsage(billing_pb2.IngestUsageRequest(
                events=[_dollars(5, "old", at=last_month)]), metadata=acme)
            with caplog.at_level(logging.WARNING, logger="parley.billing"):
                await stub.IngestUsage(billing_pb2.IngestUsageRequest(
                    events=[_dollars(0.6, "a")]), metadata=acme)
                await asyncio.sleep(0.4)  # past the cache period
                check = await stub.CheckBudget(billing_pb2.CheckBudgetRequest(), metadata=acme)
                assert check.state == billing_pb2.BUDGET_STATE_SOFT_EXCEEDED
                assert check.spent_this_month_usd == pytest.approx(0.6, abs=1e-5)
            assert any("budget alert" in r.getMessage() and getattr(r, "level", "") == "soft"
                       for r in caplog.records)
            assert metrics.BUDGET_ALERTS.labels("acme", "soft")._value.get() == soft_before + 1

            await stub.IngestUsage(billing_pb2.IngestUsageRequest(
                events=[_dollars(0.5, "b")]), metadata=acme)
            await asyncio.sleep(0.4)
            check = await stub.CheckBudget(billing_pb2.CheckBudgetRequest(), metadata=acme)
            assert check.state == billing_pb2.BUDGET_STATE_HARD_EXCEEDED
            # The soft alert fired once, not on every evaluation.
            assert metrics.BUDGET_ALERTS.labels("acme", "soft")._value.get() == soft_before + 1

            # SetBudget overrides the tenant file's default.
            r = await stub.SetBudget(billing_pb2.SetBudgetRequest(
                budget=billing_pb2.Budget(monthly_limit_usd=10.0, hard_limit=True)),
                metadata=acme)
            assert r.budget.monthly_limit_usd == 10.0 and r.budget.soft_limit_ratio == 0.8
            check = await stub.CheckBudget(billing_pb2.CheckBudgetRequest(), metadata=acme)
            assert check.state == billing_pb2.BUDGET_STATE_OK
            assert check.monthly_limit_usd == 10.0
            # globex is untouched by acme's budget and spend.
            other = await stub.GetBudget(billing_pb2.GetBudgetRequest(), metadata=globex)
            assert other.spent_this_month_usd == 0 and not other.HasField("budget")

            for bad in (billing_pb2.Budget(monthly_limit_usd=-1),
                        billing_pb2.Budget(monthly_limit_usd=float("nan")),
                        billing_pb2.Budget(monthly_limit_usd=5, soft_limit_ratio=1.5)):
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await stub.SetBudget(billing_pb2.SetBudgetRequest(budget=bad), metadata=acme)
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.SetBudget(billing_pb2.SetBudgetRequest(), metadata=acme)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            # Tenants the registry does not know are NOT_FOUND.
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.CheckBudget(billing_pb2.CheckBudgetRequest(),
                                       metadata=tenant_md("initech"))
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        await h.close()


async def test_check_budget_is_served_from_a_short_cache(billing_dsns: tuple[str, str]) -> None:
    h = await start_billing(*billing_dsns, registry=TENANTS, budget_cache_s=60)
    try:
        async with billing_stub(h.port) as stub:
            acme = tenant_md("acme")
            first = await stub.CheckBudget(billing_pb2.CheckBudgetRequest(), metadata=acme)
            await stub.IngestUsage(billing_pb2.IngestUsageRequest(events=[_dollars(2, "x")]),
                                   metadata=acme)
            # Within the cache period CheckBudget does not query: same answer, fast.
            started = asyncio.get_running_loop().time()
            for _ in range(200):
                cached = await stub.CheckBudget(billing_pb2.CheckBudgetRequest(), metadata=acme)
            per_call = (asyncio.get_running_loop().time() - started) / 200
            assert cached.spent_this_month_usd == first.spent_this_month_usd == 0
            assert per_call < 0.01
            # GetBudget reads fresh and refreshes the cache.
            fresh = await stub.GetBudget(billing_pb2.GetBudgetRequest(), metadata=acme)
            assert fresh.spent_this_month_usd == pytest.approx(2, abs=1e-5)
            again = await stub.CheckBudget(billing_pb2.CheckBudgetRequest(), metadata=acme)
            assert again.state == billing_pb2.BUDGET_STATE_HARD_EXCEEDED
    finally:
        await h.close()
