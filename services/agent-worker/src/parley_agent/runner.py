"""Run the worker against a LiveKit server from Python (tests, benchmark, demo).

`run_worker()` runs the AgentServer in the caller's event loop (job processes are still
separate processes); `WorkerProcess` runs `python -m parley_agent start` as a child process,
the way it runs in production.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import IO, Any

from livekit.agents import AgentServer

from .config import WorkerSettings
from .worker import build_server, check_startup


@contextlib.asynccontextmanager
async def run_worker(
    settings: WorkerSettings,
    *,
    url: str,
    api_key: str,
    api_secret: str,
    idle_processes: int = 2,
    register_timeout_s: float = 60.0,
    drain_timeout_s: int = 30,
    **server_overrides: Any,
) -> AsyncIterator[AgentServer]:
    """Start the worker, wait until LiveKit registered it, yield it; drain and stop on exit."""
    check_startup(settings)
    overrides: dict[str, Any] = {
        "ws_url": url, "api_key": api_key, "api_secret": api_secret,
        "port": 0, "prometheus_port": None, "num_idle_processes": idle_processes,
    }
    overrides.update(server_overrides)
    server = build_server(settings, **overrides)
    registered = asyncio.Event()
    server.on("worker_registered", lambda *_: registered.set())
    task = asyncio.create_task(server.run(devmode=False), name="agent-server")
    try:
        waiter = asyncio.create_task(registered.wait())
        done, _ = await asyncio.wait({waiter, task}, timeout=register_timeout_s,
                                     return_when=asyncio.FIRST_COMPLETED)
        if waiter not in done:
            waiter.cancel()
            if task in done:
                task.result()
            raise TimeoutError("the agent worker did not register with LiveKit in time")
        yield server
    finally:
        with contextlib.suppress(Exception):
            await server.drain(timeout=drain_timeout_s)
        await server.aclose()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


class WorkerProcess:
    """`python -m parley_agent start` as a child process with its own environment."""

    def __init__(self, env: Mapping[str, str], *, log_path: Path) -> None:
        self._env = {**os.environ, **env}
        self._log_path = log_path
        self._log: IO[bytes] | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        self._log = open(self._log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "parley_agent", "start"],
            env=self._env, stdout=self._log, stderr=subprocess.STDOUT,
        )
        return self

    def wait_registered(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"agent worker exited with {self.proc.returncode}; see "
                                   f"{self._log_path}")
            if b"registered worker" in self._log_path.read_bytes():
                return
            time.sleep(0.1)
        raise TimeoutError(f"agent worker did not register; see {self._log_path}")

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM (drain), then SIGKILL after `timeout_s`."""
        code: int | None = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                code = self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                code = self.proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        return code
