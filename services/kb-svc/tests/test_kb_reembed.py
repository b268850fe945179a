"""Re-embedding after an embedding-model change, against the real PostgreSQL and Redis.

Tenants ingest with model A (the local WordLlama, 256-d); the configuration then switches to
model B (voyage-3.5, 1024-d, through the voyageai SDK and the provider emulator) and `reembed`
gives their chunks B's vectors. Checked: searches with B find the same documents as with A;
searches during the run only ever compare B vectors; an interrupted run (an exception after
the first batch, a provider failure) resumes without redoing finished documents; other
tenants' rows are untouched; the REST job and the operator authorisation.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
import pytest
import yaml
from parley_kb.embeddings import EmbeddingBatch, InputType, VoyageEmbedder
from parley_kb.knowledge_base import document_fingerprint, legacy_fingerprint
from parley_kb.migrator import migrate
from parley_kb.models import ContentType, DocumentInput, ReembedWrite, SearchMode, SearchQuery
from parley_kb.store import init_connection
from parley_kb.testing import KbDatabase, KbStack, auth_headers, start_stack, stop_stack, token_for
from parley_runtime.errors import Aborted, Unavailable

pytestmark = pytest.mark.integration

EVAL = Path(__file__).resolve().parents[1] / "eval"
MODEL_B, DIMS_B = "voyage-3.5", 1024
CTYPES = {".md": ContentType.MARKDOWN, ".txt": ContentType.TEXT, ".html": ContentType.HTML}


class CountingVoyage(VoyageEmbedder):
    """The real Voyage SDK client (against the emulator), counting document texts, with an
    injectable failure after a number of successful calls."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.document_texts = 0
        self.fail_after: int | None = None

    async def embed(self, texts: Sequence[str], input_type: InputType) -> EmbeddingBatch:
        if self.fail_after is not None and input_type is InputType.DOCUMENT:
            if self.fail_after == 0:
                self.fail_after = None
                raise Unavailable("injected embedding provider failure")
            self.fail_after -= 1
        out = await super().embed(texts, input_type)
        if input_type is InputType.DOCUMENT:
            self.document_texts += len(texts)
        return out


@dataclass
class Switched:
    db: KbDatabase
    stack: KbStack  # configured with model B
    embedder: CountingVoyage
    before: dict[str, list[str]]  # question -> top-5 documents with model A (acme, hybrid)
    before_vector: dict[str, list[str]]  # same, vector mode
    questions: list[dict[str, str]]


def _corpus() -> list[tuple[str, bytes, ContentType]]:
    return [(p.name, p.read_bytes(), CTYPES[p.suffix])
            for p in sorted((EVAL / "corpus").iterdir()) if p.suffix in CTYPES]


async def _top_docs(stack: KbStack, tenant: str, question: str, mode: SearchMode) -> list[str]:
    res = await stack.runtime.kb.search(tenant, SearchQuery(text=question, top_k=5, mode=mode))
    return list(dict.fromkeys(h.document_id for h in res.hits))


async def _snapshot(db: KbDatabase, tenant: str) -> tuple[Any, ...]:
    """Every row the tenant has, in every model's table, with the row versions (xmin): equal
    snapshots mean nothing was rewritten."""
    conn = await asyncpg.connect(db.admin_dsn)
    try:
        docs = await conn.fetch(
            "SELECT document_id, fingerprint, embedding_model, updated_at, xmin::text"
            " FROM kb.documents WHERE tenant_id = $1 ORDER BY 1", tenant)
        chunks = await conn.fetch(
            "SELECT document_id, chunk_index, body, xmin::text FROM kb.chunks"
            " WHERE tenant_id = $1 ORDER BY 1, 2", tenant)
        spaces = await conn.fetch("SELECT table_name FROM kb.embedding_spaces ORDER BY 1")
        emb = []
        for space in spaces:
            emb.append(await conn.fetchval(
                "SELECT md5(string_agg(document_id || ':' || chunk_index || ':' || xmin::text"
                f" || ':' || embedding::text, ',' ORDER BY document_id, chunk_index))"
                f" FROM kb.{space['table_name']} WHERE tenant_id = $1", tenant))
        counters = await conn.fetchrow(
            "SELECT documents, bytes, chunks, updated_at FROM kb.tenants WHERE tenant_id = $1",
            tenant)
        return (tuple(map(tuple, docs)), tuple(map(tuple, chunks)), tuple(emb),
                tuple(counters or ()))
    finally:
        await conn.close()


async def _b_rows(db: KbDatabase, tenant: str) -> dict[tuple[str, int], str]:
    """(document, chunk) -> row version of the tenant's model-B vectors."""
    conn = await asyncpg.connect(db.admin_dsn)
    try:
        table = await conn.fetchval(
            "SELECT table_name FROM kb.embedding_spaces WHERE model = $1", MODEL_B)
        rows = await conn.fetch(
            f"SELECT document_id, chunk_index, xmin::text AS v FROM kb.{table}"
            " WHERE tenant_id = $1", tenant)
        return {(r["document_id"], r["chunk_index"]): r["v"] for r in rows}
    finally:
        await conn.close()


async def _legacy_fingerprints(db: KbDatabase, tenant: str, chunker_version: str) -> None:
    conn = await asyncpg.connect(db.admin_dsn)
    try:
        await init_connection(conn)
        for r in await conn.fetch("SELECT * FROM kb.documents WHERE tenant_id = $1", tenant):
            legacy = legacy_fingerprint(r["content_hash"], r["content_type"], r["title"],
                                        r["metadata"], r["source_uri"], chunker_version,
                                        r["embedding_model"])
            assert legacy != r["fingerprint"]
            await conn.execute("UPDATE kb.documents SET fingerprint = $3"
                               " WHERE tenant_id = $1 AND document_id = $2",
                               tenant, r["document_id"], legacy)
    finally:
        await conn.close()


@pytest.fixture(scope="module")
async def switched(make_kb_database: Callable[..., Any], redis_url: str, emulator_url: str,
                   wordllama_model: Any) -> AsyncIterator[Switched]:
    db: KbDatabase = await make_kb_database("kbre")
    questions = list(yaml.safe_load((EVAL / "questions.yaml").read_text())["questions"])
    corpus = _corpus()
    stack_a = await start_stack(db, redis_url, wordllama_model)
    try:
        kb = stack_a.runtime.kb
        for name, data, ctype in corpus:
            await kb.ingest("acme", DocumentInput(name, data, ctype, title=name))
            await kb.ingest("initech", DocumentInput(name, data, ctype, title=name))
        for name, data, ctype in corpus[:6]:
            await kb.ingest("globex", DocumentInput(f"g-{name}", data, ctype, title=name,
                                                    metadata={"owner": "globex"}))
        before = {q["question"]: await _top_docs(stack_a, "acme", q["question"],
                                                 SearchMode.HYBRID) for q in questions}
        before_vector = {q["question"]: await _top_docs(stack_a, "acme", q["question"],
                                                        SearchMode.VECTOR) for q in questions}
        # initech's documents carry fingerprints as written before migration 0002 (they
        # included the model): still recognised as unchanged.
        await _legacy_fingerprints(db, "initech", kb.chunker.options.version)
        name, data, ctype = corpus[0]
        res = await kb.ingest("initech", DocumentInput(name, data, ctype, title=name))
        assert res.outcome.value == "unchanged"
    finally:
        await stop_stack(stack_a)
    # The operator switches the configuration to model B: `migrate` creates B's table (one
    # HNSW index per tenant partition, like A's), then the service starts with B.
    report = await migrate(db.admin_dsn, embedding_model=MODEL_B, embedding_dimensions=DIMS_B)
    assert report.embedding_table == "emb_2"
    extra = {"voyage_api_key": "pa-kb-test", "voyage_base_url": f"{emulator_url}/v1"}
    embedder = CountingVoyage(api_key="pa-kb-test", model_id=MODEL_B, dimensions=DIMS_B,
                              base_url=f"{emulator_url}/v1")
    stack = await start_stack(db, redis_url, wordllama_model, embedder=embedder, **extra)
    try:
        yield Switched(db, stack, embedder, before, before_vector, questions)
    finally:
        await stop_stack(stack)


async def test_before_reembed_model_b_sees_no_vectors_of_model_a(switched: Switched) -> None:
    kb, ops = switched.stack.runtime.kb, switched.stack.runtime.ops
    [status] = await ops.status(["acme"])
    assert status.model == MODEL_B and status.coverage.vectors == 0
    assert status.coverage.missing == status.coverage.chunks > 0
    question = switched.questions[0]["question"]
    # Vector search only compares B vectors with a B query: there are none yet.
    res = await kb.search("acme", SearchQuery(text=question, mode=SearchMode.VECTOR))
    assert res.hits == [] and res.embedding_model == MODEL_B
    # Hybrid answers from full text meanwhile.
    res = await kb.search("acme", SearchQuery(text=question, mode=SearchMode.HYBRID))
    assert res.hits


async def test_reembed_one_tenant(switched: Switched, redis_url: str) -> None:
    stack, embedder = switched.stack, switched.embedder
    kb, ops = stack.runtime.kb, stack.runtime.ops
    others = {t: await _snapshot(switched.db, t) for t in ("globex", "initech")}
    [start] = await ops.status(["acme"])
    sent_before = embedder.document_texts
    events_before = len(stack.recorder.events)
    progress: list[tuple[int, int]] = []
    done = asyncio.Event()
    seen_during: list[int] = []

    async def search_throughout() -> None:
        """Searches while the run goes on only return acme's rows, scored by B vectors."""
        question = "What is the battery warranty?"
        while not done.is_set():
            res = await kb.search("acme", SearchQuery(text=question, top_k=50,
                                                      mode=SearchMode.VECTOR))
            assert res.embedding_model == MODEL_B
            for hit in res.hits:
                assert -1.0001 <= hit.score <= 1.0001
                assert not hit.document_id.startswith("g-")
            seen_during.append(len(res.hits))
            await asyncio.sleep(0.005)

    async def run() -> Any:
        try:
            return await ops.reembed("acme", batch_chunks=4,
                                     progress=lambda t, n, total: progress.append((n, total)))
        finally:
            done.set()

    report, _ = await asyncio.gather(run(), search_throughout())
    chunks = start.coverage.chunks
    assert report.model == MODEL_B and report.chunks == chunks and report.already_done == 0
    assert report.reembedded_chunks == chunks and report.remaining == 0
    assert report.reembedded_documents == start.coverage.documents
    assert report.batches == len(progress) > 3 and sum(n for n, _ in progress) == chunks
    assert {total for _, total in progress} == {chunks}
    assert report.chunks_embedded + report.chunks_cached == chunks
    assert embedder.document_texts - sent_before == report.chunks_embedded
    assert len(seen_during) >= 2 and seen_during[0] <= seen_during[-1]
    # Usage: every batch reported for acme, with model B.
    usage = [e.embedding for t, e in stack.recorder.events[events_before:]
             if t == "acme" and e.WhichOneof("usage") == "embedding"
             and e.embedding.model_id == MODEL_B]
    assert sum(u.embedded_texts for u in usage) >= report.chunks_embedded
    assert sum(u.embedded_texts + u.cached_texts for u in usage) >= chunks
    # The vectors went through the shared cache (Redis).
    import redis.asyncio as redis
    from parley_kb.embedding_cache import tenant_prefix

    client = redis.Redis.from_url(redis_url)
    try:
        keys = [k async for k in client.scan_iter(match=f"{tenant_prefix('acme')}{MODEL_B}:*")]
    finally:
        await client.aclose()
    assert len(keys) >= report.chunks_embedded

    # Other tenants: not one row rewritten, in any model's table.
    for tenant, snap in others.items():
        assert await _snapshot(switched.db, tenant) == snap, tenant
    [after] = await ops.status(["acme"])
    assert after.coverage.vectors == chunks and after.coverage.missing == 0

    # Search with B finds the documents A found.
    same_top, answer_found, agree = 0, 0, 0
    for q in switched.questions:
        now = await _top_docs(stack, "acme", q["question"], SearchMode.HYBRID)
        was = switched.before[q["question"]]
        same_top += bool(now and was and now[0] == was[0])
        answer_found += q["document"] in now
        agree += len(set(now) & set(was)) / max(1, len(was))
    n = len(switched.questions)
    print(f"\nreembed A->B: hybrid top-1 same document {same_top}/{n}, answer in top-5 "
          f"{answer_found}/{n}, top-5 overlap {agree / n:.2f}")
    assert same_top / n >= 0.8 and answer_found / n >= 0.9 and agree / n >= 0.7

    # Idempotent: a second run finds everything done and embeds nothing.
    sent = embedder.document_texts
    again = await ops.reembed("acme", batch_chunks=4)
    assert again.reembedded_chunks == 0 and again.already_done == chunks and again.batches == 0
    assert embedder.document_texts == sent
    # Documents now say B, and an unchanged re-ingest is still a no-op.
    name, data, ctype = _corpus()[0]
    doc = await kb.get_document("acme", name)
    assert doc.embedding_model == MODEL_B
    res = await kb.ingest("acme", DocumentInput(name, data, ctype, title=name))
    assert res.outcome.value == "unchanged" and res.chunks_embedded == 0
    assert embedder.document_texts == sent


async def test_interrupted_reembed_resumes_without_redoing_finished_documents(
    switched: Switched,
) -> None:
    ops, embedder, db = switched.stack.runtime.ops, switched.embedder, switched.db
    [start] = await ops.status(["initech"])
    total = start.coverage.chunks
    globex = await _snapshot(db, "globex")

    # 1. A crash-like interruption right after the first batch was committed.
    def crash(tenant: str, done: int, todo: int) -> None:
        raise RuntimeError("injected crash after the first batch")

    with pytest.raises(RuntimeError, match="injected crash"):
        await ops.reembed("initech", batch_chunks=5, progress=crash)
    first = await _b_rows(db, "initech")
    assert 5 <= len(first) < total

    # 2. The provider fails during the second run, after one more batch.
    embedder.fail_after = 1
    with pytest.raises(Unavailable):
        await ops.reembed("initech", batch_chunks=5)
    second = await _b_rows(db, "initech")
    assert len(first) < len(second) < total
    assert {k: v for k, v in second.items() if k in first} == first  # not rewritten

    # 3. The third run finishes the rest, and only the rest.
    report = await ops.reembed("initech", batch_chunks=5)
    assert report.already_done == len(second)
    assert report.reembedded_chunks == total - len(second) and report.remaining == 0
    final = await _b_rows(db, "initech")
    assert len(final) == total
    assert {k: v for k, v in final.items() if k in second} == second
    assert await _snapshot(db, "globex") == globex

    # The pre-0002 fingerprints were upgraded: an unchanged re-ingest with B is a no-op.
    kb = switched.stack.runtime.kb
    name, data, ctype = _corpus()[0]
    sent = embedder.document_texts
    res = await kb.ingest("initech", DocumentInput(name, data, ctype, title=name))
    assert res.outcome.value == "unchanged" and embedder.document_texts == sent
    conn = await asyncpg.connect(db.admin_dsn)
    try:
        await init_connection(conn)
        row = await conn.fetchrow("SELECT * FROM kb.documents WHERE tenant_id = 'initech'"
                                  " AND document_id = $1", name)
    finally:
        await conn.close()
    assert row["fingerprint"] == document_fingerprint(
        row["content_hash"], row["content_type"], row["title"], row["metadata"],
        row["source_uri"], kb.chunker.options.version)


async def test_documents_changed_during_a_run_are_skipped(switched: Switched) -> None:
    """A document rewritten between the scan and the write keeps its new version's vectors."""
    store = switched.stack.runtime.store
    async with store.session("initech") as session:
        [doc] = await session.reembed_scan(None, 1)
    stale = ReembedWrite(document_id=doc.document_id,
                         updated_at=doc.updated_at.replace(year=2000),
                         chunk_indexes=list(range(doc.chunk_count)),
                         vectors=np.zeros((doc.chunk_count, DIMS_B), np.float32),
                         fingerprint=doc.fingerprint)
    before = await _b_rows(switched.db, "initech")
    async with store.session("initech") as session:
        assert await session.write_reembedded([stale], MODEL_B) == []
    assert await _b_rows(switched.db, "initech") == before


async def test_one_run_per_tenant_and_model(switched: Switched) -> None:
    ops = switched.stack.runtime.ops
    store = switched.stack.runtime.store
    async with store.exclusive(f"reembed:globex:{store.space.table}") as mine:
        assert mine
        with pytest.raises(Aborted, match="already running"):
            await ops.reembed("globex")


async def test_rest_reembed_job_over_every_tenant(switched: Switched) -> None:
    http = switched.stack.http
    operator = {"Authorization": f"Bearer {token_for(None, service='kb-svc')}"}
    body = {"all_tenants": True, "batch_chunks": 8}
    assert (await http.post("/v1/admin/reembed", json=body)).status_code == 401
    denied = await http.post("/v1/admin/reembed", json=body, headers=auth_headers("acme"))
    assert denied.status_code == 403 and denied.json()["error"]["code"] == "PERMISSION_DENIED"
    assert (await http.get("/v1/admin/tenants", headers=auth_headers("acme"))).status_code == 403
    bad = await http.post("/v1/admin/reembed", headers=operator,
                          json={"all_tenants": True, "tenant_ids": ["acme"]})
    assert bad.status_code == 400
    bad = await http.post("/v1/admin/reembed", headers=operator,
                          json={"tenant_ids": ["Not A Tenant"]})
    assert bad.status_code == 400
    assert (await http.get("/v1/admin/reembed/nope", headers=operator)).status_code == 404
    typo = await http.post("/v1/admin/reembed", headers=operator,
                           json={"tenant_ids": ["acme", "acmee"]})
    assert typo.status_code == 404 and "'acmee'" in typo.json()["error"]["message"]
    assert not any("acmee" in str(j) for j in
                   (await http.get("/v1/admin/reembed", headers=operator)).json())

    status = (await http.get("/v1/admin/tenants", headers=operator)).json()
    assert any(t["chunks_missing_model"] > 0 for t in status)  # globex, empty tenants: 0
    started = await http.post("/v1/admin/reembed", json=body, headers=operator)
    assert started.status_code == 202, started.text
    job = started.json()
    assert job["tenant_ids"] is None and job["model"] == MODEL_B
    deadline = time.monotonic() + 60
    while job["state"] == "running" and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        job = (await http.get(f"/v1/admin/reembed/{job['job_id']}", headers=operator)).json()
    assert job["state"] == "succeeded", job
    assert job["chunks_done"] == job["chunks_to_do"] > 0
    by_tenant = {r["tenant_id"]: r for r in job["reports"]}
    assert by_tenant["globex"]["reembedded_chunks"] > 0
    assert by_tenant["acme"]["reembedded_chunks"] == 0  # done earlier
    status = (await http.get("/v1/admin/tenants", headers=operator)).json()
    assert status and all(t["chunks_missing_model"] == 0 for t in status)
    assert {t["tenant_id"] for t in status} >= {"acme", "globex", "initech"}
    listed = (await http.get("/v1/admin/reembed", headers=operator)).json()
    assert job["job_id"] in [j["job_id"] for j in listed]
    # A globex search is answered from globex's own B vectors.
    res = await http.post("/v1/search", headers=auth_headers("globex"),
                          json={"query": "battery warranty", "mode": "vector"})
    assert res.status_code == 200 and res.json()["embedding_model"] == MODEL_B
    hits = res.json()["hits"]
    assert hits and all(h["document_id"].startswith("g-") for h in hits)
    spec = (await http.get("/openapi.json")).json()
    assert {"/v1/admin/reembed", "/v1/admin/tenants",
            "/v1/admin/tenants/{tenant_id}"} <= set(spec["paths"])
