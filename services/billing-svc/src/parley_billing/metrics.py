"""Prometheus metrics of billing-svc, with bounded tenant label cardinality."""

from __future__ import annotations

import threading

from prometheus_client import Counter, Gauge, Histogram

OTHER = "other"

COST = Counter(
    "parley_billing_cost_usd",
    "Cost of accepted usage events in USD, by tenant and model",
    ["tenant", "model"],
)
USAGE = Counter(
    "parley_billing_usage",
    "Billable quantity of accepted usage events, by tenant, model and unit",
    ["tenant", "model", "unit"],
)
SAVED = Counter(
    "parley_billing_saved_usd",
    "Saved against the naive baseline, in USD, by tenant and lever",
    ["tenant", "lever"],
)
EVENTS = Counter(
    "parley_billing_events",
    "Usage events received, by outcome (accepted, duplicate, rejected); duplicates include "
    "the idempotency conflicts",
    ["outcome"],
)
IDEMPOTENCY_CONFLICTS = Counter(
    "parley_billing_idempotency_conflicts",
    "Duplicate events whose idempotency key was stored with different content (the first "
    "event counts; a sender reuses keys), by tenant",
    ["tenant"],
)
INGEST_LAG = Histogram(
    "parley_billing_ingest_lag_seconds",
    "Time from an event's occurred_at to its durable storage",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 21600, 86400),
)
BATCH_SIZE = Histogram(
    "parley_billing_ingest_batch_size",
    "Events per IngestUsage batch",
    buckets=(1, 5, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000),
)
BATCH_SECONDS = Histogram(
    "parley_billing_ingest_batch_seconds",
    "Time to validate, price and durably store one batch",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
BUDGET_USED = Gauge(
    "parley_billing_budget_used_ratio",
    "This month's spend over the monthly budget, by tenant (last evaluated)",
    ["tenant"],
)
BUDGET_ALERTS = Counter(
    "parley_billing_budget_alerts",
    "Budget alerts fired (soft = alert ratio reached, hard = limit reached)",
    ["tenant", "level"],
)
TENANT_LABELS = Gauge(
    "parley_billing_tenant_labels",
    "Distinct tenant label values in use by this process (capped; the rest are 'other')",
)


class TenantLabels:
    """Maps tenant ids to metric label values: the first `limit` seen keep their id.

    Prometheus cost grows with every distinct label value, and the number of tenants is
    unbounded; past the cap, tenants are folded into "other" (the ledger keeps the detail).
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._known: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, tenant: str) -> str:
        if tenant in self._known:
            return tenant
        with self._lock:
            if tenant in self._known:
                return tenant
            if len(self._known) >= self._limit:
                return OTHER
            self._known.add(tenant)
            TENANT_LABELS.set(len(self._known))
            return tenant
