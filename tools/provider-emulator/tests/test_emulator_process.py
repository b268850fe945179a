"""``python -m parley_emulator`` as a child process, and many concurrent streams."""

from __future__ import annotations

import asyncio
import time

import anthropic
import httpx
import pytest
from parley_emulator import EmulatorProcess, EmulatorServer

pytestmark = pytest.mark.integration


async def test_module_entry_point_with_ttft_flag() -> None:
    with EmulatorProcess(extra_args=["--ttft-ms", "150"]) as proc:
        assert proc.port > 0
        async with httpx.AsyncClient(base_url=proc.url) as http:
            assert (await http.get("/healthz")).json() == {"status": "ok"}
            cfg = (await http.get("/admin/config")).json()
            assert cfg["ttft_ms"] == 150
        c = anthropic.AsyncAnthropic(api_key="k", base_url=proc.anthropic_base_url, max_retries=0)
        started = time.monotonic()
        msg = await c.messages.create(model="claude-haiku-4-5", max_tokens=50,
                                      messages=[{"role": "user", "content": "Hello"}])
        assert time.monotonic() - started >= 0.15
        assert msg.content[0].type == "text"
        assert msg.content[0].text == "Hello! How can I help you today?"
    assert proc.proc is None


async def test_one_hundred_concurrent_streams(emu: EmulatorServer) -> None:
    c = anthropic.AsyncAnthropic(api_key="k", base_url=emu.anthropic_base_url, max_retries=0)

    async def one(i: int) -> str:
        async with c.messages.stream(
            model="claude-sonnet-4-6", max_tokens=200,
            system=f"Ticket {i} belongs to customer number {i}.",
            messages=[{"role": "user", "content": f"Who owns ticket {i}?"}],
        ) as stream:
            msg = await stream.get_final_message()
        assert msg.content[0].type == "text"
        return msg.content[0].text

    started = time.monotonic()
    answers = await asyncio.gather(*(one(i) for i in range(100)))
    elapsed = time.monotonic() - started
    assert all(a.endswith(f"Ticket {i} belongs to customer number {i}.")
               for i, a in enumerate(answers))
    assert elapsed < 20
    async with httpx.AsyncClient(base_url=emu.url) as http:
        stats = (await http.get("/admin/stats")).json()
    assert stats["models"]["claude-sonnet-4-6"]["streams_completed"] == 100
