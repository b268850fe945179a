"""Fixtures for router-svc tests: the real emulator and Redis (devstack plugin), an in-process
router gRPC server per test, and a recording usage recorder."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from parley.router.v1 import router_pb2_grpc
from parley_router.app import build_router_app
from parley_router.config import Settings
from parley_router.testing import TENANTS, MakeRouter, RecordingRecorder, RouterUnderTest
from parley_runtime.server import GrpcServiceHost
from parley_runtime.tenants import TenantRegistry
from parley_runtime.testing import TEST_KEYS, signed_channel, start_test_host


@pytest.fixture
async def emulator(emulator_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """Admin client of the session's emulator, reset before and after each test."""
    async with httpx.AsyncClient(base_url=emulator_url, timeout=10) as client:
        await client.post("/admin/reset")
        yield client
        await client.post("/admin/reset")


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    await client.flushdb()
    yield client
    await client.aclose()


@pytest.fixture
async def make_router(
    emulator_url: str, redis_url: str, redis_client: aioredis.Redis,
    emulator: httpx.AsyncClient,
) -> AsyncIterator[MakeRouter]:
    made: list[RouterUnderTest] = []

    async def make(*, tenants: dict[str, Any] | None = None, **overrides: Any) -> RouterUnderTest:
        base: dict[str, Any] = {
            "anthropic_api_key": "test-key",
            "anthropic_base_url": emulator_url,
            "gemini_api_key": "test-key",
            "gemini_base_url": emulator_url,
            "redis_url": redis_url,
            "auth_keys": dict(TEST_KEYS),
            "first_token_timeout_s": 3.0,
            "stall_timeout_s": 2.0,
            "backoff_base_s": 0.02,
            "backoff_max_s": 0.1,
            "redis_timeout_s": 1.0,
        }
        base.update(overrides)
        settings = Settings(**base)
        recorder = RecordingRecorder()
        registry = TenantRegistry.from_dict(tenants or TENANTS)
        app = build_router_app(settings, registry=registry, recorder=recorder)

        def register(host: GrpcServiceHost) -> None:
            router_pb2_grpc.add_RouterServiceServicer_to_server(app.servicer, host.server)
            host.add_service_name("parley.router.v1.RouterService")

        host = await start_test_host(settings, register)
        channel = signed_channel(host.port)
        rut = RouterUnderTest(app, host, channel, router_pb2_grpc.RouterServiceStub(channel),
                              recorder, settings)
        made.append(rut)
        return rut

    yield make
    for rut in made:
        await rut.channel.close()
        await rut.host.stop(0)
        await rut.app.aclose()


