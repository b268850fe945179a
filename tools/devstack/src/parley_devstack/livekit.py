"""The real LiveKit server, built from its Go module into a cache folder keyed by version."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from .procs import CACHE_DIR

LIVEKIT_VERSION = os.environ.get("PARLEY_LIVEKIT_VERSION", "v1.13.5")
DEV_KEY = "devkey"
DEV_SECRET = "parley-dev-secret-0123456789abcdefghij"


def livekit_binary_path() -> Path:
    return CACHE_DIR / "tools" / f"livekit-{LIVEKIT_VERSION}" / "server"


def ensure_livekit_server() -> Path:
    """Build livekit-server with `go install` unless the cached binary exists."""
    path = livekit_binary_path()
    if path.exists():
        return path
    go = shutil.which("go")
    if go is None:
        raise RuntimeError("Go toolchain missing: install Go to build livekit-server")
    print(
        f"building livekit-server {LIVEKIT_VERSION} with go install (cached after) ...", flush=True
    )
    env = dict(os.environ, GOBIN=str(path.parent))
    subprocess.run(
        [go, "install", f"github.com/livekit/livekit-server/cmd/server@{LIVEKIT_VERSION}"],
        check=True,
        env=env,
    )
    return path


def livekit_command(port: int, rtc_tcp_port: int, udp_port: int) -> list[str]:
    """Dev-mode server on loopback with the dev key pair, quiet logs."""
    config = (
        f"port: {port}\n"
        f"rtc:\n  tcp_port: {rtc_tcp_port}\n  udp_port: {udp_port}\n  use_external_ip: false\n"
        f"keys:\n  {DEV_KEY}: {DEV_SECRET}\n"
        "logging:\n  level: warn\n"
    )
    return [
        str(ensure_livekit_server()),
        "--bind",
        "127.0.0.1",
        "--node-ip",
        "127.0.0.1",
        "--config-body",
        config,
    ]
