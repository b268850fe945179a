"""Prometheus: cost and usage by tenant and model, with a cap on tenant label values."""

from __future__ import annotations

import pytest
from parley.billing.v1 import billing_pb2
from parley_billing import metrics
from parley_billing.testing import billing_stub, llm_event, start_billing, tenant_md
from prometheus_client import REGISTRY, generate_latest

pytestmark = pytest.mark.integration


def _value(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_cost_counters_by_tenant_and_model_with_bounded_tenants(
    billing_dsns: tuple[str, str],
) -> None:
    h = await start_billing(*billing_dsns, metrics_max_tenants=2)
    model = "gemini-2.5-flash-lite"
    before = {t: _value("parley_billing_cost_usd_total", {"tenant": t, "model": model})
              for t in ("m-one", "m-two", "m-three", "other")}
    lag_before = _value("parley_billing_ingest_lag_seconds_count", {})
    batches_before = _value("parley_billing_ingest_batch_size_count", {})
    try:
        async with billing_stub(h.port) as stub:
            for tenant in ("m-one", "m-two", "m-three"):
                # 10,000 in * 0.10 + 1,000 out * 0.40 per Mtok = 0.0014
                ev = llm_event(f"{tenant}-1", model=model, input_tokens=10_000,
                               output_tokens=1_000)
                await stub.IngestUsage(billing_pb2.IngestUsageRequest(events=[ev, ev]),
                                       metadata=tenant_md(tenant))
                # A re-sent event adds nothing.
                await stub.IngestUsage(billing_pb2.IngestUsageRequest(events=[ev]),
                                       metadata=tenant_md(tenant))
    finally:
        await h.close()
    after = {t: _value("parley_billing_cost_usd_total", {"tenant": t, "model": model})
             for t in before}
    assert after["m-one"] - before["m-one"] == pytest.approx(0.0014)
    assert after["m-two"] - before["m-two"] == pytest.approx(0.0014)
    # The third tenant is past the cap: folded into "other".
    assert after["m-three"] == before["m-three"] == 0
    assert after["other"] - before["other"] == pytest.approx(0.0014)
    usage = _value("parley_billing_usage_total", {"tenant": "m-one", "model": model,
                                                  "unit": "tokens"})
    assert usage >= 11_000
    assert _value("parley_billing_ingest_lag_seconds_count", {}) - lag_before == 3
    assert _value("parley_billing_ingest_batch_size_count", {}) - batches_before == 6
    text = generate_latest(REGISTRY).decode()
    for name in ("parley_billing_cost_usd_total", "parley_billing_ingest_lag_seconds_bucket",
                 "parley_billing_ingest_batch_size_bucket", "parley_billing_saved_usd_total",
                 "parley_billing_events_total"):
        assert name in text
    assert metrics.OTHER == "other"
