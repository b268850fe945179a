import asyncpg, pytest
pytestmark = pytest.mark.integration
async def test_pg(pg_admin_dsn, new_database, redis_url):
    dsn = new_database("x")
    c = await asyncpg.connect(dsn)
    await c.execute("CREATE EXTENSION vector")
    v = await c.fetchval("SELECT extversion FROM pg_extension WHERE extname='vector'")
    assert v.startswith("0.8")
    await c.close()
    import redis.asyncio as r
    cl = r.from_url(redis_url); assert await cl.ping(); await cl.aclose()
