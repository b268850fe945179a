"""router-svc over gRPC against the provider emulator and a real Redis: streaming, tools and
images both ways, bad input, usage, ClassifyTurn and ListModels."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import grpc
import httpx
import pytest
from parley.common.v1 import common_pb2
from parley.router.v1 import router_pb2
from parley_emulator.testing import png_bytes
from parley_router.testing import (
    MakeRouter,
    chat,
    llm_events,
    md,
    model_stats,
    set_fault,
    system,
    user,
    wait_for,
)
from parley_runtime.errors import RETRY_AFTER_TRAILER
from prometheus_client import REGISTRY

pytestmark = pytest.mark.integration

SEARCH_TOOL = router_pb2.ToolDefinition(
    name="search_kb",
    description="Search the tenant knowledge base",
    parameters_json_schema=json.dumps(
        {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}
    ),
)


async def test_streams_route_then_deltas_then_completion(make_router: MakeRouter,
                                                         emulator: httpx.AsyncClient) -> None:
    r = await make_router()
    res = await r.turn(chat(system("Our store opens at 9am on weekdays."),
                            user("when does the store open?"), turn_id="t-basic"))
    assert res.events[0] == "route" and res.events[-1] == "completion"
    assert res.events.count("route") == 1  # one model tried: one route
    assert res.events.count("text_delta") >= 2
    assert res.route.tier == router_pb2.TIER_SIMPLE
    assert res.route.model_id == "gemini-2.5-flash-lite"
    assert res.route.estimator == "linear-v1" and "complexity estimate" in res.route.reason
    assert "9am" in res.text
    c = res.completion
    assert c.finish_reason == router_pb2.FINISH_REASON_STOP
    assert c.usage.input_tokens > 0 and c.usage.output_tokens > 0 and c.usage.cost_usd > 0
    assert c.attempts == 1 and not c.fallback_used
    assert 0 < c.time_to_first_token_ms <= c.total_ms
    # One usage event per provider call, keyed by turn (attribution), call and attempt.
    events = llm_events(r.recorder)
    assert len(events) == 1
    tenant, ev = events[0]
    assert tenant == "acme"
    assert re.fullmatch(r"router-svc:llm:t-basic:[0-9a-f]{32}:1", ev.idempotency_key)
    assert ev.service == "router-svc" and ev.session_id == "sess-1"
    assert ev.llm.model_id == "gemini-2.5-flash-lite" and ev.llm.tier == "simple"
    assert ev.llm.input_tokens == c.usage.input_tokens
    assert ev.llm.output_tokens == c.usage.output_tokens
    assert REGISTRY.get_sample_value(
        "parley_router_ttft_seconds_count",
        {"provider": "google", "model": "gemini-2.5-flash-lite"}) >= 1
    assert REGISTRY.get_sample_value("parley_router_active_streams") == 0


async def test_complex_turns_route_to_premium_and_simple_ones_stay_cheap(
    make_router: MakeRouter, emulator: httpx.AsyncClient,
) -> None:
    r = await make_router()
    hard = await r.turn(chat(user("prove that there are infinitely many prime numbers")))
    easy = await r.turn(chat(user("set a timer for ten minutes")))
    assert hard.route.tier == router_pb2.TIER_PREMIUM
    assert hard.route.model_id == "claude-sonnet-4-6"
    assert easy.route.tier == router_pb2.TIER_SIMPLE


@pytest.mark.parametrize("tier, model", [
    (router_pb2.TIER_PREMIUM, "claude-sonnet-4-6"),
    (router_pb2.TIER_SIMPLE, "gemini-2.5-flash-lite"),
])
async def test_tool_calls_both_directions(make_router: MakeRouter, emulator: httpx.AsyncClient,
                                          tier: int, model: str) -> None:
    r = await make_router()
    first = await r.turn(chat(user("what is the refund policy?"), tier=tier,
                              tools=[SEARCH_TOOL]))
    assert first.route.model_id == model
    assert first.completion.finish_reason == router_pb2.FINISH_REASON_TOOL_CALLS
    assert len(first.tool_calls) == 1
    call = first.tool_calls[0]
    assert call.name == "search_kb" and call.id
    assert json.loads(call.arguments_json) == {"query": "what is the refund policy?"}
    second = await r.turn(chat(
        user("what is the refund policy?"),
        router_pb2.Message(role=router_pb2.ROLE_ASSISTANT, parts=[
            router_pb2.ContentPart(tool_call=call)]),
        router_pb2.Message(role=router_pb2.ROLE_TOOL, parts=[
            router_pb2.ContentPart(tool_result=router_pb2.ToolResult(
                call_id=call.id, name="search_kb",
                content="Refunds are processed within 14 days of the request."))]),
        tier=tier, tools=[SEARCH_TOOL],
    ))
    assert second.completion.finish_reason == router_pb2.FINISH_REASON_STOP
    assert "14 days" in second.text


@pytest.mark.parametrize("tier, model", [
    (router_pb2.TIER_PREMIUM, "claude-sonnet-4-6"),
    (router_pb2.TIER_STANDARD, "gemini-2.5-flash"),
])
async def test_images_reach_both_providers(make_router: MakeRouter, emulator: httpx.AsyncClient,
                                           tier: int, model: str) -> None:
    r = await make_router()
    image = common_pb2.Image(data=png_bytes(64, 48), mime_type="image/png", width=64, height=48)
    res = await r.turn(chat(router_pb2.Message(role=router_pb2.ROLE_USER, parts=[
        router_pb2.ContentPart(image=image),
        router_pb2.ContentPart(text="what do you see on my screen?"),
    ]), tier=tier))
    assert res.route.model_id == model
    assert "I can see the image you shared (64x48)" in res.text
    assert res.completion.usage.images == 1


BAD_REQUESTS: list[tuple[str, Any, str, grpc.StatusCode, str]] = [
    ("empty messages", router_pb2.StreamChatRequest(turn_id="x"), "acme",
     grpc.StatusCode.INVALID_ARGUMENT, "messages is empty"),
    ("only system", chat(system("be nice")), "acme",
     grpc.StatusCode.INVALID_ARGUMENT, "only system"),
    ("unknown tenant", chat(user("hi")), "nobody",
     grpc.StatusCode.NOT_FOUND, "unknown tenant"),
    ("unknown model", chat(user("hi"), hints=router_pb2.RoutingHints(model_id="gpt-9")), "acme",
     grpc.StatusCode.NOT_FOUND, "unknown model"),
    ("model not allowed", chat(user("hi"), hints=router_pb2.RoutingHints(
        model_id="gemini-2.5-pro")), "anthro",
     grpc.StatusCode.PERMISSION_DENIED, "not allowed"),
    ("schema not json", chat(user("hi"), tools=[router_pb2.ToolDefinition(
        name="f", parameters_json_schema="{not json")]), "acme",
     grpc.StatusCode.INVALID_ARGUMENT, "not JSON"),
    ("schema not object", chat(user("hi"), tools=[router_pb2.ToolDefinition(
        name="f", parameters_json_schema='{"type": "string"}')]), "acme",
     grpc.StatusCode.INVALID_ARGUMENT, "must describe an object"),
    ("schema bad type", chat(user("hi"), tools=[router_pb2.ToolDefinition(
        name="f", parameters_json_schema='{"type":"object","properties":{"a":{"type":"int"}}}')]),
     "acme", grpc.StatusCode.INVALID_ARGUMENT, "unknown type"),
    ("bad tool name", chat(user("hi"), tools=[router_pb2.ToolDefinition(
        name="my tool!", parameters_json_schema="{}")]), "acme",
     grpc.StatusCode.INVALID_ARGUMENT, "tool name"),
    ("role unspecified", chat(router_pb2.Message(parts=[router_pb2.ContentPart(text="x")])),
     "acme", grpc.StatusCode.INVALID_ARGUMENT, "role"),
    ("empty part", chat(router_pb2.Message(role=router_pb2.ROLE_USER,
                                           parts=[router_pb2.ContentPart()])), "acme",
     grpc.StatusCode.INVALID_ARGUMENT, "empty content part"),
    ("orphan tool result", chat(user("hi"), router_pb2.Message(
        role=router_pb2.ROLE_TOOL, parts=[router_pb2.ContentPart(
            tool_result=router_pb2.ToolResult(call_id="nope", content="x"))])), "acme",
     grpc.StatusCode.INVALID_ARGUMENT, "unknown call id"),
    ("bad image", chat(router_pb2.Message(role=router_pb2.ROLE_USER, parts=[
        router_pb2.ContentPart(image=common_pb2.Image(data=b"x", mime_type="image/tiff"))])),
     "acme", grpc.StatusCode.INVALID_ARGUMENT, "mime_type"),
    ("negative max tokens", chat(user("hi"), max_output_tokens=-5), "acme",
     grpc.StatusCode.INVALID_ARGUMENT, "max_output_tokens"),
    ("oversized prompt", chat(user("word " * 100_000)), "acme",
     grpc.StatusCode.INVALID_ARGUMENT, "prompt is too large"),
    ("larger than a message may be", chat(user("x" * 5_000_000)), "acme",
     grpc.StatusCode.RESOURCE_EXHAUSTED, ""),
    # Ids billing would refuse: the turn would be answered and its usage dead-lettered.
    ("session id with spaces", chat(user("hi"), session_id="my session"), "acme",
     grpc.StatusCode.INVALID_ARGUMENT, "session_id must be 1-128 printable"),
    ("session id too long", chat(user("hi"), session_id="s" * 200), "acme",
     grpc.StatusCode.INVALID_ARGUMENT, "session_id must be 1-128 printable"),
    ("turn id with spaces", chat(user("hi"), turn_id="turn 1"), "acme",
     grpc.StatusCode.INVALID_ARGUMENT, "turn_id must be 1-128 printable"),
    ("NaN cost cap", chat(user("hi"), hints=router_pb2.RoutingHints(
        max_cost_usd=float("nan"))), "acme", grpc.StatusCode.INVALID_ARGUMENT, "max_cost_usd"),
    ("infinite cost cap", chat(user("hi"), hints=router_pb2.RoutingHints(
        max_cost_usd=float("inf"))), "acme", grpc.StatusCode.INVALID_ARGUMENT, "max_cost_usd"),
    ("unknown tool choice", chat(user("hi"), tool_choice=99), "acme",
     grpc.StatusCode.INVALID_ARGUMENT, "tool_choice: unknown value 99"),
    ("conflicting tier hints", chat(user("hi"), hints=router_pb2.RoutingHints(
        force_tier=router_pb2.TIER_PREMIUM, max_tier=router_pb2.TIER_SIMPLE)), "acme",
     grpc.StatusCode.INVALID_ARGUMENT, "force_tier premium is above hints.max_tier simple"),
    ("huge model id", chat(user("hi"), hints=router_pb2.RoutingHints(model_id="m" * 20_000)),
     "acme", grpc.StatusCode.INVALID_ARGUMENT, "hints.model_id must be"),
    ("thousands of providers", chat(user("hi"), hints=router_pb2.RoutingHints(
        allowed_providers=[f"p{i}" for i in range(3000)])), "acme",
     grpc.StatusCode.INVALID_ARGUMENT, "3000 entries"),
    ("huge provider name", chat(user("hi"), hints=router_pb2.RoutingHints(
        allowed_providers=["g" * 20_000])), "acme",
     grpc.StatusCode.INVALID_ARGUMENT, "allowed_providers[0] is 20000 characters"),
    ("many unknown providers", chat(user("hi"), hints=router_pb2.RoutingHints(
        allowed_providers=[f"{i}" * 32 for i in range(8)])), "acme",
     grpc.StatusCode.PERMISSION_DENIED, "none of the requested providers"),
    ("huge tool name", chat(user("hi"), tools=[router_pb2.ToolDefinition(
        name="t" * 20_000, parameters_json_schema="{}")]), "acme",
     grpc.StatusCode.INVALID_ARGUMENT, "(20000 characters)"),
    ("huge unknown call id", chat(user("hi"), router_pb2.Message(
        role=router_pb2.ROLE_TOOL, parts=[router_pb2.ContentPart(
            tool_result=router_pb2.ToolResult(call_id="c" * 20_000, content="x"))])), "acme",
     grpc.StatusCode.INVALID_ARGUMENT, "unknown call id"),
]


@pytest.mark.parametrize("name, request_, tenant, code, fragment", BAD_REQUESTS,
                         ids=[b[0] for b in BAD_REQUESTS])
async def test_bad_input_gets_a_clear_status_and_the_server_survives(
    make_router: MakeRouter, emulator: httpx.AsyncClient, name: str, request_: Any,
    tenant: str, code: grpc.StatusCode, fragment: str,
) -> None:
    tenants = None
    if name == "oversized prompt":
        from parley_router.testing import TENANTS
        tenants = json.loads(json.dumps(TENANTS))
        tenants["tenants"]["acme"]["router"] = {"max_input_tokens": 100_000}
    r = await make_router(tenants=tenants)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await r.turn(request_, tenant=tenant)
    assert err.value.code() == code, err.value.details()
    assert fragment in (err.value.details() or "")
    # A caller's value is never echoed whole: the message stays readable and far below
    # gRPC's metadata limit.
    assert len(err.value.details() or "") < 300
    stats = (await emulator.get("/admin/stats")).json()
    assert stats["totals"].get("requests", 0) == 0  # nothing reached a provider
    ok = await r.turn(chat(user("hello")))
    assert ok.completion.finish_reason == router_pb2.FINISH_REASON_STOP


async def test_classify_turn_calls_no_model_and_reports_the_baseline(
    make_router: MakeRouter, emulator: httpx.AsyncClient,
) -> None:
    r = await make_router()
    resp = await r.stub.ClassifyTurn(router_pb2.ClassifyTurnRequest(messages=[user(
        "design a rate limiter that works across many replicas and stays exact under bursts")]),
        metadata=md("acme"), timeout=5)
    assert resp.decision.tier == router_pb2.TIER_PREMIUM
    assert resp.decision.model_id == "claude-sonnet-4-6"
    assert resp.baseline_tier == router_pb2.TIER_SIMPLE  # the seed misses it
    assert 0.0 <= resp.decision.complexity <= 1.0
    assert (await model_stats(emulator, "claude-sonnet-4-6")) == {}
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await r.stub.ClassifyTurn(router_pb2.ClassifyTurnRequest(), metadata=md("acme"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("hints, fragment", [
    (router_pb2.RoutingHints(model_id="m" * 20_000), "hints.model_id must be"),
    (router_pb2.RoutingHints(allowed_providers=["google"] * 3000), "3000 entries"),
    (router_pb2.RoutingHints(max_cost_usd=float("nan")), "max_cost_usd"),
], ids=["huge model id", "thousands of providers", "NaN cost cap"])
async def test_classify_turn_refuses_oversized_hints_without_echoing_them(
    make_router: MakeRouter, emulator: httpx.AsyncClient, hints: Any, fragment: str,
) -> None:
    r = await make_router()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await r.stub.ClassifyTurn(router_pb2.ClassifyTurnRequest(
            messages=[user("hi")], hints=hints), metadata=md("acme"), timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert fragment in (err.value.details() or "")
    assert len(err.value.details() or "") < 300


async def test_a_reused_turn_id_bills_every_call(
    make_router: MakeRouter, emulator: httpx.AsyncClient,
) -> None:
    r = await make_router()
    for _ in range(2):
        res = await r.turn(chat(user("when does the store open?"), turn_id="t-reused"))
        assert res.completion.finish_reason == router_pb2.FINISH_REASON_STOP
    keys = [ev.idempotency_key for _, ev in llm_events(r.recorder)]
    # Two provider calls, two keys: billing counts both (the turn id stays for attribution).
    assert len(keys) == 2 and len(set(keys)) == 2
    assert all(k.startswith("router-svc:llm:t-reused:") for k in keys)


async def test_a_long_turn_id_still_gives_a_key_billing_accepts(
    make_router: MakeRouter, emulator: httpx.AsyncClient,
) -> None:
    r = await make_router()
    await r.turn(chat(user("hi"), turn_id="t" * 128, session_id="s" * 128))
    [(_, ev)] = llm_events(r.recorder)
    assert len(ev.idempotency_key) <= 200 and re.fullmatch(r"[!-~]+", ev.idempotency_key)
    assert ev.session_id == "s" * 128


@pytest.mark.parametrize("tier, model", [
    (router_pb2.TIER_SIMPLE, "gemini-2.5-flash-lite"),
    (router_pb2.TIER_PREMIUM, "claude-sonnet-4-6"),
])
async def test_a_turn_the_caller_cancels_mid_answer_is_billed(
    make_router: MakeRouter, emulator: httpx.AsyncClient, tier: int, model: str,
) -> None:
    r = await make_router()
    await set_fault(emulator, model=model, stall_after_tokens=3, stall_s=30)
    call = r.stub.StreamChat(chat(user("explain how a bicycle stays upright"), tier=tier),
                             metadata=md("acme"), timeout=10)
    async for ev in call:
        if ev.WhichOneof("event") == "text_delta":
            break
    call.cancel()
    await wait_for(lambda: bool(llm_events(r.recorder)), timeout=5)
    [(tenant, ev)] = llm_events(r.recorder)
    assert tenant == "acme" and ev.llm.model_id == model
    # The provider charges the input and the output generated so far: both are billed.
    assert ev.llm.input_tokens > 0 and ev.llm.output_tokens > 0
    await asyncio.sleep(0.1)
    assert len(llm_events(r.recorder)) == 1


async def test_list_models_shows_catalog_and_the_tenants_chains(
    make_router: MakeRouter, emulator: httpx.AsyncClient,
) -> None:
    r = await make_router()
    resp = await r.stub.ListModels(router_pb2.ListModelsRequest(), metadata=md("anthro"))
    ids = {m.model_id: m for m in resp.models}
    assert resp.catalog_version
    assert ids["claude-sonnet-4-5"].retires_on == "2026-11-30"
    assert ids["claude-sonnet-4-5"].successor == "claude-sonnet-4-6"
    assert ids["claude-sonnet-4-6"].input_usd_per_mtok == 3.0
    assert "voyage-3.5" not in ids
    chains = {t.tier: list(t.model_ids) for t in resp.tiers}
    assert chains[router_pb2.TIER_SIMPLE][0] == "gemini-2.5-flash-lite"  # chains, before filters


async def test_allowed_providers_are_enforced(make_router: MakeRouter,
                                              emulator: httpx.AsyncClient) -> None:
    r = await make_router()
    res = await r.turn(chat(user("hi there")), tenant="anthro")
    assert res.route.provider == "anthropic"
    assert (await model_stats(emulator, "gemini-2.5-flash-lite")) == {}


async def test_cost_cap_and_max_tier_downgrade_with_reason(make_router: MakeRouter,
                                                           emulator: httpx.AsyncClient) -> None:
    r = await make_router()
    res = await r.turn(chat(user("prove that there are infinitely many prime numbers")),
                       tenant="cheap")
    assert res.route.tier == router_pb2.TIER_STANDARD
    assert "capped at standard" in res.route.reason
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await r.turn(chat(user("x " * 20_000), max_output_tokens=60_000), tenant="cheap")
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "cost" in (err.value.details() or "")


async def test_rate_limit_exhaustion_is_resource_exhausted_with_retry_time(
    make_router: MakeRouter, emulator: httpx.AsyncClient,
) -> None:
    r = await make_router()
    turn = chat(user("hi there"), tier=router_pb2.TIER_SIMPLE)
    providers = []
    for _ in range(6):  # 3 per provider: Gemini first, then the Anthropic fallback
        res = await r.turn(turn, tenant="limited")
        providers.append(res.route.provider)
    assert providers == ["google"] * 3 + ["anthropic"] * 3
    assert "rate limit" in res.route.reason
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await r.turn(turn, tenant="limited")
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    trailers = dict(err.value.trailing_metadata() or ())
    assert 0 < float(trailers[RETRY_AFTER_TRAILER]) <= 20.0
    # The refused turn reached neither provider (Anthropic's request is prepared while the
    # admission is decided, and held back when refused).
    assert (await model_stats(emulator, "claude-haiku-4-5"))["requests"] == 3
    assert (await model_stats(emulator, "gemini-2.5-flash-lite"))["requests"] == 3
    # Another tenant is unaffected.
    assert (await r.turn(turn, tenant="acme")).completion.finish_reason
