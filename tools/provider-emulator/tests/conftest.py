from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from parley_emulator import EmulatorServer


@pytest.fixture(scope="session")
def emulator_server() -> Iterator[EmulatorServer]:
    with EmulatorServer() as server:  # free port (bind 0)
        yield server


class Admin:
    def __init__(self, server: EmulatorServer, client: httpx.AsyncClient) -> None:
        self.server = server
        self.client = client

    async def faults(self, **spec: Any) -> dict[str, Any]:
        resp = await self.client.post("/admin/faults", json=spec)
        resp.raise_for_status()
        data: dict[str, Any] = resp.json()
        return data

    async def clear_faults(self) -> None:
        (await self.client.delete("/admin/faults")).raise_for_status()

    async def stats(self) -> dict[str, Any]:
        resp = await self.client.get("/admin/stats")
        resp.raise_for_status()
        data: dict[str, Any] = resp.json()
        return data

    async def model_stats(self, model: str) -> dict[str, int]:
        data = await self.stats()
        row: dict[str, int] = data["models"].get(model, {})
        return row

    async def reset(self) -> None:
        (await self.client.post("/admin/reset")).raise_for_status()

    async def advance_clock(self, seconds: float) -> None:
        (await self.client.post("/admin/clock", json={"advance_s": seconds})).raise_for_status()

    async def config(self, **values: Any) -> dict[str, Any]:
        resp = await self.client.post("/admin/config", json=values)
        resp.raise_for_status()
        data: dict[str, Any] = resp.json()
        return data


@pytest.fixture
async def emu(emulator_server: EmulatorServer) -> AsyncIterator[EmulatorServer]:
    """The shared server, reset (stats, caches, faults, clock) before each test."""
    async with httpx.AsyncClient(base_url=emulator_server.url) as client:
        (await client.post("/admin/reset")).raise_for_status()
    yield emulator_server


@pytest.fixture
async def admin(emu: EmulatorServer) -> AsyncIterator[Admin]:
    async with httpx.AsyncClient(base_url=emu.url, timeout=10) as client:
        yield Admin(emu, client)
