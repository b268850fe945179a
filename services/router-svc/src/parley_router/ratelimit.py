"""Per tenant and provider rate limits (requests/min and tokens/min), shared by every replica.

One Lua script checks and debits both token buckets of a (tenant, provider) atomically in one
round trip, with Redis's own clock, so concurrent replicas can never over-admit: a bucket is
admitted only if *both* have room, and nothing is written otherwise. Token use is reserved
from an estimate before the call and corrected after the response by a second script.

When Redis is unreachable the limiter never hangs (short socket timeouts plus an overall
timeout per call, and a short back-off before Redis is tried again) and does what it was
configured to do: fail open onto an in-process limiter (the limits divided by the expected
replica count), or fail closed (UNAVAILABLE).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import redis.asyncio as aioredis
from parley_runtime.errors import Unavailable
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from .failover import Admission
from .policy import PlanLimits
from .redis_pipe import PipelinedRedis

logger = logging.getLogger(__name__)

__all__ = [
    "FailMode",
    "LocalTokenBuckets",
    "RedisTokenBuckets",
    "TenantRateLimiter",
    "make_redis",
]

FailMode = Literal["open", "closed"]

# KEYS: bucket keys. ARGV: per bucket (capacity, refill per second, cost, correction).
# `correction` is usage reported since the last call (positive: more than was reserved;
# negative: give back); it is applied first, whatever the verdict, so it is never lost.
# Returns {1, 0} when admitted (every bucket debited) or {0, wait_s} when denied (only the
# corrections written); wait_s is -1 when a cost exceeds a bucket's capacity (never passes).
ACQUIRE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local n = #KEYS
local levels = {}
local wait = 0
for i = 1, n do
  local cap = tonumber(ARGV[4 * i - 3])
  local rate = tonumber(ARGV[4 * i - 2])
  local cost = tonumber(ARGV[4 * i - 1])
  local fix = tonumber(ARGV[4 * i])
  local v = redis.call('HMGET', KEYS[i], 'tk', 'ts')
  local tokens = tonumber(v[1])
  local ts = tonumber(v[2])
  if tokens == nil or ts == nil then
    tokens = cap
    ts = now
  end
  if now > ts then
    tokens = math.min(cap, tokens + (now - ts) * rate)
  end
  if fix ~= 0 then
    tokens = math.max(-cap, math.min(cap, tokens - fix))
  end
  levels[i] = tokens
  if cost > cap then
    wait = -1
  elseif cost > tokens and wait >= 0 then
    local w = (cost - tokens) / rate
    if w > wait then wait = w end
  end
end
local admitted = wait == 0
for i = 1, n do
  local cap = tonumber(ARGV[4 * i - 3])
  local rate = tonumber(ARGV[4 * i - 2])
  local level = levels[i]
  if admitted then level = level - tonumber(ARGV[4 * i - 1]) end
  if admitted or tonumber(ARGV[4 * i]) ~= 0 then
    redis.call('HSET', KEYS[i], 'tk', tostring(level), 'ts', tostring(now))
    redis.call('PEXPIRE', KEYS[i], math.ceil(cap / rate * 1000) + 60000)
  end
end
if admitted then
  return {1, '0'}
end
return {0, tostring(wait)}
"""

# KEYS[1]: token bucket. ARGV: capacity, refill per second, delta (positive: used more than
# reserved; negative: give back). The level may go negative (a debt repaid by refill) but
# never below -capacity.
CORRECT_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local cap = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local delta = tonumber(ARGV[3])
local v = redis.call('HMGET', KEYS[1], 'tk', 'ts')
local tokens = tonumber(v[1])
local ts = tonumber(v[2])
if tokens == nil or ts == nil then
  tokens = cap
  ts = now
end
if now > ts then
  tokens = math.min(cap, tokens + (now - ts) * rate)
end
tokens = math.max(-cap, math.min(cap, tokens - delta))
redis.call('HSET', KEYS[1], 'tk', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(cap / rate * 1000) + 60000)
return tostring(tokens)
"""


def make_redis(url: str, *, timeout_s: float = 0.25, max_connections: int = 64) -> aioredis.Redis:
    """A client that fails fast: short timeouts, no retries (callers decide what to do).

    A bounded, blocking pool: a burst of turns shares a few warm connections instead of
    opening one each (a connect storm is what makes loaded replicas miss short timeouts).

    No socket_timeout: every caller bounds each whole operation with `asyncio.timeout`
    (connect, pool wait, write and read), and redis-py implements a socket timeout on writes
    with `asyncio.wait_for`, i.e. a new task per command whose write only happens on the next
    loop turn (the rate-limit request would leave after, not during, the call's preparation).
    """
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout_s,
        socket_timeout=None,  # explicitly: redis-py's default is 5 s
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
        driver_info=None,  # no CLIENT SETINFO round trips on connect
    )
    return aioredis.Redis(connection_pool=pool)


def _keys(tenant: str, provider: str) -> list[str]:
    # One hash tag per (tenant, provider): both buckets live in one cluster slot.
    tag = "{" + tenant + ":" + provider + "}"
    return [f"parley:rl:{tag}:req", f"parley:rl:{tag}:tok"]


def _denied(wait: float, tokens: int, limits: PlanLimits) -> Admission:
    if wait < 0:
        return Admission(
            False, 60.0,
            f"turn needs ~{tokens} tokens, more than the plan allows per minute "
            f"({limits.tokens_per_minute:.0f})",
        )
    return Admission(False, wait, f"tenant rate limit, retry in {wait:.2f}s")


_ACQUIRE_SHA = hashlib.sha1(ACQUIRE_LUA.encode()).hexdigest()
_CORRECT_SHA = hashlib.sha1(CORRECT_LUA.encode()).hexdigest()


class RedisTokenBuckets:
    """The shared limiter (raises RedisError/TimeoutError when Redis misbehaves).

    With `pipe` (a PipelinedRedis to the same server) the scripts go over its single
    pipelined connection: the request is written at once, with a fraction of redis-py's
    per-call CPU. Without it, through the redis-py client.
    """

    def __init__(self, client: aioredis.Redis | None, *, op_timeout_s: float = 0.25,
                 pipe: PipelinedRedis | None = None) -> None:
        if client is None and pipe is None:
            raise ValueError("RedisTokenBuckets needs a redis-py client or a PipelinedRedis")
        self._client = client
        self._pipe = pipe
        if pipe is None:
            assert client is not None
            self._acquire = client.register_script(ACQUIRE_LUA)
            self._correct = client.register_script(CORRECT_LUA)
        self._timeout = op_timeout_s

    async def acquire(
        self, tenant: str, provider: str, limits: PlanLimits, tokens: int, correction: int = 0
    ) -> Admission:
        rpm, tpm = limits.requests_per_minute, limits.tokens_per_minute
        args = [rpm, rpm / 60.0, 1, 0, tpm, tpm / 60.0, max(0, tokens), correction]
        if self._pipe is not None:
            reply = await self._pipe.evalsha(_ACQUIRE_SHA, ACQUIRE_LUA, _keys(tenant, provider),
                                             args, timeout_s=self._timeout)
            if not isinstance(reply, list) or len(reply) != 2:
                raise RedisError(f"unexpected reply from the rate-limit script: {reply!r}")
            ok, wait = reply
        else:
            async with asyncio.timeout(self._timeout):
                ok, wait = await self._acquire(keys=_keys(tenant, provider), args=args)
        if int(ok) == 1:
            return Admission(True)
        return _denied(float(wait), tokens, limits)

    async def correct(
        self, tenant: str, provider: str, limits: PlanLimits, delta_tokens: int
    ) -> None:
        if not delta_tokens:
            return
        tpm = limits.tokens_per_minute
        keys, args = _keys(tenant, provider)[1:], [tpm, tpm / 60.0, delta_tokens]
        if self._pipe is not None:
            await self._pipe.evalsha(_CORRECT_SHA, CORRECT_LUA, keys, args,
                                     timeout_s=self._timeout)
            return
        async with asyncio.timeout(self._timeout):
            await self._correct(keys=keys, args=args)

    async def aclose(self) -> None:
        if self._pipe is not None:
            await self._pipe.aclose()


@dataclass(slots=True)
class _Bucket:
    tokens: float
    ts: float


class LocalTokenBuckets:
    """The same buckets in process memory (fail-open fallback; per replica only)."""

    def __init__(self, *, divisor: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._divisor = max(1.0, divisor)
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def _level(self, key: str, cap: float, rate: float, now: float) -> _Bucket:
        b = self._buckets.get(key)
        if b is None:
            b = _Bucket(cap, now)
            self._buckets[key] = b
        if now > b.ts:
            b.tokens = min(cap, b.tokens + (now - b.ts) * rate)
            b.ts = now
        return b

    async def acquire(
        self, tenant: str, provider: str, limits: PlanLimits, tokens: int, correction: int = 0
    ) -> Admission:
        if correction:
            await self.correct(tenant, provider, limits, correction)
        now = self._clock()
        rpm = limits.requests_per_minute / self._divisor
        tpm = limits.tokens_per_minute / self._divisor
        kreq, ktok = _keys(tenant, provider)
        breq = self._level(kreq, rpm, rpm / 60.0, now)
        btok = self._level(ktok, tpm, tpm / 60.0, now)
        if tokens > tpm:
            return _denied(-1, tokens, limits)
        wait = 0.0
        if breq.tokens < 1:
            wait = max(wait, (1 - breq.tokens) / (rpm / 60.0))
        if btok.tokens < tokens:
            wait = max(wait, (tokens - btok.tokens) / (tpm / 60.0))
        if wait > 0:
            return _denied(wait, tokens, limits)
        breq.tokens -= 1
        btok.tokens -= tokens
        return Admission(True)

    async def correct(
        self, tenant: str, provider: str, limits: PlanLimits, delta_tokens: int
    ) -> None:
        tpm = limits.tokens_per_minute / self._divisor
        b = self._level(_keys(tenant, provider)[1], tpm, tpm / 60.0, self._clock())
        b.tokens = max(-tpm, min(tpm, b.tokens - delta_tokens))


class TenantRateLimiter:
    """Redis first; on Redis trouble, the configured fail mode, without ever hanging.

    Corrections (real token use minus the reservation) are not a round trip of their own:
    they are kept per (tenant, provider) and applied by the next acquire of that pair, inside
    the same script call; pairs that go quiet are flushed every `flush_interval_s`.
    """

    def __init__(
        self,
        shared: RedisTokenBuckets | None,
        *,
        fail_mode: FailMode = "open",
        local: LocalTokenBuckets | None = None,
        redis_retry_s: float = 1.0,
        flush_interval_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        on_fallback: Callable[[str], None] | None = None,
    ) -> None:
        self._shared = shared
        self._fail_mode = fail_mode
        self._local = local or LocalTokenBuckets()
        self._retry_s = redis_retry_s
        self._flush_interval = flush_interval_s
        self._clock = clock
        self._down_until = 0.0
        self._on_fallback = on_fallback
        self._pending: dict[tuple[str, str], tuple[PlanLimits, int]] = {}
        self._flusher: asyncio.Task[None] | None = None

    @property
    def redis_healthy(self) -> bool:
        return self._shared is not None and self._clock() >= self._down_until

    def _redis_failed(self, exc: BaseException) -> None:
        if self._clock() >= self._down_until:
            logger.warning(
                "rate limiter cannot reach Redis",
                extra={"error": f"{type(exc).__name__}: {exc}", "fail_mode": self._fail_mode},
            )
        self._down_until = self._clock() + self._retry_s

    def _fallback(self) -> None:
        if self._on_fallback is not None:
            self._on_fallback(self._fail_mode)
        if self._fail_mode == "closed":
            raise Unavailable(
                "rate limiter unavailable (Redis unreachable) and configured to fail closed",
                retry_after_s=self._retry_s,
            )

    async def acquire(
        self, tenant: str, provider: str, limits: PlanLimits, tokens: int
    ) -> Admission:
        key = (tenant, provider)
        pending = self._pending.pop(key, None)
        fix = pending[1] if pending is not None else 0
        if self._shared is not None and self._clock() >= self._down_until:
            try:
                return await self._shared.acquire(tenant, provider, limits, tokens, fix)
            except (RedisError, OSError, TimeoutError) as exc:
                self._redis_failed(exc)
                if fix:
                    self._add_pending(key, limits, fix)  # not applied: keep it
                    fix = 0
        self._fallback()
        return await self._local.acquire(tenant, provider, limits, tokens, fix)

    def correct(self, tenant: str, provider: str, limits: PlanLimits, delta_tokens: int) -> None:
        """Record that a call used `delta_tokens` more (or fewer) than it reserved."""
        if not delta_tokens:
            return
        self._add_pending((tenant, provider), limits, delta_tokens)
        if self._flusher is None or self._flusher.done():
            try:
                self._flusher = asyncio.get_running_loop().create_task(self._flush_loop())
            except RuntimeError:  # no loop (synchronous tests): flushed by aclose()
                self._flusher = None

    def _add_pending(self, key: tuple[str, str], limits: PlanLimits, delta: int) -> None:
        old = self._pending.get(key)
        self._pending[key] = (limits, delta + (old[1] if old is not None else 0))

    async def _flush_loop(self) -> None:
        while self._pending:
            await asyncio.sleep(self._flush_interval)
            await self.flush()

    async def flush(self) -> None:
        """Apply every pending correction now."""
        pending, self._pending = self._pending, {}
        for (tenant, provider), (limits, delta) in pending.items():
            if self._shared is not None and self._clock() >= self._down_until:
                try:
                    await self._shared.correct(tenant, provider, limits, delta)
                    continue
                except (RedisError, OSError, TimeoutError) as exc:
                    self._redis_failed(exc)
            await self._local.correct(tenant, provider, limits, delta)

    async def aclose(self) -> None:
        if self._flusher is not None and not self._flusher.done():
            self._flusher.cancel()
            try:
                await self._flusher
            except asyncio.CancelledError:
                pass
        await self.flush()
        if self._shared is not None:
            await self._shared.aclose()
