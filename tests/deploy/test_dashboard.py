"""The Grafana dashboard is valid JSON that charts every metric of the platform's contract."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from deploy_support import CHART, PARLEY_METRICS

pytestmark = pytest.mark.integration

METRIC_RE = re.compile(r"\b(parley_[a-z0-9_]+)\b")


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((CHART / "dashboards" / "parley.json").read_text())
    return data


def exprs(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def test_dashboard_shape(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] == "parley-overview" and dashboard["schemaVersion"] >= 36
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "namespace", "tenant"} <= variables
    for p in dashboard["panels"]:
        pos = p["gridPos"]
        assert 0 <= pos["x"] and pos["x"] + pos["w"] <= 24, p["title"]
        for t in p.get("targets", []):
            assert t["datasource"]["uid"] == "${datasource}", p["title"]


def test_queries_are_well_formed_and_scoped(dashboard: dict[str, Any]) -> None:
    for e in exprs(dashboard):
        for open_, close in ("()", "{}", "[]"):
            assert e.count(open_) == e.count(close), e
        assert 'namespace=~"$namespace"' in e, e
        for metric in METRIC_RE.findall(e):
            assert metric in PARLEY_METRICS, (metric, e)


def test_every_contract_metric_is_charted(dashboard: dict[str, Any]) -> None:
    used = {m for e in exprs(dashboard) for m in METRIC_RE.findall(e)}
    assert used == PARLEY_METRICS


def test_cost_is_broken_down_by_tenant_and_model(dashboard: dict[str, Any]) -> None:
    cost = [e for e in exprs(dashboard) if "parley_billing_cost_usd_total" in e]
    assert any("by (tenant)" in e for e in cost) and any("by (model)" in e for e in cost)
    assert all('tenant=~"$tenant"' in e for e in cost)
