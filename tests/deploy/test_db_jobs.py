"""The database Jobs: schema migrations (Helm pre-install/pre-upgrade hooks) and kb tune-search.

Checked on every example: the command each runs, the hook annotations and order (everything a
migration pod uses is itself an earlier hook, since hooks run before the release's objects
exist), env from Secrets by reference only (the owner DSN from postgres.migrateSecretRef), the
restricted security context, bounded resources within quota and LimitRange, and the network:
the Job pods reach DNS and PostgreSQL (the migrations even with nothing but the namespace's
default deny and their own hook policy in place), nothing else, and nothing reaches them. Then
the switches, the scope of tune-search per mode, and the schema and consistency checks.
"""

from __future__ import annotations

import ipaddress
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_support import (
    DEFAULT_KUBE,
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

HOOK = "helm.sh/hook"
WEIGHT = "helm.sh/hook-weight"
DELETE_POLICY = "helm.sh/hook-delete-policy"
MIGRATING = ("kb", "billing")


def migrate_jobs(render: Render) -> dict[str, dict[str, Any]]:
    """Migration Jobs by component."""
    out = {}
    for job in render.kind("Job"):
        label = job["metadata"]["labels"]["app.kubernetes.io/component"]
        assert label.endswith("-migrate"), job["metadata"]["name"]
        out[label.removesuffix("-migrate")] = job
    return out


def track_images(render: Render, component: str) -> dict[str, str]:
    """The image of each track (stable, canary) of a component's Deployments."""
    out = {}
    for w in render.workloads():
        if w["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] == component:
            track = w["metadata"]["labels"].get("parley.dev/track", "stable")
            out[track] = w["spec"]["template"]["spec"]["containers"][0]["image"]
    return out


def newest_image(render: Render, component: str) -> str:
    images = track_images(render, component)
    return images.get("canary", images["stable"])


def job_pod_specs(render: Render) -> list[tuple[str, dict[str, Any]]]:
    """(name, pod template) of every Job and CronJob."""
    out = [(j["metadata"]["name"], j["spec"]["template"]) for j in render.kind("Job")]
    out += [
        (c["metadata"]["name"], c["spec"]["jobTemplate"]["spec"]["template"])
        for c in render.kind("CronJob")
    ]
    return out


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container["env"]}


def secret_ref(env: dict[str, dict[str, Any]], name: str) -> tuple[str, str]:
    ref = env[name]["valueFrom"]["secretKeyRef"]
    assert "value" not in env[name]
    return ref["name"], ref["key"]


def hooks(render: Render) -> list[dict[str, Any]]:
    return [d for d in render.docs if HOOK in (d["metadata"].get("annotations") or {})]


def postgres_pods(render: Render) -> list[Pod]:
    """A pod for every peer of postgres.egress, labelled/addressed as that peer selects."""
    pods = []
    for i, rule in enumerate(render.values["postgres"]["egress"]):
        for j, peer in enumerate(rule["to"]):
            if "ipBlock" in peer:
                net = ipaddress.ip_network(peer["ipBlock"]["cidr"])
                pods.append(
                    Pod(f"pg-{i}-{j}", "external", {}, {}, str(net[min(5, net.num_addresses - 1)]))
                )
            else:
                ns_sel = (peer.get("namespaceSelector") or {}).get("matchLabels") or {}
                ns = ns_sel.get("kubernetes.io/metadata.name", render.example.namespace)
                labels = (peer.get("podSelector") or {}).get("matchLabels") or {}
                pods.append(Pod(f"pg-{i}-{j}", ns, {**ns_labels(ns), **ns_sel}, labels, "10.9.0.5"))
    ports = [p["port"] for rule in render.values["postgres"]["egress"] for p in rule["ports"]]
    assert pods and ports
    return pods


def job_pods(render: Render) -> list[Pod]:
    namespace = render.example.namespace
    return [
        Pod(
            f"{name}-pod",
            namespace,
            ns_labels(namespace),
            dict(tpl["metadata"]["labels"]),
            f"10.1.200.{i}",
        )
        for i, (name, tpl) in enumerate(job_pod_specs(render))
    ]


# --- migrations -----------------------------------------------------------------------------


def test_a_migration_job_per_database_component(rendered: Render) -> None:
    v = rendered.values
    jobs = migrate_jobs(rendered)
    assert set(jobs) == set(MIGRATING) == set(v["migrations"]["components"])
    stable = {
        w["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]: w
        for w in rendered.workloads()
        if not w["metadata"]["name"].endswith("-canary")
    }
    for name, job in jobs.items():
        spec = job["spec"]
        assert spec["backoffLimit"] == v["migrations"]["backoffLimit"]
        assert spec["activeDeadlineSeconds"] == v["migrations"]["activeDeadlineSeconds"]
        pod = spec["template"]["spec"]
        assert pod["restartPolicy"] == "Never"
        (c,) = pod["containers"]
        # The image's entrypoint is `python -m parley_<svc>`: the Job runs its `migrate`.
        assert c["args"] == ["migrate"] and "command" not in c
        service = stable[name]["spec"]["template"]["spec"]["containers"][0]
        # The newest image the release runs migrates: a pair canary's, else the stable one.
        assert c["image"] == newest_image(rendered, name)
        assert c["imagePullPolicy"] == service["imagePullPolicy"]
        assert "ports" not in c and "livenessProbe" not in c


def test_migrations_are_pre_install_and_pre_upgrade_hooks(rendered: Render) -> None:
    jobs = migrate_jobs(rendered)
    for job in jobs.values():
        ann = job["metadata"]["annotations"]
        assert set(ann[HOOK].split(",")) == {"pre-install", "pre-upgrade"}
        # Replaced by the next run; removed once every hook succeeded; a failed one stays.
        assert set(ann[DELETE_POLICY].split(",")) == {"before-hook-creation", "hook-succeeded"}
    by_key = {(d["kind"], d["metadata"]["name"]): d for d in hooks(rendered)}
    for job in jobs.values():
        weight = int(job["metadata"]["annotations"][WEIGHT])
        pod = job["spec"]["template"]["spec"]
        needed = [("ServiceAccount", pod["serviceAccountName"])]
        needed += [
            ("ConfigMap", s["configMapRef"]["name"]) for s in pod["containers"][0]["envFrom"]
        ]
        needed += [
            ("ConfigMap", vol["configMap"]["name"]) for vol in pod["volumes"] if "configMap" in vol
        ]
        existing = rendered.values["tenantsConfig"]["existingConfigMap"]
        for kind, name in needed:
            if kind == "ConfigMap" and name == existing:
                continue  # managed outside the chart: exists before the install
            assert (kind, name) in by_key, f"{job['metadata']['name']} needs {kind}/{name}"
            dep = by_key[(kind, name)]
            dep_ann = dep["metadata"]["annotations"]
            assert dep_ann[HOOK] == job["metadata"]["annotations"][HOOK]
            assert int(dep_ann[WEIGHT]) < weight, (kind, name)
    # Only migration objects are hooks; the release's own objects are untouched.
    for d in hooks(rendered):
        assert d["metadata"]["labels"]["app.kubernetes.io/component"].endswith("migrate")


def test_migration_env_matches_the_service(rendered: Render) -> None:
    jobs = migrate_jobs(rendered)
    pg = rendered.values["postgres"]
    for job in jobs.values():
        c = job["spec"]["template"]["spec"]["containers"][0]
        (src,) = c["envFrom"]
        job_env = rendered.get("ConfigMap", src["configMapRef"]["name"])["data"]
        component = rendered.get("ConfigMap", job["metadata"]["name"].removesuffix("-migrate"))
        # Same embedding model, app role settings and tenants file path as the service.
        assert job_env == component["data"]
        env = env_of(c)
        assert secret_ref(env, "MIGRATE_DATABASE_URL") == (
            pg["migrateSecretRef"]["name"],
            pg["migrateSecretRef"]["key"],
        )
        # The app role migrate creates/grants is the user and password of DATABASE_URL.
        assert secret_ref(env, "DATABASE_URL") == (pg["secretRef"]["name"], pg["secretRef"]["key"])
        assert "PARLEY_AUTH_KEYS" not in env  # the Jobs call no service
        for e in c["env"]:
            assert "secretKeyRef" in e["valueFrom"], e
        tenants_mount = next(m for m in c["volumeMounts"] if m["name"] == "tenants")
        assert job_env["PARLEY_TENANTS_FILE"] == f"{tenants_mount['mountPath']}/tenants.yaml"
    kb_env = env_of(jobs["kb"]["spec"]["template"]["spec"]["containers"][0])
    # kb picks the embedding model (and so the table it migrates) by the Voyage key.
    assert (
        secret_ref(kb_env, "VOYAGE_API_KEY")[1]
        == rendered.values["providers"]["voyage"]["apiKeyKey"]
    )


def test_migration_tenants_file_is_the_releases(rendered: Render) -> None:
    service = next(
        c for c in rendered.kind("ConfigMap") if c["metadata"]["name"].endswith("-tenants")
    )
    for job in migrate_jobs(rendered).values():
        vol = next(x for x in job["spec"]["template"]["spec"]["volumes"] if x["name"] == "tenants")
        hook_cm = rendered.get("ConfigMap", vol["configMap"]["name"])
        assert hook_cm["data"]["tenants.yaml"] == service["data"]["tenants.yaml"]


def test_migration_with_an_existing_tenants_config_map(helm: Helm, tmp_path: Path) -> None:
    render = render_with(helm, tmp_path, {"tenantsConfig": {"existingConfigMap": "acme-tenants"}})
    for job in migrate_jobs(render).values():
        vol = next(x for x in job["spec"]["template"]["spec"]["volumes"] if x["name"] == "tenants")
        assert vol["configMap"]["name"] == "acme-tenants"
    assert not [
        c for c in hooks(render) if c["kind"] == "ConfigMap" and "tenants.yaml" in c["data"]
    ]


def test_pair_canary_migrates_with_the_canary_image(helm: Helm, tmp_path: Path) -> None:
    """New pods never meet an old schema: with a pair canary the migration runs the canary's
    image (the stable pods then run on the migrated schema, so migrations stay backward
    compatible), for every schema-owning component; tune-search keeps the proven stable image."""
    pair = {"strategy": "pair", "pair": {"weight": 25, "image": {"tag": "0.2.0"}}}
    values = {"components": {"billing": {"canary": pair}}}
    render = render_with(helm, tmp_path, values, base="values-canary-pair.yaml")
    jobs = migrate_jobs(render)
    for name in MIGRATING:
        images = track_images(render, name)
        assert images["canary"].endswith(":0.2.0") and images["stable"] != images["canary"]
        image = jobs[name]["spec"]["template"]["spec"]["containers"][0]["image"]
        assert image == images["canary"], name
    (cron,) = render.kind("CronJob")
    cron_image = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["image"]
    assert cron_image == track_images(render, "kb")["stable"]


def test_aborted_pair_canary_keeps_migrating_with_its_image(helm: Helm, tmp_path: Path) -> None:
    """weight 0 (the documented abort) leaves the schema migrated; the Job keeps the canary's
    image, since kb's migrate refuses a database that a newer build migrated. Once the pair
    names the stable image again, the stable image migrates."""
    aborted = {"components": {"kb": {"canary": {"pair": {"weight": 0}}}}}
    render = render_with(helm, tmp_path, aborted, base="values-canary-pair.yaml")
    image = migrate_jobs(render)["kb"]["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image.endswith(":0.2.0")
    assert track_images(render, "kb")["stable"] != image
    promoted = {
        "components": {"kb": {"image": {"tag": "0.2.0"}, "canary": {"pair": {"weight": 0}}}}
    }
    render = render_with(helm, tmp_path, promoted, base="values-canary-pair.yaml")
    image = migrate_jobs(render)["kb"]["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == track_images(render, "kb")["stable"] and image.endswith(":0.2.0")
    plain = render_with(helm, tmp_path, {}, base="values-defaults.yaml")
    for name, job in migrate_jobs(plain).items():
        image = job["spec"]["template"]["spec"]["containers"][0]["image"]
        assert image == track_images(plain, name)["stable"]


# --- tune-search --------------------------------------------------------------------------------


def test_tune_search_cron_job(rendered: Render) -> None:
    v = rendered.values
    (cron,) = rendered.kind("CronJob")
    t = v["kbTuneSearch"]
    spec = cron["spec"]
    assert spec["schedule"] == t["schedule"] == "17 3 * * *"
    assert spec["timeZone"] == t["timeZone"]
    assert spec["concurrencyPolicy"] == "Forbid"
    assert spec["startingDeadlineSeconds"] == t["startingDeadlineSeconds"]
    job = spec["jobTemplate"]["spec"]
    assert job["backoffLimit"] == t["backoffLimit"]
    assert job["activeDeadlineSeconds"] == t["activeDeadlineSeconds"]
    assert HOOK not in (cron["metadata"].get("annotations") or {})
    pod = job["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    (c,) = pod["containers"]
    if v["mode"] == "dedicated":
        # A dedicated release touches its own tenant only, even in a shared database.
        assert c["args"] == ["tune-search", "--tenant", v["tenant"]["id"]]
    else:
        assert c["args"] == ["tune-search", "--all-tenants"]
    kb_name = cron["metadata"]["name"].removesuffix("-tune-search")
    (kb,) = [w for w in rendered.workloads() if w["metadata"]["name"] == kb_name]
    assert c["image"] == kb["spec"]["template"]["spec"]["containers"][0]["image"]
    env = env_of(c)
    pg = v["postgres"]["migrateSecretRef"]
    assert secret_ref(env, "MIGRATE_DATABASE_URL") == (pg["name"], pg["key"])
    assert "DATABASE_URL" not in env and "PARLEY_AUTH_KEYS" not in env
    # An ordinary release object: it uses kb's own ServiceAccount, env and tenants file.
    kb_pod = kb["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == kb_pod["serviceAccountName"]
    assert c["envFrom"] == kb_pod["containers"][0]["envFrom"]
    assert rendered.get("ServiceAccount", pod["serviceAccountName"])
    for vol in pod["volumes"]:
        if (
            "configMap" in vol
            and vol["configMap"]["name"] != v["tenantsConfig"]["existingConfigMap"]
        ):
            cm = rendered.get("ConfigMap", vol["configMap"]["name"])
            assert HOOK not in (cm["metadata"].get("annotations") or {})


def test_tune_search_extra_args_and_pool_scope(helm: Helm, tmp_path: Path) -> None:
    render = render_with(
        helm,
        tmp_path,
        {
            "kbTuneSearch": {
                "schedule": "@weekly",
                "timeZone": "Europe/Berlin",
                "extraArgs": ["--min-chunks", "100000"],
            }
        },
        base="values-pool.yaml",
    )
    (cron,) = render.kind("CronJob")
    assert cron["spec"]["schedule"] == "@weekly"
    assert cron["spec"]["timeZone"] == "Europe/Berlin"
    c = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert c["args"] == ["tune-search", "--all-tenants", "--min-chunks", "100000"]


# --- pods, resources, network -------------------------------------------------------------------


def test_job_pods_run_restricted(rendered: Render) -> None:
    specs = job_pod_specs(rendered)
    assert len(specs) == 3
    for name, tpl in specs:
        spec = tpl["spec"]
        psc = spec["securityContext"]
        assert psc["runAsNonRoot"] is True and psc["runAsUser"] >= 1000, name
        assert psc["seccompProfile"]["type"] == "RuntimeDefault", name
        for forbidden in ("hostNetwork", "hostPID", "hostIPC"):
            assert not spec.get(forbidden), (name, forbidden)
        assert spec["automountServiceAccountToken"] is False, name
        assert spec["enableServiceLinks"] is False, name
        sa = rendered.get("ServiceAccount", spec["serviceAccountName"])
        assert sa["automountServiceAccountToken"] is False, name
        for vol in spec["volumes"]:
            assert set(vol) & {"emptyDir", "configMap"}, (name, vol)
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["runAsNonRoot"] is True, name
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc.get("privileged", False) is False, name
            assert sc["capabilities"]["drop"] == ["ALL"] and not sc["capabilities"].get("add")
            assert sc["seccompProfile"]["type"] == "RuntimeDefault", name
            assert {m["mountPath"]: m["name"] for m in c["volumeMounts"]}["/tmp"] == "tmp"


def test_job_pods_are_bounded_and_fit_quota_and_limit_range(rendered: Render) -> None:
    ranges = rendered.kind("LimitRange")
    quotas = rendered.kind("ResourceQuota")
    limit_max = ranges[0]["spec"]["limits"][0]["max"] if ranges else None
    extra: dict[str, Decimal] = {"requests.cpu": Decimal(0), "requests.memory": Decimal(0)}
    for name, tpl in job_pod_specs(rendered):
        for c in tpl["spec"]["containers"]:
            res = c["resources"]
            for k in ("cpu", "memory"):
                assert quantity(res["limits"][k]) >= quantity(res["requests"][k]), name
                if limit_max:
                    assert quantity(res["limits"][k]) <= quantity(limit_max[k]), name
                extra[f"requests.{k}"] += quantity(res["requests"][k])
    if not quotas:
        return
    # Room for every component at the peak of a rollout plus one run of each Job.
    hard = quotas[0]["spec"]["hard"]
    peak = rollout_peak(rendered)
    assert peak["pods"] >= len(job_pod_specs(rendered))
    for key in ("requests.cpu", "requests.memory", "pods"):
        assert quantity(hard[key]) >= peak[key], (key, hard[key], peak[key])
    for k in ("cpu", "memory"):
        assert peak[f"requests.{k}"] >= extra[f"requests.{k}"]


def test_job_pods_are_no_components_pods(rendered: Render) -> None:
    """No Service, PDB or autoscaler selects them, and no component's NetworkPolicy either."""
    for _, tpl in job_pod_specs(rendered):
        labels = tpl["metadata"]["labels"]
        for svc in rendered.kind("Service"):
            assert not selector_matches({"matchLabels": svc["spec"]["selector"]}, labels)
        for pdb in rendered.kind("PodDisruptionBudget"):
            assert not selector_matches(pdb["spec"]["selector"], labels)
        for w in rendered.workloads():
            assert not selector_matches(w["spec"]["selector"], labels)


def test_job_pods_reach_postgres_and_dns_only(rendered: Render) -> None:
    model = NetworkModel(rendered.kind("NetworkPolicy"))
    pg_port = rendered.values["postgres"]["egress"][0]["ports"][0]["port"]
    dns = Pod(
        "coredns", "kube-system", ns_labels("kube-system"), {"k8s-app": "kube-dns"}, "10.4.0.10"
    )
    public = Pod("api.voyageai.com", "internet", {}, {}, "34.1.2.3")
    metadata = Pod("cloud-metadata", "internet", {}, {}, "169.254.169.254")
    service_pods = release_pods(rendered, ns_labels(rendered.example.namespace))
    jobs = job_pods(rendered)
    assert len(jobs) == 3
    for pod in jobs:
        for pg in postgres_pods(rendered):
            assert model.egress_allowed(pod, pg, pg_port), (pod.name, pg.name)
        assert model.egress_allowed(pod, dns, 53, "UDP") and model.egress_allowed(pod, dns, 53)
        assert not model.egress_allowed(pod, public, 443)
        assert not model.egress_allowed(pod, metadata, 80)
        for target in service_pods:
            for port in target.ports.values():
                assert not model.egress_allowed(pod, target, port), (pod.name, target.name)
                # ... and nothing can open a connection to a Job pod.
                assert not model.ingress_allowed(target, pod, port), (target.name, pod.name)
        assert not model.ingress_allowed(dns, pod, 8080)


def test_migrations_reach_postgres_before_the_release_exists(rendered: Render) -> None:
    """A hook runs before the release's NetworkPolicies are created or updated: with only the
    namespace's default deny (left by an earlier release) and the hook's own policy, the
    migration pods still reach DNS and PostgreSQL."""
    policies = rendered.kind("NetworkPolicy")
    deny = [p for p in policies if p["metadata"]["name"].endswith("-default-deny")]
    hook_policies = [p for p in policies if HOOK in (p["metadata"].get("annotations") or {})]
    assert len(deny) == 1 and len(hook_policies) == 1
    model = NetworkModel(deny + hook_policies)
    dns = Pod(
        "coredns", "kube-system", ns_labels("kube-system"), {"k8s-app": "kube-dns"}, "10.4.0.10"
    )
    pg_port = rendered.values["postgres"]["egress"][0]["ports"][0]["port"]
    migrating = [p for p in job_pods(rendered) if p.name.endswith("-migrate-pod")]
    assert len(migrating) == 2
    for pod in migrating:
        assert model.egress_allowed(pod, dns, 53, "UDP")
        for pg in postgres_pods(rendered):
            assert model.egress_allowed(pod, pg, pg_port)


# --- switches -----------------------------------------------------------------------------------


def test_migrations_can_be_turned_off(helm: Helm, tmp_path: Path) -> None:
    render = render_with(helm, tmp_path, {"migrations": {"enabled": False}})
    assert not render.kind("Job") and not hooks(render)
    assert len(render.kind("CronJob")) == 1


def test_tune_search_can_be_turned_off(helm: Helm, tmp_path: Path) -> None:
    render = render_with(helm, tmp_path, {"kbTuneSearch": {"enabled": False}})
    assert not render.kind("CronJob")
    assert not [p for p in render.kind("NetworkPolicy") if "tune-search" in p["metadata"]["name"]]
    assert set(migrate_jobs(render)) == set(MIGRATING)


def test_no_kb_no_kb_jobs(helm: Helm, tmp_path: Path) -> None:
    values = {
        "components": {
            "kb": {"enabled": False},
            "agent": {"dependsOn": ["router", "vision", "billing"]},
        }
    }
    render = render_with(helm, tmp_path, values)
    assert set(migrate_jobs(render)) == {"billing"}
    assert not render.kind("CronJob")
    (policy,) = [p for p in hooks(render) if p["kind"] == "NetworkPolicy"]
    assert policy["spec"]["podSelector"]["matchExpressions"][0]["values"] == ["billing-migrate"]


def test_plain_manifests_include_the_jobs() -> None:
    from deploy_support import ROOT

    docs = [d for d in yaml.safe_load_all((ROOT / "deploy/k8s/parley.yaml").read_text()) if d]
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert {
        ("Job", "parley-demo-kb-migrate"),
        ("Job", "parley-demo-billing-migrate"),
        ("CronJob", "parley-demo-kb-tune-search"),
    } <= kinds


# --- schema and consistency ---------------------------------------------------------------------


def _fails(helm: Helm, tmp_path: Path, values: dict[str, Any]) -> str:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    example = Example.load("values-acme.yaml")
    proc = helm.run(
        *helm.template_args([example.path, path], kube_version=DEFAULT_KUBE), check=False
    )
    assert proc.returncode != 0, f"accepted: {values}"
    return proc.stderr


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"migrations": {"hookWeight": 5}}, "'hookWeight' not allowed"),
        ({"kbTuneSearch": {"concurrencyPolicy": "Allow"}}, "'concurrencyPolicy' not allowed"),
        ({"postgres": {"migrateSecretRef": {"secret": "x"}}}, "'secret' not allowed"),
        ({"kbTuneSearch": {"schedule": "daily"}}, "/kbTuneSearch/schedule"),
        ({"kbTuneSearch": {"timeZone": "UTC +1"}}, "/kbTuneSearch/timeZone"),
        ({"migrations": {"backoffLimit": -1}}, "/migrations/backoffLimit"),
        ({"migrations": {"resources": {"limits": None}}}, "/migrations/resources"),
        ({"postgres": {"migrateSecretRef": {"name": "Owner DSN", "key": "k"}}}, "/postgres"),
        ({"migrations": {"components": ["router"]}}, '"router" does not list postgres'),
        ({"migrations": {"components": ["ledger"]}}, 'no component "ledger"'),
    ],
)
def test_bad_job_values_are_rejected(
    helm: Helm, tmp_path: Path, values: dict[str, Any], message: str
) -> None:
    assert message in _fails(helm, tmp_path, values)
