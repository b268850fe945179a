"""Every metric the chart scales or judges canaries on, and every metric the dashboard charts,
is one that some service of this repository actually declares.

Names are read from the services' and libraries' source (prometheus_client constructors) and
expanded the way prometheus_client exposes them: Counter `x` as `x_total`, Histogram `x` as
`x_bucket`/`x_sum`/`x_count`, Gauge `x` as `x`.
"""

from __future__ import annotations

import json
import re

import pytest
import yaml
from deploy_support import (
    AGENT_ANALYSIS_METRICS,
    CHART,
    EXAMPLES,
    PARLEY_METRICS,
    ROOT,
    Example,
    Helm,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

DECLARATION = re.compile(r"\b(Counter|Gauge|Histogram|Summary)\(\s*[\"'](parley_[a-z0-9_]+)[\"']")
USE = re.compile(r"\b(parley_[a-z0-9_]+)\b")


def declared_series() -> dict[str, str]:
    """Exposed series name -> the file that declares it."""
    series: dict[str, str] = {}
    for path in sorted(ROOT.glob("*/*/src/**/*.py")):
        if path.parts[len(ROOT.parts)] not in ("services", "libs"):
            continue
        for kind, name in DECLARATION.findall(path.read_text()):
            rel = str(path.relative_to(ROOT))
            base = name.removesuffix("_total") if kind == "Counter" else name
            names = {
                "Counter": [f"{base}_total"],
                "Gauge": [base],
                "Histogram": [f"{base}_bucket", f"{base}_sum", f"{base}_count"],
                "Summary": [f"{base}_sum", f"{base}_count", base],
            }[kind]
            for n in names:
                series[n] = rel
    return series


def used_by_the_chart(helm: Helm) -> set[str]:
    used: set[str] = set()
    for name in EXAMPLES:
        render = helm.render(Example.load(name))
        for s in render.kind("ScaledObject"):
            for t in s["spec"]["triggers"]:
                used |= set(USE.findall(t["metadata"].get("query", "")))
        for at in render.kind("AnalysisTemplate"):
            for m in at["spec"]["metrics"]:
                used |= set(USE.findall(m["provider"]["prometheus"]["query"]))
    dashboard = json.loads((CHART / "dashboards" / "parley.json").read_text())
    for panel in dashboard["panels"]:
        for t in panel.get("targets", []):
            used |= set(USE.findall(t["expr"]))
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for c in values["components"].values():
        if c["autoscaling"]["metric"]["name"]:
            used.add(c["autoscaling"]["metric"]["name"])
    return used


def test_the_contract_lists_what_the_chart_uses(helm: Helm) -> None:
    assert used_by_the_chart(helm) <= PARLEY_METRICS | AGENT_ANALYSIS_METRICS


@pytest.mark.parametrize("metric", sorted(PARLEY_METRICS | AGENT_ANALYSIS_METRICS))
def test_metric_is_declared_by_a_service(metric: str) -> None:
    series = declared_series()
    assert metric in series, (
        f"{metric} is used by the chart (autoscaling, canary analysis or dashboard) but no "
        "service under services/ or libs/ declares it"
    )
