"""One 'replica' hammering the shared rate limiter (run as a separate process by the tests).

Usage: hammer_worker.py REDIS_URL TENANT REQUESTS CONCURRENCY RPM TPM TOKENS [TRANSPORT]
(TRANSPORT: "redis-py", the default, or "pipelined").
Prints "ready" once connected, waits for a line on stdin (the start signal: "go" and, optionally,
the wall-clock time to start at, so that every replica starts within a millisecond of the
others), then prints one JSON line: {"admitted": n, "denied": n, "first": t, "last": t}.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from parley_router.policy import PlanLimits
from parley_router.ratelimit import RedisTokenBuckets, make_redis
from parley_router.redis_pipe import PipelinedRedis


async def main() -> None:
    url, tenant = sys.argv[1], sys.argv[2]
    total, concurrency = int(sys.argv[3]), int(sys.argv[4])
    limits = PlanLimits(requests_per_minute=float(sys.argv[5]),
                        tokens_per_minute=float(sys.argv[6]))
    tokens = int(sys.argv[7])
    pipelined = len(sys.argv) > 8 and sys.argv[8] == "pipelined"
    client = make_redis(url, timeout_s=2.0)
    pipe = PipelinedRedis(url, connect_timeout_s=2.0) if pipelined else None
    buckets = RedisTokenBuckets(client, op_timeout_s=2.0, pipe=pipe)
    await client.ping()
    if pipe is not None:  # connected before the race, like the pool below
        await pipe.execute(b"*1\r\n$4\r\nPING\r\n", timeout_s=2.0)
    remaining = total
    admitted = denied = 0
    stamps: list[float] = []

    async def worker() -> None:
        nonlocal remaining, admitted, denied
        while remaining > 0:
            remaining -= 1
            a = await buckets.acquire(tenant, "anthropic", limits, tokens)
            stamps.append(time.time())
            if a.allowed:
                admitted += 1
            else:
                denied += 1

    # Warm the pool so the race starts on open connections.
    await asyncio.gather(*(client.ping() for _ in range(concurrency)))
    print("ready", flush=True)
    signal = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    parts = signal.split()
    if len(parts) > 1:
        await asyncio.sleep(max(0.0, float(parts[1]) - time.time()))
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    await client.aclose()
    await buckets.aclose()
    print(json.dumps({"admitted": admitted, "denied": denied,
                      "first": min(stamps), "last": max(stamps)}))


if __name__ == "__main__":
    asyncio.run(main())
