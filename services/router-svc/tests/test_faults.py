"""Faults injected by the emulator: flaky and dead primaries, 429 storms, stalls, cut streams,
in-stream errors and deadlines. Every assertion is about what a caller sees."""

from __future__ import annotations

import asyncio
import statistics
import time

import grpc
import httpx
import pytest
from parley.router.v1 import router_pb2
from parley_router.testing import (
    MakeRouter,
    RouterUnderTest,
    chat,
    md,
    model_stats,
    set_fault,
    user,
)
from parley_runtime.errors import RETRY_AFTER_TRAILER

pytestmark = pytest.mark.integration

SIMPLE = router_pb2.TIER_SIMPLE
PRIMARY, FALLBACK = "gemini-2.5-flash-lite", "claude-haiku-4-5"


def simple_turn(text: str = "what time is it in Tokyo") -> router_pb2.StreamChatRequest:
    return chat(user(text), tier=SIMPLE)


async def test_every_turn_is_answered_with_30_percent_primary_failures(
    make_router: MakeRouter, emulator: httpx.AsyncClient,
) -> None:
    r = await make_router()
    await set_fault(emulator, model=PRIMARY, error_rate=0.3, error_status=529, seed=7)
    results = await asyncio.gather(*(r.turn(simple_turn()) for _ in range(40)))
    assert all(res.completion.finish_reason == router_pb2.FINISH_REASON_STOP for res in results)
    assert all(res.text for res in results)
    fallbacks = sum(1 for res in results if res.completion.fallback_used)
    stats = await model_stats(emulator, PRIMARY)
    assert stats["errors_injected"] > 0
    assert fallbacks >= stats["errors_injected"] - 1 >= 0
    assert sum(1 for res in results if res.route.model_id == PRIMARY) > 0


async def test_dead_primary_is_skipped_once_its_breaker_opens(
    make_router: MakeRouter, emulator: httpx.AsyncClient,
) -> None:
    r = await make_router(breaker_min_calls=3, breaker_open_s=60)
    # 500s carry no Retry-After, so the breaker (not a cool-down) is what stops the calls.
    # The fallback's own speed, measured directly (pinned), is the baseline.
    direct = [(await r.turn(chat(user("hello"), hints=router_pb2.RoutingHints(
        model_id=FALLBACK)))).completion.time_to_first_token_ms for _ in range(8)]
    await set_fault(emulator, model=PRIMARY, error_rate=1.0, error_status=500)
    for _ in range(3):  # these open the breaker, each answered by the fallback
        res = await r.turn(simple_turn())
        assert res.route.model_id == FALLBACK and res.completion.attempts == 2
    calls_when_open = (await model_stats(emulator, PRIMARY))["requests"]
    assert calls_when_open == 3
    after = []
    for _ in range(12):
        res = await r.turn(simple_turn())
        assert res.route.model_id == FALLBACK
        assert res.completion.attempts == 1 and res.completion.fallback_used
        assert "circuit open" in res.route.reason
        after.append(res.completion.time_to_first_token_ms)
    # The dead primary is not re-called per turn ...
    assert (await model_stats(emulator, PRIMARY))["requests"] == calls_when_open
    # ... and skipping it adds no delay over calling the fallback directly.
    assert statistics.median(after) <= statistics.median(direct) * 2 + 20.0, (after, direct)


async def test_half_open_probe_is_one_real_turn_not_a_resent_request(
    make_router: MakeRouter, emulator: httpx.AsyncClient,
) -> None:
    r = await make_router(breaker_min_calls=2, breaker_open_s=0.3)
    await set_fault(emulator, model=PRIMARY, error_rate=1.0, error_status=500)
    for _ in range(2):
        await r.turn(simple_turn())
    assert (await model_stats(emulator, PRIMARY))["requests"] == 2
    await asyncio.sleep(0.35)
    # Still dead: exactly one turn probes it (and is answered by the fallback).
    results = [await r.turn(simple_turn()) for _ in range(5)]
    assert (await model_stats(emulator, PRIMARY))["requests"] == 3
    assert [res.completion.attempts for res in results] == [2, 1, 1, 1, 1]
    assert all(res.route.model_id == FALLBACK for res in results)
    # Recovered: after the (doubled) open period one probe succeeds and traffic returns.
    await emulator.delete("/admin/faults")
    await asyncio.sleep(0.65)
    res = await r.turn(simple_turn())
    assert res.route.model_id == PRIMARY and not res.completion.fallback_used
    assert (await r.turn(simple_turn())).route.model_id == PRIMARY
    # Usage was only recorded for calls that consumed tokens; one event per answered call.
    keys = [ev.idempotency_key for _, ev in r.recorder.events]
    assert len(keys) == len(set(keys))


async def test_429_storm_with_long_retry_after_fails_fast_with_retry_time(
    make_router: MakeRouter, emulator: httpx.AsyncClient,
) -> None:
    r = await make_router()
    await set_fault(emulator, model="*", error_rate=1.0, error_status=429, retry_after_s=30)
    start = time.perf_counter()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await r.turn(simple_turn(), timeout=5.0)
    elapsed = time.perf_counter() - start
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert elapsed < 4.0  # well inside the 5 s deadline: nobody waits out a 30 s Retry-After
    retry = float(dict(err.value.trailing_metadata() or ())[RETRY_AFTER_TRAILER])
    assert 20 <= retry <= 30
    # Retry-After is respected: the next turn does not call the providers again.
    before = (await emulator.get("/admin/stats")).json()["totals"]["requests"]
    with pytest.raises(grpc.aio.AioRpcError):
        await r.turn(simple_turn(), timeout=5.0)
    assert (await emulator.get("/admin/stats")).json()["totals"]["requests"] == before


async def test_429_on_the_primary_moves_turns_to_the_fallback_until_retry_after(
    make_router: MakeRouter, emulator: httpx.AsyncClient,
) -> None:
    r = await make_router()
    await set_fault(emulator, model=PRIMARY, error_rate=1.0, error_status=429, retry_after_s=60)
    for _ in range(5):
        res = await r.turn(simple_turn())
        assert res.route.model_id == FALLBACK
    assert (await model_stats(emulator, PRIMARY))["requests"] == 1


async def test_short_429_storm_is_ridden_out_inside_the_deadline(
    make_router: MakeRouter, emulator: httpx.AsyncClient,
) -> None:
    r = await make_router()
    await set_fault(emulator, model="*", error_rate=1.0, error_status=429, retry_after_s=0.4,
                    max_errors=2)
    start = time.perf_counter()
    res = await r.turn(simple_turn(), timeout=5.0)
    assert res.completion.finish_reason == router_pb2.FINISH_REASON_STOP
    assert 0.3 < time.perf_counter() - start < 3.0


async def test_stall_before_the_first_token_fails_over_within_the_deadline(
    make_router: MakeRouter, emulator: httpx.AsyncClient,
) -> None:
    r = await make_router(first_token_timeout_s=0.5)
    await set_fault(emulator, model=PRIMARY, stall_after_tokens=0, stall_s=30)
    start = time.perf_counter()
    res = await r.turn(simple_turn(), timeout=3.0)
    assert res.route.model_id == FALLBACK and res.text
    assert time.perf_counter() - start < 2.5
    assert "no first token" in res.route.reason
    # The primary's adapter does not report its request as sent: its route would have come
    # with its first token, which never came; one route, for the model that answered.
    assert res.events[0] == "route" and res.events.count("route") == 1


async def _timed_events(r: RouterUnderTest, request: router_pb2.StreamChatRequest,
                        ) -> list[tuple[str, str, float]]:
    start = time.perf_counter()
    seen: list[tuple[str, str, float]] = []
    async for ev in r.stub.StreamChat(request, metadata=md("acme"), timeout=3.0):
        kind = ev.WhichOneof("event")
        seen.append((kind, ev.route.model_id if kind == "route" else "",
                     time.perf_counter() - start))
    return seen


PREMIUM_FIRST, PREMIUM_FALLBACK = "claude-sonnet-4-6", "gemini-2.5-pro"


async def test_the_route_goes_out_while_the_model_thinks(
    make_router: MakeRouter, emulator: httpx.AsyncClient,
) -> None:
    r = await make_router()
    await set_fault(emulator, model=PREMIUM_FIRST, ttft_ms=400)
    seen = await _timed_events(r, chat(user("hello"), tier=router_pb2.TIER_PREMIUM))
    assert [k for k, _, _ in seen][:2] == ["route", "text_delta"] and seen[-1][0] == "completion"
    assert seen[0][1] == PREMIUM_FIRST
    assert seen[0][2] < 0.3 <= seen[1][2]  # the route came while the model was thinking


async def test_each_model_tried_gets_a_route_the_last_names_the_one_answering(
    make_router: MakeRouter, emulator: httpx.AsyncClient,
) -> None:
    r = await make_router(first_token_timeout_s=0.5)
    await set_fault(emulator, model=PREMIUM_FIRST, stall_after_tokens=0, stall_s=30)
    seen = await _timed_events(r, chat(user("hello"), tier=router_pb2.TIER_PREMIUM))
    routes = [(model, at) for kind, model, at in seen if kind == "route"]
    assert [model for model, _ in routes] == [PREMIUM_FIRST, PREMIUM_FALLBACK]
    assert routes[0][1] < 0.4  # long before the first model's first-token wait ran out
    assert routes[1][1] >= 0.5
    assert seen[2][0] == "text_delta" and seen[-1][0] == "completion"


async def test_stall_after_the_first_token_is_a_clear_error_within_the_deadline(
    make_router: MakeRouter, emulator: httpx.AsyncClient,
) -> None:
    r = await make_router(stall_timeout_s=0.5)
    await set_fault(emulator, model=PRIMARY, stall_after_tokens=2, stall_s=30)
    deltas: list[str] = []
    start = time.perf_counter()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for ev in r.stub.StreamChat(simple_turn("tell me something interesting"),
                                          metadata=md("acme"), timeout=5.0):
            if ev.WhichOneof("event") == "text_delta":
                deltas.append(ev.text_delta)
    assert deltas  # output had started
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "stalled" in (err.value.details() or "") and "incomplete" in err.value.details()
    assert time.perf_counter() - start < 4.0
    # Not re-sent to the fallback after output began.
    assert (await model_stats(emulator, FALLBACK)) == {}


@pytest.mark.parametrize("fault", ["cut_after_tokens", "stream_error_after_tokens"])
@pytest.mark.parametrize("tier, model", [(SIMPLE, PRIMARY),
                                          (router_pb2.TIER_PREMIUM, "claude-sonnet-4-6")])
async def test_stream_broken_after_the_first_token_is_never_silently_truncated(
    make_router: MakeRouter, emulator: httpx.AsyncClient, fault: str, tier: int, model: str,
) -> None:
    r = await make_router()
    await set_fault(emulator, model=model, **{fault: 3})
    deltas: list[str] = []
    completion = None
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for ev in r.stub.StreamChat(chat(user("tell me something interesting about the "
                                                    "deep ocean"), tier=tier),
                                          metadata=md("acme"), timeout=5.0):
            kind = ev.WhichOneof("event")
            if kind == "text_delta":
                deltas.append(ev.text_delta)
            elif kind == "completion":
                completion = ev.completion
    assert deltas and completion is None
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "incomplete" in (err.value.details() or "")
    assert model in err.value.details()


async def test_caller_deadline_is_honoured_end_to_end(make_router: MakeRouter,
                                                     emulator: httpx.AsyncClient) -> None:
    r = await make_router(first_token_timeout_s=10.0)
    await set_fault(emulator, model="*", ttft_ms=5000)
    start = time.perf_counter()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await r.turn(simple_turn(), timeout=1.0)
    elapsed = time.perf_counter() - start
    assert err.value.code() in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE)
    # Nobody waited the 5 s first token: the turn ended at the caller's 1 s deadline (the
    # router's own message when it beat the client's timer, grpc's otherwise).
    assert elapsed < 2.0


async def test_retryable_errors_are_retried_with_backoff_before_output(
    make_router: MakeRouter, emulator: httpx.AsyncClient,
) -> None:
    r = await make_router()
    await set_fault(emulator, model="*", error_rate=1.0, error_status=500, max_errors=2)
    res = await r.turn(simple_turn())
    assert res.completion.attempts == 3 and res.route.model_id == PRIMARY
    assert res.completion.fallback_used is False
