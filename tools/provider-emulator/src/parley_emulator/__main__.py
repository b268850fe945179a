"""``python -m parley_emulator --host 127.0.0.1 --port 8090 [--ttft-ms 300]``."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import uvicorn

from .app import create_app
from .runner import bind_socket
from .state import EmulatorConfig


def _env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value else default


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="parley_emulator",
        description="Local emulator of the Anthropic, Gemini and Voyage HTTP APIs.",
    )
    p.add_argument("--host", default=os.environ.get("PARLEY_EMULATOR_HOST", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(os.environ.get("PARLEY_EMULATOR_PORT", "8090")))
    p.add_argument("--port-file", type=Path, default=None,
                   help="write the bound port to this file once listening (useful with --port 0)")
    p.add_argument("--latency-ms", type=float,
                   default=_env_float("PARLEY_EMULATOR_LATENCY_MS", 0.0),
                   help="delay before every response starts (default 0)")
    p.add_argument("--ttft-ms", type=float, default=_env_float("PARLEY_EMULATOR_TTFT_MS", 0.0),
                   help="delay before the first content delta (default 0)")
    p.add_argument("--inter-token-ms", type=float,
                   default=_env_float("PARLEY_EMULATOR_INTER_TOKEN_MS", 0.0),
                   help="delay per output token between streamed deltas (default 0)")
    p.add_argument("--log-level", default=os.environ.get("PARLEY_LOG_LEVEL", "warning").lower())
    p.add_argument("--access-log", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    config = EmulatorConfig(
        latency_ms=args.latency_ms, ttft_ms=args.ttft_ms, inter_token_ms=args.inter_token_ms
    )
    app = create_app(config)
    sock = bind_socket(args.host, args.port)
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            log_level=args.log_level,
            access_log=args.access_log,
            lifespan="off",
            timeout_graceful_shutdown=2,
            backlog=2048,
        )
    )
    print(f"parley provider emulator listening on http://{args.host}:{port}", flush=True)
    if args.port_file is not None:
        tmp = args.port_file.with_suffix(".tmp")
        tmp.write_text(str(port))
        tmp.replace(args.port_file)
    server.run(sockets=[sock])


if __name__ == "__main__":
    main()
