"""`python -m parley_agent start` as in production: health and Prometheus endpoints, the session
cap, and a SIGTERM drain that lets the running session finish."""

from __future__ import annotations

import asyncio
import os
import signal
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import psutil
import pytest
from parley_agent.__main__ import BLAS_THREADS
from parley_agent.runner import WorkerProcess
from parley_agent.sim import SimulatedUser, create_room
from parley_agent.testing import FakeBackends
from parley_devstack.procs import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.status, resp.read().decode()


async def test_health_metrics_and_sigterm_drain(
    livekit_server: Any, backends: FakeBackends, tmp_path: Path
) -> None:
    (tmp_path / "tenants.yaml").write_text(
        "tenants:\n  acme:\n    agent:\n      greeting: Hello.\n"
    )
    health, metrics = free_port(), free_port()
    env = {
        **backends.env(),
        "LIVEKIT_URL": livekit_server.url,
        "LIVEKIT_API_KEY": livekit_server.api_key,
        "LIVEKIT_API_SECRET": livekit_server.api_secret,
        "PARLEY_AGENT_NAME": "parley-drain-test",
        "PARLEY_TENANTS_FILE": str(tmp_path / "tenants.yaml"),
        "PARLEY_HEALTH_PORT": str(health),
        "PARLEY_METRICS_PORT": str(metrics),
        "PARLEY_AGENT_IDLE_PROCESSES": "1",
        "PARLEY_AGENT_CPU_LOAD": "false",
        "PARLEY_AGENT_PROMETHEUS_DIR": str(tmp_path / "prom"),
        "PARLEY_USAGE_SPOOL_DIR": str(tmp_path / "spool"),
    }
    assert "OPENBLAS_NUM_THREADS" not in os.environ  # the worker sets it, not this test
    worker = WorkerProcess(env, log_path=tmp_path / "worker.log").start()
    try:
        await asyncio.to_thread(worker.wait_registered, 90)
        status, _ = await asyncio.to_thread(get, f"http://127.0.0.1:{health}/")
        assert status == 200
        _, info = await asyncio.to_thread(get, f"http://127.0.0.1:{health}/worker")
        assert "parley-drain-test" in info

        room = f"drain-{uuid.uuid4().hex[:6]}"
        url, key, secret = livekit_server.url, livekit_server.api_key, livekit_server.api_secret
        await create_room(url, key, secret, room=room, metadata={"tenant_id": "acme"},
                          dispatches=[("parley-drain-test", {})])
        async with SimulatedUser.join(url, key, secret, room=room, identity="bob") as user:
            await user.wait_for_agent(timeout=60)
            await user.wait_for_turn(role="assistant", timeout=30)  # greeting

            _, text = await asyncio.to_thread(get, f"http://127.0.0.1:{metrics}/metrics")
            assert 'parley_agent_active_sessions{role="assistant"} 1.0' in text

            # every process of the worker (forkserver, job processes) runs BLAS on one thread
            assert worker.proc is not None
            children = psutil.Process(worker.proc.pid).children(recursive=True)
            assert children
            for child in children:
                assert child.environ().get("OPENBLAS_NUM_THREADS") == BLAS_THREADS, child

            worker.proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(3)
            # draining: no new jobs, but the running session goes on
            assert worker.proc.poll() is None
            before = len(user.turn_events)
            await user.type_chat("Are you still there")
            await user.wait_for_turn(role="assistant", after=before, timeout=30)
        # the user left: the session ends and the drained worker exits by itself
        code = await asyncio.to_thread(worker.proc.wait, 60)
        assert code == 0
        log = (tmp_path / "worker.log").read_text()
        assert "draining worker" in log
    finally:
        worker.stop(10)


def test_job_processes_trace_livekits_spans_with_the_otel_settings() -> None:
    """prewarm configures OpenTelemetry in each job process: livekit-agents' spans go to the
    exporter named by OTEL_* (console here) with the worker's service name and attributes."""
    import os
    import subprocess
    import sys

    code = (
        "from parley_agent.worker import configure_telemetry\n"
        "configure_telemetry('agent-worker')\n"
        "from livekit.agents.telemetry import tracer\n"
        "with tracer.start_as_current_span('probe-span'):\n"
        "    pass\n"
        "from opentelemetry import trace\n"
        "trace.get_tracer_provider().shutdown()\n"
    )
    env = {**os.environ, "OTEL_TRACES_EXPORTER": "console",
           "OTEL_RESOURCE_ATTRIBUTES": "parley.tenant_id=acme"}
    env.pop("OTEL_SERVICE_NAME", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert '"name": "probe-span"' in out
    assert '"service.name": "agent-worker"' in out and '"parley.tenant_id": "acme"' in out
