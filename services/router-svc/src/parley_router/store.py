"""Redis-backed state shared by replicas: the premium-share window and Gemini cache names.

Both degrade to per-replica memory when Redis is unreachable (logged, never a hang): a cost
cap and a cache pointer are worth less than the turn.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable

import redis.asyncio as aioredis
from redis.exceptions import RedisError

logger = logging.getLogger(__name__)

__all__ = ["PremiumShareGate", "RedisCachedContentRegistry"]

# KEYS[1]: the tenant's window hash (fields t:<minute> and p:<minute>).
# ARGV: window minutes, cap (0..1), wants premium (0/1), dry run (0/1).
# A premium turn is admitted while (premium + 1) <= cap * (total + 1) over the window.
# Returns {premium admitted 0/1, total turns, premium turns} (including this turn unless dry).
PREMIUM_LUA = """
local t = redis.call('TIME')
local m = math.floor(tonumber(t[1]) / 60)
local w = tonumber(ARGV[1])
local cap = tonumber(ARGV[2])
local want = ARGV[3] == '1'
local dry = ARGV[4] == '1'
local total = 0
local prem = 0
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local f = all[i]
  local mm = tonumber(string.sub(f, 3))
  if mm == nil or mm <= m - w then
    redis.call('HDEL', KEYS[1], f)
  elseif string.sub(f, 1, 1) == 't' then
    total = total + tonumber(all[i + 1])
  else
    prem = prem + tonumber(all[i + 1])
  end
end
local ok = 0
if want and (prem + 1) <= cap * (total + 1) + 1e-9 then ok = 1 end
if not dry then
  redis.call('HINCRBY', KEYS[1], 't:' .. m, 1)
  if ok == 1 then redis.call('HINCRBY', KEYS[1], 'p:' .. m, 1) end
  redis.call('EXPIRE', KEYS[1], w * 60 + 120)
  total = total + 1
  prem = prem + ok
end
return {ok, total, prem}
"""


class _LocalWindow:
    def __init__(self) -> None:
        self.minutes: dict[int, list[int]] = {}


class PremiumShareGate:
    """Caps each tenant's share of premium turns over a rolling window, across replicas."""

    def __init__(
        self,
        client: aioredis.Redis | None,
        *,
        window_minutes: int = 60,
        op_timeout_s: float = 0.25,
        redis_retry_s: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self._script = client.register_script(PREMIUM_LUA) if client is not None else None
        self._window = window_minutes
        self._timeout = op_timeout_s
        self._retry_s = redis_retry_s
        self._clock = clock
        self._down_until = 0.0
        self._local: dict[str, _LocalWindow] = {}

    async def admit(self, tenant: str, cap: float, *, wants_premium: bool,
                    dry_run: bool = False) -> bool:
        """Count this turn; True when it may be premium under the cap."""
        if self._script is not None and time.monotonic() >= self._down_until:
            try:
                async with asyncio.timeout(self._timeout):
                    ok, _total, _prem = await self._script(
                        keys=[f"parley:premium:{{{tenant}}}"],
                        args=[self._window, cap, int(wants_premium), int(dry_run)],
                    )
                return int(ok) == 1
            except (RedisError, OSError, TimeoutError) as exc:
                logger.warning("premium-share window unavailable; counting locally",
                               extra={"error": f"{type(exc).__name__}: {exc}"})
                self._down_until = time.monotonic() + self._retry_s
        return self._admit_local(tenant, cap, wants_premium, dry_run)

    def _admit_local(self, tenant: str, cap: float, wants: bool, dry: bool) -> bool:
        win = self._local.setdefault(tenant, _LocalWindow())
        minute = math.floor(self._clock() / 60)
        for m in [m for m in win.minutes if m <= minute - self._window]:
            del win.minutes[m]
        total = sum(v[0] for v in win.minutes.values())
        prem = sum(v[1] for v in win.minutes.values())
        ok = wants and (prem + 1) <= cap * (total + 1) + 1e-9
        if not dry:
            slot = win.minutes.setdefault(minute, [0, 0])
            slot[0] += 1
            slot[1] += int(ok)
        return ok


class RedisCachedContentRegistry:
    """tenant+model+prefix hash -> Gemini cachedContents name, with a TTL, shared by replicas."""

    def __init__(
        self, client: aioredis.Redis | None, *, op_timeout_s: float = 0.25,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._timeout = op_timeout_s
        self._clock = clock
        self._local: dict[str, tuple[str, float]] = {}

    @staticmethod
    def _key(key: str) -> str:
        tenant = key.split(":", 1)[0]
        return f"parley:gcache:{{{tenant}}}:{key}"

    async def get(self, key: str) -> str | None:
        if self._client is not None:
            try:
                async with asyncio.timeout(self._timeout):
                    value = await self._client.get(self._key(key))
                return value.decode() if isinstance(value, bytes) else value
            except (RedisError, OSError, TimeoutError):
                pass
        item = self._local.get(key)
        if item is None or item[1] < self._clock():
            return None
        return item[0]

    async def put(self, key: str, name: str, ttl_s: float) -> None:
        self._local[key] = (name, self._clock() + ttl_s)
        if len(self._local) > 10_000:
            self._local.pop(next(iter(self._local)))
        if self._client is not None:
            try:
                async with asyncio.timeout(self._timeout):
                    await self._client.set(self._key(key), name, px=int(ttl_s * 1000))
            except (RedisError, OSError, TimeoutError) as exc:
                logger.warning("cannot share a Gemini cache name", extra={"error": str(exc)})

    async def delete(self, key: str) -> None:
        self._local.pop(key, None)
        if self._client is not None:
            try:
                async with asyncio.timeout(self._timeout):
                    await self._client.delete(self._key(key))
            except (RedisError, OSError, TimeoutError):
                pass
