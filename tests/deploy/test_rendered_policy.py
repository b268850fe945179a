"""Policy checks on the rendered manifests of every example values file.

Pods: probes, bounded resources, restricted security settings, drains shorter than their grace.
Wiring: every <DEP>_ADDR names a rendered Service and its gRPC port; Services, PDBs and
autoscalers select what exists. Secrets: referenced only. Isolation: the NetworkPolicies are
evaluated (deploy_support.NetworkModel) for pods of another tenant's namespace, Prometheus, DNS
and every pair of this release's pods.
"""

from __future__ import annotations

import math
import os
import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_support import (
    AGENT_ANALYSIS_METRICS,
    KUBE_STATE_METRICS,
    PARLEY_METRICS,
    ROOT,
    Example,
    Helm,
    NetworkModel,
    Pod,
    Render,
    ns_labels,
    quantity,
    release_pods,
    render_with,
    rollout_peak,
    selector_matches,
)

# The first test may build helm (ensure-helm.sh) on a fresh machine: allow for it.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

SECRET_NAME_RE = re.compile(r"(KEY|SECRET|TOKEN|PASSWORD|DATABASE_URL)")
METRIC_RE = re.compile(r"\b(parley_[a-z0-9_]+|kube_[a-z0-9_]+)\b")
OTHER_TENANT_NAMESPACES = {
    "tenant-globex": {"parley.dev/tenant": "globex"},
    "tenant-initech": {"parley.dev/tenant": "initech"},
    "tenant-acme": {"parley.dev/tenant": "acme"},
    "parley-pool": {"parley.dev/tenancy": "pool"},
    "tenant-demo": {"parley.dev/tenant": "demo"},
}


def containers(render: Render) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return [(w, c) for w, spec in render.pod_specs() for c in spec["containers"]]


def component_values(render: Render, workload: dict[str, Any]) -> dict[str, Any]:
    name = workload["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]
    c: dict[str, Any] = render.values["components"][name]
    return c


# --- pods ---------------------------------------------------------------------------------------


def test_every_enabled_component_is_deployed(rendered: Render) -> None:
    enabled = {n for n, c in rendered.values["components"].items() if c["enabled"]}
    deployed = {
        w["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]
        for w in rendered.workloads()
    }
    assert deployed == enabled == {"agent", "router", "vision", "kb", "billing"}


def test_containers_have_liveness_and_readiness_probes(rendered: Render) -> None:
    for w, c in containers(rendered):
        cv = component_values(rendered, w)
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            assert probe in c, f"{w['metadata']['name']}: no {probe}"
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        if "grpc" in ports:
            # Native gRPC health checks against grpc.health.v1 on the service port.
            for probe in ("livenessProbe", "readinessProbe"):
                assert c[probe]["grpc"]["port"] == ports["grpc"], (w["metadata"]["name"], probe)
        else:
            assert cv["serviceName"] == "agent-worker"
            for probe in ("livenessProbe", "readinessProbe"):
                assert c[probe]["httpGet"] == {"path": "/", "port": "health"}
            assert ports["health"] == 8081


def test_containers_have_bounded_resources(rendered: Render) -> None:
    for w, c in containers(rendered):
        res = c["resources"]
        for kind in ("cpu", "memory"):
            assert kind in res["requests"] and kind in res["limits"], w["metadata"]["name"]
            assert quantity(res["limits"][kind]) >= quantity(res["requests"][kind])


def test_pods_run_restricted(rendered: Render) -> None:
    for w, spec in rendered.pod_specs():
        name = w["metadata"]["name"]
        psc = spec["securityContext"]
        assert psc["runAsNonRoot"] is True and psc["runAsUser"] >= 1000, name
        assert psc["seccompProfile"]["type"] == "RuntimeDefault", name
        for forbidden in ("hostNetwork", "hostPID", "hostIPC"):
            assert not spec.get(forbidden), (name, forbidden)
        assert spec["automountServiceAccountToken"] is False, name
        assert spec["enableServiceLinks"] is False, name
        for vol in spec["volumes"]:
            assert set(vol) & {"emptyDir", "configMap"}, (name, vol)
        assert any(v["name"] == "tmp" and "emptyDir" in v for v in spec["volumes"]), name
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["runAsNonRoot"] is True, name
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc.get("privileged", False) is False, name
            assert sc["capabilities"]["drop"] == ["ALL"] and not sc["capabilities"].get("add")
            mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
            assert mounts.get("/tmp") == "tmp", name


def test_service_accounts_do_not_mount_tokens(rendered: Render) -> None:
    accounts = {sa["metadata"]["name"]: sa for sa in rendered.kind("ServiceAccount")}
    for w, spec in rendered.pod_specs():
        sa = accounts[spec["serviceAccountName"]]
        assert sa["automountServiceAccountToken"] is False, w["metadata"]["name"]
        assert sa["metadata"]["name"] == w["metadata"]["name"].removesuffix("-canary")


def test_termination_grace_outlasts_the_drain(rendered: Render) -> None:
    for w, spec in rendered.pod_specs():
        env = rendered.config_env(w)
        cv = component_values(rendered, w)
        drains = {var: float(env[var]) for var in cv["drainEnv"]}
        assert set(drains.values()) == {cv["drainSeconds"]}, drains
        pre_stop = 0
        lifecycle = spec["containers"][0].get("lifecycle")
        if lifecycle:
            command = lifecycle["preStop"]["exec"]["command"]
            assert command[0] == "sleep"
            pre_stop = int(command[1])
        grace = spec["terminationGracePeriodSeconds"]
        assert grace > cv["drainSeconds"] + pre_stop, (w["metadata"]["name"], grace, drains)
    agent = next(w for w, _ in rendered.pod_specs() if component_values(rendered, w)["livekit"])
    env = rendered.config_env(agent)
    # The worker reads its own drain variable; the gRPC runtime's is set too.
    assert float(env["PARLEY_AGENT_DRAIN_TIMEOUT_S"]) >= 600
    assert env["PARLEY_DRAIN_SECONDS"] == env["PARLEY_AGENT_DRAIN_TIMEOUT_S"]
    for w in rendered.workloads():
        if component_values(rendered, w)["ports"].get("grpc"):
            assert "PARLEY_DRAIN_SECONDS" in rendered.config_env(w)


def test_processes_are_told_their_ports(rendered: Render) -> None:
    for w, spec in rendered.pod_specs():
        env = rendered.config_env(w)
        cv = component_values(rendered, w)
        ports = {p["name"]: p["containerPort"] for p in spec["containers"][0]["ports"]}
        assert set(cv["portEnv"]) == set(ports), w["metadata"]["name"]
        for pname, var in cv["portEnv"].items():
            assert int(env[var]) == ports[pname], (w["metadata"]["name"], var)
        assert env["PARLEY_HOST"] == "0.0.0.0"


# --- wiring -------------------------------------------------------------------------------------


def test_addr_env_names_rendered_services_and_grpc_ports(rendered: Render) -> None:
    services = {s["metadata"]["name"]: s for s in rendered.kind("Service")}
    seen = 0
    for w in rendered.workloads():
        env = rendered.config_env(w)
        cv = component_values(rendered, w)
        addrs = {k: v for k, v in env.items() if k.endswith("_ADDR")}
        assert set(addrs) == {f"{d.upper()}_ADDR" for d in cv["dependsOn"]}
        for key, addr in addrs.items():
            host, _, port = addr.rpartition(":")
            assert host in services, f"{w['metadata']['name']}: {key}={addr}: no Service {host}"
            svc = services[host]
            grpc = [p for p in svc["spec"]["ports"] if p["name"] == "grpc"]
            assert grpc and grpc[0]["port"] == int(port), (key, addr)
            target = key[: -len("_ADDR")].lower()
            assert svc["spec"]["selector"]["app.kubernetes.io/component"] == target
            target_cv = rendered.values["components"][target]
            assert int(port) == target_cv["ports"]["grpc"]
            seen += 1
    assert seen >= 7  # agent -> 4 services, router/vision/kb -> billing


def test_services_select_pods_and_named_ports(rendered: Render) -> None:
    for svc in rendered.kind("Service"):
        selected = [
            w
            for w in rendered.workloads()
            if selector_matches(
                {"matchLabels": svc["spec"]["selector"]},
                w["spec"]["template"]["metadata"]["labels"],
            )
        ]
        assert selected, f"Service {svc['metadata']['name']} selects no pods"
        for w in selected:
            names = {p["name"] for p in w["spec"]["template"]["spec"]["containers"][0]["ports"]}
            for port in svc["spec"]["ports"]:
                assert port["targetPort"] in names, (svc["metadata"]["name"], port)


def test_workload_selectors_match_their_templates_and_do_not_overlap(rendered: Render) -> None:
    workloads = rendered.workloads()
    for w in workloads:
        sel = w["spec"]["selector"]
        assert selector_matches(sel, w["spec"]["template"]["metadata"]["labels"])
        for other in workloads:
            if other is not w:
                labels = other["spec"]["template"]["metadata"]["labels"]
                assert not selector_matches(sel, labels), (
                    w["metadata"]["name"],
                    other["metadata"]["name"],
                )


def test_pdbs_cover_every_workload(rendered: Render) -> None:
    for w in rendered.workloads():
        labels = w["spec"]["template"]["metadata"]["labels"]
        pdbs = [
            p
            for p in rendered.kind("PodDisruptionBudget")
            if selector_matches(p["spec"]["selector"], labels)
        ]
        assert len(pdbs) == 1, w["metadata"]["name"]


def test_secrets_are_only_referenced(rendered: Render) -> None:
    assert not rendered.kind("Secret")
    for cm in rendered.kind("ConfigMap"):
        for key, value in (cm.get("data") or {}).items():
            assert not SECRET_NAME_RE.search(key) or key == "PARLEY_AUTH_ALLOWED_CALLERS", key
            if key.endswith("_URL"):
                assert "@" not in value, f"credentials in {cm['metadata']['name']}: {key}"
    for w, c in containers(rendered):
        for env in c["env"]:
            if SECRET_NAME_RE.search(env["name"]):
                assert "value" not in env, (w["metadata"]["name"], env["name"])
                assert "secretKeyRef" in env["valueFrom"], env
    # The services that need each secret get it.
    by_component = {
        component_values(rendered, w)["serviceName"]: {e["name"] for e in c["env"]}
        for w, c in containers(rendered)
    }
    assert {"DATABASE_URL"} <= by_component["kb-svc"] & by_component["billing-svc"]
    assert {"ANTHROPIC_API_KEY", "GEMINI_API_KEY"} <= by_component["router-svc"]
    assert {"LIVEKIT_API_KEY", "LIVEKIT_API_SECRET"} <= by_component["agent-worker"]
    assert all("PARLEY_AUTH_KEYS" in names for names in by_component.values())
    assert "DATABASE_URL" not in by_component["router-svc"] | by_component["agent-worker"]


def test_grpc_services_accept_only_their_callers(rendered: Render) -> None:
    comps = rendered.values["components"]
    for w in rendered.workloads():
        cv = component_values(rendered, w)
        env = rendered.config_env(w)
        if "grpc" not in cv["ports"]:
            assert "PARLEY_AUTH_ALLOWED_CALLERS" not in env
            continue
        name = w["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]
        expected = {c["serviceName"] for c in comps.values() if name in c["dependsOn"]}
        allowed = set(yaml.safe_load(env["PARLEY_AUTH_ALLOWED_CALLERS"]))
        assert expected <= allowed
        extra = set(cv["extraAllowedCallers"]) | set(cv["operatorCallers"]["callers"])
        assert allowed - expected == extra - expected
        assert "agent-worker" in allowed


def test_tenants_file_matches_the_mode(rendered: Render) -> None:
    v = rendered.values
    cm = next(c for c in rendered.kind("ConfigMap") if c["metadata"]["name"].endswith("-tenants"))
    tenants = yaml.safe_load(cm["data"]["tenants.yaml"])["tenants"]
    if v["mode"] == "dedicated":
        assert list(tenants) == [v["tenant"]["id"]]
    else:
        assert set(tenants) == set(v["tenants"]) and len(tenants) > 1
    for w, spec in rendered.pod_specs():
        env = rendered.config_env(w)
        mount = next(m for m in spec["containers"][0]["volumeMounts"] if m["name"] == "tenants")
        assert env["PARLEY_TENANTS_FILE"] == f"{mount['mountPath']}/tenants.yaml"
        vol = next(x for x in spec["volumes"] if x["name"] == "tenants")
        assert vol["configMap"]["name"] == cm["metadata"]["name"]
        labels = w["spec"]["template"]["metadata"]["labels"]
        assert labels["parley.dev/tenancy"] == v["mode"]
        if v["mode"] == "dedicated":
            assert labels["parley.dev/tenant"] == v["tenant"]["id"]


# --- isolation ----------------------------------------------------------------------------------


def test_network_policies_default_deny_and_no_open_rules(rendered: Render) -> None:
    policies = rendered.kind("NetworkPolicy")
    deny = [
        p
        for p in policies
        if p["spec"]["podSelector"] == {}
        and set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"}
        and not p["spec"].get("ingress")
        and not p["spec"].get("egress")
    ]
    assert len(deny) == 1, "no namespace-wide default deny"
    own_ns = rendered.example.namespace
    others = {
        ns: ns_labels(ns, extra) for ns, extra in OTHER_TENANT_NAMESPACES.items() if ns != own_ns
    }
    for p in policies:
        assert p["metadata"]["namespace"] == own_ns
        for rule in p["spec"].get("ingress") or []:
            assert rule.get("from"), f"{p['metadata']['name']}: ingress rule open to all sources"
            assert rule.get("ports"), f"{p['metadata']['name']}: ingress rule open on all ports"
            for peer in rule["from"]:
                assert "ipBlock" not in peer, p["metadata"]["name"]
                if "namespaceSelector" in peer:
                    sel = peer["namespaceSelector"]
                    # Namespaces are admitted by name only, never by a label others could carry.
                    assert "kubernetes.io/metadata.name" in (sel.get("matchLabels") or {}), sel
                    for ns, labels in others.items():
                        assert not selector_matches(sel, labels), (p["metadata"]["name"], ns)
        for rule in p["spec"].get("egress") or []:
            assert rule.get("to"), f"{p['metadata']['name']}: egress rule open to all destinations"
            assert rule.get("ports"), f"{p['metadata']['name']}: egress rule open on all ports"


def network(rendered: Render) -> tuple[NetworkModel, list[Pod]]:
    own_ns = rendered.example.namespace
    return NetworkModel(rendered.kind("NetworkPolicy")), release_pods(rendered, ns_labels(own_ns))


def test_other_tenants_cannot_reach_any_pod(rendered: Render) -> None:
    model, pods = network(rendered)
    own_ns = rendered.example.namespace
    intruders = []
    for i, (ns, extra) in enumerate(OTHER_TENANT_NAMESPACES.items()):
        if ns == own_ns:
            continue
        # The worst case: pods that copy this release's labels exactly, from another namespace.
        for j, pod in enumerate(pods):
            intruders.append(
                Pod(f"{ns}-{pod.name}", ns, ns_labels(ns, extra), pod.labels, f"10.2.{i}.{j}")
            )
        intruders.append(Pod(f"{ns}-plain", ns, ns_labels(ns, extra), {}, f"10.2.{i}.250"))
    for target in pods:
        for port in target.ports.values():
            for intruder in intruders:
                assert not model.ingress_allowed(intruder, target, port), (
                    intruder.name,
                    target.name,
                    port,
                )
            # ... and this release cannot open connections into theirs either.
            for intruder in intruders[:3]:
                assert not model.egress_allowed(target, intruder, port), (
                    target.name,
                    intruder.name,
                )


def test_only_declared_calls_are_allowed_inside_the_release(rendered: Render) -> None:
    model, pods = network(rendered)
    comps = rendered.values["components"]
    for src in pods:
        src_c = comps[src.labels["app.kubernetes.io/component"]]
        for dst in pods:
            dst_name = dst.labels["app.kubernetes.io/component"]
            for pname, port in dst.ports.items():
                expected = pname == "grpc" and dst_name in src_c["dependsOn"]
                assert model.allowed(src, dst, port) == expected, (src.name, dst.name, pname)


def test_prometheus_scrapes_metrics_ports_only(rendered: Render) -> None:
    model, pods = network(rendered)
    prometheus = Pod(
        "prometheus-0",
        "monitoring",
        ns_labels("monitoring"),
        {"app.kubernetes.io/name": "prometheus"},
        "10.3.0.1",
    )
    stranger = Pod(
        "grafana-0", "monitoring", ns_labels("monitoring"), {"app": "grafana"}, "10.3.0.2"
    )
    for pod in pods:
        for pname, port in pod.ports.items():
            assert model.ingress_allowed(prometheus, pod, port) == (pname == "metrics"), (
                pod.name,
                pname,
            )
            assert not model.ingress_allowed(stranger, pod, port)


def test_dns_only_to_kube_dns(rendered: Render) -> None:
    model, pods = network(rendered)
    dns = Pod(
        "coredns", "kube-system", ns_labels("kube-system"), {"k8s-app": "kube-dns"}, "10.4.0.10"
    )
    other = Pod(
        "metrics-server",
        "kube-system",
        ns_labels("kube-system"),
        {"k8s-app": "metrics-server"},
        "10.4.0.11",
    )
    for pod in pods:
        assert model.egress_allowed(pod, dns, 53, "UDP") and model.egress_allowed(
            pod, dns, 53, "TCP"
        )
        assert not model.egress_allowed(pod, dns, 443)
        assert not model.egress_allowed(pod, other, 53, "UDP")


def test_egress_to_infrastructure_follows_needs(rendered: Render) -> None:
    model, pods = network(rendered)
    v = rendered.values
    public = Pod("api.anthropic.com", "internet", {}, {}, "34.1.2.3")
    metadata = Pod("cloud-metadata", "internet", {}, {}, "169.254.169.254")
    for pod in pods:
        c = v["components"][pod.labels["app.kubernetes.io/component"]]
        assert model.egress_allowed(pod, public, 443) == (
            c["networkPolicy"]["providerEgress"] or c["livekit"] and _livekit_public(v)
        )
        assert not model.egress_allowed(pod, metadata, 80)
        assert not model.egress_allowed(pod, metadata, 443)


def _livekit_public(values: dict[str, Any]) -> bool:
    return any("ipBlock" in peer for rule in values["livekit"]["egress"] for peer in rule["to"])


# --- capacity -----------------------------------------------------------------------------------


def test_quota_fits_a_rolling_update_at_max_scale(rendered: Render) -> None:
    """A pod the quota refuses stalls a rollout (maxUnavailable 0): the quota holds every
    workload at max scale with its surge, the agent's draining workers and the database Jobs."""
    quotas = rendered.kind("ResourceQuota")
    if not rendered.values["namespaceResources"]["resourceQuota"]["enabled"]:
        assert not quotas
        return
    hard = quotas[0]["spec"]["hard"]
    for key, total in rollout_peak(rendered).items():
        assert quantity(hard[key]) >= total, (key, hard[key], total)
    assert hard["services.loadbalancers"] == "0" and hard["services.nodeports"] == "0"


def test_rollout_peak_counts_surge_and_drains(helm: Helm) -> None:
    """The sizing rule itself: at the defaults the old quota (40 CPU requested) had room for
    every component at maxReplicas (39.6 CPU) but not for one surge pod more."""
    render = helm.render(Example.load("values-defaults.yaml"))
    peak = rollout_peak(render)
    # router 13, vision 13, kb 8, billing 8 (max + 25 % surge), agent 2 x 30, 3 Job pods.
    assert peak["pods"] == 13 + 13 + 8 + 8 + 60 + 3
    assert peak["requests.cpu"] == Decimal("72.85")
    assert peak["requests.cpu"] > 40


def test_limit_range_admits_every_container(rendered: Render) -> None:
    ranges = rendered.kind("LimitRange")
    if not rendered.values["namespaceResources"]["limitRange"]["enabled"]:
        assert not ranges
        return
    limit_max = ranges[0]["spec"]["limits"][0]["max"]
    for _, c in containers(rendered):
        for k in ("cpu", "memory"):
            assert quantity(c["resources"]["limits"][k]) <= quantity(limit_max[k])


# --- autoscaling --------------------------------------------------------------------------------


def queries(render: Render) -> list[str]:
    out = [
        t["metadata"]["query"]
        for s in render.kind("ScaledObject")
        for t in s["spec"]["triggers"]
        if t["type"] == "prometheus"
    ]
    for at in render.kind("AnalysisTemplate"):
        out += [m["provider"]["prometheus"]["query"] for m in at["spec"]["metrics"]]
    return out


def test_autoscalers_target_existing_workloads(rendered: Render) -> None:
    comps = rendered.values["components"]
    workloads = {(w["kind"], w["metadata"]["name"]): w for w in rendered.workloads()}
    scalers = rendered.kind("HorizontalPodAutoscaler") + rendered.kind("ScaledObject")
    targets = {}
    for s in scalers:
        ref = s["spec"]["scaleTargetRef"]
        assert (ref["kind"], ref["name"]) in workloads, ref
        assert not ref["name"].endswith("-canary")
        targets[
            workloads[(ref["kind"], ref["name"])]["spec"]["template"]["metadata"]["labels"][
                "app.kubernetes.io/component"
            ]
        ] = s
    assert set(targets) == {
        n for n, c in comps.items() if c["enabled"] and c["autoscaling"]["enabled"]
    }
    for (_, name), w in workloads.items():
        cv = component_values(rendered, w)
        owned = cv["autoscaling"]["enabled"] and not name.endswith("-canary")
        assert ("replicas" in w["spec"]) != owned, name  # the autoscaler owns the count


def test_autoscaling_signals(rendered: Render) -> None:
    comps = rendered.values["components"]
    for s in rendered.kind("HorizontalPodAutoscaler") + rendered.kind("ScaledObject"):
        name = s["metadata"]["labels"]["app.kubernetes.io/component"]
        if s["kind"] == "HorizontalPodAutoscaler":
            behavior = s["spec"]["behavior"]
            signals = {
                m.get("pods", m.get("external", {})).get("metric", {}).get("name")
                or m["resource"]["name"]
                for m in s["spec"]["metrics"]
            }
        else:
            behavior = s["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
            signals = {t["metadata"].get("query", t["type"]) for t in s["spec"]["triggers"]}
        text = " ".join(signals)
        expected = {
            "agent": "parley_agent_active_sessions",
            "router": "parley_router_active_streams",
            "vision": "parley_vision_frames",
            "kb": "cpu",
            "billing": "cpu",
        }[name]
        assert expected in text, (name, signals)
        window = behavior["scaleDown"]["stabilizationWindowSeconds"]
        assert window == comps[name]["autoscaling"]["behavior"]["scaleDownStabilizationSeconds"]
        if name == "agent":
            assert window >= 600


def test_queries_use_only_exported_metrics(rendered: Render) -> None:
    namespace = rendered.example.namespace
    for q in queries(rendered):
        assert q.count("(") == q.count(")") and q.count("{") == q.count("}"), q
        for metric in METRIC_RE.findall(q):
            assert metric in PARLEY_METRICS | AGENT_ANALYSIS_METRICS | KUBE_STATE_METRICS, q
        assert f'namespace="{namespace}"' in q, q


# --- canaries -----------------------------------------------------------------------------------


def expected_canary(total: int, weight: int) -> int:
    """The canary's pods in a pair: its share rounded up, but while 0 < weight < 100 each track
    keeps at least one pod."""
    if weight <= 0 or weight >= 100:
        return total if weight >= 100 else 0
    return min(total - 1, max(1, math.ceil(total * weight / 100)))


def test_canaries(rendered: Render) -> None:
    comps = rendered.values["components"]
    for name, c in comps.items():
        strategy = c["canary"]["strategy"]
        stable = [
            w
            for w in rendered.workloads()
            if w["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] == name
        ]
        if strategy == "none":
            assert [w["kind"] for w in stable] == ["Deployment"]
        elif strategy == "argo":
            (rollout,) = stable
            assert rollout["kind"] == "Rollout"
            canary = rollout["spec"]["strategy"]["canary"]
            assert canary["steps"] == c["canary"]["steps"]
            (tpl,) = canary["analysis"]["templates"]
            at = rendered.get("AnalysisTemplate", tpl["templateName"])
            assert {a["name"] for a in at["spec"]["args"]} == {
                a["name"] for a in canary["analysis"]["args"]
            }
            metrics = {m["name"] for m in at["spec"]["metrics"]}
            analysis = c["canary"]["analysis"]
            assert ("error-ratio" in metrics) == bool(analysis["errorMetric"])
            assert ("p99-latency" in metrics) == bool(analysis["latencyMetric"])
            assert "restarts" in metrics
            for m in at["spec"]["metrics"]:
                if m["name"] not in ("error-ratio", "p99-latency", "restarts"):
                    continue  # extraMetrics, written by the operator
                assert (
                    f'pod=~"{rollout["metadata"]["name"]}-{{{{args.canary-hash}}}}-.*"'
                    in m["provider"]["prometheus"]["query"]
                )
        else:
            by_track = {w["metadata"]["labels"]["parley.dev/track"]: w for w in stable}
            assert set(by_track) == {"stable", "canary"}
            base = c["autoscaling"]["minReplicas"] if c["autoscaling"]["enabled"] else c["replicas"]
            weight = c["canary"]["pair"]["weight"]
            n_canary = by_track["canary"]["spec"]["replicas"]
            assert n_canary == expected_canary(base, weight)
            if c["autoscaling"]["enabled"]:
                # The autoscaler scales the stable track; the pair still starts at minReplicas.
                hpa = next(
                    s
                    for s in rendered.kind("HorizontalPodAutoscaler")
                    + rendered.kind("ScaledObject")
                    if s["spec"]["scaleTargetRef"]["name"] == by_track["stable"]["metadata"]["name"]
                )
                low = hpa["spec"].get("minReplicas", hpa["spec"].get("minReplicaCount"))
                high = hpa["spec"].get("maxReplicas", hpa["spec"].get("maxReplicaCount"))
                assert low + n_canary == base
                assert high + n_canary == c["autoscaling"]["maxReplicas"]
            else:
                assert by_track["stable"]["spec"]["replicas"] + n_canary == base
            stable_img = by_track["stable"]["spec"]["template"]["spec"]["containers"][0]["image"]
            canary_img = by_track["canary"]["spec"]["template"]["spec"]["containers"][0]["image"]
            assert stable_img != canary_img
            override = c["canary"]["pair"]["image"]
            assert canary_img.endswith(override["digest"] or override["tag"])


def pair_replicas(render: Render, component: str) -> dict[str, int | None]:
    return {
        w["metadata"]["labels"]["parley.dev/track"]: w["spec"].get("replicas")
        for w in render.workloads()
        if w["metadata"]["labels"]["app.kubernetes.io/component"] == component
    }


@pytest.mark.parametrize(
    ("replicas", "weight", "stable", "canary"),
    [
        (2, 10, 1, 1),  # coarse, but the stable track keeps a pod
        (4, 10, 3, 1),
        (4, 95, 1, 3),  # ceil(3.8) = 4 would leave no stable pod
        (10, 25, 7, 3),
        (3, 100, 0, 3),  # everything on the canary, on purpose
        (3, 0, 3, 0),
    ],
)
def test_pair_split_keeps_a_pod_on_each_track(
    helm: Helm, tmp_path: Path, replicas: int, weight: int, stable: int, canary: int
) -> None:
    values = {
        "components": {
            "billing": {
                "replicas": replicas,
                "autoscaling": {"enabled": False},
                "canary": {"strategy": "pair", "pair": {"weight": weight, "image": {"tag": "2"}}},
            }
        }
    }
    render = render_with(helm, tmp_path, values)
    assert pair_replicas(render, "billing") == {"stable": stable, "canary": canary}
    assert canary == expected_canary(replicas, weight)


def test_autoscaled_pair_split_keeps_a_stable_pod(helm: Helm, tmp_path: Path) -> None:
    values = {
        "components": {
            "billing": {
                "autoscaling": {"minReplicas": 2, "maxReplicas": 6},
                "canary": {"strategy": "pair", "pair": {"weight": 90, "image": {"tag": "2"}}},
            }
        }
    }
    render = render_with(helm, tmp_path, values)
    assert pair_replicas(render, "billing") == {"stable": None, "canary": 1}
    hpa = render.get("HorizontalPodAutoscaler", "parley-acme-billing")
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 5)


def _pod_names(workload: str, hashes: list[str]) -> list[str]:
    """Pod names the API server generates for a Deployment's ReplicaSets: <rs>-<5 random>,
    the base cut to 58 characters (names.SimpleNameGenerator)."""
    return [f"{workload}-{h}-"[:58] + "x7k2b" for h in hashes]


def test_keda_stable_query_excludes_the_canary_track(helm: Helm, tmp_path: Path) -> None:
    """KEDA scales the stable Deployment only: its query must not count the canary's pods
    (nor the database Jobs' pods), or the stable track is sized for both."""
    values = {
        "components": {
            "router": {"canary": {"strategy": "pair", "pair": {"image": {"tag": "2"}}}},
            "kb": {
                "autoscaling": {
                    "engine": "keda",
                    "metric": {"name": "parley_grpc_server_in_flight", "type": "gauge"},
                },
                "canary": {"strategy": "pair", "pair": {"image": {"tag": "2"}}},
            },
        }
    }
    hashes = ["7d9f8b6c5d", "59b7f4c6d8", "6c5d4", "b"]
    for release in ("parley-acme", "parley-tenant-acme-corporation-production-eu-west1-b"):
        example = Example.load("values-acme.yaml")
        path = tmp_path / "override.yaml"
        path.write_text(yaml.safe_dump(values))
        out = helm.run(
            *helm.template_args([example.path, path], release=release, namespace="tenant-acme")
        ).stdout
        render = Render(example, [d for d in yaml.safe_load_all(out) if d])
        for so in render.kind("ScaledObject"):
            target = so["spec"]["scaleTargetRef"]["name"]
            (trigger,) = [t for t in so["spec"]["triggers"] if t["type"] == "prometheus"]
            pattern = re.search(r'pod=~"([^"]+)"', trigger["metadata"]["query"])
            assert pattern, trigger["metadata"]["query"]
            selects = re.compile(pattern.group(1))  # PromQL regexes are anchored
            for pod in _pod_names(target, hashes):
                assert selects.fullmatch(pod), (pattern.group(1), pod)
            for other in (f"{target}-canary", f"{target}-migrate", f"{target}-tune-search"):
                for pod in _pod_names(other, hashes):
                    assert not selects.fullmatch(pod), (pattern.group(1), pod)


def test_usage_spool_fits_in_tmp(rendered: Render) -> None:
    """Every process that ships usage caps its spool so that all of them together fill at
    most half of the pod's /tmp: a billing outage refuses new events instead of getting the pod
    evicted (and its unsent usage deleted) at tmpSizeLimit."""
    for w in rendered.workloads():
        cv = component_values(rendered, w)
        env = rendered.config_env(w)
        tmp = next(
            v["emptyDir"]["sizeLimit"]
            for v in w["spec"]["template"]["spec"]["volumes"]
            if v["name"] == "tmp"
        )
        if "BILLING_ADDR" not in env:
            # billing-svc itself: nothing to ship, no spool.
            assert "PARLEY_USAGE_SPOOL_MAX_BYTES" not in env
            continue
        cap = int(env["PARLEY_USAGE_SPOOL_MAX_BYTES"])
        processes = cv["usageSpool"]["processes"]
        if cv["usageSpool"]["processesEnv"] in env:
            processes = int(env[cv["usageSpool"]["processesEnv"]])
        assert cap * processes <= quantity(tmp) / 2, (w["metadata"]["name"], cap, tmp)
        assert cap >= 2**20
    agent = next(w for w in rendered.workloads() if component_values(rendered, w)["livekit"])
    # One spool per job process, i.e. per session: the worker's cap on sessions.
    assert component_values(rendered, agent)["usageSpool"]["processesEnv"] == (
        "PARLEY_AGENT_MAX_SESSIONS"
    )


def test_usage_spool_follows_the_sessions_cap_and_overrides(helm: Helm, tmp_path: Path) -> None:
    values = {
        "components": {
            "agent": {"env": {"PARLEY_AGENT_MAX_SESSIONS": "20"}},
            "router": {"usageSpool": {"maxBytes": 10_000_000}},
            "kb": {"env": {"PARLEY_USAGE_SPOOL_MAX_BYTES": "123"}},
            "vision": {"tmpSizeLimit": 64 * 2**20},  # a plain number of bytes
        }
    }
    render = render_with(helm, tmp_path, values)
    env = {
        w["metadata"]["labels"]["app.kubernetes.io/component"]: render.config_env(w)
        for w in render.workloads()
    }
    assert int(env["agent"]["PARLEY_USAGE_SPOOL_MAX_BYTES"]) == 2**30 // 2 // 20
    assert env["router"]["PARLEY_USAGE_SPOOL_MAX_BYTES"] == "10000000"
    assert env["kb"]["PARLEY_USAGE_SPOOL_MAX_BYTES"] == "123"  # the component's env wins
    assert int(env["vision"]["PARLEY_USAGE_SPOOL_MAX_BYTES"]) == 64 * 2**20 // 2


def test_usage_spool_env_is_the_runtimes() -> None:
    """The variable the chart sets is the one parley_runtime reads."""
    from parley_runtime.usage import UsageClientSettings

    old = os.environ.get("PARLEY_USAGE_SPOOL_MAX_BYTES")
    os.environ["PARLEY_USAGE_SPOOL_MAX_BYTES"] = "33554432"
    try:
        assert UsageClientSettings().spool_max_bytes == 33554432
    finally:
        if old is None:
            del os.environ["PARLEY_USAGE_SPOOL_MAX_BYTES"]
        else:
            os.environ["PARLEY_USAGE_SPOOL_MAX_BYTES"] = old


def test_agent_name_is_unique_per_release(helm: Helm, tmp_path: Path) -> None:
    """Workers of different releases on one LiveKit server must not share an agent name (the
    worker's default, parley-agent), or each takes the other's sessions."""
    names = set()
    for example in ("values-acme.yaml", "values-pool.yaml", "values-defaults.yaml"):
        render = helm.render(Example.load(example))
        (agent,) = [w for w in render.workloads() if "LIVEKIT_URL" in render.config_env(w)]
        name = render.config_env(agent)["PARLEY_AGENT_NAME"]
        fullname = render.get("Service", f"{render.example.release}-router")["metadata"]["name"]
        assert name == f"{fullname.removesuffix('-router')}.{render.example.namespace}"
        names.add(name)
    assert len(names) == 3
    render = render_with(helm, tmp_path, {"livekit": {"agentName": "acme-voice"}})
    (agent,) = [w for w in render.workloads() if "LIVEKIT_URL" in render.config_env(w)]
    assert render.config_env(agent)["PARLEY_AGENT_NAME"] == "acme-voice"
    # ... which is the variable the worker registers under.
    config = (ROOT / "services/agent-worker/src/parley_agent/config.py").read_text()
    assert re.search(r"agent_name: str = Field\([^)]*\"PARLEY_AGENT_NAME\"", config, re.S)


def test_kb_operator_tokens_pass_the_verifier(rendered: Render) -> None:
    """kb's operator endpoints accept only PARLEY_KB_OPERATOR_CALLERS, but the admin API
    verifies every token against PARLEY_AUTH_ALLOWED_CALLERS first: with the rendered env an
    operator token (signed with kb-svc's own key, the documented path) gets through both."""
    from parley_runtime.auth import TokenSigner, TokenVerifier

    (kb,) = [
        w
        for w in rendered.workloads()
        if w["metadata"]["labels"]["app.kubernetes.io/component"] == "kb"
        and w["metadata"]["labels"].get("parley.dev/track", "stable") == "stable"
    ]
    env = rendered.config_env(kb)
    operators = yaml.safe_load(env["PARLEY_KB_OPERATOR_CALLERS"])
    # The chart's default is kb-svc's own (its README's operator path).
    from parley_kb.config import Settings

    default = Settings.model_fields["kb_operator_callers"].get_default(call_default_factory=True)
    assert operators == default == ["kb-svc"]
    allowed = yaml.safe_load(env["PARLEY_AUTH_ALLOWED_CALLERS"])
    keys = {"kb-svc": "s" * 32, "agent-worker": "a" * 32}
    verifier = TokenVerifier(keys=keys, audience="kb-svc", allowed_callers=allowed)
    for operator in operators:
        if operator in keys:
            token = TokenSigner(service=operator, kid=operator, secret=keys[operator]).token(
                tenant=None, audience="kb-svc"
            )
            assert verifier.verify(token).service in operators
