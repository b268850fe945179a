"""Tenant offboarding and export through the admin REST API, against the real PostgreSQL and
Redis: everything of the tenant goes (rows, partitions of every model's table and their
indexes, counters, partition key, cache entries), nothing of the others changes (rows, row
versions, search results, counters), and a second call is a no-op."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio as redis
from parley_kb.embedding_cache import tenant_prefix
from parley_kb.migrator import migrate
from parley_kb.models import ContentType, DocumentInput, SearchMode, SearchQuery
from parley_kb.testing import KbDatabase, KbStack, auth_headers, start_stack, stop_stack, token_for

pytestmark = pytest.mark.integration

EVAL = Path(__file__).resolve().parents[1] / "eval"
VICTIM = "tiny-co"
OTHERS = ("acme", "globex")
QUERIES = ["What is the battery warranty?", "How do I get a refund?", "E-217",
           "same day dispatch cut-off", "vault combination"]
OPERATOR = {"Authorization": f"Bearer {token_for(None, service='kb-svc')}"}


def _corpus() -> list[tuple[str, bytes]]:
    return [(p.name, p.read_bytes()) for p in sorted((EVAL / "corpus").iterdir())
            if p.suffix == ".md"]


async def _rows(db: KbDatabase, tenant: str) -> tuple[Any, ...]:
    conn = await asyncpg.connect(db.admin_dsn)
    try:
        out: list[Any] = []
        for sql in (
            "SELECT document_id, fingerprint, updated_at, xmin::text FROM kb.documents"
            " WHERE tenant_id = $1 ORDER BY 1",
            "SELECT document_id, chunk_index, body, xmin::text FROM kb.chunks"
            " WHERE tenant_id = $1 ORDER BY 1, 2",
            "SELECT documents, bytes, chunks, updated_at, xmin::text FROM kb.tenants"
            " WHERE tenant_id = $1",
            "SELECT tenant_key FROM kb.tenant_keys WHERE tenant_id = $1",
        ):
            out.append(tuple(map(tuple, await conn.fetch(sql, tenant))))
        for table in ("emb_1", "emb_2"):
            out.append(await conn.fetchval(
                "SELECT md5(string_agg(document_id || ':' || chunk_index || ':' || xmin::text"
                " || ':' || embedding::text, ',' ORDER BY document_id, chunk_index))"
                f" FROM kb.{table} WHERE tenant_id = $1", tenant))
        return tuple(out)
    finally:
        await conn.close()


async def _searches(stack: KbStack, tenant: str) -> list[Any]:
    out = []
    for query in QUERIES:
        for mode in SearchMode:
            res = await stack.runtime.kb.search(tenant, SearchQuery(text=query, top_k=8,
                                                                    mode=mode))
            out.append([(h.chunk_id, round(h.score, 6), h.text) for h in res.hits])
    return out


async def _cache_keys(redis_url: str, tenant: str) -> int:
    client = redis.Redis.from_url(redis_url)
    try:
        return len([k async for k in client.scan_iter(match=f"{tenant_prefix(tenant)}*")])
    finally:
        await client.aclose()


@pytest.fixture(scope="module")
async def off_stack(make_kb_database: Callable[..., Any], redis_url: str,
                    wordllama_model: Any) -> AsyncIterator[KbStack]:
    db: KbDatabase = await make_kb_database("kboff")
    # A second model's table: offboarding drops the tenant's partitions of every model.
    await migrate(db.admin_dsn, embedding_model="voyage-3.5", embedding_dimensions=1024)
    stack = await start_stack(db, redis_url, wordllama_model)
    kb = stack.runtime.kb
    corpus = _corpus()
    for name, data in corpus:
        await kb.ingest("globex", DocumentInput(name, data, ContentType.MARKDOWN))
    for name, data in corpus[:8]:
        await kb.ingest("acme", DocumentInput(name, data, ContentType.MARKDOWN))
        await kb.ingest(VICTIM, DocumentInput(name, data, ContentType.MARKDOWN, title=name,
                                              metadata={"lang": "en"}))
    try:
        yield stack
    finally:
        await stop_stack(stack)


async def test_export_then_offboard_leaves_other_tenants_identical(
    off_stack: KbStack, redis_url: str
) -> None:
    stack, http, db = off_stack, off_stack.http, off_stack.db
    for query in QUERIES:  # the victim's query embeddings land in the cache too
        await stack.runtime.kb.search(VICTIM, SearchQuery(text=query))
    others_rows = {t: await _rows(db, t) for t in OTHERS}
    others_search = {t: await _searches(stack, t) for t in OTHERS}
    others_usage = {t: (await http.get("/v1/usage", headers=auth_headers(t))).json()
                    for t in OTHERS}
    others_cache = {t: await _cache_keys(redis_url, t) for t in OTHERS}
    victim_cache = await _cache_keys(redis_url, VICTIM)
    assert victim_cache > 0 and all(others_cache.values())
    victim_usage = (await http.get("/v1/usage", headers=auth_headers(VICTIM))).json()

    # Export: one JSON line per document, with its chunks.
    assert (await http.get(f"/v1/admin/tenants/{VICTIM}/export",
                           headers=auth_headers(VICTIM))).status_code == 403
    exported = await http.get(f"/v1/admin/tenants/{VICTIM}/export", headers=OPERATOR)
    assert exported.status_code == 200
    assert exported.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in exported.text.splitlines()]
    assert [d["document_id"] for d in lines] == sorted(name for name, _ in _corpus()[:8])
    assert len(lines) == victim_usage["documents"]
    assert sum(len(d["chunks"]) for d in lines) == victim_usage["chunks"]
    first = lines[0]
    assert first["tenant_id"] == VICTIM and first["metadata"] == {"lang": "en"}
    assert first["title"] == first["document_id"] and first["content_type"] == "markdown"
    assert first["chunks"][0]["index"] == 0 and first["chunks"][0]["body"]

    # Confirmation and authorisation.
    for params in ({}, {"confirm": "acme"}, {"confirm": VICTIM.upper()}):
        r = await http.delete(f"/v1/admin/tenants/{VICTIM}", params=params, headers=OPERATOR)
        assert r.status_code == 400 and "confirm" in r.json()["error"]["message"], r.text
    r = await http.delete(f"/v1/admin/tenants/{VICTIM}", params={"confirm": VICTIM},
                          headers=auth_headers(VICTIM))
    assert r.status_code == 403
    r = await http.delete("/v1/admin/tenants/Bad_Id", params={"confirm": "Bad_Id"},
                          headers=OPERATOR)
    assert r.status_code == 400
    assert await _rows(db, VICTIM) != ((), (), (), (), None, None)  # nothing deleted yet

    admin = await asyncpg.connect(db.admin_dsn)
    try:
        key = await admin.fetchval("SELECT tenant_key FROM kb.tenant_keys WHERE tenant_id = $1",
                                   VICTIM)
        tables_before = await admin.fetchval(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'kb'")
        r = await http.delete(f"/v1/admin/tenants/{VICTIM}", params={"confirm": VICTIM},
                              headers=OPERATOR)
        assert r.status_code == 200, r.text
        report = r.json()
        assert report["existed"] and report["tenant_id"] == VICTIM
        assert report["documents"] == victim_usage["documents"]
        assert report["chunks"] == victim_usage["chunks"]
        assert report["bytes"] == victim_usage["bytes"]
        assert report["embeddings"] == {"local-wordllama-256": victim_usage["chunks"],
                                        "voyage-3.5": 0}
        assert sorted(report["partitions_dropped"]) == sorted(
            [f"kb.chunks_p{key}", f"kb.emb_1_p{key}", f"kb.emb_2_p{key}"])
        assert report["cache_entries_deleted"] >= victim_cache

        # Nothing of the tenant is left: rows, partitions (with their indexes), cache.
        assert await _rows(db, VICTIM) == ((), (), (), (), None, None)
        leftovers = await admin.fetch(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'kb' AND c.relname ~ $1", f"_p{key}($|_)")
        assert leftovers == []
        tables_after = await admin.fetchval(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'kb'")
        # 3 partitions, each with its primary-key index (+ HNSW, or GIN + TOAST for chunks)
        assert tables_before - tables_after >= 6
    finally:
        await admin.close()
    assert await _cache_keys(redis_url, VICTIM) == 0

    # The other tenants: identical rows (same row versions), searches, counters, cache.
    for tenant in OTHERS:
        assert await _rows(db, tenant) == others_rows[tenant], tenant
        assert await _searches(stack, tenant) == others_search[tenant], tenant
        usage = (await http.get("/v1/usage", headers=auth_headers(tenant))).json()
        assert usage == others_usage[tenant]
        assert await _cache_keys(redis_url, tenant) == others_cache[tenant]

    # Idempotent.
    again = await http.delete(f"/v1/admin/tenants/{VICTIM}", params={"confirm": VICTIM},
                              headers=OPERATOR)
    assert again.status_code == 200
    assert again.json() == {"tenant_id": VICTIM, "existed": False, "documents": 0,
                            "chunks": 0, "bytes": 0, "embeddings": {},
                            "partitions_dropped": [], "cache_entries_deleted": 0}
    empty = await http.get(f"/v1/admin/tenants/{VICTIM}/export", headers=OPERATOR)
    assert empty.status_code == 200 and empty.text == ""
    # a tenant id kb-svc has never known (a typo) is not an empty export
    typo = await http.get("/v1/admin/tenants/tiny-coo/export", headers=OPERATOR)
    assert typo.status_code == 404 and "unknown tenant" in typo.json()["error"]["message"]


async def test_offboarded_tenant_that_is_still_configured_starts_empty(
    off_stack: KbStack,
) -> None:
    """The tenant is still in the tenants file: it reads as empty, and its next ingest
    creates its storage again (this process had it marked as prepared)."""
    http, kb = off_stack.http, off_stack.runtime.kb
    r = await http.delete(f"/v1/admin/tenants/{VICTIM}", params={"confirm": VICTIM},
                          headers=OPERATOR)
    assert r.status_code == 200
    usage = (await http.get("/v1/usage", headers=auth_headers(VICTIM))).json()
    assert (usage["documents"], usage["chunks"], usage["bytes"]) == (0, 0, 0)
    res = await kb.search(VICTIM, SearchQuery(text="battery warranty"))
    assert res.hits == []
    name, data = _corpus()[0]
    created = await kb.ingest(VICTIM, DocumentInput(name, data, ContentType.MARKDOWN))
    assert created.outcome.value == "created"
    res = await kb.search(VICTIM, SearchQuery(text=data.decode()[:200], mode=SearchMode.VECTOR))
    assert res.hits and res.hits[0].document_id == name
    usage = (await http.get("/v1/usage", headers=auth_headers(VICTIM))).json()
    assert usage["documents"] == 1 and usage["chunks"] == created.chunks
