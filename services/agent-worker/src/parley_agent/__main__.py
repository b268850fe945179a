"""Entry point: `python -m parley_agent start|dev|console` (livekit-agents' CLI; wiring only)."""

from __future__ import annotations

import os
import tempfile


def _prometheus_dir() -> None:
    # Job processes write their samples here and /metrics aggregates them. prometheus_client
    # reads this when it is first imported, so it must be set before anything imports it.
    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        path = os.environ.get("PARLEY_AGENT_PROMETHEUS_DIR") or os.path.join(
            tempfile.gettempdir(), f"parley-agent-metrics-{os.getpid()}"
        )
        os.makedirs(path, exist_ok=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    os.environ.setdefault("PARLEY_AGENT_PROMETHEUS_DIR", os.environ["PROMETHEUS_MULTIPROC_DIR"])


def main() -> None:
    _prometheus_dir()
    from livekit.agents import cli

    from .config import WorkerSettings
    from .worker import build_server, check_startup

    settings = WorkerSettings()
    check_startup(settings)
    cli.run_app(build_server(settings))


if __name__ == "__main__":
    main()
