"""Prompt caching end to end: Anthropic breakpoints, Gemini implicit and explicit caching, and
cached tokens reported in Completion.usage and in the usage events."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from parley.router.v1 import router_pb2
from parley_emulator.testing import long_knowledge
from parley_router.testing import MakeRouter, chat, llm_events, system, user, wait_for
from prometheus_client import REGISTRY

pytestmark = pytest.mark.integration

KNOWLEDGE = long_knowledge(3000)


async def test_anthropic_breakpoints_cache_the_stable_prefix(
    make_router: MakeRouter, emulator: httpx.AsyncClient,
) -> None:
    r = await make_router()
    first = await r.turn(chat(system(KNOWLEDGE, breakpoint=True),
                              user("where is the headquarters?"), tier=router_pb2.TIER_PREMIUM))
    assert first.route.model_id == "claude-sonnet-4-6"
    u1 = first.completion.usage
    assert u1.cache_write_tokens > 2500 and u1.cached_input_tokens == 0
    second = await r.turn(chat(system(KNOWLEDGE, breakpoint=True),
                               user("how long do refunds take?"), tier=router_pb2.TIER_PREMIUM))
    u2 = second.completion.usage
    assert u2.cached_input_tokens >= u1.cache_write_tokens
    assert u2.input_tokens > u2.cached_input_tokens
    # Cache reads are billed at a tenth: the second turn is much cheaper.
    assert second.completion.usage.cost_usd < first.completion.usage.cost_usd / 2
    events = llm_events(r.recorder)
    assert events[-1][1].llm.cached_input_tokens == u2.cached_input_tokens
    assert events[0][1].llm.cache_write_tokens == u1.cache_write_tokens


async def test_anthropic_conversation_history_is_cached_turn_to_turn(
    make_router: MakeRouter, emulator: httpx.AsyncClient,
) -> None:
    r = await make_router()
    history = [system(KNOWLEDGE), user("where is the headquarters?")]
    first = await r.turn(chat(*history, tier=router_pb2.TIER_PREMIUM))
    history.append(router_pb2.Message(role=router_pb2.ROLE_ASSISTANT,
                                      parts=[router_pb2.ContentPart(text=first.text)]))
    history.append(user("and when is support available?"))
    second = await r.turn(chat(*history, tier=router_pb2.TIER_PREMIUM))
    assert second.completion.usage.cached_input_tokens > 2500


async def test_short_prompts_are_not_marked_for_caching(make_router: MakeRouter,
                                                        emulator: httpx.AsyncClient) -> None:
    r = await make_router()
    res = await r.turn(chat(system("Be brief."), user("hello"), tier=router_pb2.TIER_PREMIUM))
    assert res.completion.usage.cache_write_tokens == 0


async def test_gemini_implicit_cache_hits_on_a_stable_prefix(
    make_router: MakeRouter, emulator: httpx.AsyncClient,
) -> None:
    r = await make_router(gemini_explicit_cache=False)
    tools = [router_pb2.ToolDefinition(name=n, description=f"{n} tool",
                                       parameters_json_schema='{"type":"object"}')
             for n in ("zeta_tool", "alpha_tool")]
    await r.turn(chat(system(KNOWLEDGE), user("where is the headquarters?"),
                      tier=router_pb2.TIER_STANDARD, tools=tools))
    # Same prefix, tools listed in another order: still a hit (the router orders them).
    second = await r.turn(chat(system(KNOWLEDGE), user("how long do refunds take?"),
                               tier=router_pb2.TIER_STANDARD, tools=list(reversed(tools))))
    assert second.route.model_id == "gemini-2.5-flash"
    assert second.completion.usage.cached_input_tokens > 2500


async def test_gemini_explicit_cache_is_created_when_it_pays_off_and_reused(
    make_router: MakeRouter, emulator: httpx.AsyncClient,
) -> None:
    r = await make_router(gemini_explicit_cache_min_tokens=2000, gemini_explicit_cache_ttl_s=600)

    def uses() -> float:
        return REGISTRY.get_sample_value(
            "parley_router_gemini_explicit_cache_total",
            {"model": "gemini-2.5-flash", "event": "used"}) or 0.0

    before = uses()
    questions = ["where is the headquarters?", "how long do refunds take?",
                 "what does the premium plan cost?"]
    # First sighting: not worth storing yet (one use does not pay for storage).
    await r.turn(chat(system(KNOWLEDGE), user(questions[0]), tier=router_pb2.TIER_STANDARD))
    stats = (await emulator.get("/admin/stats")).json()
    assert stats["caches"]["gemini_cached_contents"] == 0
    # Second sighting within the TTL: creation starts in the background.
    await r.turn(chat(system(KNOWLEDGE), user(questions[1]), tier=router_pb2.TIER_STANDARD))

    async def created() -> int:
        return int((await emulator.get("/admin/stats")).json()["caches"]
                   ["gemini_cached_contents"])

    for _ in range(100):
        if await created() == 1:
            break
        await asyncio.sleep(0.02)
    assert await created() == 1
    await wait_for(lambda: any(ev.llm.tier == "cache" for _, ev in r.recorder.events))
    third = await r.turn(chat(system(KNOWLEDGE), user(questions[2]),
                              tier=router_pb2.TIER_STANDARD))
    assert uses() == before + 1
    assert "49 euros" in third.text  # the cached system prompt still answers
    assert third.completion.usage.cached_input_tokens > 2500
    cache_events = [ev for _, ev in r.recorder.events if ev.llm.tier == "cache"]
    assert len(cache_events) == 1 and cache_events[0].llm.cache_write_tokens > 2500
    # A different tenant with the same prompt never gets this tenant's cache.
    other = await r.turn(chat(system(KNOWLEDGE), user(questions[2]),
                              tier=router_pb2.TIER_STANDARD), tenant="globex")
    assert uses() == before + 1 and other.text
