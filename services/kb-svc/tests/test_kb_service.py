"""The real entry points as subprocesses: `migrate`, `ingest` (globs, progress bar), `search`
and `serve` (gRPC + admin REST + /metrics, migrations at start-up, SIGTERM drain)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from parley.kb.v1 import kb_pb2, kb_pb2_grpc
from parley_kb.testing import APP_PASSWORD, APP_ROLE, app_dsn, auth_headers, md_for
from parley_runtime.testing import TEST_KEYS, free_port

pytestmark = pytest.mark.integration


def _env(tmp_path: Path, admin_dsn: str, **extra: str) -> dict[str, str]:
    tenants = tmp_path / "tenants.yaml"
    tenants.write_text(yaml.safe_dump({"tenants": {"acme": {"kb": {"max_documents": 50}},
                                                   "globex": {}}}))
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("VOYAGE_", "PARLEY_", "DATABASE_URL", "MIGRATE_", "REDIS_URL"))}
    env.update({
        "DATABASE_URL": app_dsn(admin_dsn),
        "MIGRATE_DATABASE_URL": admin_dsn,
        "PARLEY_KB_APP_ROLE": APP_ROLE,
        "PARLEY_KB_APP_PASSWORD": APP_PASSWORD,
        "PARLEY_TENANTS_FILE": str(tenants),
        "PARLEY_AUTH_KEYS": json.dumps(TEST_KEYS),
        "OTEL_TRACES_EXPORTER": "none",
        **extra,
    })
    return env


def _run(args: list[str], env: dict[str, str], cwd: Path | None = None
         ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "parley_kb", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_cli_migrate_ingest_search(tmp_path: Path, new_database: Callable[[str], str]) -> None:
    admin = new_database("kbcli")
    env = _env(tmp_path, admin)
    first = _run(["migrate"], env)
    assert first.returncode == 0, first.stderr
    from parley_kb.migrator import load_migrations

    versions = [m.version for m in load_migrations()]
    assert f"migrations applied: {versions}" in first.stdout, first.stdout
    assert "tenants prepared: 2" in first.stdout
    again = _run(["migrate"], env)
    assert again.returncode == 0 and "migrations applied: none" in again.stdout

    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "guide.md").write_text("# Guide\n\n## Pumps\n\nThe zorblax pump needs oil monthly.")
    (docs / "page.html").write_text("<h1>Fans</h1><p>Clean the quibbit fan filter weekly.</p>")
    (docs / "sub" / "notes.txt").write_text("Plain notes about the frinkle valve.")
    (docs / "image.bin").write_bytes(b"\x00\x01")
    (docs / "broken.md").write_bytes(b"\xff\xfe not utf-8")
    ingest = _run(["ingest", str(docs / "**" / "*"), "--tenant", "acme", "--base", str(docs),
                   "--metadata", "source=cli"], env)
    assert ingest.returncode == 1, ingest.stderr  # broken.md failed
    assert "5 files: created 3, failed 1, skipped 1" in ingest.stdout, ingest.stdout
    assert "ingest acme" in ingest.stderr and "doc/s" in ingest.stderr  # tqdm progress bar
    assert "not valid UTF-8" in ingest.stderr
    (docs / "broken.md").unlink()
    (docs / "image.bin").unlink()
    rerun = _run(["ingest", str(docs), "--tenant", "acme", "--base", str(docs),
                  "--metadata", "source=cli", "--no-progress"], env)
    assert rerun.returncode == 0 and "unchanged 3" in rerun.stdout, rerun.stdout

    found = _run(["search", "how often does the quibbit fan need cleaning", "--tenant", "acme",
                  "--json", "--filter", "source=cli"], env)
    assert found.returncode == 0, found.stderr
    hits = json.loads(found.stdout)["hits"]
    assert hits[0]["document_id"] == "page.html" and hits[0]["metadata"] == {"source": "cli"}
    text = _run(["search", "frinkle valve", "--tenant", "acme", "--mode", "full_text"], env)
    assert "sub/notes.txt" in text.stdout
    other = _run(["search", "frinkle valve", "--tenant", "globex"], env)
    assert other.returncode == 0 and "no results" in other.stdout
    unknown = _run(["search", "x", "--tenant", "umbrella"], env)
    assert unknown.returncode == 2 and "NOT_FOUND" in unknown.stderr

    # tune-search (owner DSN): acme's 3-chunk partition is rebuilt and calibrated when asked
    # to (--min-chunks 1), globex (empty) is left alone
    tuned = _run(["tune-search", "--all-tenants", "--min-chunks", "1", "--sample", "3",
                  "--json"], env)
    assert tuned.returncode == 0, tuned.stderr
    reports = {r["tenant_id"]: r for r in json.loads(tuned.stdout)}
    assert reports["acme"]["rebuilt"] and reports["acme"]["ef_search"] >= 1
    assert reports["globex"]["skipped"] and not reports["globex"]["rebuilt"]
    found_again = _run(["search", "how often does the quibbit fan need cleaning", "--tenant",
                        "acme", "--json", "--mode", "vector"], env)
    assert json.loads(found_again.stdout)["hits"][0]["document_id"] == "page.html"


def test_cli_reembed_export_offboard(tmp_path: Path, new_database: Callable[[str], str],
                                     emulator_url: str) -> None:
    """The operator commands as subprocesses: a model switch (local WordLlama -> voyage-3.5
    through the emulator) and `reembed` with its progress bar; `tenants`; `export`; and
    `offboard` of a tenant already removed from the tenants file."""
    admin = new_database("kbops")
    env = _env(tmp_path, admin)
    assert _run(["migrate"], env).returncode == 0
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(6):
        (docs / f"pump-{i}.md").write_text(
            f"# Pump {i}\n\n## Service\n\nThe zorblax pump {i} needs oil every {i + 2} weeks."
            f"\n\n## Parts\n\nGasket kit G-{i}00 fits pump {i} only.")
    for tenant in ("acme", "globex"):
        assert _run(["ingest", str(docs), "--tenant", tenant, "--base", str(docs),
                     "--no-progress"], env).returncode == 0

    voyage = {**env, "VOYAGE_API_KEY": "pa-kb-test", "VOYAGE_BASE_URL": f"{emulator_url}/v1",
              "PARLEY_KB_VOYAGE_MODEL": "voyage-3.5"}
    status = _run(["tenants"], voyage)  # migrates (MIGRATE_DATABASE_URL): voyage's table
    assert status.returncode == 0, status.stderr
    rows = {line.split()[0]: line.split() for line in status.stdout.splitlines()[1:]}
    assert rows["acme"][1] == "yes" and rows["acme"][4] == "0" and int(rows["acme"][5]) > 0
    done = _run(["reembed", "--tenant", "acme", "--batch-chunks", "2", "--json"], voyage)
    assert done.returncode == 0, done.stderr
    [report] = json.loads(done.stdout)
    assert report["model"] == "voyage-3.5" and report["remaining"] == 0
    assert report["reembedded_chunks"] == report["chunks"] > 0 and report["batches"] > 1
    assert "reembed acme" in done.stderr and "chunk/s" in done.stderr  # tqdm progress bar
    found = _run(["search", "how often does pump 3 need oil", "--tenant", "acme", "--mode",
                  "vector", "--json"], voyage)
    result = json.loads(found.stdout)
    assert result["embedding_model"] == "voyage-3.5" and result["hits"]
    assert result["hits"][0]["document_id"] == "pump-3.md"
    globex = _run(["search", "pump 3 oil", "--tenant", "globex", "--mode", "vector"], voyage)
    assert "no results" in globex.stdout  # globex was not re-embedded

    export = tmp_path / "acme.jsonl"
    out = _run(["export", "--tenant", "acme", "-o", str(export)], env)
    assert out.returncode == 0 and "exported 6 documents" in out.stderr
    lines = [json.loads(line) for line in export.read_text().splitlines()]
    assert [d["document_id"] for d in lines] == [f"pump-{i}.md" for i in range(6)]
    assert "Gasket kit G-300" in " ".join(c["body"] for c in lines[3]["chunks"])

    # globex leaves: removed from the tenants file first, then offboarded.
    (tmp_path / "tenants.yaml").write_text(yaml.safe_dump({"tenants": {"acme": {}}}))
    status = _run(["tenants"], env)
    assert any(line.split()[:2] == ["globex", "no"] for line in status.stdout.splitlines())
    refused = _run(["offboard", "--tenant", "globex", "--confirm", "acme"], env)
    assert refused.returncode == 2 and "nothing deleted" in refused.stderr
    saved = tmp_path / "globex.jsonl"
    gone = _run(["offboard", "--tenant", "globex", "--confirm", "globex", "--export",
                 str(saved)], env)
    assert gone.returncode == 0, gone.stderr
    report = json.loads(gone.stdout)
    assert report["existed"] and report["documents"] == 6
    assert len(saved.read_text().splitlines()) == 6
    assert report["embeddings"]["local-wordllama-256"] == report["chunks"] > 0
    assert len(report["partitions_dropped"]) == 3
    twice = _run(["offboard", "--tenant", "globex", "--confirm", "globex"], env)
    assert twice.returncode == 0 and json.loads(twice.stdout)["existed"] is False


def test_serve_grpc_admin_metrics_and_drain(tmp_path: Path, new_database: Callable[[str], str],
                                           redis_url: str) -> None:
    admin = new_database("kbserve")
    grpc_port, metrics_port, admin_port = free_port(), free_port(), free_port()
    env = _env(tmp_path, admin, PARLEY_GRPC_PORT=str(grpc_port),
               PARLEY_METRICS_PORT=str(metrics_port), PARLEY_ADMIN_PORT=str(admin_port),
               REDIS_URL=redis_url, PARLEY_DRAIN_SECONDS="2", PARLEY_DRAIN_DELAY_SECONDS="0")
    log = open(tmp_path / "serve.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "parley_kb"], env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        _wait_serving(grpc_port, proc, tmp_path / "serve.log")
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as ch:
            stub = kb_pb2_grpc.KnowledgeBaseServiceStub(ch)
            res = stub.IngestDocument(kb_pb2.IngestDocumentRequest(
                document_id="hello", content_type=kb_pb2.CONTENT_TYPE_TEXT,
                content=b"The blorptastic widget ships on Tuesdays."), metadata=md_for("acme"))
            assert res.outcome == kb_pb2.INGEST_OUTCOME_CREATED
            hits = stub.Search(kb_pb2.SearchRequest(query="when does the widget ship"),
                               metadata=md_for("acme"))
            assert hits.hits[0].document_id == "hello"
        base = f"http://127.0.0.1:{admin_port}"
        spec = httpx.get(f"{base}/openapi.json", timeout=5).json()
        assert {"/v1/search", "/v1/documents", "/v1/documents/{document_id}"} <= set(spec["paths"])
        assert httpx.get(f"{base}/v1/documents", timeout=5).status_code == 401
        listed = httpx.get(f"{base}/v1/documents", headers=auth_headers("acme"), timeout=5)
        assert [d["document_id"] for d in listed.json()["documents"]] == ["hello"]
        assert httpx.get(f"{base}/v1/documents", headers=auth_headers("globex"),
                         timeout=5).json()["documents"] == []
        metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
        embedded = ('parley_kb_chunks_embedded_total{input_type="document",'
                    'model="local-wordllama-256"} 1.0')
        assert embedded in metrics
        assert "parley_kb_search_seconds_bucket" in metrics
        assert 'parley_kb_ingests_total{result="created"} 1.0' in metrics
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()


def _wait_serving(port: int, proc: subprocess.Popen[Any], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"serve exited: {log.read_text()[-3000:]}")
        try:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
                resp = health_pb2_grpc.HealthStub(ch).Check(
                    health_pb2.HealthCheckRequest(service="parley.kb.v1.KnowledgeBaseService"),
                    timeout=1)
                if resp.status == health_pb2.HealthCheckResponse.SERVING:
                    return
        except grpc.RpcError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"serve did not become healthy: {log.read_text()[-3000:]}")
