"""The store's tenant sessions on a one-connection pool: round trips on the caller's path,
commit after the caller has its rows (read-only) or before it returns (writes), no tenant
binding or planner setting left on a pooled connection, rollback of a failed session."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import numpy as np
import pytest
from parley_kb.store import PgKnowledgeStore
from parley_kb.testing import KbDatabase, KbStack
from parley_runtime.errors import InvalidArgument

pytestmark = pytest.mark.integration

SETTINGS = ("app.tenant_id", "enable_seqscan", "enable_bitmapscan", "plan_cache_mode",
            "hnsw.ef_search")


@pytest.fixture
async def store(kb_db: KbDatabase, kb_stack: KbStack) -> AsyncIterator[PgKnowledgeStore]:
    # kb_stack prepared the tenants' partitions at its start-up.
    s = await PgKnowledgeStore.connect(kb_db.app_dsn, model="local-wordllama-256",
                                       dimensions=256, min_size=1, max_size=1)
    try:
        yield s
    finally:
        await s.close()


def _queries(conn: asyncpg.Connection) -> int:
    """Messages the connection has sent and waited for (asyncpg's own counter; `conn` is the
    connection itself, not the pool's proxy, which is detached on release)."""
    return int(conn._protocol.queries_count)


async def _settings(store: PgKnowledgeStore) -> dict[str, str | None]:
    async with store.pool.acquire() as conn:
        assert not conn.is_in_transaction()
        return {name: await conn.fetchval("SELECT current_setting($1, true)", name)
                for name in SETTINGS}


async def _clean(store: PgKnowledgeStore) -> dict[str, str | None]:
    """The connection's settings after one search (pgvector loaded, app.tenant_id known to
    the backend): what every later session must leave behind."""
    async with store.session("acme", knn=True, read_only=True) as session:
        await session.vector_candidates(np.ones(256, np.float32) / 16.0, 10, None, False)
    await store.settle()
    clean = await _settings(store)
    assert clean["app.tenant_id"] == "" and clean["enable_seqscan"] == "on"
    assert clean["plan_cache_mode"] == "auto" and clean["hnsw.ef_search"] == "40"
    return clean


async def test_vector_search_waits_for_two_round_trips_and_commits_after(
    store: PgKnowledgeStore,
) -> None:
    clean = await _clean(store)  # this first search also learnt acme's size
    query = np.ones(256, np.float32) / 16.0
    async with store.pool.acquire() as proxy:
        conn = proxy._con
        base = _queries(conn)
    async with store.session("acme", knn=True, read_only=True) as session:
        assert session._conn._con is conn  # the pool's only connection
        await session.vector_candidates(query, 10, None, False)
    # Back in the caller: the binding message and the query, nothing else awaited.
    assert _queries(conn) == base + 2
    await store.settle()
    assert _queries(conn) == base + 3  # + COMMIT, after the caller moved on
    assert await _settings(store) == clean  # nothing left on the pooled connection


async def test_sessions_on_one_connection_never_see_each_others_tenant(
    store: PgKnowledgeStore, kb_stack: KbStack,
) -> None:
    from parley_kb.models import ContentType, DocumentInput

    await kb_stack.runtime.kb.ingest("acme", DocumentInput(
        "sess-doc", b"Session isolation note for acme.", ContentType.TEXT))
    for _ in range(3):
        for tenant in ("acme", "globex", "acme"):
            async with store.session(tenant, read_only=True) as session:
                doc = await session.get_document("sess-doc")
                bound = await session._conn.fetchval("SELECT current_setting('app.tenant_id')")
            assert bound == tenant
            assert (doc is not None) == (tenant == "acme")
    # A write commits before the session returns: a new transaction sees it at once.
    async with store.session("acme") as session:
        deleted = await session.delete_document("sess-doc")
    assert deleted.deleted
    async with store.session("acme", read_only=True) as session:
        assert await session.get_document("sess-doc") is None


async def test_failed_session_is_rolled_back_and_the_connection_reused(
    store: PgKnowledgeStore,
) -> None:
    clean = await _clean(store)
    with pytest.raises(asyncpg.UndefinedTableError):
        async with store.session("acme", knn=True, read_only=True) as session:
            await session._conn.fetch("SELECT * FROM kb.no_such_table")
    with pytest.raises(RuntimeError):
        async with store.session("globex") as session:
            await session.usage()
            raise RuntimeError("caller failed mid-session")
    await store.settle()
    assert await _settings(store) == clean
    async with store.session("globex", read_only=True) as session:
        assert (await session.usage()).documents >= 0


async def test_tenant_ids_outside_the_grammar_never_reach_sql(store: PgKnowledgeStore) -> None:
    for bad in ("acme'; DROP TABLE kb.chunks; --", "ACME", "", "a" * 64, "acme\x00", "acme\n"):
        with pytest.raises(InvalidArgument):
            async with store.session(bad, read_only=True):
                pass
