"""Object names: every release name Helm accepts renders, within Kubernetes' limits.

Names are <fullname>-<component>[-suffix]; one that would pass its limit (56 for a component, so
"<name>-canary" fits a 63-character DNS label; 63 for a Job, whose name becomes a label value;
52 for a CronJob, whose Jobs get an 11-character suffix) keeps a prefix and gets a short hash,
and a name that fits is never changed, so an upgrade renames nothing.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from deploy_support import Example, Helm, Render, chart_with_notes

# The first test may build helm (ensure-helm.sh) on a fresh machine: allow for it.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
# Objects whose name must be a DNS label (Services) or becomes a label value (Jobs, the
# ScaledObject's HPA, the pods' generated names).
LABEL_KINDS = {"Service", "Deployment", "Rollout", "Job", "ScaledObject"}
# Helm accepts release names up to 53 characters; those without "parley" get "-parley" added.
RELEASES = [
    "parley-tenant-acme-production-eu-west1",  # 38: its kb-tune-search was 53 characters
    "tenant-acme-corporation-production-eu-west1-blue-x1",  # 51 + "-parley"
    "parley-tenant-acme-corporation-production-eu-west1-b",  # 52, contains "parley"
    "acme.production.eu-west1",  # dots are valid in release names, not in Service names
]


def render(helm: Helm, release: str, example: str = "values-canary-pair.yaml") -> Render:
    ex = Example.load(example)
    out = helm.run(*helm.template_args([ex.path], release=release, namespace=ex.namespace)).stdout
    return Render(ex, [d for d in yaml.safe_load_all(out) if d])


@pytest.mark.parametrize("release", RELEASES)
@pytest.mark.parametrize("values", ["values-canary-pair.yaml", "values-acme.yaml"])
def test_long_release_names_render_within_limits(helm: Helm, release: str, values: str) -> None:
    assert len(release) <= 53
    r = render(helm, release, values)
    seen: set[tuple[str, str]] = set()
    for d in r.docs:
        name = d["metadata"]["name"]
        key = (d["kind"], name)
        assert key not in seen, f"two {d['kind']} objects named {name}"
        seen.add(key)
        assert len(name) <= 253 and "." not in name, key
        if d["kind"] in LABEL_KINDS:
            assert len(name) <= 63 and DNS_LABEL.match(name), key
        if d["kind"] == "CronJob":
            assert len(name) <= 52, key
    services = {s["metadata"]["name"] for s in r.kind("Service")}
    for w in r.workloads():
        for var, addr in r.config_env(w).items():
            if var.endswith("_ADDR"):
                assert addr.rpartition(":")[0] in services, (var, addr)
        # The pods' generated names still start with the workload's name (the KEDA and
        # analysis queries select them by it).
        assert len(w["metadata"]["name"]) <= 63
    jobs = {j["metadata"]["labels"]["app.kubernetes.io/component"] for j in r.kind("Job")}
    assert jobs == {"kb-migrate", "billing-migrate"}
    assert len(r.kind("CronJob")) == 1


def test_names_that_fit_are_unchanged(helm: Helm) -> None:
    r = render(helm, "parley-acme")
    names = {d["metadata"]["name"] for d in r.docs}
    assert {
        "parley-acme-router",
        "parley-acme-router-canary",
        "parley-acme-kb-migrate",
        "parley-acme-kb-tune-search",
    } <= names
    # The longest release whose tune-search CronJob still fits as is (52 characters).
    r = render(helm, "parley-tenant-acme-production-eu-west")
    (cron,) = r.kind("CronJob")
    assert cron["metadata"]["name"] == "parley-tenant-acme-production-eu-west-kb-tune-search"


def test_shortened_names_stay_distinct(helm: Helm) -> None:
    """Two long releases that share everything but their last characters get distinct names."""
    a = render(helm, "parley-tenant-acme-corporation-production-eu-west1-a")
    b = render(helm, "parley-tenant-acme-corporation-production-eu-west1-b")
    for kind in ("CronJob", "Job", "Service", "Deployment"):
        names_a = {d["metadata"]["name"] for d in a.kind(kind)}
        names_b = {d["metadata"]["name"] for d in b.kind(kind)}
        assert names_a and not names_a & names_b, kind


def test_notes_name_the_shortened_jobs(helm: Helm, tmp_path: Path) -> None:
    """NOTES.txt's kubectl commands use the Jobs' real names."""
    chart = chart_with_notes(tmp_path)
    release = RELEASES[0]
    ex = Example.load("values-acme.yaml")
    args = helm.template_args([ex.path], release=release, namespace=ex.namespace)
    args[2] = str(chart)
    text = yaml.safe_load(helm.run(*args, "--show-only", "templates/notes.yaml").stdout)["data"][
        "notes"
    ]
    r = render(helm, release, "values-acme.yaml")
    (cron,) = r.kind("CronJob")
    assert f"--from=cronjob/{cron['metadata']['name']} " in text
    for job in r.kind("Job"):
        assert f"logs job/{job['metadata']['name']}\n" in text
