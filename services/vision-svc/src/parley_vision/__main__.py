"""Entry point: `python -m parley_vision` (wiring only)."""

from __future__ import annotations

import asyncio

from parley.vision.v1 import vision_pb2_grpc
from parley_runtime.server import GrpcServiceHost, bootstrap

from .config import Settings


async def main() -> None:
    settings = Settings()
    bootstrap(settings)
    host = GrpcServiceHost(settings)
    # Skeleton: every RPC answers UNIMPLEMENTED until the service issue fills it in.
    vision_pb2_grpc.add_VisionServiceServicer_to_server(vision_pb2_grpc.VisionServiceServicer(), host.server)
    host.add_service_name("parley.vision.v1.VisionService")
    await host.start()
    await host.serve_until_signalled()


if __name__ == "__main__":
    asyncio.run(main())
