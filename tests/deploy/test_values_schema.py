"""values.schema.json is strict and the chart refuses inconsistent values with a clear message.

Each case runs `helm template` (which applies the schema) and expects it to fail with a message
that names the problem.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_support import CHART, Helm

# The first test may build helm (ensure-helm.sh) on a fresh machine: allow for it.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

ACME = CHART / "examples" / "values-acme.yaml"


def _fails(helm: Helm, tmp_path: Path, values: dict[str, Any], *, base: Path | None = ACME) -> str:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    files = [base, path] if base else [path]
    proc = helm.run(*helm.template_args(files), check=False)
    assert proc.returncode != 0, f"accepted: {values}"
    return proc.stderr


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"replicaCount": 3}, "additional properties 'replicaCount' not allowed"),
        ({"components": {"router": {"replicaz": 3}}}, "'replicaz' not allowed"),
        ({"components": {"kb": {"autoscaling": {"targetCPU": 80}}}}, "'targetCPU' not allowed"),
        ({"networkPolicy": {"denyAll": True}}, "'denyAll' not allowed"),
        ({"livekit": {"secretRef": {"apiKey": "x"}}}, "'apiKey' not allowed"),
        ({"tenants": {"acme": {"tenant_id": "acme"}}}, "'tenant_id' not allowed"),
    ],
)
def test_unknown_keys_are_rejected(
    helm: Helm, tmp_path: Path, values: dict[str, Any], message: str
) -> None:
    assert message in _fails(helm, tmp_path, values)


@pytest.mark.parametrize(
    ("values", "where"),
    [
        ({"mode": "shared"}, "/mode"),
        (
            {"components": {"router": {"canary": {"strategy": "blue-green"}}}},
            "/components/router/canary/strategy",
        ),
        (
            {"components": {"agent": {"autoscaling": {"engine": "vpa"}}}},
            "/components/agent/autoscaling/engine",
        ),
        ({"components": {"router": {"replicas": "two"}}}, "/components/router/replicas"),
        (
            {"components": {"router": {"canary": {"pair": {"weight": 150}}}}},
            "/components/router/canary/pair/weight",
        ),
        ({"components": {"router": {"probe": {"type": "tcp"}}}}, "/components/router/probe/type"),
        # null deletes a default in helm: a container without limits is refused.
        (
            {"components": {"router": {"resources": {"limits": None}}}},
            "/components/router/resources",
        ),
        ({"components": {"router": {"providers": ["openai"]}}}, "/components/router/providers"),
        ({"tenant": {"id": "Acme Corp"}}, "/tenant/id"),
        ({"tenants": {"Bad_Id": {}}}, "'Bad_Id' does not match pattern"),
        ({"components": {"router-svc": {"enabled": True}}}, "/components"),
        ({"redis": {"url": "redis://user:pw@redis:6379"}}, "/redis/url"),
        ({"livekit": {"url": "http://livekit"}}, "/livekit/url"),
        ({"global": {"image": {"tag": "latest tag"}}}, "/global/image/tag"),
    ],
)
def test_bad_types_and_enums_are_rejected(
    helm: Helm, tmp_path: Path, values: dict[str, Any], where: str
) -> None:
    assert where in _fails(helm, tmp_path, values)


@pytest.mark.parametrize(
    ("rule", "where"),
    [
        # An empty namespace selector would admit every namespace, other tenants included.
        ({"from": [{"namespaceSelector": {}}], "ports": ["grpc"]}, "extraIngress/0/from/0"),
        (
            {"from": [{"namespaceSelector": {"matchLabels": {}}}], "ports": ["grpc"]},
            "extraIngress/0/from/0",
        ),
        (
            {"from": [{"ipBlock": {"cidr": "0.0.0.0/0"}}], "ports": ["grpc"]},
            "extraIngress/0/from/0",
        ),
        ({"from": [], "ports": ["grpc"]}, "extraIngress/0/from"),
        (
            {"from": [{"podSelector": {"matchLabels": {"a": "b"}}}], "ports": []},
            "extraIngress/0/ports",
        ),
    ],
)
def test_open_ingress_is_rejected(
    helm: Helm, tmp_path: Path, rule: dict[str, Any], where: str
) -> None:
    values = {"components": {"kb": {"networkPolicy": {"extraIngress": [rule]}}}}
    assert where in _fails(helm, tmp_path, values)


def test_open_egress_is_rejected(helm: Helm, tmp_path: Path) -> None:
    no_to: dict[str, Any] = {"postgres": {"egress": [{"ports": [{"port": 5432}]}]}}
    assert "/postgres/egress/0" in _fails(helm, tmp_path, no_to)
    values: dict[str, Any] = {
        "components": {
            "router": {"networkPolicy": {"extraEgress": [{"to": [{}], "ports": [{"port": 1}]}]}}
        }
    }
    assert "extraEgress/0/to/0" in _fails(helm, tmp_path, values)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"tenant": {"id": ""}}, "tenant.id is required in dedicated mode"),
        ({"tenants": {"globex": {}}}, "a dedicated release serves only tenant.id"),
        ({"mode": "pool"}, "tenant.id must be empty in pool mode"),
        ({"monitoring": {"podMonitor": {"enabled": True}}}, "not both"),
        (
            {"components": {"billing": {"enabled": False}}},
            'depends on "billing", which is disabled',
        ),
        ({"components": {"router": {"dependsOn": ["billing", "ledger"]}}}, 'no component "ledger"'),
        ({"components": {"router": {"dependsOn": ["router"]}}}, "depends on itself"),
        ({"components": {"vision": {"dependsOn": ["agent"]}}}, "which has no gRPC port"),
        ({"components": {"router": {"probe": {"port": "http"}}}}, "is not one of its ports"),
        (
            {
                "components": {
                    "kb": {
                        "networkPolicy": {
                            "extraIngress": [
                                {
                                    "from": [{"podSelector": {"matchLabels": {"a": "b"}}}],
                                    "ports": ["admin"],
                                }
                            ]
                        }
                    }
                }
            },
            'no port named "admin"',
        ),
        ({"redis": {"url": "", "secretRef": {"name": ""}}}, "redis: set url or secretRef.name"),
        # The default-deny NetworkPolicy would drop every span.
        (
            {"otel": {"endpoint": "http://otel-collector.observability:4317", "egress": []}},
            "otel.endpoint is set but otel.egress is empty",
        ),
        # A "10 %" canary of one replica would take the only stable pod.
        (
            {
                "components": {
                    "billing": {
                        "replicas": 1,
                        "autoscaling": {"enabled": False},
                        "canary": {
                            "strategy": "pair",
                            "pair": {"weight": 10, "image": {"tag": "0.2.0"}},
                        },
                    }
                }
            },
            "components.billing.canary.pair.weight 10 needs at least 2 replicas",
        ),
        (
            {
                "components": {
                    "kb": {
                        "autoscaling": {"minReplicas": 1},
                        "canary": {"strategy": "pair", "pair": {"weight": 50}},
                    }
                }
            },
            "raise autoscaling.minReplicas to 2",
        ),
        # KEDA could not tell the canary's pods (names cut to "<name>-c...") from the stable's.
        (
            {
                "fullnameOverride": "parley-acme-corporation-eu-west-production-123456",
                "components": {"router": {"canary": {"strategy": "pair"}}},
            },
            "is 56 characters long",
        ),
        # The usage spool's share of a tiny /tmp would be useless.
        ({"components": {"agent": {"tmpSizeLimit": "16Mi"}}}, "under 1Mi: raise tmpSizeLimit"),
        ({"components": {"router": {"tmpSizeLimit": "64mb"}}}, "/components/router/tmpSizeLimit"),
    ],
)
def test_inconsistent_values_fail_with_a_message(
    helm: Helm, tmp_path: Path, values: dict[str, Any], message: str
) -> None:
    assert message in _fails(helm, tmp_path, values)


def test_defaults_alone_ask_for_a_tenant(helm: Helm) -> None:
    proc = helm.run(*helm.template_args([]), check=False)
    assert proc.returncode != 0
    assert "tenant.id is required in dedicated mode" in proc.stderr


def test_schema_is_strict_everywhere() -> None:
    """Every object in the schema that lists properties forbids the others."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    loose: list[str] = []

    def walk(node: object, path: str) -> None:
        if isinstance(node, dict):
            if "properties" in node and node.get("additionalProperties") is not False:
                loose.append(path)
            for key, child in node.items():
                walk(child, f"{path}/{key}")
        elif isinstance(node, list):
            for i, child in enumerate(node):
                walk(child, f"{path}/{i}")

    walk(schema, "#")
    assert not loose, loose


def test_every_default_is_described_by_the_schema(helm: Helm) -> None:
    """values.yaml itself passes the schema (with the one required value set)."""
    helm.run(*helm.template_args([], sets=["tenant.id=demo"]))


def test_documented_pdb_override_lints_and_renders(helm: Helm, tmp_path: Path) -> None:
    """minAvailable, when set, replaces the default maxUnavailable. helm lint keeps a default
    that the user's values set to null (helm template drops it), so the chart cannot ask for
    one of the two to be null: it picks minAvailable, and both forms lint and render alike."""
    for pdb in ({"minAvailable": 1, "maxUnavailable": None}, {"minAvailable": 1}):
        path = tmp_path / "pdb.yaml"
        path.write_text(yaml.safe_dump({"components": {"billing": {"pdb": pdb}}}))
        lint = helm.run(
            "lint", "--strict", str(CHART), "-f", str(ACME), "-f", str(path),
            "--kube-version", "1.34.0", check=False,
        )  # fmt: skip
        assert lint.returncode == 0, lint.stdout + lint.stderr
        out = helm.run(*helm.template_args([ACME, path])).stdout
        (rendered,) = [
            d
            for d in yaml.safe_load_all(out)
            if d
            and d["kind"] == "PodDisruptionBudget"
            and d["metadata"]["name"].endswith("-billing")
        ]
        assert rendered["spec"]["minAvailable"] == 1, pdb
        assert "maxUnavailable" not in rendered["spec"], pdb


@pytest.mark.parametrize(("value", "expected"), [(0, 0), (2, 2), ("50%", "50%")])
def test_pdb_max_unavailable_is_rendered_as_given(
    helm: Helm, tmp_path: Path, value: object, expected: object
) -> None:
    """An explicit 0 (no voluntary evictions of this component) must not become the default 1."""
    path = tmp_path / "pdb.yaml"
    path.write_text(yaml.safe_dump({"components": {"billing": {"pdb": {"maxUnavailable": value}}}}))
    out = helm.run(*helm.template_args([ACME, path])).stdout
    (rendered,) = [
        d
        for d in yaml.safe_load_all(out)
        if d and d["kind"] == "PodDisruptionBudget" and d["metadata"]["name"].endswith("-billing")
    ]
    assert rendered["spec"]["maxUnavailable"] == expected
