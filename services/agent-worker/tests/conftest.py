from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from parley_agent.testing import FakeBackends
from parley_runtime.client import make_channel
from parley_runtime.testing import signed_as


@pytest.fixture
async def backends() -> AsyncIterator[FakeBackends]:
    fakes = await FakeBackends().start()
    try:
        yield fakes
    finally:
        await fakes.stop()


@pytest.fixture
async def router_channel(backends: FakeBackends) -> AsyncIterator[grpc.aio.Channel]:
    channel = make_channel(backends.addr("router"), signer=signed_as("agent-worker"))
    try:
        yield channel
    finally:
        await channel.close()
