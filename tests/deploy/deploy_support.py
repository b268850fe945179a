"""Helpers shared by the deploy tests: paths, the helm wrapper, renders and their objects.

Every test here renders the real chart with the real helm binary; nothing is mocked. Helm comes
from scripts/deploy/ensure-helm.sh, which builds it with the Go toolchain when it is missing.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "parley"
EXAMPLES_DIR = CHART / "examples"
EXAMPLES = sorted(p.name for p in EXAMPLES_DIR.glob("values-*.yaml"))
# Every minor version the chart's kubeVersion (>=1.28.0-0) admits that kubernetes-validate knows.
KUBE_VERSIONS = [f"1.{minor}.0" for minor in range(28, 38)]
DEFAULT_KUBE = "1.34.0"

# The metric contract the services expose (deploy/README.md); the chart's queries and the
# dashboard may use only these, the agent's analysis metrics and kube-state-metrics' restarts.
PARLEY_METRICS = {
    "parley_grpc_server_handled_total",
    "parley_grpc_server_handling_seconds_bucket",
    "parley_grpc_server_in_flight",
    "parley_router_active_streams",
    "parley_vision_frames_total",
    "parley_agent_active_sessions",
    "parley_billing_ingest_lag_seconds_bucket",
    "parley_billing_cost_usd_total",
}
# The agent worker's own job and latency metrics (its canary analysis; it serves no gRPC).
AGENT_ANALYSIS_METRICS = {"parley_agent_jobs_total", "parley_agent_turn_platform_seconds_bucket"}
KUBE_STATE_METRICS = {"kube_pod_container_status_restarts_total"}

_INSTALL_RE = re.compile(r"^# install: helm install (\S+) deploy/helm/parley -n (\S+) ")


@dataclass(frozen=True)
class Example:
    """An example values file and the release/namespace its header says to install it as."""

    name: str
    path: Path
    release: str
    namespace: str

    @classmethod
    def load(cls, name: str) -> Example:
        path = EXAMPLES_DIR / name
        for line in path.read_text().splitlines():
            m = _INSTALL_RE.match(line)
            if m:
                return cls(name, path, m.group(1), m.group(2))
        raise AssertionError(f"{name}: no '# install: helm install <release> ... -n <ns>' header")


@dataclass
class Render:
    """The objects of one `helm template` run, with lookups the tests need."""

    example: Example
    docs: list[dict[str, Any]]
    values: dict[str, Any] = field(default_factory=dict)

    def kind(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.docs if d["kind"] == kind]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        for d in self.docs:
            if d["kind"] == kind and d["metadata"]["name"] == name:
                return d
        raise KeyError(f"{kind}/{name} not rendered")

    def workloads(self) -> list[dict[str, Any]]:
        return [d for d in self.docs if d["kind"] in ("Deployment", "Rollout")]

    def pod_specs(self) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
        for w in self.workloads():
            yield w, w["spec"]["template"]["spec"]

    def config_env(self, workload: dict[str, Any]) -> dict[str, str]:
        """The env a workload's container gets from its ConfigMaps (envFrom)."""
        env: dict[str, str] = {}
        for c in workload["spec"]["template"]["spec"]["containers"]:
            for src in c.get("envFrom", []):
                env.update(self.get("ConfigMap", src["configMapRef"]["name"])["data"])
        return env


class Helm:
    def __init__(self, binary: str) -> None:
        self.binary = binary
        self._cache: dict[tuple[Any, ...], Render] = {}

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [self.binary, *args], capture_output=True, text=True, timeout=120, cwd=ROOT
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed:\n{proc.stderr}")
        return proc

    def template_args(
        self,
        values: Sequence[Path | str] = (),
        *,
        release: str = "parley-test",
        namespace: str = "tenant-test",
        kube_version: str = DEFAULT_KUBE,
        sets: Sequence[str] = (),
    ) -> list[str]:
        args = ["template", release, str(CHART), "--namespace", namespace]
        args += ["--kube-version", kube_version]
        for v in values:
            args += ["-f", str(v)]
        for s in sets:
            args += ["--set", s]
        return args

    def render(self, example: Example, kube_version: str = DEFAULT_KUBE) -> Render:
        key = (example.name, kube_version)
        if key not in self._cache:
            out = self.run(
                *self.template_args(
                    [example.path],
                    release=example.release,
                    namespace=example.namespace,
                    kube_version=kube_version,
                )
            ).stdout
            docs = [d for d in yaml.safe_load_all(out) if d]
            values = _merged_values(example.path)
            self._cache[key] = Render(example, docs, values)
        return self._cache[key]


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def _merged_values(path: Path) -> dict[str, Any]:
    """Chart defaults overlaid with a values file, the way helm merges them."""
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    return _deep_merge(defaults, yaml.safe_load(path.read_text()) or {})


def render_with(
    helm: Helm, tmp_path: Path, values: dict[str, Any], base: str = "values-acme.yaml"
) -> Render:
    """The example `base` rendered with `values` layered on top."""
    example = Example.load(base)
    path = tmp_path / "override.yaml"
    path.write_text(yaml.safe_dump(values))
    out = helm.run(
        *helm.template_args(
            [example.path, path], release=example.release, namespace=example.namespace
        )
    ).stdout
    return Render(example, [d for d in yaml.safe_load_all(out) if d])


def chart_with_notes(tmp_path: Path) -> Path:
    """A copy of the chart whose NOTES.txt renders as the ConfigMap `templates/notes.yaml`
    (`helm template` skips NOTES.txt), under `tmp_path`."""
    chart = tmp_path / "parley"
    shutil.copytree(CHART, chart)
    notes = (chart / "templates" / "NOTES.txt").read_text()
    (chart / "templates" / "NOTES.txt").unlink()
    (chart / "templates" / "_notes.tpl").write_text(
        '{{- define "test.notes" -}}\n' + notes + "{{- end -}}\n"
    )
    (chart / "templates" / "notes.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\n"
        'data:\n  notes: {{ include "test.notes" . | quote }}\n'
    )
    return chart


def ensure_helm() -> Helm:
    """The pinned helm, installed by scripts/deploy/ensure-helm.sh if missing."""
    proc = subprocess.run(
        [str(ROOT / "scripts" / "deploy" / "ensure-helm.sh")],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, f"ensure-helm.sh failed:\n{proc.stderr}"
    binary = proc.stdout.strip().splitlines()[-1]
    assert Path(binary).is_file(), binary
    return Helm(binary)


# --- NetworkPolicy semantics (networking.k8s.io/v1), enough to evaluate rendered policies -----


def selector_matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """metav1.LabelSelector semantics; an empty selector matches everything."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        present = key in labels
        if op == "In" and not (present and labels[key] in values):
            return False
        if op == "NotIn" and present and labels[key] in values:
            return False
        if op == "Exists" and not present:
            return False
        if op == "DoesNotExist" and present:
            return False
    return True


@dataclass(frozen=True)
class Pod:
    name: str
    namespace: str
    namespace_labels: dict[str, str]
    labels: dict[str, str]
    ip: str
    ports: dict[str, int] = field(default_factory=dict)  # container port names

    def __hash__(self) -> int:
        return hash((self.name, self.namespace))


def _peer_matches(peer: dict[str, Any], policy_ns: str, pod: Pod) -> bool:
    import ipaddress

    if "ipBlock" in peer:
        ip = ipaddress.ip_address(pod.ip)
        block = peer["ipBlock"]
        if ip not in ipaddress.ip_network(block["cidr"]):
            return False
        return not any(ip in ipaddress.ip_network(e) for e in block.get("except") or [])
    if "namespaceSelector" in peer:
        if not selector_matches(peer["namespaceSelector"], pod.namespace_labels):
            return False
    elif pod.namespace != policy_ns:
        return False
    return selector_matches(peer.get("podSelector") or {}, pod.labels)


def _port_matches(rule: dict[str, Any], dest: Pod, port: int, protocol: str) -> bool:
    ports = rule.get("ports")
    if not ports:
        return True
    for p in ports:
        if p.get("protocol", "TCP") != protocol:
            continue
        want = p.get("port")
        if want is None:
            return True
        if isinstance(want, str):
            want = dest.ports.get(want)
            if want is None:
                continue
        if want == port or (p.get("endPort") and want <= port <= p["endPort"]):
            return True
    return False


class NetworkModel:
    """Decides whether a connection is admitted by a set of NetworkPolicies."""

    def __init__(self, policies: list[dict[str, Any]]) -> None:
        self.policies = policies

    def _selecting(self, pod: Pod, policy_type: str) -> list[dict[str, Any]]:
        return [
            p
            for p in self.policies
            if p["metadata"]["namespace"] == pod.namespace
            and policy_type in p["spec"].get("policyTypes", ["Ingress"])
            and selector_matches(p["spec"].get("podSelector") or {}, pod.labels)
        ]

    def egress_allowed(self, src: Pod, dst: Pod, port: int, protocol: str = "TCP") -> bool:
        selecting = self._selecting(src, "Egress")
        if not selecting:
            return True
        return any(
            _port_matches(rule, dst, port, protocol)
            and (
                not rule.get("to")
                or any(_peer_matches(peer, p["metadata"]["namespace"], dst) for peer in rule["to"])
            )
            for p in selecting
            for rule in p["spec"].get("egress") or []
        )

    def ingress_allowed(self, src: Pod, dst: Pod, port: int, protocol: str = "TCP") -> bool:
        selecting = self._selecting(dst, "Ingress")
        if not selecting:
            return True
        return any(
            _port_matches(rule, dst, port, protocol)
            and (
                not rule.get("from")
                or any(
                    _peer_matches(peer, p["metadata"]["namespace"], src) for peer in rule["from"]
                )
            )
            for p in selecting
            for rule in p["spec"].get("ingress") or []
        )

    def allowed(self, src: Pod, dst: Pod, port: int, protocol: str = "TCP") -> bool:
        return self.egress_allowed(src, dst, port, protocol) and self.ingress_allowed(
            src, dst, port, protocol
        )


def release_pods(render: Render, namespace_labels: dict[str, str]) -> list[Pod]:
    """One pod per rendered workload (and track), as the cluster would label it."""
    pods = []
    for i, w in enumerate(render.workloads()):
        tpl = w["spec"]["template"]
        labels = dict(tpl["metadata"]["labels"])
        ports = {p["name"]: p["containerPort"] for p in tpl["spec"]["containers"][0]["ports"]}
        tracks = (
            ["stable", "canary"] if w["kind"] == "Rollout" else [labels.get("parley.dev/track")]
        )
        for j, track in enumerate(tracks):
            pod_labels = dict(labels)
            if track:
                pod_labels["parley.dev/track"] = track
            pods.append(
                Pod(
                    name=f"{w['metadata']['name']}-{track}",
                    namespace=w["metadata"]["namespace"],
                    namespace_labels=namespace_labels,
                    labels=pod_labels,
                    ip=f"10.1.{i}.{10 + j}",
                    ports=ports,
                )
            )
    return pods


def ns_labels(namespace: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """A namespace's labels as a NetworkPolicy namespaceSelector sees them."""
    return {"kubernetes.io/metadata.name": namespace, **(extra or {})}


def quantity(q: Any) -> Decimal:
    """A Kubernetes resource quantity ("250m", "512Mi", "1G") as a number."""
    units: dict[str, Decimal | int] = {
        "m": Decimal("0.001"),
        "Ki": 2**10,
        "Mi": 2**20,
        "Gi": 2**30,
        "Ti": 2**40,
        "k": 10**3,
        "M": 10**6,
        "G": 10**9,
    }
    s = str(q)
    for suffix in sorted(units, key=len, reverse=True):
        if s.endswith(suffix):
            return Decimal(s[: -len(suffix)]) * Decimal(units[suffix])
    return Decimal(s)


# --- capacity ------------------------------------------------------------------------------------

# A pod whose grace period is longer than this drains for longer than a rollout step takes, so at
# full scale every replaced pod may still count against the quota while its replacement runs.
LONG_DRAIN_S = 60


def rollout_peak(render: Render) -> dict[str, Decimal]:
    """Requests, limits and pods of the release at the peak of a rolling update at full scale.

    Each workload at its maximum (the autoscaler's maxReplicas, else its replicas) plus its
    surge (maxSurge, rounded up as Kubernetes does), or twice its maximum when its pods drain
    longer than LONG_DRAIN_S (the Deployment controller does not wait for terminating pods,
    which count against the quota until they are gone); plus one run of each database Job.
    """
    import math

    maxima = {
        s["spec"]["scaleTargetRef"]["name"]: s["spec"].get(
            "maxReplicas", s["spec"].get("maxReplicaCount")
        )
        for s in render.kind("HorizontalPodAutoscaler") + render.kind("ScaledObject")
    }
    total = {
        k: Decimal(0)
        for k in ("requests.cpu", "requests.memory", "limits.cpu", "limits.memory", "pods")
    }

    def add(pod: dict[str, Any], n: int) -> None:
        for c in pod["containers"]:
            for k in ("cpu", "memory"):
                total[f"requests.{k}"] += n * quantity(c["resources"]["requests"][k])
                total[f"limits.{k}"] += n * quantity(c["resources"]["limits"][k])
        total["pods"] += n

    for w in render.workloads():
        n = maxima.get(w["metadata"]["name"], w["spec"].get("replicas"))
        assert n is not None, w["metadata"]["name"]
        strategy = w["spec"]["strategy"]
        surge = (strategy.get("rollingUpdate") or strategy.get("canary") or {})["maxSurge"]
        surge = math.ceil(n * int(str(surge).rstrip("%")) / 100) if "%" in str(surge) else surge
        pod = w["spec"]["template"]["spec"]
        add(pod, 2 * n if pod["terminationGracePeriodSeconds"] > LONG_DRAIN_S else n + surge)
    for job in render.kind("Job") + render.kind("CronJob"):
        spec = job["spec"] if job["kind"] == "Job" else job["spec"]["jobTemplate"]["spec"]
        add(spec["template"]["spec"], 1)
    return total
