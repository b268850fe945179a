"""Policy checks on the rendered manifests of every example values file.

Pods: probes, bounded resources, restricted security settings, drains shorter than their grace.
Wiring: every <DEP>_ADDR names a rendered Service and its gRPC port; Services, PDBs and
autoscalers select what exists. Secrets: referenced only. Isolation: the NetworkPolicies are
evaluated (deploy_support.NetworkModel) for pods of another tenant's namespace, Prometheus, DNS
and every pair of this release's pods.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal
from typing import Any

import pytest
import yaml
from deploy_support import (
    AGENT_ANALYSIS_METRICS,
    KUBE_STATE_METRICS,
    PARLEY_METRICS,
    NetworkModel,
    Pod,
    Render,
    ns_labels,
    quantity,
    release_pods,
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
        assert allowed - expected == set(cv["extraAllowedCallers"])
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


def test_quota_fits_every_component_at_max_scale(rendered: Render) -> None:
    quotas = rendered.kind("ResourceQuota")
    if not rendered.values["namespaceResources"]["resourceQuota"]["enabled"]:
        assert not quotas
        return
    hard = quotas[0]["spec"]["hard"]
    totals = {
        "requests.cpu": Decimal(0),
        "requests.memory": Decimal(0),
        "limits.cpu": Decimal(0),
        "limits.memory": Decimal(0),
        "pods": Decimal(0),
    }
    for w, c in containers(rendered):
        cv = component_values(rendered, w)
        n = cv["autoscaling"]["maxReplicas"] if cv["autoscaling"]["enabled"] else cv["replicas"]
        if w["metadata"]["name"].endswith("-canary"):
            n = w["spec"]["replicas"]
        for k in ("cpu", "memory"):
            totals[f"requests.{k}"] += n * quantity(c["resources"]["requests"][k])
            totals[f"limits.{k}"] += n * quantity(c["resources"]["limits"][k])
        totals["pods"] += n
    for key, total in totals.items():
        assert quantity(hard[key]) >= total, (key, hard[key], total)
    assert hard["services.loadbalancers"] == "0" and hard["services.nodeports"] == "0"


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
            assert n_canary == math.ceil(base * weight / 100)
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
