"""Search: validation, scores and filters; full top-k for a tiny tenant through the real pool
(generic plans included); filtered vector search (exact and iterative paths)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import asyncpg
import grpc
import numpy as np
import pytest
from google.protobuf import struct_pb2
from parley.kb.v1 import kb_pb2
from parley_kb.knowledge_base import KnowledgeBase, SearchOptions
from parley_kb.store import encode_vector, init_connection
from parley_kb.testing import KbStack, md_for

pytestmark = pytest.mark.integration

DIM = 256
BIG_DOCS, BIG_CHUNKS_PER_DOC = 30, 100
TINY_CHUNKS = 12


def _struct(d: dict[str, Any]) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(d)
    return s


def _clustered(rng: np.random.Generator, n: int, centers: np.ndarray) -> np.ndarray:
    picks = centers[rng.integers(0, len(centers), n)]
    vecs = picks + rng.normal(0, 0.35 / math.sqrt(DIM), (n, DIM)) * 3
    return (vecs / np.linalg.norm(vecs, axis=1, keepdims=True)).astype(np.float32)


async def _load_synthetic(admin_dsn: str, tenant: str, docs: int, per_doc: int,
                          vectors: np.ndarray) -> None:
    """Rows written directly as the owner (the bench's way), counters kept consistent."""
    conn = await asyncpg.connect(admin_dsn)
    try:
        await init_connection(conn)
        async with conn.transaction():
            for d in range(docs):
                doc_id = f"syn-{d}"
                await conn.execute(
                    "INSERT INTO kb.documents (tenant_id, document_id, content_type, content_hash,"
                    " fingerprint, size_bytes, chunk_count, metadata, embedding_model)"
                    " VALUES ($1, $2, 'text', 'h', 'f', 10, $3, $4, 'local-wordllama-256')",
                    tenant, doc_id, per_doc, {"synthetic": True, "doc": d})
                rows = range(d * per_doc, (d + 1) * per_doc)
                await conn.copy_records_to_table(
                    "chunks", schema_name="kb",
                    columns=["tenant_id", "document_id", "chunk_index", "body", "text_hash"],
                    records=[(tenant, doc_id, i - d * per_doc, f"synthetic {i}", "h")
                             for i in rows])
                await conn.copy_records_to_table(
                    "emb_1", schema_name="kb",
                    columns=["tenant_id", "document_id", "chunk_index", "embedding"],
                    records=[(tenant, doc_id, i - d * per_doc, vectors[i]) for i in rows])
            await conn.execute(
                "UPDATE kb.tenants SET documents = documents + $2, bytes = bytes + $3,"
                " chunks = chunks + $4 WHERE tenant_id = $1",
                tenant, docs, 10 * docs, docs * per_doc)
        await conn.execute("ANALYZE kb.emb_1; ANALYZE kb.chunks; ANALYZE kb.documents")
    finally:
        await conn.close()


@pytest.fixture(scope="module")
async def synthetic(kb_stack: KbStack) -> dict[str, Any]:
    rng = np.random.default_rng(7)
    centers = rng.normal(size=(20, DIM))
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    big = _clustered(rng, BIG_DOCS * BIG_CHUNKS_PER_DOC, centers)
    tiny = _clustered(rng, TINY_CHUNKS, centers)
    await _load_synthetic(kb_stack.db.admin_dsn, "initech", BIG_DOCS, BIG_CHUNKS_PER_DOC, big)
    await _load_synthetic(kb_stack.db.admin_dsn, "tiny-co", 1, TINY_CHUNKS, tiny)
    queries = _clustered(rng, 20, centers)
    return {"big": big, "tiny": tiny, "queries": queries}


def _exact(vectors: np.ndarray, query: np.ndarray, k: int, per_doc: int,
           docs: list[int] | None = None) -> list[tuple[str, int]]:
    keys = [(f"syn-{i // per_doc}", i % per_doc) for i in range(len(vectors))]
    order = np.argsort(-(vectors @ query), kind="stable")
    out = [keys[i] for i in order if docs is None or i // per_doc in docs]
    return out[:k]


async def test_tiny_tenant_gets_full_exact_top_k_through_the_pool(
    kb_stack: KbStack, synthetic: dict[str, Any]
) -> None:
    store = kb_stack.runtime.store
    # asyncpg prepares each statement once per connection, and PostgreSQL may switch a
    # prepared statement to a generic plan after five executions (the trap that silently
    # loses per-tenant partial indexes). Run well past that on every connection of the pool.
    for _ in range(3):
        for q in synthetic["queries"]:
            async with store.session("tiny-co") as session:
                got = await session.vector_candidates(q, 10, None, False)
            assert len(got) == 10
            assert [k for k, _ in sorted(got, key=lambda x: -x[1])] == _exact(
                synthetic["tiny"], q, 10, TINY_CHUNKS)
            async with store.session("initech") as session:
                big = await session.vector_candidates(q, 10, None, False)
            assert len(big) == 10


async def test_even_a_generic_plan_prunes_to_the_tenant_partition(
    kb_stack: KbStack, synthetic: dict[str, Any]
) -> None:
    conn = await asyncpg.connect(kb_stack.db.app_dsn)
    try:
        await init_connection(conn)
        vec = synthetic["queries"][0]
        async with conn.transaction():
            await conn.execute("SELECT set_config('app.tenant_id', 'initech', true)")
            await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
            await conn.execute(
                "PREPARE knn(text, vector, int) AS SELECT document_id, chunk_index,"
                " embedding <=> $2 AS d FROM kb.emb_1 WHERE tenant_id = $1"
                " ORDER BY embedding <=> $2 LIMIT $3")
            literal = "[" + ",".join(f"{x:.6f}" for x in vec) + "]"
            plan = "\n".join(r[0] for r in await conn.fetch(
                f"EXPLAIN (ANALYZE, COSTS OFF) EXECUTE knn('initech', '{literal}', 10)"))
            await conn.execute("DEALLOCATE knn")
        # Pruned at executor start-up to the tenant's own partition (whose HNSW index or, for
        # a partition this small, an exact scan the planner prefers, serves the query).
        assert "Subplans Removed" in plan, plan
        assert plan.count("on emb_1_p") == 1, plan
    finally:
        await conn.close()
    assert encode_vector(np.zeros(3, np.float32))[:4] == b"\x00\x03\x00\x00"


@pytest.mark.parametrize("exact_limit", [100_000, 0])
async def test_filtered_vector_search_exact_and_iterative(
    kb_stack: KbStack, synthetic: dict[str, Any], exact_limit: int
) -> None:
    store = kb_stack.runtime.store
    docs = [7, 19]
    for q in synthetic["queries"][:10]:
        async with store.session("initech") as session:
            ids, total = await session.resolve_filter(None, [f"syn-{d}" for d in docs])
            assert sorted(ids) == ["syn-19", "syn-7"] and total == 200
            got = await session.vector_candidates(q, 10, ids, exact=total <= exact_limit)
        ranked = [k for k, _ in sorted(got, key=lambda x: -x[1])]
        expected = _exact(synthetic["big"], q, 10, BIG_CHUNKS_PER_DOC, docs)
        assert len(ranked) == 10
        assert len(set(ranked) & set(expected)) >= 9  # exact path: 10/10; iterative HNSW: ~
        if exact_limit:
            assert ranked == expected
    # Through the domain, with a metadata filter (jsonb containment, bind parameter).
    kb = KnowledgeBase(store=store, embeddings=kb_stack.runtime.embeddings,
                       tenants=kb_stack.runtime.kb.tenants,
                       search_options=SearchOptions(exact_scan_max_chunks=exact_limit))
    from parley_kb.models import SearchMode, SearchQuery

    res = await kb.search("initech", SearchQuery("synthetic 705", mode=SearchMode.HYBRID,
                                                 top_k=5, metadata_filter={"doc": 7}))
    assert len(res.hits) == 5 and {h.document_id for h in res.hits} == {"syn-7"}


async def test_search_validation(kb_stack: KbStack) -> None:
    md = md_for("acme")
    async with kb_stack.channel() as ch:
        stub = kb_stack.stub(ch)
        bad = [
            kb_pb2.SearchRequest(query=""),
            kb_pb2.SearchRequest(query="   "),
            kb_pb2.SearchRequest(query="x", top_k=-1),
            kb_pb2.SearchRequest(query="x" * 4001),
            kb_pb2.SearchRequest(query="x", mode=7),
            kb_pb2.SearchRequest(query="x", min_score=float("nan")),
            kb_pb2.SearchRequest(query="x", document_ids=[f"d{i}" for i in range(1001)]),
            kb_pb2.SearchRequest(query="x", document_ids=[""]),
            kb_pb2.SearchRequest(query="nul\x00"),
            kb_pb2.SearchRequest(query="x", document_ids=["a\x00b"]),
            kb_pb2.SearchRequest(query="x", metadata_filter=_struct({"k\x00": "v"})),
            kb_pb2.SearchRequest(query="x", metadata_filter=_struct({"k": "v\x00"})),
        ]
        for request in bad:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Search(request, metadata=md)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, request
        # JSON has no NaN or infinity: the place is named (it was an INTERNAL error).
        for value, shown in ((float("inf"), "inf"), (float("nan"), "nan")):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Search(kb_pb2.SearchRequest(
                    query="x", metadata_filter=_struct({"n": value})), metadata=md)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert f"metadata_filter.n is {shown}" in (err.value.details() or "")


async def test_top_k_min_score_and_metadata_filters(kb_stack: KbStack,
                                                    unique: Callable[[str], str]) -> None:
    md = md_for("globex")
    prefix = unique("filt")
    async with kb_stack.channel() as ch:
        stub = kb_stack.stub(ch)
        for i in range(60):
            await stub.IngestDocument(kb_pb2.IngestDocumentRequest(
                document_id=f"{prefix}-{i}", content_type=kb_pb2.CONTENT_TYPE_TEXT,
                content=f"Release note {i}: the frobnicator now supports mode {i}.".encode(),
                metadata=_struct({"year": 2020 + i % 5, "public": i % 2 == 0,
                                  "batch": prefix})), metadata=md)
        ids = [f"{prefix}-{i}" for i in range(60)]
        res = await stub.Search(kb_pb2.SearchRequest(query="frobnicator release note",
                                                     top_k=1000, document_ids=ids), metadata=md)
        assert len(res.hits) == 50  # capped
        res = await stub.Search(kb_pb2.SearchRequest(query="frobnicator", document_ids=ids),
                                metadata=md)
        assert len(res.hits) == 5  # default
        scores = [h.score for h in res.hits]
        assert scores == sorted(scores, reverse=True) and 0 < scores[0] <= 1.0
        for mode in (kb_pb2.SEARCH_MODE_VECTOR, kb_pb2.SEARCH_MODE_FULL_TEXT,
                     kb_pb2.SEARCH_MODE_HYBRID):
            res = await stub.Search(kb_pb2.SearchRequest(
                query="frobnicator mode", mode=mode, top_k=50,
                metadata_filter=_struct({"year": 2022, "public": True, "batch": prefix})),
                metadata=md)
            expected = {f"{prefix}-{i}" for i in range(60) if i % 5 == 2 and i % 2 == 0}
            assert {h.document_id for h in res.hits} == expected, mode
            assert all(h.metadata["year"] == 2022 for h in res.hits)
            full = await stub.Search(kb_pb2.SearchRequest(
                query="frobnicator mode 17", mode=mode, top_k=50, document_ids=ids),
                metadata=md)
            cut = max(h.score for h in full.hits)
            res = await stub.Search(kb_pb2.SearchRequest(
                query="frobnicator mode 17", mode=mode, top_k=50, min_score=cut,
                document_ids=ids), metadata=md)
            assert res.hits and all(h.score >= cut for h in res.hits)
            assert len(res.hits) < len(full.hits)
        # Hit fields.
        hit = (await stub.Search(kb_pb2.SearchRequest(query="mode 17", document_ids=ids),
                                 metadata=md)).hits[0]
        assert hit.chunk_id == f"{hit.document_id}#{hit.chunk_index}"
        assert hit.metadata["batch"] == prefix
        # Stop words only: full-text finds nothing, hybrid still answers from vectors.
        res = await stub.Search(kb_pb2.SearchRequest(
            query="the of and", mode=kb_pb2.SEARCH_MODE_FULL_TEXT, document_ids=ids), metadata=md)
        assert list(res.hits) == []
        res = await stub.Search(kb_pb2.SearchRequest(query="the of and", document_ids=ids),
                                metadata=md)
        assert res.hits


async def test_hybrid_falls_back_to_full_text_when_embedding_fails(
    kb_stack: KbStack, unique: Callable[[str], str]
) -> None:
    md = md_for("globex")
    doc = unique("fallback")
    async with kb_stack.channel() as ch:
        stub = kb_stack.stub(ch)
        await stub.IngestDocument(kb_pb2.IngestDocumentRequest(
            document_id=doc, content_type=kb_pb2.CONTENT_TYPE_TEXT,
            content=b"The snorkelwhip valve must be greased yearly."), metadata=md)
        kb_stack.embedder.fail_next = True
        res = await stub.Search(kb_pb2.SearchRequest(query="snorkelwhip grease interval",
                                                     document_ids=[doc]), metadata=md)
        assert [h.document_id for h in res.hits] == [doc]
        kb_stack.embedder.fail_next = True
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Search(kb_pb2.SearchRequest(query="snorkelwhip grease interval",
                                                   mode=kb_pb2.SEARCH_MODE_VECTOR), metadata=md)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_ef_search_grows_with_the_tenant_partition(
    kb_stack: KbStack, synthetic: dict[str, Any]
) -> None:
    from parley_kb.store import PgKnowledgeStore

    store = await PgKnowledgeStore.connect(kb_stack.db.app_dsn, model="local-wordllama-256",
                                           dimensions=DIM, ef_search=40,
                                           ef_reference_chunks=1000)
    try:
        assert store.ef_for(10) == 40 and store.ef_for(1000) == 40
        assert store.ef_for(4000) == 80 and store.ef_for(10**9) == 1000
        for tenant in ("initech", "tiny-co"):
            for _ in range(2):  # the first reads the size, the second uses the cached value
                async with store.session(tenant, knn=True) as session:
                    await session.vector_candidates(synthetic["queries"][0], 10, None, False)
                    used = int(await session._conn.fetchval(
                        "SELECT current_setting('hnsw.ef_search')"))
                    chunks = (await session.usage()).chunks
                assert used == store.ef_for(chunks), (tenant, chunks, used)
        assert store.ef_for(await _usage(store, "initech")) > 40
    finally:
        await store.close()


async def _usage(store: Any, tenant: str) -> int:
    async with store.session(tenant) as session:
        return int((await session.usage()).chunks)


async def test_tune_search_rebuilds_a_big_partition_and_the_service_uses_its_calibration(
    kb_stack: KbStack, synthetic: dict[str, Any]
) -> None:
    import asyncpg
    from parley_kb.store import PgKnowledgeStore
    from parley_kb.tuning import tune_search

    admin = kb_stack.db.admin_dsn
    store = await PgKnowledgeStore.connect(kb_stack.db.app_dsn, model="local-wordllama-256",
                                           dimensions=DIM, ef_search=10,
                                           ef_reference_chunks=1000)
    try:
        reports = {r.tenant_id: r for r in await tune_search(
            admin, model="local-wordllama-256", tenants=["initech", "tiny-co", "nobody"],
            min_chunks=1000, sample=20)}
        big, tiny = reports["initech"], reports["tiny-co"]
        assert reports["nobody"].skipped == "no storage"
        assert tiny.skipped and tiny.ef_search is None and not tiny.rebuilt
        assert big.rebuilt and (big.ef_construction_before, big.ef_construction) == (64, 128)
        assert big.chunks >= BIG_DOCS * BIG_CHUNKS_PER_DOC  # other tests add a few
        assert big.ef_search is not None and big.recall is not None and big.recall >= 0.98
        # Rebuilt concurrently, still attached to the parent's partitioned index; a second
        # run only calibrates.
        conn = await asyncpg.connect(admin)
        try:
            attached = await conn.fetchrow(
                "SELECT c.reloptions, i.inhparent::regclass::text AS parent FROM pg_class c"
                " JOIN pg_inherits i ON i.inhrelid = c.oid WHERE c.oid = $1::regclass",
                big.index)
            assert "ef_construction=128" in attached["reloptions"]
            assert attached["parent"].endswith("_hnsw")
        finally:
            await conn.close()
        again = (await tune_search(admin, model="local-wordllama-256", tenants=["initech"],
                                   min_chunks=1000, sample=20))[0]
        assert not again.rebuilt and again.ef_search is not None

        # The service searches with the calibration (grown with the tenant, never below its
        # base), read in the binding message first and from its cache next; row-level
        # security keeps one tenant's calibration from another.
        calibrated = (again.ef_search, again.chunks)
        for _ in range(2):
            async with store.session("initech", knn=True) as session:
                hits = await session.vector_candidates(synthetic["queries"][0], 10, None, False)
                used = int(await session._conn.fetchval(
                    "SELECT current_setting('hnsw.ef_search')"))
                chunks = (await session.usage()).chunks
            assert len(hits) == 10
            assert used == store.ef_for(chunks, calibrated) == max(10, again.ef_search)
        assert store.ef_for(4 * again.chunks, calibrated) == max(10, 2 * again.ef_search)
        async with store.session("tiny-co") as session:
            assert await session._conn.fetchval("SELECT count(*) FROM kb.search_breadth") == 0
    finally:
        await store.close()
        conn = await asyncpg.connect(admin)
        try:  # the other tests of this module expect the size rule
            await conn.execute("DELETE FROM kb.search_breadth")
        finally:
            await conn.close()
