"""The shared embedding cache on Redis (raw little-endian float32 values with a TTL)."""

from __future__ import annotations

from collections.abc import Sequence

import redis.asyncio as redis


class RedisVectorCache:
    """Implements embedding_cache.RemoteVectorCache. Short timeouts: a slow cache must not
    slow ingestion or search down (a miss only costs an embedding)."""

    def __init__(self, client: redis.Redis) -> None:
        self._client = client

    @classmethod
    def from_url(cls, url: str, *, timeout_s: float = 0.5) -> RedisVectorCache:
        client = redis.Redis.from_url(
            url,
            decode_responses=False,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            health_check_interval=30,
        )
        return cls(client)

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        values = await self._client.mget(list(keys))
        return [v if isinstance(v, bytes) else None for v in values]

    async def set_many(self, items: dict[str, bytes], ttl_s: int) -> None:
        if not items:
            return
        async with self._client.pipeline(transaction=False) as pipe:
            for key, value in items.items():
                pipe.set(key, value, ex=ttl_s)
            await pipe.execute()

    async def delete_prefix(self, prefix: str) -> int:
        """SCAN for the prefix and UNLINK in batches (no blocking KEYS on a shared Redis)."""
        if any(ch in prefix for ch in "*?[]\\"):
            raise ValueError("cache key prefixes must not contain glob characters")
        deleted = 0
        batch: list[bytes] = []
        async for key in self._client.scan_iter(match=f"{prefix}*", count=1000):
            batch.append(key)
            if len(batch) >= 500:
                deleted += int(await self._client.unlink(*batch))
                batch = []
        if batch:
            deleted += int(await self._client.unlink(*batch))
        return deleted

    async def ping(self) -> bool:
        return bool(await self._client.ping())

    async def aclose(self) -> None:
        await self._client.aclose()
