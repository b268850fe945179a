"""Outbound gRPC channels with Parley's client interceptors (auth, tenant, request id, trace,
deadline propagation)."""

from __future__ import annotations

import grpc

from .auth import TokenSigner
from .interceptors import client_interceptors


def make_channel(
    address: str,
    *,
    signer: TokenSigner | None,
    audience: str = "parley",
    max_message_bytes: int = 16 * 1024 * 1024,
) -> grpc.aio.Channel:
    """An insecure (in-cluster mTLS is the mesh's job) aio channel to `address`."""
    options = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.enable_retries", 1),
    ]
    return grpc.aio.insecure_channel(
        address, options=options, interceptors=client_interceptors(signer, audience)
    )
