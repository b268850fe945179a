"""Debian's redis-server on a loopback port (installed with apt-get when missing)."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .procs import pid_alive, stop_pid, wait_port


def ensure_redis_server() -> str:
    path = shutil.which("redis-server")
    if path:
        return path
    print("redis-server missing: installing Debian's redis-server ...", flush=True)
    subprocess.run(
        ["apt-get", "install", "-y", "-q", "redis-server"], check=False, stdout=subprocess.DEVNULL
    )
    path = shutil.which("redis-server")
    if path is None:
        subprocess.run(["apt-get", "update", "-q"], check=False, stdout=subprocess.DEVNULL)
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "redis-server"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        path = shutil.which("redis-server")
    if path is None:
        raise RuntimeError("could not install redis-server: run `apt-get install redis-server`")
    return path


@dataclass
class RedisProcess:
    workdir: Path
    port: int

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pidfile(self) -> Path:
        return self.workdir / f"redis-{self.port}.pid"

    def pid(self) -> int | None:
        try:
            return int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None

    def start(self) -> str:
        self.workdir.mkdir(parents=True, exist_ok=True)
        pid = self.pid()
        if pid is not None and pid_alive(pid):
            return self.url
        binary = ensure_redis_server()
        subprocess.run(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "yes",
                "--pidfile",
                str(self.pidfile),
                "--dir",
                str(self.workdir),
                "--logfile",
                str(self.workdir / f"redis-{self.port}.log"),
                "--maxclients",
                "2000",
            ],
            check=True,
        )
        wait_port(self.port, 15, "redis-server")
        return self.url

    def stop(self) -> None:
        pid = self.pid()
        if pid is not None:
            stop_pid(pid)
        self.pidfile.unlink(missing_ok=True)
