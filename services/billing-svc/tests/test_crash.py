"""THE crash test: billing-svc killed with SIGKILL over and over while clients keep sending.

Two client processes record usage through the durable usage client (parley_runtime.usage);
billing-svc runs as a real subprocess (`python -m parley_billing`) and is killed with SIGKILL at
random moments (mid-batch, mid-commit, during start-up) at least 20 times and restarted. In the
end every tenant's totals in the ledger and in both rollups equal exactly what the clients
recorded: none lost, none counted twice.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import asyncpg
import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from parley_billing.events import Usage
from parley_billing.pricing import Pricer
from parley_billing.server import usage_from_pb
from parley_billing.testing import crash_event
from parley_runtime.catalog import load_catalog
from parley_runtime.testing import TEST_KEYS, free_port

pytestmark = pytest.mark.integration

KILLS = 22
CLIENTS = ("c1", "c2")
RATE_PER_CLIENT = 150  # events/s


async def wait_serving(port: int, timeout: float) -> float:
    started = time.monotonic()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() - started < timeout:
            try:
                r = await health.Check(health_pb2.HealthCheckRequest(), timeout=0.5)
                if r.status == health_pb2.HealthCheckResponse.SERVING:
                    return time.monotonic() - started
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError(f"billing-svc did not become SERVING within {timeout}s")


def expected_totals(sent: dict[str, int]) -> dict[str, dict[str, int]]:
    pricer = Pricer(load_catalog())
    out: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for client, count in sent.items():
        for n in range(count):
            tenant, event = crash_event(client, n)
            usage: Usage = usage_from_pb(event, None)
            price = pricer.price(usage)
            t = out[tenant]
            t["events"] += 1
            t["input_tokens"] += usage.input_tokens
            t["output_tokens"] += usage.output_tokens
            t["frames_kept"] += usage.frames_kept
            t["cost_pusd"] += price.cost
            t["naive_pusd"] += price.naive
    return {k: dict(v) for k, v in out.items()}


async def ledger_totals(owner_dsn: str) -> dict[str, dict[str, dict[str, int]]]:
    conn = await asyncpg.connect(owner_dsn)
    try:
        totals: dict[str, dict[str, dict[str, int]]] = {}
        for table, events in (("usage_events", "count(*)"), ("usage_hourly", "sum(events)"),
                              ("usage_session_hourly", "sum(events)")):
            rows = await conn.fetch(
                f"SELECT tenant_id, {events} AS events, sum(input_tokens) AS input_tokens, "
                "sum(output_tokens) AS output_tokens, sum(frames_kept) AS frames_kept, "
                "sum(cost_pusd) AS cost_pusd, sum(naive_pusd) AS naive_pusd "
                f"FROM {table} GROUP BY tenant_id"
            )
            totals[table] = {r["tenant_id"]: {k: int(r[k]) for k in r.keys() if k != "tenant_id"}
                             for r in rows}
        return totals
    finally:
        await conn.close()


async def test_sigkill_billing_20_times_nothing_lost_nothing_doubled(
    billing_dsns: tuple[str, str], tmp_path: Path
) -> None:
    owner, app = billing_dsns
    port = free_port()
    tenants_file = tmp_path / "tenants.yaml"
    tenants_file.write_text(yaml.safe_dump({"tenants": {"acme": {}, "globex": {}}}))
    env = dict(
        os.environ,
        DATABASE_URL=app, MIGRATE_DATABASE_URL=owner,
        PARLEY_GRPC_PORT=str(port), PARLEY_HTTP_PORT="0", PARLEY_METRICS_PORT="0",
        PARLEY_AUTH_KEYS=json.dumps(TEST_KEYS), PARLEY_TENANTS_FILE=str(tenants_file),
        PARLEY_LOG_LEVEL="WARNING", PARLEY_DRAIN_SECONDS="0", OTEL_TRACES_EXPORTER="none",
    )
    log = open(tmp_path / "billing.log", "ab")

    def start_billing() -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-m", "parley_billing"], env=env,
                                stdout=log, stderr=log)

    started = time.monotonic()
    billing = start_billing()
    clients: list[subprocess.Popen[bytes]] = []
    stop_file = tmp_path / "stop"
    rng = random.Random(20261124)
    kills = 0
    startups: list[float] = []
    try:
        startups.append(await wait_serving(port, 30))
        script = Path(__file__).with_name("crash_client.py")
        for client in CLIENTS:
            clients.append(subprocess.Popen(
                [sys.executable, str(script), f"127.0.0.1:{port}", str(tmp_path / "spool"),
                 client, str(stop_file), str(RATE_PER_CLIENT)],
                env=env, stdout=subprocess.PIPE, stderr=log,
            ))
        for _ in range(KILLS):
            # Sometimes right after start-up (mid-migration), mostly mid-traffic.
            await asyncio.sleep(rng.choice([0.0, 0.0, 0.3]) + rng.uniform(0.05, 0.6))
            billing.send_signal(signal.SIGKILL)
            await asyncio.to_thread(billing.wait)
            kills += 1
            billing = start_billing()
            startups.append(await wait_serving(port, 30))
        kill_phase = time.monotonic() - started
        stop_file.touch()
        reports = []
        for proc in clients:
            out, _ = await asyncio.wait_for(asyncio.to_thread(proc.communicate), 150)
            assert proc.returncode == 0
            reports.append(json.loads(out.decode().strip().splitlines()[-1]))
    finally:
        stop_file.touch()
        for proc in (billing, *clients):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        log.close()

    assert kills >= 20
    assert all(r["flushed"] for r in reports), reports
    sent = {r["client"]: int(r["sent"]) for r in reports}
    assert sum(sent.values()) > 3000, sent
    expected = expected_totals(sent)
    actual = await ledger_totals(owner)
    # Exactly what was sent, in the ledger and in both rollups.
    assert actual["usage_events"] == expected
    assert actual["usage_hourly"] == expected
    assert actual["usage_session_hourly"] == expected
    elapsed = time.monotonic() - started
    print(f"\ncrash test: {kills} SIGKILLs, {sum(sent.values())} events, "
          f"{sum(r['duplicate_acks'] for r in reports):.0f} re-sent duplicates absorbed, "
          f"median restart {sorted(startups)[len(startups) // 2]:.2f}s, kill phase "
          f"{kill_phase:.0f}s, {elapsed:.0f}s total")
    # A guard against hangs; about a minute on an idle 2-core machine.
    assert elapsed < 240
