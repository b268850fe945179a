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


# livekit's event-loop monitor ticks every warn-threshold/5 (at least 20 ms) on the loop and on
# a watchdog thread of every job process: at its default 100 ms threshold that is 100 Python
# wake-ups a second per session, ~15% of a streaming session's CPU (bench/agent). At 250 ms it
# ticks every 50 ms and still reports every stall long enough to starve the agent's 200 ms
# audio queue. An operator's own setting wins (0 turns the monitor off).
LOOP_BLOCK_WARN_MS = "250"


def _loop_monitor() -> None:
    os.environ.setdefault("LIVEKIT_AGENTS_LOOP_BLOCK_WARN_MS", LOOP_BLOCK_WARN_MS)


# numpy's OpenBLAS starts a thread per core and, after every call, keeps it spinning for work.
# A job process's matrices are small (Whisper's log-mel features), so on the 2-core bench box
# that thread spun 0.08 CPU-s per user turn and did almost nothing (perf: 4.8% of a talking
# job's CPU in blas_thread_server, 0.06% in sgemm). A session gets its parallelism from more job
# processes, not from BLAS threads. Read when numpy loads, so set before anything imports it;
# the forkserver, job and inference processes inherit it. An operator's own setting wins.
BLAS_THREADS = "1"


def _blas_threads() -> None:
    os.environ.setdefault("OPENBLAS_NUM_THREADS", BLAS_THREADS)


def main() -> None:
    _prometheus_dir()
    _loop_monitor()
    _blas_threads()
    from livekit.agents import cli

    from .config import WorkerSettings
    from .worker import build_server, check_startup, configure_telemetry

    settings = WorkerSettings()
    configure_telemetry(settings.service_name)
    check_startup(settings)
    cli.run_app(build_server(settings))


if __name__ == "__main__":
    main()
