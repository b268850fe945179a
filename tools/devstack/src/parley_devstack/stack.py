"""`python -m parley_devstack up|down|status|env`: the whole platform on loopback.

Starts real processes — PostgreSQL+pgvector (embedded), Redis, the LiveKit server, the provider
emulator and the five services — waits for every health check and prints the addresses.
`down` stops exactly the processes `up` started (by PID, recorded in .stack/state.json).
Running `up` twice is harmless: components already running are left alone.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .livekit import DEV_KEY, DEV_SECRET, livekit_command
from .postgres import PostgresProcess
from .procs import pid_alive, port_open, stop_pid, wait_port
from .redis import RedisProcess

ROOT = Path(__file__).resolve().parents[4]
SERVICES = ("billing-svc", "kb-svc", "router-svc", "vision-svc", "agent-worker")


@dataclass
class Ports:
    postgres: int = int(os.environ.get("PARLEY_PG_PORT", 5440))
    redis: int = int(os.environ.get("PARLEY_REDIS_PORT", 6390))
    livekit: int = int(os.environ.get("PARLEY_LIVEKIT_PORT", 7880))
    livekit_tcp: int = int(os.environ.get("PARLEY_LIVEKIT_TCP_PORT", 7881))
    livekit_udp: int = int(os.environ.get("PARLEY_LIVEKIT_UDP_PORT", 7882))
    emulator: int = int(os.environ.get("PARLEY_EMULATOR_PORT", 8090))
    router: int = int(os.environ.get("PARLEY_ROUTER_PORT", 50051))
    vision: int = int(os.environ.get("PARLEY_VISION_PORT", 50052))
    kb: int = int(os.environ.get("PARLEY_KB_PORT", 50053))
    billing: int = int(os.environ.get("PARLEY_BILLING_PORT", 50054))
    kb_rest: int = int(os.environ.get("PARLEY_KB_REST_PORT", 8083))
    billing_rest: int = int(os.environ.get("PARLEY_BILLING_REST_PORT", 8084))
    agent_health: int = int(os.environ.get("PARLEY_AGENT_HEALTH_PORT", 8081))
    metrics_base: int = int(os.environ.get("PARLEY_METRICS_BASE_PORT", 9100))


@dataclass
class Stack:
    dir: Path
    ports: Ports = field(default_factory=Ports)

    @property
    def state_file(self) -> Path:
        return self.dir / "state.json"

    def load_state(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.state_file.read_text()))
        except (OSError, ValueError):
            return {"pids": {}}

    def save_state(self, state: dict[str, Any]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.state_file.write_text(json.dumps(state, indent=2))

    def auth_keys(self) -> dict[str, str]:
        path = self.dir / "auth_keys.json"
        if path.exists():
            return dict(json.loads(path.read_text()))
        keys = {name: secrets.token_hex(32) for name in (*SERVICES, "demo-client", "operator")}
        self.dir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(keys))
        path.chmod(0o600)
        return keys

    @property
    def postgres(self) -> PostgresProcess:
        return PostgresProcess(self.dir / "pgdata", self.ports.postgres)

    @property
    def redis(self) -> RedisProcess:
        return RedisProcess(self.dir / "redis", self.ports.redis)

    def env(self) -> dict[str, str]:
        """Environment shared by every service process (and printed by `env`)."""
        p = self.ports
        keys = self.auth_keys()
        return {
            "PARLEY_AUTH_KEYS": json.dumps(keys),
            "PARLEY_TENANTS_FILE": str(
                Path(os.environ.get("PARLEY_TENANTS_FILE", ROOT / "config" / "tenants.dev.yaml"))
            ),
            "PARLEY_USAGE_SPOOL_DIR": str(self.dir / "usage-spool"),
            "ROUTER_ADDR": f"127.0.0.1:{p.router}",
            "VISION_ADDR": f"127.0.0.1:{p.vision}",
            "KB_ADDR": f"127.0.0.1:{p.kb}",
            "BILLING_ADDR": f"127.0.0.1:{p.billing}",
            "REDIS_URL": self.redis.url,
            "LIVEKIT_URL": f"ws://127.0.0.1:{p.livekit}",
            "LIVEKIT_API_KEY": DEV_KEY,
            "LIVEKIT_API_SECRET": DEV_SECRET,
            "ANTHROPIC_BASE_URL": f"http://127.0.0.1:{p.emulator}",
            "ANTHROPIC_API_KEY": "emulator-key",
            "GOOGLE_GEMINI_BASE_URL": f"http://127.0.0.1:{p.emulator}",
            "GEMINI_API_KEY": "emulator-key",
            "VOYAGE_BASE_URL": f"http://127.0.0.1:{p.emulator}/v1",
            "OTEL_TRACES_EXPORTER": os.environ.get("OTEL_TRACES_EXPORTER", "none"),
        }

    def service_env(self, name: str) -> dict[str, str]:
        p = self.ports
        pg = self.postgres
        env = dict(self.env())
        env["PARLEY_SERVICE_NAME"] = name
        env["PARLEY_AUTH_KID"] = name
        env["PARLEY_LOG_FORMAT"] = "json"
        idx = SERVICES.index(name)
        env["PARLEY_METRICS_PORT"] = str(p.metrics_base + 1 + idx)
        if name == "billing-svc":
            env["PARLEY_GRPC_PORT"] = str(p.billing)
            env["PARLEY_HTTP_PORT"] = str(p.billing_rest)
            env["MIGRATE_DATABASE_URL"] = pg.dsn("parley_billing")
            env["DATABASE_URL"] = pg.dsn("parley_billing", "parley_billing_app", "parley-dev")
            env["PARLEY_BILLING_APP_PASSWORD"] = "parley-dev"
            env["PARLEY_DRAIN_SECONDS"] = "2"
        elif name == "kb-svc":
            env["PARLEY_GRPC_PORT"] = str(p.kb)
            env["PARLEY_ADMIN_PORT"] = str(p.kb_rest)
            env["MIGRATE_DATABASE_URL"] = pg.dsn("parley_kb")
            env["DATABASE_URL"] = pg.dsn("parley_kb", "parley_kb_app", "parley-dev")
            env["PARLEY_KB_APP_PASSWORD"] = "parley-dev"
        elif name == "router-svc":
            env["PARLEY_GRPC_PORT"] = str(p.router)
        elif name == "vision-svc":
            env["PARLEY_GRPC_PORT"] = str(p.vision)
        elif name == "agent-worker":
            env["PARLEY_HEALTH_PORT"] = str(p.agent_health)
            # A small shared box runs every service: admit by session count, not CPU.
            env["PARLEY_AGENT_CPU_LOAD"] = "false"
        return env

    def command(self, name: str) -> list[str]:
        module = {
            "billing-svc": "parley_billing",
            "kb-svc": "parley_kb",
            "router-svc": "parley_router",
            "vision-svc": "parley_vision",
            "agent-worker": "parley_agent",
        }[name]
        cmd = [sys.executable, "-m", module]
        if name == "agent-worker":
            cmd.append("start")
        return cmd

    def health_port(self, name: str) -> int:
        p = self.ports
        return {
            "billing-svc": p.billing,
            "kb-svc": p.kb,
            "router-svc": p.router,
            "vision-svc": p.vision,
            "agent-worker": p.agent_health,
        }[name]


def _ensure_databases(pg: PostgresProcess, names: list[str]) -> None:
    import asyncio

    import asyncpg

    async def run() -> None:
        conn = await asyncpg.connect(pg.admin_dsn)
        try:
            for name in names:
                exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
                if not exists:
                    await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    asyncio.run(run())


def _grpc_serving(port: int, timeout: float) -> bool:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while time.monotonic() < deadline:
            try:
                r = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if r.status == health_pb2.HealthCheckResponse.SERVING:
                    return True
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    return False


def _http_ok(port: int, timeout: float, path: str = "/") -> bool:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}{path}", timeout=1).status_code < 500:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    return False


def _wait_log(path: Path, offset: int, needle: bytes, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(path, "rb") as fh:
                fh.seek(offset)
                if needle in fh.read():
                    return True
        except OSError:
            pass
        time.sleep(0.2)
    return False


def _spawn(stack: Stack, name: str, cmd: list[str], env: dict[str, str]) -> int:
    logs = stack.dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    out = open(logs / f"{name}.log", "ab")
    proc = subprocess.Popen(
        cmd,
        env={**os.environ, **env},
        stdout=out,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
        start_new_session=True,
    )
    return proc.pid


def up(stack: Stack, only: list[str] | None = None) -> None:
    state = stack.load_state()
    pids: dict[str, int] = state.setdefault("pids", {})
    wanted = only or ["postgres", "redis", "livekit", "emulator", *SERVICES]
    p = stack.ports
    t0 = time.monotonic()

    def step(msg: str) -> None:
        print(f"[{time.monotonic() - t0:5.1f}s] {msg}", flush=True)

    if "postgres" in wanted:
        step(f"postgres (pgvector) on 127.0.0.1:{p.postgres}")
        stack.postgres.start()
        _ensure_databases(stack.postgres, ["parley_kb", "parley_billing"])
    if "redis" in wanted:
        step(f"redis on 127.0.0.1:{p.redis}")
        stack.redis.start()
    if "livekit" in wanted:
        if not (pids.get("livekit") and pid_alive(pids["livekit"])):
            step(f"livekit-server on 127.0.0.1:{p.livekit}")
            pids["livekit"] = _spawn(
                stack, "livekit", livekit_command(p.livekit, p.livekit_tcp, p.livekit_udp), {}
            )
            stack.save_state(state)
        wait_port(p.livekit, 60, "livekit-server")
    if "emulator" in wanted:
        if not (pids.get("emulator") and pid_alive(pids["emulator"])):
            step(f"provider emulator on 127.0.0.1:{p.emulator}")
            pids["emulator"] = _spawn(
                stack,
                "emulator",
                [
                    sys.executable,
                    "-m",
                    "parley_emulator",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(p.emulator),
                ],
                {},
            )
            stack.save_state(state)
        wait_port(p.emulator, 30, "provider emulator")
    for name in SERVICES:
        if name not in wanted:
            continue
        if pids.get(name) and pid_alive(pids[name]):
            continue
        env = stack.service_env(name)
        if "MIGRATE_DATABASE_URL" in env:
            step(f"{name}: migrate")
            migrated = subprocess.run(
                [*stack.command(name)[:3], "migrate"],
                env={**os.environ, **env},
                check=False,
                cwd=ROOT,
            )
            if migrated.returncode != 0:
                raise SystemExit(
                    f"{name}: migrating its database failed (its error is above). If the dev "
                    f"stack's data in {stack.dir} was made by another checkout, stop it and "
                    f"start fresh: `make down && rm -rf {stack.dir}` (the demo loads its data "
                    "again)."
                )
        step(f"{name} starting")
        log_path = stack.dir / "logs" / f"{name}.log"
        state.setdefault("log_offsets", {})[name] = (
            log_path.stat().st_size if log_path.exists() else 0
        )
        pids[name] = _spawn(stack, name, stack.command(name), env)
        stack.save_state(state)
    for name in SERVICES:
        if name not in wanted:
            continue
        port = stack.health_port(name)
        ok = _http_ok(port, 90) if name == "agent-worker" else _grpc_serving(port, 60)
        if not ok or not pid_alive(pids[name]):
            raise SystemExit(
                f"{name} did not become healthy on 127.0.0.1:{port}; "
                f"see {stack.dir / 'logs' / (name + '.log')}"
            )
        if name == "agent-worker":
            # Healthy is not enough: rooms dispatched before the worker registered with the
            # LiveKit server get no agent.
            offset = state.get("log_offsets", {}).get(name, 0)
            if not _wait_log(stack.dir / "logs" / f"{name}.log", offset, b"registered worker", 90):
                raise SystemExit(
                    "agent-worker did not register with the LiveKit server; see "
                    f"{stack.dir / 'logs' / (name + '.log')}"
                )
        step(f"{name} healthy on 127.0.0.1:{port}")
    state["ports"] = p.__dict__
    stack.save_state(state)
    print_addresses(stack)


def print_addresses(stack: Stack) -> None:
    p = stack.ports
    print("\nParley is up (loopback):")
    rows = [
        ("LiveKit", f"ws://127.0.0.1:{p.livekit}  (key {DEV_KEY})"),
        ("router-svc", f"127.0.0.1:{p.router}"),
        ("vision-svc", f"127.0.0.1:{p.vision}"),
        ("kb-svc", f"127.0.0.1:{p.kb}  admin REST http://127.0.0.1:{p.kb_rest}/docs"),
        ("billing-svc", f"127.0.0.1:{p.billing}  REST http://127.0.0.1:{p.billing_rest}/docs"),
        ("agent-worker", f"health http://127.0.0.1:{p.agent_health}/"),
        ("emulator", f"http://127.0.0.1:{p.emulator}"),
        ("PostgreSQL", stack.postgres.admin_dsn),
        ("Redis", stack.redis.url),
        ("logs", str(stack.dir / "logs")),
    ]
    for name, addr in rows:
        print(f"  {name:<13} {addr}")


def down(stack: Stack) -> None:
    state = stack.load_state()
    pids: dict[str, int] = state.get("pids", {})
    for name in [*reversed(SERVICES), "emulator", "livekit"]:
        pid = pids.pop(name, None)
        if pid is not None and pid_alive(pid):
            print(f"stopping {name} (pid {pid})", flush=True)
            stop_pid(pid, timeout=20)
    stack.redis.stop()
    stack.postgres.stop()
    stack.save_state(state)
    print("stack stopped")


def status(stack: Stack) -> int:
    state = stack.load_state()
    bad = 0
    for name, pid in state.get("pids", {}).items():
        alive = pid_alive(pid)
        bad += not alive
        print(f"{name:<13} pid {pid:<8} {'running' if alive else 'DEAD'}")
    print(f"{'postgres':<13} {'running' if stack.postgres.running() else 'stopped'}")
    print(f"{'redis':<13} {'running' if port_open(stack.ports.redis) else 'stopped'}")
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="parley_devstack", description=__doc__)
    parser.add_argument("command", choices=["up", "down", "status", "env"])
    parser.add_argument("--dir", default=os.environ.get("PARLEY_STACK_DIR", str(ROOT / ".stack")))
    parser.add_argument("--only", nargs="*", help="components to start (default: all)")
    args = parser.parse_args(argv)
    stack = Stack(Path(args.dir).resolve())
    if args.command == "up":
        up(stack, args.only)
    elif args.command == "down":
        down(stack)
    elif args.command == "status":
        return status(stack)
    else:
        for key, value in stack.env().items():
            print(f"export {key}={json.dumps(value) if ' ' in value or '{' in value else value}")
    return 0
