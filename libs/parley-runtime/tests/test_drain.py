"""SIGTERM: health flips to NOT_SERVING while an in-flight stream still runs, then exit."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from parley.router.v1 import router_pb2, router_pb2_grpc
from parley_runtime import context
from parley_runtime.testing import TEST_KEYS, free_port, signed_channel

pytestmark = pytest.mark.integration

SERVER = textwrap.dedent(
    """
    import asyncio, json, os
    from parley.router.v1 import router_pb2, router_pb2_grpc
    from parley_runtime.server import GrpcServiceHost, bootstrap
    from parley_runtime.settings import ServiceSettings

    class Slow(router_pb2_grpc.RouterServiceServicer):
        async def StreamChat(self, request, context):
            for i in range(30):
                yield router_pb2.StreamChatResponse(text_delta=str(i))
                await asyncio.sleep(0.1)

    async def main():
        s = ServiceSettings(service_name="router-svc")
        bootstrap(s)
        host = GrpcServiceHost(s)
        router_pb2_grpc.add_RouterServiceServicer_to_server(Slow(), host.server)
        host.add_service_name("parley.router.v1.RouterService")
        await host.start()
        await host.serve_until_signalled()

    asyncio.run(main())
    """
)


async def test_sigterm_flips_health_then_drains() -> None:
    import json

    port = free_port()
    env = dict(
        os.environ,
        PARLEY_GRPC_PORT=str(port),
        PARLEY_AUTH_KEYS=json.dumps(TEST_KEYS),
        PARLEY_DRAIN_SECONDS="5",
    )
    proc = subprocess.Popen([sys.executable, "-c", SERVER], env=env)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as hch:
            health = health_pb2_grpc.HealthStub(hch)
            for _ in range(100):
                try:
                    r = await health.Check(health_pb2.HealthCheckRequest(), timeout=0.5)
                    if r.status == health_pb2.HealthCheckResponse.SERVING:
                        break
                except grpc.aio.AioRpcError:
                    pass
                await asyncio.sleep(0.1)
            else:
                pytest.fail("server never became SERVING")

            context.tenant_id_var.set("acme")
            async with signed_channel(port) as ch:
                stub = router_pb2_grpc.RouterServiceStub(ch)
                call = stub.StreamChat(router_pb2.StreamChatRequest())
                first = await call.read()
                assert first.text_delta == "0"
                proc.send_signal(signal.SIGTERM)
                # Health says NOT_SERVING while the stream is still being served.
                status = None
                for _ in range(50):
                    r = await health.Check(health_pb2.HealthCheckRequest(), timeout=0.5)
                    status = r.status
                    if status == health_pb2.HealthCheckResponse.NOT_SERVING:
                        break
                    await asyncio.sleep(0.02)
                assert status == health_pb2.HealthCheckResponse.NOT_SERVING
                assert proc.poll() is None
                # The in-flight stream completes within the grace period.
                rest = [m.text_delta async for m in call]
                assert rest[-1] == "29"
        assert await asyncio.to_thread(proc.wait, 10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
