"""Helpers for tests of Parley services (in-process servers, signed channels)."""

from __future__ import annotations

import socket
from collections.abc import Callable

import grpc

from .auth import TokenSigner
from .client import make_channel
from .server import GrpcServiceHost
from .settings import ServiceSettings

TEST_KEYS = {
    "test-caller": "test-caller-secret-0123456789abcdef0123456789",
    "agent-worker": "agent-worker-secret-0123456789abcdef012345678",
    "router-svc": "router-svc-secret-0123456789abcdef0123456789a",
    "vision-svc": "vision-svc-secret-0123456789abcdef0123456789a",
    "kb-svc": "kb-svc-secret-0123456789abcdef0123456789abcdef",
    "billing-svc": "billing-svc-secret-0123456789abcdef012345678",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def signed_as(service: str = "test-caller") -> TokenSigner:
    return TokenSigner(service=service, kid=service, secret=TEST_KEYS[service])


async def start_test_host(
    settings: ServiceSettings, register: Callable[[GrpcServiceHost], None]
) -> GrpcServiceHost:
    """Start a GrpcServiceHost on a free loopback port with the test keyring."""
    settings = settings.model_copy(
        update={"grpc_port": 0, "metrics_port": 0, "auth_keys": dict(TEST_KEYS)}
    )
    host = GrpcServiceHost(settings)
    register(host)
    await host.start()
    return host


def signed_channel(port: int, *, service: str = "test-caller") -> grpc.aio.Channel:
    return make_channel(f"127.0.0.1:{port}", signer=signed_as(service))
