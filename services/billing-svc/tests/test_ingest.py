"""Ingest through the real gRPC service into PostgreSQL: exactly once, all or nothing, isolated."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time

import asyncpg
import grpc
import jwt
import pytest
from parley.billing.v1 import billing_pb2
from parley_billing.testing import (
    BillingHarness,
    billing_stub,
    embedding_event,
    llm_event,
    session_event,
    start_billing,
    stt_event,
    tenant_md,
    tts_event,
    vision_event,
)
from parley_runtime.tenants import TenantRegistry
from parley_runtime.testing import TEST_KEYS
from prometheus_client import REGISTRY

pytestmark = pytest.mark.integration


def _req(*events: billing_pb2.UsageEvent) -> billing_pb2.IngestUsageRequest:
    return billing_pb2.IngestUsageRequest(events=list(events))


async def _count(h: BillingHarness, tenant: str | None = None) -> int:
    conn = await asyncpg.connect(h.owner_dsn)  # superuser: sees every tenant
    try:
        if tenant is None:
            return int(await conn.fetchval("SELECT count(*) FROM usage_events"))
        return int(await conn.fetchval(
            "SELECT count(*) FROM usage_events WHERE tenant_id = $1", tenant))
    finally:
        await conn.close()


async def test_same_key_twice_counts_once(billing: BillingHarness) -> None:
    async with billing_stub(billing.port) as stub:
        first = await stub.IngestUsage(_req(llm_event("k1"), stt_event("k2")),
                                       metadata=tenant_md("acme"))
        assert (first.accepted, first.duplicates) == (2, 0)
        again = await stub.IngestUsage(_req(llm_event("k1"), stt_event("k2"), tts_event("k3")),
                                       metadata=tenant_md("acme"))
        assert (again.accepted, again.duplicates) == (1, 2)
        # A key repeated inside one batch counts once too.
        inner = await stub.IngestUsage(_req(tts_event("k4"), tts_event("k4")),
                                       metadata=tenant_md("acme"))
        assert (inner.accepted, inner.duplicates) == (1, 1)
        # Idempotency keys are per tenant: globex may use "k1" as well.
        other = await stub.IngestUsage(_req(llm_event("k1")), metadata=tenant_md("globex"))
        assert other.accepted == 1
        report = await stub.GetCostReport(billing_pb2.GetCostReportRequest(),
                                          metadata=tenant_md("acme"))
    assert await _count(billing, "acme") == 4
    assert report.rows[0].events == 4


async def test_a_key_reused_for_other_content_counts_once_and_is_reported(
    billing: BillingHarness, caplog: pytest.LogCaptureFixture,
) -> None:
    def conflicts(tenant: str) -> float:
        return REGISTRY.get_sample_value("parley_billing_idempotency_conflicts_total",
                                         {"tenant": tenant}) or 0.0

    before = conflicts("acme")
    at = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
    async with billing_stub(billing.port) as stub:
        await stub.IngestUsage(_req(llm_event("c1", at=at), llm_event("c2", at=at)),
                               metadata=tenant_md("acme"))
        # An honest re-send (same event) is a plain duplicate: nothing to report.
        with caplog.at_level(logging.WARNING, logger="parley.billing"):
            same = await stub.IngestUsage(_req(llm_event("c1", at=at)),
                                          metadata=tenant_md("acme"))
        assert (same.accepted, same.duplicates) == (0, 1)
        assert conflicts("acme") == before
        assert not [r for r in caplog.records if "different content" in r.getMessage()]
        # The same key for other content, across batches and inside one: still counted once
        # (the contract), but warned about and counted.
        with caplog.at_level(logging.WARNING, logger="parley.billing"):
            other = await stub.IngestUsage(
                _req(llm_event("c1", at=at, output_tokens=999), llm_event("c3", at=at),
                     llm_event("c3", at=at, input_tokens=5)),
                metadata=tenant_md("acme"))
        assert (other.accepted, other.duplicates) == (1, 2)
    assert conflicts("acme") - before == 2
    [warning] = [r for r in caplog.records if "different content" in r.getMessage()]
    assert warning.levelno == logging.WARNING
    assert warning.__dict__["tenant"] == "acme"
    assert warning.__dict__["idempotency_keys"] == ["c1", "c3"]
    # Keys and tenant only: the events (the tenant's data) stay out of the log.
    assert "999" not in warning.getMessage() + repr(warning.__dict__.get("idempotency_keys"))
    assert await _count(billing, "acme") == 3


async def test_concurrent_duplicate_batches_count_once(billing: BillingHarness) -> None:
    at = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    batches = [
        [llm_event(f"dup-{i}", at=at, session=f"s{i % 7}") for i in range(start, start + 400)]
        for start in (0, 200, 0, 100, 300, 0)
    ]
    async with billing_stub(billing.port) as stub:
        results = await asyncio.gather(*(
            stub.IngestUsage(_req(*reversed(b)) if n % 2 else _req(*b),
                             metadata=tenant_md("acme"))
            for n, b in enumerate(batches)
        ))
        report = await stub.GetCostReport(
            billing_pb2.GetCostReportRequest(group_by=[billing_pb2.DIMENSION_SESSION]),
            metadata=tenant_md("acme"))
    assert sum(r.accepted for r in results) == 700
    assert sum(r.accepted + r.duplicates for r in results) == 2400
    assert await _count(billing, "acme") == 700
    # The rollups saw each event once as well.
    assert sum(r.events for r in report.rows) == 700
    expected = 700 * (1000 * 0.30 + 100 * 2.50) / 1e6
    assert report.total_usd == pytest.approx(expected, abs=1e-9)


async def test_a_batch_with_one_bad_event_changes_nothing(billing: BillingHarness) -> None:
    bad_cases = [
        (billing_pb2.UsageEvent(idempotency_key="no-type", service="x"), "usage type"),
        (llm_event("neg", input_tokens=-5), "must not be negative"),
        (llm_event("huge", output_tokens=10**11), "implausibly large"),
        (llm_event(""), "idempotency_key is required"),
        (llm_event("unknown-model", model="gpt-4o"), "not in price catalog"),
        (llm_event("wrong-kind", model="deepgram-nova-3"), "stt model"),
        (llm_event("cache", input_tokens=10, cached=20), "exceed input_tokens"),
        (stt_event("nan", seconds=float("nan")), "finite"),
        (llm_event("future", at=dt.datetime.now(dt.UTC) + dt.timedelta(days=2)), "future"),
    ]
    async with billing_stub(billing.port) as stub:
        for bad, fragment in bad_cases:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.IngestUsage(_req(llm_event("ok-1"), tts_event("ok-2"), bad),
                                       metadata=tenant_md("acme"))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            details = err.value.details() or ""
            assert details.startswith("events[2]"), details
            assert fragment in details and "not applied" in details
            trailers = dict(err.value.trailing_metadata() or ())
            assert trailers["x-parley-bad-event-index"] == "2"
        # A missing timestamp is refused too.
        no_time = llm_event("no-time")
        no_time.ClearField("occurred_at")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.IngestUsage(_req(no_time), metadata=tenant_md("acme"))
        assert "occurred_at is required" in (err.value.details() or "")
        # Too many events in one batch.
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.IngestUsage(_req(*[tts_event(f"b{i}") for i in range(5001)]),
                                   metadata=tenant_md("acme"))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "split it" in (err.value.details() or "")
        # The service is fine and nothing of the refused batches was stored.
        ok = await stub.IngestUsage(_req(llm_event("ok-1")), metadata=tenant_md("acme"))
        assert ok.accepted == 1
    assert await _count(billing) == 1


async def test_another_tenants_id_is_permission_denied(billing: BillingHarness) -> None:
    now = int(time.time())
    token_a = jwt.encode({"iss": "router-svc", "sub": "router-svc", "aud": "parley",
                          "tenant": "acme", "iat": now, "exp": now + 60},
                         TEST_KEYS["router-svc"], algorithm="HS256",
                         headers={"kid": "router-svc"})
    async with grpc.aio.insecure_channel(f"127.0.0.1:{billing.port}") as ch:
        call = ch.unary_unary(
            "/parley.billing.v1.BillingService/IngestUsage",
            request_serializer=billing_pb2.IngestUsageRequest.SerializeToString,
            response_deserializer=billing_pb2.IngestUsageResponse.FromString,
        )
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call(_req(llm_event("x")), metadata=(
                ("authorization", f"Bearer {token_a}"), ("x-parley-tenant-id", "globex")))
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call(_req(llm_event("x")), metadata=(("x-parley-tenant-id", "acme"),))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert await _count(billing) == 0


async def test_bad_tenant_ids_are_refused(billing: BillingHarness) -> None:
    # Without a tenants file any well-formed id is a tenant: the format is the check.
    async with billing_stub(billing.port) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.IngestUsage(_req(llm_event("x")), metadata=tenant_md("Not_Valid"))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_with_a_tenants_file_any_other_id_is_not_found(
    billing_dsns: tuple[str, str],
) -> None:
    # As in every other service (TenantRegistry.get), and what the usage client dead-letters.
    registry = TenantRegistry.from_dict({"tenants": {"acme": {}}})
    h = await start_billing(*billing_dsns, registry=registry)
    try:
        async with billing_stub(h.port) as stub:
            for tenant in ("initech", "Not_Valid", "x" * 300):
                for call in (
                    lambda md: stub.IngestUsage(_req(llm_event("x")), metadata=md),
                    lambda md: stub.CheckBudget(billing_pb2.CheckBudgetRequest(), metadata=md),
                ):
                    with pytest.raises(grpc.aio.AioRpcError) as err:
                        await call(tenant_md(tenant))
                    assert err.value.code() == grpc.StatusCode.NOT_FOUND, tenant
                    assert len(err.value.details() or "") < 200
            ok = await stub.IngestUsage(_req(llm_event("x")), metadata=tenant_md("acme"))
            assert ok.accepted == 1
    finally:
        await h.close()


async def test_row_level_security_and_append_only_ledger(billing: BillingHarness) -> None:
    async with billing_stub(billing.port) as stub:
        await stub.IngestUsage(_req(llm_event("a1"), llm_event("a2")), metadata=tenant_md("acme"))
        await stub.IngestUsage(_req(llm_event("g1")), metadata=tenant_md("globex"))
    conn = await asyncpg.connect(billing.app_dsn)
    try:
        # No tenant bound: no rows at all.
        assert await conn.fetchval("SELECT count(*) FROM usage_events") == 0
        async with conn.transaction():
            await conn.execute("SELECT set_config('app.tenant_id', 'acme', true)")
            assert await conn.fetchval("SELECT count(*) FROM usage_events") == 2
            assert await conn.fetchval(
                "SELECT count(*) FROM usage_events WHERE tenant_id = 'globex'") == 0
            assert await conn.fetchval("SELECT count(*) FROM usage_hourly") == 1
        for sql in ("UPDATE usage_events SET cost_pusd = 0",
                    "DELETE FROM usage_events",
                    "TRUNCATE usage_events"):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                async with conn.transaction():
                    await conn.execute("SELECT set_config('app.tenant_id', 'acme', true)")
                    await conn.execute(sql)
        # Writing a row for another tenant violates the policy.
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            async with conn.transaction():
                await conn.execute("SELECT set_config('app.tenant_id', 'acme', true)")
                await conn.execute(
                    "INSERT INTO budgets (tenant_id, monthly_limit_usd, soft_limit_ratio, "
                    "hard_limit) VALUES ('globex', 1, 0.5, true)")
        # The app role connects with synchronous commit on: an ack means flushed to WAL.
        assert await billing.pool.fetchval("SHOW synchronous_commit") == "on"
    finally:
        await conn.close()
    # Even the owner cannot rewrite history (the trigger), short of disabling it on purpose.
    owner = await asyncpg.connect(billing.owner_dsn)
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
            await owner.execute("DELETE FROM usage_events")
    finally:
        await owner.close()


async def test_every_usage_type_is_stored_with_its_price_version(billing: BillingHarness) -> None:
    events = [llm_event("l"), vision_event("v"), stt_event("s"), tts_event("t"),
              embedding_event("e"), session_event("m")]
    async with billing_stub(billing.port) as stub:
        r = await stub.IngestUsage(_req(*events), metadata=tenant_md("acme"))
    assert r.accepted == 6
    conn = await asyncpg.connect(billing.owner_dsn)
    try:
        rows = {r["idempotency_key"]: r for r in await conn.fetch(
            "SELECT idempotency_key, usage_type, model_id, unit, price_version, event "
            "FROM usage_events")}
    finally:
        await conn.close()
    assert {k: r["usage_type"] for k, r in rows.items()} == {
        "l": "llm", "v": "vision", "s": "stt", "t": "tts", "e": "embedding", "m": "session"}
    assert rows["m"]["model_id"] == "livekit-agent-session"
    assert rows["s"]["unit"] == "seconds" and rows["t"]["unit"] == "characters"
    assert all("@" in r["price_version"] for r in rows.values())
    # The original event is kept byte for byte.
    assert billing_pb2.UsageEvent.FromString(rows["l"]["event"]) == events[0]


async def test_old_and_late_events_land_in_their_own_day(billing: BillingHarness) -> None:
    # A minute ago (never in the future, whatever the time of day), and 40 days before that.
    today = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(minutes=1)
    late = today - dt.timedelta(days=40)
    async with billing_stub(billing.port) as stub:
        await stub.IngestUsage(_req(llm_event("now", at=today)), metadata=tenant_md("acme"))
        await stub.IngestUsage(_req(llm_event("late", at=late)), metadata=tenant_md("acme"))
        report = await stub.GetCostReport(
            billing_pb2.GetCostReportRequest(group_by=[billing_pb2.DIMENSION_DAY]),
            metadata=tenant_md("acme"))
    assert [r.keys[0] for r in report.rows] == [late.date().isoformat(),
                                               today.date().isoformat()]
