"""The durable usage client: spool, shipping, retries, dead letters, bounds, crash recovery.

billing-svc's own crash test (services/billing-svc/tests/test_crash.py) runs this client
against the real service; here a fake BillingService (a real gRPC server, with the runtime's
auth) lets each failure mode be produced on demand.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from parley.billing.v1 import billing_pb2, billing_pb2_grpc
from parley_runtime import context
from parley_runtime.errors import InvalidArgument, NotFound, Unavailable
from parley_runtime.server import GrpcServiceHost
from parley_runtime.settings import ServiceSettings
from parley_runtime.testing import TEST_KEYS, free_port, signed_as, start_test_host
from parley_runtime.usage import (
    DEAD_LETTERED,
    DROPPED,
    SPOOL_EVENTS,
    DurableUsageRecorder,
    NullUsageRecorder,
    Spool,
    UsageClientSettings,
    encode_frame,
    iter_frames,
    make_usage_recorder,
    ship_orphaned_spools,
)

pytestmark = pytest.mark.unit


class FakeBilling(billing_pb2_grpc.BillingServiceServicer):
    """Stores events per tenant by idempotency key; fails on demand."""

    def __init__(self) -> None:
        self.events: dict[tuple[str, str], billing_pb2.UsageEvent] = {}
        self.calls = 0
        self.duplicates = 0
        self.fail_next = 0
        self.lose_ack_next = 0
        self.unknown_tenants: set[str] = set()
        self.batch_sizes: list[int] = []
        self.callers: set[str | None] = set()

    async def IngestUsage(self, request: Any, ctx: Any) -> Any:
        self.calls += 1
        tenant = context.require_tenant()
        self.callers.add(context.current().caller)
        if self.fail_next > 0:
            self.fail_next -= 1
            raise Unavailable("billing is restarting")
        if tenant in self.unknown_tenants:
            raise NotFound(f"unknown tenant {tenant!r}")
        for i, ev in enumerate(request.events):
            if "bad" in ev.idempotency_key:
                ctx.set_trailing_metadata((("x-parley-bad-event-index", str(i)),))
                raise InvalidArgument(f"events[{i}]: negative tokens; the batch was not applied")
            # Each event names its tenant in the key: a batch signed for another tenant fails.
            assert ev.idempotency_key.startswith(tenant + ":"), (tenant, ev.idempotency_key)
        self.batch_sizes.append(len(request.events))
        accepted = 0
        for ev in request.events:
            key = (tenant, ev.idempotency_key)
            if key in self.events:
                self.duplicates += 1
            else:
                self.events[key] = ev
                accepted += 1
        if self.lose_ack_next > 0:
            self.lose_ack_next -= 1
            raise Unavailable("stored, but the answer is lost")
        return billing_pb2.IngestUsageResponse(
            accepted=accepted, duplicates=len(request.events) - accepted
        )

    def keys(self, tenant: str) -> set[str]:
        return {k for t, k in self.events if t == tenant}


async def _start(fake: FakeBilling, port: int = 0) -> GrpcServiceHost:
    settings = ServiceSettings(service_name="billing-svc", drain_delay_seconds=0)

    def reg(host: GrpcServiceHost) -> None:
        billing_pb2_grpc.add_BillingServiceServicer_to_server(fake, host.server)

    if port:
        settings = settings.model_copy(update={"auth_keys": dict(TEST_KEYS)})
        host = GrpcServiceHost(settings.model_copy(update={"grpc_port": port}))
        reg(host)
        await host.start()
        return host
    return await start_test_host(settings, reg)


@pytest.fixture
async def billing() -> AsyncIterator[tuple[FakeBilling, GrpcServiceHost]]:
    fake = FakeBilling()
    host = await _start(fake)
    yield fake, host
    await host.stop(0)


def _settings(tmp_path: Path, port: int, **kw: Any) -> UsageClientSettings:
    base: dict[str, Any] = {
        "billing_addr": f"127.0.0.1:{port}", "spool_dir": str(tmp_path / "spool"),
        "linger_s": 0.01, "backoff_base_s": 0.02, "backoff_max_s": 0.2, "rpc_timeout_s": 2.0,
    }
    base.update(kw)
    return UsageClientSettings(**base)


def _recorder(tmp_path: Path, port: int, **kw: Any) -> DurableUsageRecorder:
    return DurableUsageRecorder(service="router-svc", signer=signed_as("router-svc"),
                                settings=_settings(tmp_path, port, **kw))


def _event(tenant: str, n: int, **kw: Any) -> billing_pb2.UsageEvent:
    ev = billing_pb2.UsageEvent(idempotency_key=f"{tenant}:{n}", session_id="s", **kw)
    ev.occurred_at.FromDatetime(dt.datetime(2026, 11, 1, tzinfo=dt.UTC))
    ev.llm.CopyFrom(billing_pb2.LlmUsage(model_id="gemini-2.5-flash", input_tokens=10 + n,
                                         output_tokens=1))
    return ev


async def test_ships_each_tenant_signed_as_that_tenant(tmp_path: Path, billing: Any) -> None:
    fake, host = billing
    rec = _recorder(tmp_path, host.port)
    try:
        for n in range(250):
            rec.record("acme", _event("acme", n))
            rec.record("globex", _event("globex", n))
        assert await rec.flush(10)
        assert len(fake.keys("acme")) == 250 and len(fake.keys("globex")) == 250
        assert fake.callers == {"router-svc"}
        # Batched, not one RPC per event.
        assert fake.calls < 50
        assert SPOOL_EVENTS.labels("router-svc")._value.get() == 0
        # Acknowledged segments are gone from disk.
        assert rec.spool.pending == (0, 0)
    finally:
        await rec.close()


async def test_fills_in_the_service_without_touching_the_callers_event(
    tmp_path: Path, billing: Any
) -> None:
    fake, host = billing
    rec = _recorder(tmp_path, host.port)
    try:
        ev = _event("acme", 1)
        assert ev.service == ""
        rec.record("acme", ev)
        assert await rec.flush(5)
        assert fake.events[("acme", "acme:1")].service == "router-svc"
        assert ev.service == ""  # the caller's message is not modified
    finally:
        await rec.close()


async def test_generated_key_is_stable_across_resends(tmp_path: Path, billing: Any) -> None:
    fake, host = billing

    class AnyKey(FakeBilling):
        async def IngestUsage(self, request: Any, ctx: Any) -> Any:
            for ev in request.events:
                ev.idempotency_key = "acme:" + ev.idempotency_key
            return await super().IngestUsage(request, ctx)

    fake2 = AnyKey()
    fake2.lose_ack_next = 2
    host2 = await _start(fake2)
    rec = _recorder(tmp_path, host2.port)
    try:
        ev = billing_pb2.UsageEvent(session_id="s")
        ev.tts.CopyFrom(billing_pb2.TtsUsage(model_id="espeak-ng", characters=12))
        rec.record("acme", ev)
        assert await rec.flush(10)
        # Sent three times (two answers lost), stored once, with a generated key and time.
        assert fake2.calls == 3 and fake2.duplicates == 2
        (stored,) = fake2.events.values()
        assert stored.idempotency_key.startswith("acme:router-svc:")
        assert stored.HasField("occurred_at") and stored.service == "router-svc"
    finally:
        await rec.close()
        await host2.stop(0)


async def test_retries_with_backoff_until_acknowledged(tmp_path: Path, billing: Any) -> None:
    fake, host = billing
    fake.fail_next = 4
    rec = _recorder(tmp_path, host.port)
    try:
        for n in range(20):
            rec.record("acme", _event("acme", n))
        assert await rec.flush(10)
        assert len(fake.keys("acme")) == 20
        assert fake.calls >= 5
    finally:
        await rec.close()


async def test_billing_down_then_up(tmp_path: Path) -> None:
    port = free_port()
    rec = _recorder(tmp_path, port)
    fake = FakeBilling()
    host = None
    try:
        for n in range(100):
            rec.record("acme", _event("acme", n))
        # Nothing listens: the events wait on disk and the caller is not affected.
        assert not await rec.flush(0.5)
        assert rec.spool.pending[0] == 100
        assert SPOOL_EVENTS.labels("router-svc")._value.get() == 100
        host = await _start(fake, port)
        assert await rec.flush(15)
        assert len(fake.keys("acme")) == 100
        assert SPOOL_EVENTS.labels("router-svc")._value.get() == 0
    finally:
        await rec.close()
        if host is not None:
            await host.stop(0)


async def test_lost_acknowledgement_resend_counts_once(tmp_path: Path, billing: Any) -> None:
    fake, host = billing
    fake.lose_ack_next = 3
    rec = _recorder(tmp_path, host.port)
    try:
        for n in range(10):
            rec.record("acme", _event("acme", n))
        assert await rec.flush(10)
        assert len(fake.keys("acme")) == 10
        assert fake.duplicates >= 10
    finally:
        await rec.close()


async def test_invalid_event_is_dead_lettered_the_rest_delivered(
    tmp_path: Path, billing: Any, caplog: pytest.LogCaptureFixture
) -> None:
    fake, host = billing
    rec = _recorder(tmp_path, host.port)
    before = DEAD_LETTERED.labels("router-svc", "invalid_event")._value.get()
    try:
        for n in range(10):
            rec.record("acme", _event("acme", n))
        rec.record("acme", billing_pb2.UsageEvent(idempotency_key="acme:bad-1", service="x"))
        for n in range(10, 20):
            rec.record("acme", _event("acme", n))
        with caplog.at_level(logging.ERROR, logger="parley_runtime.usage"):
            assert await rec.flush(10)
        assert len(fake.keys("acme")) == 20
        assert DEAD_LETTERED.labels("router-svc", "invalid_event")._value.get() == before + 1
        letters = list(iter_frames((rec.dir / "dead-letter.log").read_bytes()))
        assert [billing_pb2.UsageEvent.FromString(e).idempotency_key for _, _, e in letters] == [
            "acme:bad-1"
        ]
        assert any("dead-letter" in r.getMessage() for r in caplog.records)
    finally:
        await rec.close()


async def test_unknown_tenant_is_dead_lettered_and_does_not_block(
    tmp_path: Path, billing: Any
) -> None:
    fake, host = billing
    fake.unknown_tenants.add("ghost")
    rec = _recorder(tmp_path, host.port)
    try:
        rec.record("ghost", _event("ghost", 1))
        rec.record("acme", _event("acme", 1))
        assert await rec.flush(10)
        assert fake.keys("acme") == {"acme:1"} and not fake.keys("ghost")
        assert (rec.dir / "dead-letter.log").stat().st_size > 0
    finally:
        await rec.close()


async def test_record_never_raises(tmp_path: Path, billing: Any) -> None:
    fake, host = billing
    rec = _recorder(tmp_path, host.port)
    before = DROPPED.labels("router-svc", "bad_tenant")._value.get()
    try:
        rec.record("", _event("acme", 1))
        rec.record("Not A Tenant!", _event("acme", 1))
        rec.record(None, _event("acme", 1))  # type: ignore[arg-type]
        rec.record("acme", None)  # type: ignore[arg-type]
        rec.record("acme", "not an event")  # type: ignore[arg-type]
        assert DROPPED.labels("router-svc", "bad_tenant")._value.get() == before + 3
        assert await rec.flush(5)
        assert not fake.events
    finally:
        await rec.close()


async def test_shipper_ignores_the_callers_request_context(tmp_path: Path, billing: Any) -> None:
    fake, host = billing
    rec = _recorder(tmp_path, host.port)
    try:
        # Started from inside a request of another tenant with a nearly spent deadline.
        context.tenant_id_var.set("globex")
        context.deadline_var.set(asyncio.get_running_loop().time() - 100)
        rec.record("acme", _event("acme", 1))
        context.tenant_id_var.set(None)
        context.deadline_var.set(None)
        assert await rec.flush(5)
        assert fake.keys("acme") == {"acme:1"}
    finally:
        await rec.close()


async def test_spool_bound_refuses_new_events_and_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()  # billing is down for this whole test
    rec = _recorder(tmp_path, port, spool_max_bytes=20_000, spool_warn_bytes=5_000,
                    segment_bytes=4_000)
    before = DROPPED.labels("router-svc", "spool_full")._value.get()
    try:
        with caplog.at_level(logging.WARNING, logger="parley_runtime.usage"):
            for n in range(1000):
                rec.record("acme", _event("acme", n))
                if n % 50 == 0:
                    await asyncio.sleep(0.01)
            await asyncio.sleep(0.2)
        events, nbytes = rec.spool.pending
        assert nbytes <= 20_000
        dropped = DROPPED.labels("router-svc", "spool_full")._value.get() - before
        assert dropped > 0 and events + dropped == 1000
        assert any("spool is growing" in r.getMessage() for r in caplog.records)
        assert any("spool is full" in r.getMessage() for r in caplog.records)
        # Several segments on disk (rotation).
        assert len(list(rec.dir.glob("seg-*.log"))) > 2
    finally:
        await rec.close()


def test_spool_recovers_cursor_and_cuts_a_torn_tail(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s", segment_bytes=300)
    frames = [encode_frame("acme", f"event-{i}".encode() * 3) for i in range(20)]
    for f in frames:
        spool.append([f])
    batch = spool.read(7, 1 << 20)
    assert batch is not None and len(batch.records) == 7
    spool.ack(batch)
    spool.close()
    # A crash in the middle of a write leaves half a frame at the end of the last segment.
    last = sorted((tmp_path / "s").glob("seg-*.log"))[-1]
    with open(last, "ab") as fh:
        fh.write(encode_frame("acme", b"torn")[:9])
    again = Spool(tmp_path / "s", segment_bytes=300)
    assert again.pending[0] == 13
    seen = []
    while (b := again.read(5, 1 << 20)) is not None:
        seen += [e for _, e in b.records]
        again.ack(b)
    assert seen == [f"event-{i}".encode() * 3 for i in range(7, 20)]
    assert again.pending == (0, 0)
    assert len(list((tmp_path / "s").glob("seg-*.log"))) == 1  # only the active one remains


def test_without_billing_addr_events_go_nowhere_loudly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BILLING_ADDR", raising=False)
    with caplog.at_level(logging.WARNING, logger="parley_runtime.usage"):
        rec = make_usage_recorder("router-svc", None)
    assert isinstance(rec, NullUsageRecorder)
    assert any("BILLING_ADDR" in r.getMessage() for r in caplog.records)


def test_make_usage_recorder_reads_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BILLING_ADDR", "127.0.0.1:1")
    monkeypatch.setenv("PARLEY_USAGE_SPOOL_DIR", str(tmp_path / "env-spool"))
    rec = make_usage_recorder("kb-svc", signed_as("kb-svc"))
    assert isinstance(rec, DurableUsageRecorder)
    assert rec.dir.parent == tmp_path / "env-spool" and rec.dir.name == "kb-svc-0"
    asyncio.run(rec.close())


CHILD = textwrap.dedent(
    """
    import asyncio, datetime as dt, sys, time
    from parley.billing.v1 import billing_pb2
    from parley_runtime.testing import signed_as
    from parley_runtime.usage import DurableUsageRecorder, UsageClientSettings

    async def main():
        settings = UsageClientSettings(billing_addr=sys.argv[1], spool_dir=sys.argv[2],
                                       backoff_max_s=0.2)
        rec = DurableUsageRecorder(service="router-svc", signer=signed_as("router-svc"),
                                   settings=settings)
        for n in range(int(sys.argv[3])):
            ev = billing_pb2.UsageEvent(idempotency_key=f"acme:{n}", session_id="s")
            ev.occurred_at.FromDatetime(dt.datetime(2026, 11, 1, tzinfo=dt.UTC))
            ev.llm.CopyFrom(billing_pb2.LlmUsage(model_id="m", input_tokens=n))
            rec.record("acme", ev)
        while rec.spool.pending[0] < int(sys.argv[3]):
            await asyncio.sleep(0.01)
        print("SPOOLED", flush=True)
        await asyncio.sleep(3600)

    asyncio.run(main())
    """
)


async def test_killed_process_resends_after_restart(tmp_path: Path) -> None:
    port = free_port()  # billing down while the first process runs
    spool_dir = tmp_path / "spool"
    env = dict(os.environ, PARLEY_AUTH_KEYS=json.dumps(TEST_KEYS))
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, f"127.0.0.1:{port}", str(spool_dir), "500"],
        stdout=subprocess.PIPE, env=env,
    )
    try:
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 60)  # type: ignore[union-attr]
        assert line.strip() == b"SPOOLED"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    fake = FakeBilling()
    host = await _start(fake, port)
    rec = DurableUsageRecorder(service="router-svc", signer=signed_as("router-svc"),
                               settings=_settings(tmp_path, port))
    try:
        # The restarted process took over the dead one's folder and sends what it left.
        assert rec.dir == spool_dir / "router-svc-0"
        assert await rec.flush(15)
        assert fake.keys("acme") == {f"acme:{n}" for n in range(500)}
    finally:
        await rec.close()
        await host.stop(0)


async def test_two_live_processes_do_not_share_a_folder(tmp_path: Path, billing: Any) -> None:
    fake, host = billing
    a = _recorder(tmp_path, host.port)
    b = _recorder(tmp_path, host.port)
    try:
        assert a.dir != b.dir
        a.record("acme", _event("acme", 1))
        b.record("acme", _event("acme", 2))
        assert await a.flush(5) and await b.flush(5)
        assert fake.keys("acme") == {"acme:1", "acme:2"}
    finally:
        await a.close()
        await b.close()


async def test_close_leaves_unsent_events_for_the_next_start(tmp_path: Path) -> None:
    port = free_port()
    rec = _recorder(tmp_path, port, close_timeout_s=0.2)
    for n in range(30):
        rec.record("acme", _event("acme", n))
    await rec.close()
    # Recorded after close: refused loudly (never raised into the caller).
    before = DROPPED.labels("router-svc", "closed")._value.get()
    rec.record("acme", _event("acme", 30))
    assert DROPPED.labels("router-svc", "closed")._value.get() == before + 1
    fake = FakeBilling()
    host = await _start(fake, port)
    again = _recorder(tmp_path, port)
    try:
        assert again.dir == rec.dir
        assert await again.flush(10)
        assert len(fake.keys("acme")) == 30
    finally:
        await again.close()
        await host.stop(0)


async def test_a_folder_no_process_will_take_again_is_shipped_by_the_supervisor(
    tmp_path: Path,
) -> None:
    port = free_port()
    # Three processes at once (folders -0, -1, -2) while billing is down; then they end.
    recs = [_recorder(tmp_path, port, close_timeout_s=0.1) for _ in range(3)]
    for i, rec in enumerate(recs):
        for n in range(5):
            rec.record("acme", _event("acme", 100 * i + n))
    for rec in recs:
        await rec.close()
    fake = FakeBilling()
    host = await _start(fake, port)
    # A later process takes the first folder only; a live one keeps its own.
    later = _recorder(tmp_path, port)
    try:
        assert later.dir == recs[0].dir
        assert await later.flush(10)
        assert len(fake.keys("acme")) == 5
        shipped = await ship_orphaned_spools(
            "router-svc", signed_as("router-svc"), settings=_settings(tmp_path, port),
            timeout_s=10,
        )
        assert shipped == 10
        assert len(fake.keys("acme")) == 15
        # the live process's folder was left alone and it still works
        later.record("acme", _event("acme", 999))
        assert await later.flush(10) and "acme:999" in fake.keys("acme")
        # nothing left: a second pass ships nothing
        assert await ship_orphaned_spools(
            "router-svc", signed_as("router-svc"), settings=_settings(tmp_path, port)) == 0
    finally:
        await later.close()
        await host.stop(0)
