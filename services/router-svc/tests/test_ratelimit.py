"""Tenant rate limits on a real Redis: exact across processes, isolated per tenant, corrected
after the response, and a configured, non-hanging behaviour when Redis is down."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from parley_router.policy import PlanLimits
from parley_router.ratelimit import (
    LocalTokenBuckets,
    RedisTokenBuckets,
    TenantRateLimiter,
    make_redis,
)
from parley_router.store import PremiumShareGate
from parley_runtime.errors import Unavailable
from parley_runtime.testing import free_port

pytestmark = pytest.mark.integration

WORKER = Path(__file__).with_name("hammer_worker.py")


def hammer(redis_url: str, tenant: str, *, procs: int, requests: int, rpm: float, tpm: float,
           tokens: int) -> list[dict[str, float]]:
    """Run `procs` worker processes; all start hammering together once all are connected."""
    children = [
        subprocess.Popen(
            [sys.executable, str(WORKER), redis_url, tenant, str(requests), "16",
             str(rpm), str(tpm), str(tokens)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for _ in range(procs)
    ]
    try:
        for child in children:
            assert child.stdout is not None
            line = child.stdout.readline()
            assert line.strip() == "ready", line + (child.stderr.read() if child.stderr else "")
        for child in children:
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        results = []
        for child in children:
            out, err = child.communicate(timeout=60)
            assert child.returncode == 0, err
            results.append(json.loads(out.strip().splitlines()[-1]))
        return results
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()


async def test_four_processes_admit_exactly_the_limit(redis_url: str,
                                                      redis_client: aioredis.Redis) -> None:
    rpm = 12  # refills one request every 5 s: the burst below ends well before that
    results = hammer(redis_url, "acme", procs=4, requests=250, rpm=rpm, tpm=1e9, tokens=10)
    admitted = sum(r["admitted"] for r in results)
    elapsed = max(r["last"] for r in results) - min(r["first"] for r in results)
    assert sum(r["admitted"] + r["denied"] for r in results) == 1000
    # Exactly the burst capacity, plus whatever refilled while the burst lasted (nothing while
    # it lasts under 5 s, which it does by a wide margin even on a loaded machine).
    assert admitted == rpm + int(elapsed * rpm / 60), (admitted, elapsed)
    # The processes really ran at the same time.
    assert max(r["first"] for r in results) < min(r["last"] for r in results)
    # Another tenant is unaffected.
    other = RedisTokenBuckets(make_redis(redis_url, timeout_s=2.0), op_timeout_s=2.0)
    limits = PlanLimits(requests_per_minute=rpm, tokens_per_minute=1e9)
    grants = [await other.acquire("globex", "anthropic", limits, 10) for _ in range(rpm + 1)]
    assert [g.allowed for g in grants].count(True) == rpm
    assert 0 < grants[-1].retry_after_s <= 60 / rpm  # the denial says when to come back


async def test_token_budget_is_exact_under_concurrency(redis_url: str,
                                                       redis_client: aioredis.Redis) -> None:
    # 10k tokens per minute, 100 tokens per call: exactly 100 calls fit the burst.
    results = hammer(redis_url, "acme", procs=4, requests=100, rpm=1e6, tpm=10_000, tokens=100)
    admitted = sum(r["admitted"] for r in results)
    elapsed = max(r["last"] for r in results) - min(r["first"] for r in results)
    assert admitted == 100 + int(elapsed * 10_000 / 60 / 100), (admitted, elapsed)
    assert sum(1 for r in results if r["admitted"] > 0) >= 2  # several replicas won some


async def test_corrections_give_back_and_take_tokens(redis_url: str,
                                                     redis_client: aioredis.Redis) -> None:
    buckets = RedisTokenBuckets(make_redis(redis_url, timeout_s=2.0), op_timeout_s=2.0)
    limits = PlanLimits(requests_per_minute=1000, tokens_per_minute=1000)
    assert (await buckets.acquire("acme", "google", limits, 900)).allowed
    assert not (await buckets.acquire("acme", "google", limits, 900)).allowed
    await buckets.correct("acme", "google", limits, -800)  # the call used 100, not 900
    assert (await buckets.acquire("acme", "google", limits, 800)).allowed
    await buckets.correct("acme", "google", limits, +500)  # and this one used more
    a = await buckets.acquire("acme", "google", limits, 100)
    assert not a.allowed and a.retry_after_s > 20


async def test_turn_larger_than_the_plan_is_refused_with_a_reason(
    redis_url: str, redis_client: aioredis.Redis,
) -> None:
    buckets = RedisTokenBuckets(make_redis(redis_url, timeout_s=2.0), op_timeout_s=2.0)
    a = await buckets.acquire("acme", "google", PlanLimits(requests_per_minute=10,
                                                           tokens_per_minute=100), 500)
    assert not a.allowed and "more than the plan allows" in a.reason


async def test_redis_down_fails_open_on_a_local_limiter_without_hanging() -> None:
    dead = make_redis(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.1)
    fallbacks: list[str] = []
    limiter = TenantRateLimiter(RedisTokenBuckets(dead, op_timeout_s=0.1), fail_mode="open",
                                local=LocalTokenBuckets(divisor=2), on_fallback=fallbacks.append)
    limits = PlanLimits(requests_per_minute=10, tokens_per_minute=1e6)
    start = time.perf_counter()
    grants = [await limiter.acquire("acme", "google", limits, 1) for _ in range(8)]
    # Bounded by one short timeout, then Redis is left alone for a second: no hang.
    assert time.perf_counter() - start < 2.0
    # The local limiter allows limit / expected replicas (10 / 2) per replica.
    assert [g.allowed for g in grants].count(True) == 5
    assert fallbacks and not limiter.redis_healthy
    await dead.aclose()


async def test_redis_down_fails_closed_when_configured() -> None:
    dead = make_redis(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.1)
    limiter = TenantRateLimiter(RedisTokenBuckets(dead, op_timeout_s=0.1), fail_mode="closed")
    start = time.perf_counter()
    for _ in range(3):
        with pytest.raises(Unavailable, match="fail closed"):
            await limiter.acquire("acme", "google", PlanLimits(requests_per_minute=10,
                                                               tokens_per_minute=1e6), 1)
    assert time.perf_counter() - start < 2.0
    await dead.aclose()


async def test_premium_share_is_capped_across_replicas(redis_url: str,
                                                       redis_client: aioredis.Redis) -> None:
    # Generous timeouts: this checks the arithmetic, not the loaded machine's latency.
    replicas = [PremiumShareGate(make_redis(redis_url, timeout_s=2.0), op_timeout_s=2.0)
                for _ in range(3)]

    async def turn(i: int) -> bool:
        return await replicas[i % 3].admit("acme", 0.2, wants_premium=True)

    results = await asyncio.gather(*(turn(i) for i in range(100)))
    assert sum(results) == 20  # (premium + 1) <= 0.2 * (total + 1) over 100 turns
    # Dry runs (ClassifyTurn) neither count nor change the window.
    assert not await replicas[0].admit("acme", 0.2, wants_premium=True, dry_run=True)
    assert await replicas[0].admit("globex", 0.2, wants_premium=False) is False


async def test_corrections_ride_on_the_next_acquire_or_are_flushed(
    redis_url: str, redis_client: aioredis.Redis,
) -> None:
    shared = RedisTokenBuckets(make_redis(redis_url, timeout_s=2.0), op_timeout_s=2.0)
    limiter = TenantRateLimiter(shared, flush_interval_s=0.1)
    limits = PlanLimits(requests_per_minute=1000, tokens_per_minute=1000)
    assert (await limiter.acquire("acme", "google", limits, 900)).allowed
    limiter.correct("acme", "google", limits, -800)  # used 100 of the 900 reserved
    # Applied inside the next acquire (no extra round trip): 900 are free again.
    assert (await limiter.acquire("acme", "google", limits, 850)).allowed
    limiter.correct("acme", "google", limits, -850)
    # With no further acquire, the background flush applies it.
    await asyncio.sleep(0.4)
    level = float(await redis_client.hget("parley:rl:{acme:google}:tok", "tk"))
    assert level > 800
    await limiter.aclose()


async def test_a_denied_acquire_still_applies_the_correction(
    redis_url: str, redis_client: aioredis.Redis,
) -> None:
    shared = RedisTokenBuckets(make_redis(redis_url, timeout_s=2.0), op_timeout_s=2.0)
    limits = PlanLimits(requests_per_minute=1000, tokens_per_minute=1000)
    assert (await shared.acquire("acme", "google", limits, 1000)).allowed
    denied = await shared.acquire("acme", "google", limits, 600, correction=-500)
    assert not denied.allowed
    assert (await shared.acquire("acme", "google", limits, 450)).allowed
