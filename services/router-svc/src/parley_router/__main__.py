"""Entry point: `python -m parley_router` (wiring only)."""

from __future__ import annotations

import asyncio

from parley.router.v1 import router_pb2_grpc
from parley_runtime.server import GrpcServiceHost, bootstrap

from .config import Settings


async def main() -> None:
    settings = Settings()
    bootstrap(settings)
    host = GrpcServiceHost(settings)
    # Skeleton: every RPC answers UNIMPLEMENTED until the service issue fills it in.
    router_pb2_grpc.add_RouterServiceServicer_to_server(router_pb2_grpc.RouterServiceServicer(), host.server)
    host.add_service_name("parley.router.v1.RouterService")
    await host.start()
    await host.serve_until_signalled()


if __name__ == "__main__":
    asyncio.run(main())
