"""Tenant policy through the running service: budgets from a (fake, in-process) billing-svc,
the premium-share cap, and a Redis outage."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import httpx
import pytest
from parley.billing.v1 import billing_pb2, billing_pb2_grpc
from parley.router.v1 import router_pb2
from parley_router.testing import MakeRouter, chat, user
from parley_runtime.context import require_tenant
from parley_runtime.server import GrpcServiceHost
from parley_runtime.settings import ServiceSettings
from parley_runtime.testing import free_port, start_test_host

pytestmark = pytest.mark.integration

PREMIUM = router_pb2.TIER_PREMIUM


class FakeBilling(billing_pb2_grpc.BillingServiceServicer):
    """A real gRPC BillingService that only answers CheckBudget (billing-svc is not ready)."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def CheckBudget(self, request: Any, context: Any) -> Any:
        tenant = require_tenant()  # the router acts for the tenant
        self.calls.append(tenant)
        if tenant == "budget-tiny":
            return billing_pb2.CheckBudgetResponse(
                state=billing_pb2.BUDGET_STATE_HARD_EXCEEDED,
                spent_this_month_usd=0.000682, monthly_limit_usd=0.0001)
        if tenant.startswith("budget-"):
            return billing_pb2.CheckBudgetResponse(
                state=billing_pb2.BUDGET_STATE_HARD_EXCEEDED,
                spent_this_month_usd=101.5, monthly_limit_usd=100.0)
        return billing_pb2.CheckBudgetResponse(state=billing_pb2.BUDGET_STATE_OK,
                                               spent_this_month_usd=3.0, monthly_limit_usd=100.0)


@pytest.fixture
async def billing() -> AsyncIterator[tuple[GrpcServiceHost, FakeBilling]]:
    servicer = FakeBilling()

    def register(host: GrpcServiceHost) -> None:
        billing_pb2_grpc.add_BillingServiceServicer_to_server(servicer, host.server)

    host = await start_test_host(ServiceSettings(service_name="billing-svc"), register)
    yield host, servicer
    await host.stop(0)


async def test_hard_exceeded_budget_refuses_with_a_clear_message(
    make_router: MakeRouter, emulator: httpx.AsyncClient, billing: Any,
) -> None:
    host, servicer = billing
    r = await make_router(billing_addr=f"127.0.0.1:{host.port}")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await r.turn(chat(user("hello")), tenant="budget-refuse")
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "monthly budget is exhausted" in (err.value.details() or "")
    assert "$101.50" in err.value.details()
    # Fractions of a cent keep their digits (not "$0.00 spent of $0.00").
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await r.turn(chat(user("hello")), tenant="budget-tiny")
    assert "($0.000682 spent of $0.0001)" in (err.value.details() or ""), err.value.details()
    assert (await emulator.get("/admin/stats")).json()["totals"].get("requests", 0) == 0


async def test_hard_exceeded_budget_downgrades_when_the_tenant_chose_so(
    make_router: MakeRouter, emulator: httpx.AsyncClient, billing: Any,
) -> None:
    host, servicer = billing
    r = await make_router(billing_addr=f"127.0.0.1:{host.port}")
    res = await r.turn(chat(user("prove that there are infinitely many primes"), tier=PREMIUM),
                       tenant="budget-downgrade")
    assert res.route.tier == router_pb2.TIER_SIMPLE
    assert "budget exhausted" in res.route.reason


async def test_budget_answers_are_cached_per_tenant(
    make_router: MakeRouter, emulator: httpx.AsyncClient, billing: Any,
) -> None:
    host, servicer = billing
    r = await make_router(billing_addr=f"127.0.0.1:{host.port}", budget_cache_s=30)
    for _ in range(5):
        await r.turn(chat(user("hello")), tenant="acme")
    await r.turn(chat(user("hello")), tenant="globex")
    assert servicer.calls == ["acme", "globex"]


async def test_billing_down_never_fails_or_slows_a_turn(
    make_router: MakeRouter, emulator: httpx.AsyncClient,
) -> None:
    r = await make_router(billing_addr=f"127.0.0.1:{free_port()}", budget_timeout_s=0.2)
    start = time.perf_counter()
    for _ in range(5):
        res = await r.turn(chat(user("hello")), tenant="budget-refuse")
        assert res.completion.finish_reason == router_pb2.FINISH_REASON_STOP
    # At most one short wait (the first turn), then the failure is remembered.
    assert time.perf_counter() - start < 3.0


async def test_premium_share_cap_downgrades_with_the_reason(
    make_router: MakeRouter, emulator: httpx.AsyncClient,
) -> None:
    r = await make_router()
    results = [await r.turn(chat(user("design a sharded rate limiter"), tier=PREMIUM),
                            tenant="capped") for _ in range(10)]
    tiers = [res.route.tier for res in results]
    assert tiers.count(PREMIUM) == 2  # (premium + 1) <= 20% of (turns + 1)
    downgraded = [res for res in results if res.route.tier != PREMIUM]
    assert all(res.route.tier == router_pb2.TIER_STANDARD for res in downgraded)
    assert all("premium share cap 20% reached" in res.route.reason for res in downgraded)
    # Uncapped tenants are not affected.
    res = await r.turn(chat(user("design a sharded rate limiter"), tier=PREMIUM), tenant="acme")
    assert res.route.tier == PREMIUM


async def test_redis_outage_keeps_turns_flowing_when_failing_open(
    make_router: MakeRouter, emulator: httpx.AsyncClient,
) -> None:
    r = await make_router(redis_url=f"redis://127.0.0.1:{free_port()}/0", redis_timeout_s=0.1)
    start = time.perf_counter()
    for _ in range(3):
        res = await r.turn(chat(user("hello")))
        assert res.completion.finish_reason == router_pb2.FINISH_REASON_STOP
    assert time.perf_counter() - start < 3.0


async def test_redis_outage_fails_closed_when_configured(
    make_router: MakeRouter, emulator: httpx.AsyncClient,
) -> None:
    r = await make_router(redis_url=f"redis://127.0.0.1:{free_port()}/0", redis_timeout_s=0.1,
                          rate_limit_fail_mode="closed")
    start = time.perf_counter()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await r.turn(chat(user("hello")))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "fail closed" in (err.value.details() or "")
    assert time.perf_counter() - start < 2.0
