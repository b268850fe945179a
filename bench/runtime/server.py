"""Benchmark server: the same trivial RouterService behind a plain grpc.aio server or the
Parley runtime (auth + tracing + metrics + error-mapping interceptor)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from typing import Any

import grpc
from parley.router.v1 import router_pb2, router_pb2_grpc


class Trivial(router_pb2_grpc.RouterServiceServicer):
    async def ClassifyTurn(self, request: Any, context: Any) -> Any:
        return router_pb2.ClassifyTurnResponse(
            decision=router_pb2.RouteDecision(tier=router_pb2.TIER_SIMPLE, reason="bench")
        )


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=["plain", "parley"], required=True)
    ap.add_argument("--port", type=int, required=True)
    args = ap.parse_args()
    if args.mode == "plain":
        server = grpc.aio.server()
        router_pb2_grpc.add_RouterServiceServicer_to_server(Trivial(), server)
        server.add_insecure_port(f"127.0.0.1:{args.port}")
        await server.start()
        await server.wait_for_termination()
        return
    from parley_runtime.server import GrpcServiceHost, bootstrap
    from parley_runtime.settings import ServiceSettings

    os.environ.setdefault("OTEL_TRACES_EXPORTER", "none")
    settings = ServiceSettings(
        service_name="router-svc",
        grpc_port=args.port,
        log_level="WARNING",
        auth_keys=json.loads(os.environ["BENCH_KEYS"]),
    )
    bootstrap(settings)
    host = GrpcServiceHost(settings)
    router_pb2_grpc.add_RouterServiceServicer_to_server(Trivial(), host.server)
    host.add_service_name("parley.router.v1.RouterService")
    await host.start()
    await host.serve_until_signalled()


if __name__ == "__main__":
    asyncio.run(main())
