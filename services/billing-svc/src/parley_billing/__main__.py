"""Entry point: `python -m parley_billing` (wiring only)."""

from __future__ import annotations

import asyncio

from parley.billing.v1 import billing_pb2_grpc
from parley_runtime.server import GrpcServiceHost, bootstrap

from .config import Settings


async def main() -> None:
    settings = Settings()
    bootstrap(settings)
    host = GrpcServiceHost(settings)
    # Skeleton: every RPC answers UNIMPLEMENTED until the service issue fills it in.
    billing_pb2_grpc.add_BillingServiceServicer_to_server(billing_pb2_grpc.BillingServiceServicer(), host.server)
    host.add_service_name("parley.billing.v1.BillingService")
    await host.start()
    await host.serve_until_signalled()


if __name__ == "__main__":
    asyncio.run(main())
