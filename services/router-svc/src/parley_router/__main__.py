"""Entry point: `python -m parley_router` (wiring only)."""

from __future__ import annotations

import asyncio

from parley.router.v1 import router_pb2_grpc
from parley_runtime.server import GrpcServiceHost, bootstrap

from .app import build_router_app
from .config import Settings


async def main() -> None:
    settings = Settings()
    bootstrap(settings)
    app = build_router_app(settings)
    host = GrpcServiceHost(settings)
    router_pb2_grpc.add_RouterServiceServicer_to_server(app.servicer, host.server)
    host.add_service_name("parley.router.v1.RouterService")
    host.on_shutdown(app.aclose)
    await host.start()
    await host.serve_until_signalled()


if __name__ == "__main__":
    asyncio.run(main())
