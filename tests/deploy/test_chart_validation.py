"""helm lint/template on every example, and schema validation of everything rendered.

Built-in kinds: `kubernetes-validate --strict` against every Kubernetes minor the chart claims
(1.28 ... 1.37). Custom resources (Rollout, AnalysisTemplate, ScaledObject, ServiceMonitor,
PodMonitor): the CRD-derived JSON schemas in crd-schemas/, strict (see crd-schemas/SOURCE.md).
"""

from __future__ import annotations

import copy
import functools
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from deploy_support import (
    CHART,
    DEFAULT_KUBE,
    KUBE_VERSIONS,
    ROOT,
    Example,
    Helm,
    chart_with_notes,
)

# The first test may build helm (ensure-helm.sh) on a fresh machine: allow for it.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

CRD_SCHEMAS = Path(__file__).parent / "crd-schemas"
CRD_KINDS = {
    ("argoproj.io/v1alpha1", "Rollout"): "argoproj.io_rollout_v1alpha1.json",
    ("argoproj.io/v1alpha1", "AnalysisTemplate"): "argoproj.io_analysistemplate_v1alpha1.json",
    ("keda.sh/v1alpha1", "ScaledObject"): "keda.sh_scaledobject_v1alpha1.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "monitoring.coreos.com_servicemonitor_v1.json",
    ("monitoring.coreos.com/v1", "PodMonitor"): "monitoring.coreos.com_podmonitor_v1.json",
}
KUBERNETES_VALIDATE = str(Path(sys.executable).with_name("kubernetes-validate"))


@functools.cache
def crd_validator(api_version: str, kind: str) -> jsonschema.protocols.Validator:
    schema = json.loads((CRD_SCHEMAS / CRD_KINDS[(api_version, kind)]).read_text())
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)
    cls.check_schema(schema)
    return cls(schema)


def crd_errors(doc: dict[str, Any]) -> list[str]:
    v = crd_validator(doc["apiVersion"], doc["kind"])
    return [
        f"{doc['kind']}/{doc['metadata']['name']}: {'.'.join(map(str, e.path))}: {e.message}"
        for e in v.iter_errors(doc)
    ]


def test_chart_claims_the_validated_versions() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["kubeVersion"] == ">=1.28.0-0"
    assert KUBE_VERSIONS[0] == "1.28.0"


def test_older_kubernetes_is_refused(helm: Helm, example: Example) -> None:
    proc = helm.run(*helm.template_args([example.path], kube_version="1.27.9"), check=False)
    assert proc.returncode != 0
    assert "kubeVersion" in proc.stderr


def test_lint_strict(helm: Helm, example: Example) -> None:
    proc = helm.run(
        "lint",
        "--strict",
        str(CHART),
        "-f",
        str(example.path),
        "--namespace",
        example.namespace,
        "--kube-version",
        DEFAULT_KUBE,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in proc.stdout


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_builtin_kinds_validate_strictly(
    helm: Helm, example: Example, kube_version: str, tmp_path: Path
) -> None:
    render = helm.render(example, kube_version)
    builtin = [d for d in render.docs if (d["apiVersion"], d["kind"]) not in CRD_KINDS]
    assert builtin
    path = tmp_path / "builtin.yaml"
    path.write_text(yaml.safe_dump_all(builtin))
    proc = subprocess.run(
        [KUBERNETES_VALIDATE, "--strict", "-k", kube_version, str(path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    report = proc.stdout + proc.stderr
    assert proc.returncode == 0, report
    # A WARN means no schema was found, i.e. the object was not validated at all.
    assert "WARN" not in report and "ERROR" not in report, report
    passed = [line for line in proc.stdout.splitlines() if line.startswith("INFO")]
    assert len(passed) == len(builtin), report


def test_custom_resources_validate_against_crd_schemas(helm: Helm, example: Example) -> None:
    render = helm.render(example)
    custom = [d for d in render.docs if (d["apiVersion"], d["kind"]) in CRD_KINDS]
    errors = [e for d in custom for e in crd_errors(d)]
    assert not errors, "\n".join(errors)


def test_every_rendered_kind_is_validated(helm: Helm, example: Example) -> None:
    builtin_groups = {
        "v1",
        "apps/v1",
        "batch/v1",
        "policy/v1",
        "autoscaling/v2",
        "networking.k8s.io/v1",
    }
    for d in helm.render(example).docs:
        key = (d["apiVersion"], d["kind"])
        assert key in CRD_KINDS or d["apiVersion"] in builtin_groups, key


def test_crd_schemas_are_strict(helm: Helm) -> None:
    """The shipped schemas reject misspelt fields (else validating against them proves little)."""
    render = helm.render(Example.load("values-canary-argo.yaml"))
    rollout = copy.deepcopy(render.kind("Rollout")[0])
    assert not crd_errors(rollout)
    rollout["spec"]["strategy"]["canary"]["stepz"] = []
    rollout["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    errors = crd_errors(rollout)
    assert any("stepz" in e for e in errors) and any("imagePullPolicyy" in e for e in errors)
    scaled = copy.deepcopy(render.kind("ScaledObject")[0])
    scaled["spec"]["minReplicas"] = 1
    assert any("minReplicas" in e for e in crd_errors(scaled))


def test_kubernetes_validate_is_strict(helm: Helm, tmp_path: Path) -> None:
    """--strict rejects an unknown pod field, so passing it means something."""
    deployment = copy.deepcopy(
        helm.render(Example.load("values-defaults.yaml")).kind("Deployment")[0]
    )
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["grpcc"] = {}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(deployment))
    proc = subprocess.run(
        [KUBERNETES_VALIDATE, "--strict", "-k", "1.28.0", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0 and "grpcc" in proc.stdout


def test_helm_template_needs_no_cluster(helm: Helm) -> None:
    """Rendering is pure: the same input gives byte-identical output."""
    args = helm.template_args([CHART / "examples" / "values-acme.yaml"])
    assert helm.run(*args).stdout == helm.run(*args).stdout


def test_yamllint(tmp_path: Path) -> None:
    files = [CHART / "values.yaml", CHART / "Chart.yaml", ROOT / "deploy" / "k8s" / "values.yaml"]
    files += sorted((CHART / "examples").glob("*.yaml"))
    proc = subprocess.run(
        [
            str(Path(sys.executable).with_name("yamllint")),
            "--strict",
            "-c",
            str(ROOT / "deploy" / "yamllint.yaml"),
            *map(str, files),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_notes_render(helm: Helm, example: Example, tmp_path: Path) -> None:
    """NOTES.txt renders for every example (helm template skips it, so wrap it in a ConfigMap)."""
    chart = chart_with_notes(tmp_path)
    args = helm.template_args([example.path], release=example.release, namespace=example.namespace)
    args[2] = str(chart)
    args += ["--show-only", "templates/notes.yaml"]
    text = yaml.safe_load(helm.run(*args).stdout)["data"]["notes"]
    render = helm.render(example)
    for w in render.workloads():
        if not w["metadata"]["name"].endswith("-canary"):
            assert w["metadata"]["name"] in text
    for rollout in render.kind("Rollout"):
        assert f"promote {rollout['metadata']['name']}" in text
    assert render.example.namespace in text
