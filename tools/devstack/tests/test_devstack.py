"""The devstack fixtures start real servers: PostgreSQL 18 with pgvector 0.8, and Redis."""

from __future__ import annotations

import asyncpg
import pytest
import redis.asyncio as aioredis

pytestmark = pytest.mark.integration


async def test_postgres_has_pgvector_08(new_database) -> None:  # type: ignore[no-untyped-def]
    conn = await asyncpg.connect(new_database("devstack"))
    try:
        await conn.execute("CREATE EXTENSION vector")
        version = await conn.fetchval(
            "SELECT extversion FROM pg_extension WHERE extname = 'vector'"
        )
        assert version.startswith("0.8")
        assert await conn.fetchval("SHOW server_version_num") >= "180000"
    finally:
        await conn.close()


async def test_redis_answers(redis_url: str) -> None:
    client = aioredis.from_url(redis_url)
    try:
        assert await client.ping()
        await client.set("k", "v")
        assert await client.get("k") == b"v"
    finally:
        await client.aclose()
