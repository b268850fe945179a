"""Entry point: `python -m parley_kb` (wiring only)."""

from __future__ import annotations

import asyncio

from parley.kb.v1 import kb_pb2_grpc
from parley_runtime.server import GrpcServiceHost, bootstrap

from .config import Settings


async def main() -> None:
    settings = Settings()
    bootstrap(settings)
    host = GrpcServiceHost(settings)
    # Skeleton: every RPC answers UNIMPLEMENTED until the service issue fills it in.
    kb_pb2_grpc.add_KnowledgeBaseServiceServicer_to_server(kb_pb2_grpc.KnowledgeBaseServiceServicer(), host.server)
    host.add_service_name("parley.kb.v1.KnowledgeBaseService")
    await host.start()
    await host.serve_until_signalled()


if __name__ == "__main__":
    asyncio.run(main())
