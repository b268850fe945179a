"""Session fixtures that start the real parts once per test session, on free loopback ports.

Registered as a pytest plugin (entry point `pytest11`), so every test in the workspace can ask
for `pg_admin_dsn`, `new_database`, `redis_url`, `emulator_url` or `livekit_server`.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from .livekit import DEV_KEY, DEV_SECRET, livekit_command
from .postgres import PostgresProcess
from .procs import free_port, stop_pid, wait_port
from .redis import RedisProcess


@pytest.fixture(scope="session")
def devstack_tmp() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="parley-test-"))
    base.chmod(0o755)
    yield base


@pytest.fixture(scope="session")
def postgres(devstack_tmp: Path) -> Iterator[PostgresProcess]:
    pg = PostgresProcess(devstack_tmp / "pgdata", free_port())
    pg.start()
    yield pg
    pg.stop()


@pytest.fixture(scope="session")
def pg_admin_dsn(postgres: PostgresProcess) -> str:
    """Superuser DSN of the session's PostgreSQL 18 + pgvector server."""
    return postgres.admin_dsn


@pytest.fixture(scope="session")
def new_database(postgres: PostgresProcess) -> Callable[[str], str]:
    """Create a fresh database (unique name from a prefix); returns its superuser DSN."""

    def create(prefix: str = "t") -> str:
        import asyncpg

        name = f"{prefix}_{uuid.uuid4().hex[:10]}"

        async def _create() -> None:
            conn = await asyncpg.connect(postgres.admin_dsn)
            try:
                await conn.execute(f'CREATE DATABASE "{name}"')
            finally:
                await conn.close()

        asyncio.run(_create()) if not _loop_running() else _run_in_thread(_create)
        return postgres.dsn(name)

    return create


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
        return True
    except RuntimeError:
        return False


def _run_in_thread(fn: Callable[[], object]) -> None:
    import threading

    err: list[BaseException] = []

    def target() -> None:
        try:
            asyncio.run(fn())  # type: ignore[arg-type]
        except BaseException as exc:  # noqa: BLE001
            err.append(exc)

    t = threading.Thread(target=target)
    t.start()
    t.join()
    if err:
        raise err[0]


@pytest.fixture(scope="session")
def redis_server(devstack_tmp: Path) -> Iterator[RedisProcess]:
    r = RedisProcess(devstack_tmp / "redis", free_port())
    r.start()
    yield r
    r.stop()


@pytest.fixture(scope="session")
def redis_url(redis_server: RedisProcess) -> str:
    return redis_server.url


@pytest.fixture(scope="session")
def emulator_url(devstack_tmp: Path) -> Iterator[str]:
    """Base URL of the provider emulator (Anthropic, Gemini, Voyage APIs) in a subprocess."""
    port = free_port()
    log = open(devstack_tmp / "emulator.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "parley_emulator", "--host", "127.0.0.1", "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_port(port, 30, "provider emulator")
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_pid(proc.pid)
        log.close()


@dataclass(frozen=True)
class LiveKitServer:
    url: str
    http_url: str
    api_key: str
    api_secret: str
    pid: int


@pytest.fixture(scope="session")
def livekit_server(devstack_tmp: Path) -> Iterator[LiveKitServer]:
    port, tcp, udp = free_port(), free_port(), free_port()
    log = open(devstack_tmp / "livekit.log", "wb")
    proc = subprocess.Popen(livekit_command(port, tcp, udp), stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_port(port, 60, "livekit-server")
        time.sleep(0.2)
        yield LiveKitServer(
            url=f"ws://127.0.0.1:{port}",
            http_url=f"http://127.0.0.1:{port}",
            api_key=DEV_KEY,
            api_secret=DEV_SECRET,
            pid=proc.pid,
        )
    finally:
        stop_pid(proc.pid)
        log.close()


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("OTEL_TRACES_EXPORTER", "none")
