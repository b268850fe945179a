"""Fault injection observed through the official SDKs, and the admin API."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import aiohttp
import anthropic
import httpx
import httpx2
import pytest
import voyageai
import voyageai.error
from google import genai
from google.genai import errors, types
from parley_emulator import EmulatorServer

pytestmark = pytest.mark.integration

SONNET = "claude-sonnet-4-6"
HAIKU = "claude-haiku-4-5"
FLASH = "gemini-2.5-flash"
SYSTEM = "Our store opens at 9am every weekday. Returns are accepted within 30 days of purchase."
QUESTION = [{"role": "user", "content": "When does the store open and when are returns accepted?"}]


def claude(emu: EmulatorServer, timeout: float = 30.0) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(api_key="sk-f", base_url=emu.anthropic_base_url,
                                    max_retries=0, timeout=timeout)


def gemini(emu: EmulatorServer) -> genai.Client:
    return genai.Client(api_key="g-f", http_options=types.HttpOptions(base_url=emu.gemini_base_url))


async def _create(c: anthropic.AsyncAnthropic, model: str = SONNET) -> Any:
    return await c.messages.create(model=model, max_tokens=200, system=SYSTEM,
                                   messages=QUESTION)  # type: ignore[arg-type]


async def test_overloaded_529_and_model_scoping(emu: EmulatorServer, admin: Any) -> None:
    await admin.faults(model=HAIKU, error_rate=1.0, error_status=529)
    c = claude(emu)
    with pytest.raises(anthropic.OverloadedError) as exc:
        await _create(c, HAIKU)
    assert exc.value.status_code == 529
    assert exc.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]
    ok = await _create(c, SONNET)  # the fault is scoped to the haiku model
    assert ok.stop_reason == "end_turn"
    haiku, sonnet = await admin.model_stats(HAIKU), await admin.model_stats(SONNET)
    assert haiku["requests"] == 1 and haiku["errors_injected"] == 1
    assert haiku["output_tokens"] == 0
    assert sonnet["requests"] == 1 and sonnet["errors_injected"] == 0
    assert sonnet["output_tokens"] == ok.usage.output_tokens
    await admin.clear_faults()
    assert (await _create(c, HAIKU)).stop_reason == "end_turn"
    assert (await admin.model_stats(HAIKU))["requests"] == 2


async def test_rate_limit_429_with_retry_after(emu: EmulatorServer, admin: Any) -> None:
    await admin.faults(model="*", error_rate=1.0, error_status=429, retry_after_s=2)
    with pytest.raises(anthropic.RateLimitError) as exc:
        await _create(claude(emu))
    assert exc.value.response.headers["retry-after"] == "2"
    assert exc.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]

    g = gemini(emu)
    with pytest.raises(errors.ClientError) as gexc:
        await g.aio.models.generate_content(model=FLASH, contents="hi")
    assert gexc.value.code == 429
    assert gexc.value.status == "RESOURCE_EXHAUSTED"

    v = voyageai.AsyncClient(api_key="v", base_url=emu.voyage_base_url, max_retries=0)
    with pytest.raises(voyageai.error.RateLimitError):
        await v.embed(["hello"], model="voyage-3.5")
    stats = await admin.stats()
    assert stats["totals"]["errors_injected"] == 3


async def test_sdk_retries_are_visible_in_stats(emu: EmulatorServer, admin: Any) -> None:
    """max_errors=1: the first call fails, the SDK's own retry succeeds, stats show both."""
    await admin.faults(model=SONNET, error_rate=1.0, error_status=529, max_errors=1,
                       retry_after_s=0.01)
    c = anthropic.AsyncAnthropic(api_key="sk-f", base_url=emu.anthropic_base_url, max_retries=2)
    msg = await _create(c)
    assert msg.stop_reason == "end_turn"
    stats = await admin.model_stats(SONNET)
    assert stats["requests"] == 2 and stats["errors_injected"] == 1


async def test_server_errors(emu: EmulatorServer, admin: Any) -> None:
    await admin.faults(model="*", error_rate=1.0, error_status=500)
    with pytest.raises(anthropic.InternalServerError):
        await _create(claude(emu))
    await admin.faults(model="gemini-*", error_rate=1.0, error_status=503)
    g = gemini(emu)
    with pytest.raises(errors.ServerError) as exc:
        await g.aio.models.generate_content(model=FLASH, contents="hi")
    assert exc.value.code == 503 and exc.value.status == "UNAVAILABLE"


async def test_cut_stream_raises(emu: EmulatorServer, admin: Any) -> None:
    await admin.faults(model="*", cut_after_tokens=5)
    received: list[str] = []
    with pytest.raises((anthropic.APIConnectionError, httpx2.RemoteProtocolError)):
        async with claude(emu).messages.stream(
            model=SONNET, max_tokens=200, system=SYSTEM, messages=QUESTION,  # type: ignore[arg-type]
        ) as stream:
            async for event in stream:
                if event.type == "content_block_delta" and event.delta.type == "text_delta":
                    received.append(event.delta.text)
    assert received, "some deltas arrive before the cut"
    assert sum(len(t) for t in received) < len("Based on the information I have: Our store")

    g = gemini(emu)
    got: list[str] = []
    with pytest.raises(aiohttp.ClientPayloadError):  # google-genai's async transport
        async for chunk in await g.aio.models.generate_content_stream(model=FLASH, contents="hi"):
            got.append(chunk.text or "")
    assert got and not any(c.startswith("Hello! How can I help you today?") for c in got)
    await asyncio.sleep(0.05)
    stats = await admin.stats()
    assert stats["models"][SONNET]["streams_cut"] == 1
    assert stats["models"][FLASH]["streams_cut"] == 1
    assert stats["models"][SONNET]["streams_completed"] == 0


async def test_stall_is_observable_with_a_timeout(emu: EmulatorServer, admin: Any) -> None:
    await admin.faults(model=SONNET, stall_after_tokens=3, stall_s=30)
    c = claude(emu)
    async with c.messages.stream(
        model=SONNET, max_tokens=200, system=SYSTEM, messages=QUESTION,  # type: ignore[arg-type]
    ) as stream:
        iterator = stream.__aiter__()
        first_text = None
        while first_text is None:
            event = await asyncio.wait_for(iterator.__anext__(), timeout=5)
            if event.type == "content_block_delta":
                first_text = event
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            while True:
                await asyncio.wait_for(iterator.__anext__(), timeout=0.5)
        assert time.monotonic() - started >= 0.5
    await asyncio.sleep(0.1)
    stats = await admin.model_stats(SONNET)
    assert stats["streams_stalled"] == 1 and stats["streams_completed"] == 0

    # the SDK's own read timeout fires during a stall too
    short = claude(emu, timeout=0.5)
    with pytest.raises((anthropic.APITimeoutError, httpx2.ReadTimeout)):
        async with short.messages.stream(
            model=SONNET, max_tokens=200, system=SYSTEM, messages=QUESTION,  # type: ignore[arg-type]
        ) as stream:
            async for _ in stream:
                pass


async def test_stall_then_resume(emu: EmulatorServer, admin: Any) -> None:
    await admin.faults(model=SONNET, stall_after_tokens=2, stall_s=0.4)
    started = time.monotonic()
    async with claude(emu).messages.stream(
        model=SONNET, max_tokens=200, system=SYSTEM, messages=QUESTION,  # type: ignore[arg-type]
    ) as stream:
        final = await stream.get_final_message()
    assert time.monotonic() - started >= 0.4
    assert final.content[0].type == "text" and "9am" in final.content[0].text


async def test_in_stream_error_event(emu: EmulatorServer, admin: Any) -> None:
    await admin.faults(model="*", stream_error_after_tokens=4, error_status=529)
    with pytest.raises(anthropic.APIStatusError) as exc:
        async with claude(emu).messages.stream(
            model=SONNET, max_tokens=200, system=SYSTEM, messages=QUESTION,  # type: ignore[arg-type]
        ) as stream:
            async for _ in stream:
                pass
    assert "overloaded_error" in str(exc.value)
    g = gemini(emu)
    with pytest.raises(errors.APIError):
        async for _ in await g.aio.models.generate_content_stream(model=FLASH, contents="hi"):
            pass


async def test_ttft_and_latency(emu: EmulatorServer, admin: Any) -> None:
    await admin.faults(model=SONNET, ttft_ms=300, inter_token_ms=0)
    c = claude(emu)
    started = time.monotonic()
    first_event_at = first_text_at = None
    async with c.messages.stream(
        model=SONNET, max_tokens=200, system=SYSTEM, messages=QUESTION,  # type: ignore[arg-type]
    ) as stream:
        async for event in stream:
            now = time.monotonic() - started
            if first_event_at is None:
                first_event_at = now
            if event.type == "content_block_delta" and first_text_at is None:
                first_text_at = now
    assert first_event_at is not None and first_text_at is not None
    assert first_event_at < 0.25, "message_start is sent before the ttft delay"
    assert first_text_at >= 0.3

    await admin.faults(model=SONNET, latency_ms=200)
    started = time.monotonic()
    await _create(c)
    assert time.monotonic() - started >= 0.2


async def test_error_rate_is_deterministic_given_the_seed(emu: EmulatorServer,
                                                          admin: Any) -> None:
    c = claude(emu)

    async def run() -> list[bool]:
        outcomes = []
        for _ in range(12):
            try:
                await _create(c)
                outcomes.append(False)
            except anthropic.InternalServerError:
                outcomes.append(True)
        return outcomes

    await admin.faults(model=SONNET, error_rate=0.5, error_status=503, seed=7)
    first = await run()
    await admin.faults(model=SONNET, error_rate=0.5, error_status=503, seed=7)  # re-arm
    second = await run()
    rng = random.Random(7)
    expected = [rng.random() < 0.5 for _ in range(12)]
    assert first == second == expected
    assert any(first) and not all(first)


async def test_admin_api(emu: EmulatorServer, admin: Any) -> None:
    async with httpx.AsyncClient(base_url=emu.url) as http:
        assert (await http.get("/healthz")).json() == {"status": "ok"}
        bad = await http.post("/admin/faults", json={"model": "x", "error_rate": 2})
        assert bad.status_code == 400
        bad_field = await http.post("/admin/faults", json={"model": "x", "explode": True})
        assert bad_field.status_code == 400
        listed = await http.post("/admin/faults", json=[
            {"model": "a", "error_rate": 0.1}, {"model": "b*", "cut_after_tokens": 3}])
        assert {f["model"] for f in listed.json()["faults"]} == {"a", "b*"}
        assert len((await http.get("/admin/faults")).json()["faults"]) == 2
        await http.delete("/admin/faults", params={"model": "a"})
        assert [f["model"] for f in (await http.get("/admin/faults")).json()["faults"]] == ["b*"]

        await _create(claude(emu))
        log = (await http.get("/admin/requests", params={"limit": 5})).json()["requests"]
        assert log[-1]["model"] == SONNET and log[-1]["status"] == 200
        stats = (await http.get("/admin/stats")).json()
        assert stats["models"][SONNET]["requests"] == 1
        assert stats["totals"]["input_tokens"] > 0

        cfg = (await http.post("/admin/config", json={
            "anthropic_min_cache_tokens": {"claude-sonnet-*": 10}})).json()
        assert cfg["anthropic_min_cache_tokens"] == {"claude-sonnet-*": 10}
        cached: Any = [{"type": "text", "text": SYSTEM, "cache_control": {"type": "ephemeral"}}]
        msg = await claude(emu).messages.create(model=SONNET, max_tokens=50, system=cached,
                                                messages=QUESTION)  # type: ignore[arg-type]
        assert msg.usage.cache_creation_input_tokens and msg.usage.cache_creation_input_tokens > 0
        await http.post("/admin/config", json={"anthropic_min_cache_tokens": {}})

        assert (await http.post("/admin/reset")).status_code == 200
        after = (await http.get("/admin/stats")).json()
        assert after["models"] == {} and after["caches"]["anthropic_prompt_cache_entries"] == 0
        assert (await http.get("/admin/faults")).json()["faults"] == []
