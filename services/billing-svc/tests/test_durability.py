"""Acknowledged means durable: PostgreSQL is killed with SIGKILL under load and every event
billing-svc acknowledged is there after crash recovery. While the database is down, ingest
answers UNAVAILABLE (retryable), and billing-svc recovers by itself when it is back."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import asyncpg
import grpc
import psutil
import pytest
from parley.billing.v1 import billing_pb2
from parley_billing.testing import (
    billing_stub,
    llm_event,
    prepare_database,
    start_billing,
    tenant_md,
)
from parley_devstack.postgres import PostgresProcess
from parley_runtime.testing import free_port

pytestmark = pytest.mark.integration


def _kill_postgres(pg: PostgresProcess) -> None:
    pid = pg.pid()
    assert pid is not None
    root = psutil.Process(pid)
    victims = [root, *root.children(recursive=True)]
    for proc in victims:
        try:
            os.kill(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    psutil.wait_procs(victims, timeout=10)


async def test_acknowledged_events_survive_a_database_crash(tmp_path: Path) -> None:
    pg = PostgresProcess(tmp_path / "pgdata", free_port())
    pg.start()
    try:
        conn = await asyncpg.connect(pg.admin_dsn)
        await conn.execute("CREATE DATABASE durable")
        await conn.close()
        owner = pg.dsn("durable")
        app = await prepare_database(owner)
        h = await start_billing(owner, app)
        acked: set[str] = set()
        try:
            async with billing_stub(h.port) as stub:

                async def writer(w: int) -> None:
                    n = 0
                    while True:
                        keys = [f"w{w}-{n}-{i}" for i in range(50)]
                        try:
                            await stub.IngestUsage(
                                billing_pb2.IngestUsageRequest(events=[llm_event(k) for k in keys]),
                                metadata=tenant_md("acme"), timeout=5)
                        except grpc.aio.AioRpcError:
                            return  # the database went away: this batch was not acknowledged
                        acked.update(keys)
                        n += 1

                writers = [asyncio.create_task(writer(w)) for w in range(4)]
                await asyncio.sleep(1.5)
                _kill_postgres(pg)
                await asyncio.wait_for(asyncio.gather(*writers), 30)
                assert len(acked) >= 200

                # Down: a clear, retryable status.
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await stub.IngestUsage(
                        billing_pb2.IngestUsageRequest(events=[llm_event("while-down")]),
                        metadata=tenant_md("acme"), timeout=15)
                assert err.value.code() == grpc.StatusCode.UNAVAILABLE

                pg.start()  # crash recovery replays the WAL
                deadline = time.monotonic() + 20
                while True:
                    try:
                        r = await stub.IngestUsage(
                            billing_pb2.IngestUsageRequest(events=[llm_event("after")]),
                            metadata=tenant_md("acme"), timeout=5)
                        break
                    except grpc.aio.AioRpcError as exc:
                        assert exc.code() == grpc.StatusCode.UNAVAILABLE
                        assert time.monotonic() < deadline, "billing-svc did not recover"
                        await asyncio.sleep(0.2)
                assert r.accepted == 1
        finally:
            await h.close()
        conn = await asyncpg.connect(owner)
        try:
            stored = {r["idempotency_key"] for r in await conn.fetch(
                "SELECT idempotency_key FROM usage_events")}
            daily = await conn.fetchval("SELECT sum(events) FROM usage_hourly")
        finally:
            await conn.close()
        assert acked <= stored, f"{len(acked - stored)} acknowledged events lost"
        assert daily == len(stored)
    finally:
        pg.stop()
