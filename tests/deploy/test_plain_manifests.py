"""deploy/k8s/ is exactly what scripts/deploy/render.sh produces from the chart today."""

from __future__ import annotations

import filecmp
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from deploy_support import CHART, ROOT, Helm

# The first test may build helm (ensure-helm.sh) on a fresh machine: allow for it.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

K8S = ROOT / "deploy" / "k8s"
GENERATED = {"parley.yaml", "monitoring.yaml", "grafana-dashboard.json", "kustomization.yaml"}


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("k8s")
    proc = subprocess.run(
        [str(ROOT / "scripts" / "deploy" / "render.sh"), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return out


def test_checked_in_manifests_equal_a_fresh_render(fresh: Path) -> None:
    produced = {p.name for p in fresh.iterdir()} - {"values.yaml"}
    assert produced == GENERATED
    checked_in = {p.name for p in K8S.iterdir()} - {"values.yaml"}
    assert checked_in == GENERATED, f"unexpected files in deploy/k8s: {checked_in - GENERATED}"
    stale = [n for n in sorted(GENERATED) if not filecmp.cmp(fresh / n, K8S / n, shallow=False)]
    assert not stale, f"deploy/k8s is stale ({stale}): run scripts/deploy/render.sh"


def test_manifests_split_by_what_they_need(fresh: Path) -> None:
    main = [d for d in yaml.safe_load_all((fresh / "parley.yaml").read_text()) if d]
    mon = [d for d in yaml.safe_load_all((fresh / "monitoring.yaml").read_text()) if d]
    assert all("monitoring.coreos.com" not in d["apiVersion"] for d in main)
    assert {d["kind"] for d in mon} == {"ServiceMonitor", "ConfigMap"}
    kinds = {d["kind"] for d in main}
    assert {
        "Deployment",
        "Service",
        "NetworkPolicy",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "ResourceQuota",
        "LimitRange",
        "Job",
        "CronJob",
    } <= kinds
    assert all(d["metadata"]["namespace"] == "tenant-demo" for d in main + mon)


def test_dashboard_is_the_charts(fresh: Path) -> None:
    assert (K8S / "grafana-dashboard.json").read_bytes() == (
        CHART / "dashboards" / "parley.json"
    ).read_bytes()


def test_render_is_reproducible(fresh: Path, tmp_path: Path) -> None:
    subprocess.run(
        [str(ROOT / "scripts" / "deploy" / "render.sh"), str(tmp_path)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    for name in GENERATED:
        assert (tmp_path / name).read_bytes() == (fresh / name).read_bytes(), name


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_kustomization_builds(helm: Helm) -> None:
    proc = subprocess.run(
        ["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    assert len(docs) == len([d for d in yaml.safe_load_all((K8S / "parley.yaml").read_text()) if d])
