"""Brings the local stack up, then sends one authenticated request through each service's
health and reflection endpoints (the agent-worker issue turns this into the full demo)."""

from __future__ import annotations

import asyncio
import json
import sys

from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from parley_devstack.stack import ROOT, Stack, up
from parley_runtime import context
from parley_runtime.auth import TokenSigner
from parley_runtime.client import make_channel


async def probe(name: str, port: int, signer: TokenSigner) -> tuple[str, str, list[str]]:
    context.tenant_id_var.set("acme")
    async with make_channel(f"127.0.0.1:{port}", signer=signer) as ch:
        h = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
        call = reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo(timeout=5)
        await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
        resp = await call.read()
        await call.done_writing()
        services = [s.name for s in resp.list_services_response.service]
    return name, health_pb2.HealthCheckResponse.ServingStatus.Name(h.status), services


async def main() -> int:
    stack = Stack((ROOT / ".stack").resolve())
    up(stack)
    keys = stack.auth_keys()
    signer = TokenSigner(service="demo-client", kid="demo-client", secret=keys["demo-client"])
    p = stack.ports
    rows = await asyncio.gather(
        *(
            probe(n, port, signer)
            for n, port in (
                ("router-svc", p.router),
                ("vision-svc", p.vision),
                ("kb-svc", p.kb),
                ("billing-svc", p.billing),
            )
        )
    )
    print("\nauthenticated health + reflection through each service:")
    for name, status, services in rows:
        print(f"  {name:<12} {status:<12} {', '.join(s for s in services if 'parley' in s)}")
    report = ROOT / "reports" / "demo.json"
    report.parent.mkdir(exist_ok=True)
    report.write_text(
        json.dumps([{"service": n, "status": s, "services": v} for n, s, v in rows], indent=2)
    )
    print(f"\nreport: {report}\nstop the stack with: make down")
    return 0 if all(s == "SERVING" for _, s, _ in rows) else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
