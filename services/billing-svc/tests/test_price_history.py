"""A new price entry prices new usage; it never rewrites what was already billed."""

from __future__ import annotations

import datetime as dt
from importlib import resources
from pathlib import Path

import asyncpg
import pytest
import yaml
from parley.billing.v1 import billing_pb2
from parley_billing.testing import billing_stub, llm_event, start_billing, tenant_md
from parley_runtime.catalog import load_catalog

pytestmark = pytest.mark.integration

OCT_15 = dt.datetime(2026, 10, 15, 12, tzinfo=dt.UTC)
OCT_20 = dt.datetime(2026, 10, 20, 12, tzinfo=dt.UTC)
NOV_15 = dt.datetime(2026, 11, 15, 12, tzinfo=dt.UTC)


def _catalog_with_new_flash_price(tmp_path: Path) -> Path:
    text = resources.files("parley_runtime.catalog").joinpath("catalog.yaml").read_text()
    data = yaml.safe_load(text)
    data["version"] = "test-2"
    data["models"]["gemini-2.5-flash"]["prices"].append({
        "effective_from": "2026-11-01",
        "usd_per_mtok": {"input": 0.50, "output": 3.00, "cache_write": 0.50,
                         "cache_read": 0.05},
    })
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


async def _ledger(owner_dsn: str) -> dict[str, tuple[int, str]]:
    conn = await asyncpg.connect(owner_dsn)
    try:
        rows = await conn.fetch("SELECT idempotency_key, cost_pusd, price_version "
                                "FROM usage_events")
    finally:
        await conn.close()
    return {r["idempotency_key"]: (r["cost_pusd"], r["price_version"]) for r in rows}


async def test_new_price_entry_does_not_rewrite_history(
    billing_dsns: tuple[str, str], tmp_path: Path
) -> None:
    owner, app = billing_dsns
    first = await start_billing(owner, app)
    try:
        async with billing_stub(first.port) as stub:
            await stub.IngestUsage(
                billing_pb2.IngestUsageRequest(events=[llm_event("e1", at=OCT_15)]),
                metadata=tenant_md("acme"))
    finally:
        await first.close()
    before = await _ledger(owner)
    # 1,000 in * 0.30 + 100 out * 2.50 per Mtok
    assert before["e1"] == (550_000_000, "2026-11-24.1/gemini-2.5-flash@2025-06-17")

    # The catalog gains a price from 2026-11-01; billing restarts with it.
    second = await start_billing(owner, app, catalog=load_catalog(
        _catalog_with_new_flash_price(tmp_path)))
    try:
        async with billing_stub(second.port) as stub:
            r = await stub.IngestUsage(
                billing_pb2.IngestUsageRequest(events=[
                    llm_event("e2", at=NOV_15),
                    llm_event("e3-late", at=OCT_20),  # arrives now, happened in October
                    llm_event("e1", at=OCT_15),  # a re-send of the first event
                ]),
                metadata=tenant_md("acme"))
            assert (r.accepted, r.duplicates) == (2, 1)
            report = await stub.GetCostReport(
                billing_pb2.GetCostReportRequest(group_by=[billing_pb2.DIMENSION_DAY]),
                metadata=tenant_md("acme"))
            bill = await stub.GetSessionBill(billing_pb2.GetSessionBillRequest(session_id="s1"),
                                             metadata=tenant_md("acme"))
    finally:
        await second.close()

    after = await _ledger(owner)
    assert after["e1"] == before["e1"]  # untouched, old catalog version and all
    assert after["e3-late"] == (550_000_000, "test-2/gemini-2.5-flash@2025-06-17")
    # 1,000 * 0.50 + 100 * 3.00 per Mtok
    assert after["e2"] == (800_000_000, "test-2/gemini-2.5-flash@2026-11-01")
    assert {r.keys[0]: r.cost_usd for r in report.rows} == {
        "2026-10-15": pytest.approx(0.00055), "2026-10-20": pytest.approx(0.00055),
        "2026-11-15": pytest.approx(0.0008)}
    # The bill shows each line under the price version that priced it.
    versions = {i.price_version for i in bill.items}
    assert versions == {"2026-11-24.1/gemini-2.5-flash@2025-06-17",
                        "test-2/gemini-2.5-flash@2025-06-17",
                        "test-2/gemini-2.5-flash@2026-11-01"}
    assert bill.total_usd == pytest.approx(0.00055 * 2 + 0.0008)
