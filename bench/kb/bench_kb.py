"""kb-svc benchmark: tenant-filtered vector search and ingestion, on an embedded PostgreSQL.

(a) recall@10 against exact search and latency for the largest tenant, a median one, one with
    0.5% of the rows and one with 0.01%, at N chunks across 100 tenants with clustered vectors,
    through kb-svc's own store (app role, RLS, per-tenant LIST partitions each with an HNSW
    index, asyncpg prepared statements and their generic plans), interleaved query by query
    with the store's previous session path (BEGIN, binding, query, COMMIT: four round trips),
    after a warm-up pass (the first pass after the index build is reported apart: cold);
(b) the same queries through the seed's approach (one global HNSW index + tenant filter,
    ef_search 40) and through pgvector 0.8 iterative scans on that global index;
(c) ingestion chunks/s with the local model (extract, chunk, embed, COPY+INSERT), against
    embedding one chunk per call (the seed's generate_embedding) in the same run.

Run from the repository root: `make bench-kb` (default 200k chunks) or
`.venv/bin/python bench/kb/bench_kb.py --full` (1M chunks). The last line is one JSON object.
"""

from __future__ import annotations

import os

# One BLAS thread: exact search is a matrix-vector product, and on a 194k-row tenant OpenBLAS
# runs it on both cores, after which its worker thread spins for tens of milliseconds (measured:
# ~25 ms of CPU in a 50 ms sleep after one product) on the core the database needs: the
# largest tenant's timed searches then competed with the bench's own idle thread. Set before
# numpy loads OpenBLAS.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import asyncio  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Awaitable, Callable  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import asyncpg  # noqa: E402
import numpy as np  # noqa: E402

APP_ROLE = "parley_kb_bench"
APP_PASSWORD = "bench-only-password"
MODEL = "bench-clustered"
K = 10


@dataclass
class Tenant:
    tenant_id: str
    rows: int
    label: str = ""
    start: int = 0  # offset into the vector array


@dataclass
class Result:
    strategy: str
    tenant: Tenant
    recalls: list[float] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    server_ms: list[float] = field(default_factory=list)
    plan_ms: list[float] = field(default_factory=list)
    pages_read: list[int] = field(default_factory=list)  # per query, not in shared buffers
    cold_ms: list[float] = field(default_factory=list)  # first pass after the index build
    short: int = 0

    @property
    def recall(self) -> float:
        return float(np.mean(self.recalls)) if self.recalls else float("nan")

    def pct(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")

    def server_pct(self, q: float) -> float:
        return float(np.percentile(self.server_ms, q)) if self.server_ms else float("nan")

    def server_cell(self, q: float) -> str:
        return f"{self.server_pct(q):>7.2f}" if self.server_ms else f"{'-':>7}"

    def reads_cell(self) -> str:
        return (f"{float(np.percentile(self.pages_read, 50)):>5.0f}" if self.pages_read
                else f"{'-':>5}")

    def plan_cell(self) -> str:
        return f"{float(np.percentile(self.plan_ms, 50)):>7.2f}" if self.plan_ms else f"{'-':>7}"


def tenant_sizes(total: int, count: int = 100) -> list[Tenant]:
    """Zipf-like sizes (largest ~19%), plus a tenant at exactly 0.5% and tiny ones at 0.01-0.1%."""
    fixed = {"t-small": 0.005, "t-tiny": 0.0001, "t-tiny-2": 0.0002, "t-tiny-3": 0.0005,
             "t-tiny-4": 0.001, "t-tiny-5": 0.0003}
    rest = count - len(fixed)
    weights = np.array([1.0 / (i + 1) for i in range(rest)])
    remaining = total - sum(max(1, round(total * f)) for f in fixed.values())
    sizes = np.maximum(1, np.floor(weights / weights.sum() * remaining)).astype(int)
    sizes[0] += remaining - int(sizes.sum())
    tenants = [Tenant(f"t{i:03d}", int(n)) for i, n in enumerate(sizes)]
    tenants += [Tenant(name, max(1, round(total * f))) for name, f in fixed.items()]
    tenants[0].label = "largest"
    tenants[rest // 2].label = "median"
    next(t for t in tenants if t.tenant_id == "t-small").label = "0.5%"
    next(t for t in tenants if t.tenant_id == "t-tiny").label = "0.01%"
    offset = 0
    for t in tenants:
        t.start = offset
        offset += t.rows
    return tenants


def clustered(rng: np.random.Generator, tenants: list[Tenant], dim: int,
              clusters: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Vectors around shared topic centres: each tenant draws its own subset of topics, so
    tenants overlap in space (what makes a global index with a tenant filter lose rows)."""
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    total = sum(t.rows for t in tenants)
    out = np.empty((total, dim), dtype=np.float32)
    topics: dict[str, np.ndarray] = {}
    noise = 0.9 / math.sqrt(dim)  # cosine to the centre ~0.75
    for t in tenants:
        n_topics = int(min(clusters, max(3, math.sqrt(t.rows) / 2)))
        mine = rng.choice(clusters, size=n_topics, replace=False)
        topics[t.tenant_id] = mine
        picks = centres[rng.choice(mine, size=t.rows)]
        block = picks + rng.standard_normal((t.rows, dim)).astype(np.float32) * noise
        out[t.start:t.start + t.rows] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out, {"centres": centres, **{f"topics:{k}": v for k, v in topics.items()}}


def queries_for(rng: np.random.Generator, t: Tenant, extra: dict[str, np.ndarray], n: int,
                dim: int) -> np.ndarray:
    centres = extra["centres"]
    mine = extra[f"topics:{t.tenant_id}"]
    picks = centres[rng.choice(mine, size=n)]
    q = picks + rng.standard_normal((n, dim)).astype(np.float32) * (0.9 / math.sqrt(dim))
    out: np.ndarray = (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)
    return out


def exact_tops(vectors: np.ndarray, t: Tenant, queries: np.ndarray) -> list[list[int]]:
    """Exact top-k of every query (ground truth), computed before any search is timed."""
    block = vectors[t.start:t.start + t.rows]
    k = min(K, t.rows)
    out: list[list[int]] = []
    for s in range(0, len(queries), 64):
        sims = queries[s:s + 64] @ block.T
        for row in sims:
            idx = np.argpartition(-row, k - 1)[:k] if t.rows > k else np.arange(t.rows)
            out.append([int(t.start + i) for i in idx[np.argsort(-row[idx])]])
    return out


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


async def setup_database(admin_dsn: str, tenants: list[Tenant], dim: int) -> str:
    from parley_kb.migrator import migrate

    report = await migrate(admin_dsn, app_role=APP_ROLE, app_password=APP_PASSWORD,
                           embedding_model=MODEL, embedding_dimensions=dim,
                           tenants=[t.tenant_id for t in tenants])
    assert report.embedding_table is not None
    return report.embedding_table


async def bulk_load(admin_dsn: str, table: str, tenants: list[Tenant],
                    vectors: np.ndarray) -> dict[str, float]:
    """Load as the owner: drop the HNSW index, COPY, rebuild it (per partition) and the
    baseline's global index. This is how an operator bulk-loads; ingestion keeps the index."""
    from parley_kb.store import init_connection

    conn = await asyncpg.connect(admin_dsn)
    timings: dict[str, float] = {}
    try:
        await init_connection(conn)
        await conn.execute("SET maintenance_work_mem = '2GB'")
        await conn.execute("SET max_parallel_maintenance_workers = 2")
        await conn.execute(f"DROP INDEX IF EXISTS kb.{table}_hnsw")
        dim = vectors.shape[1]
        await conn.execute(
            "CREATE SCHEMA IF NOT EXISTS bench;"
            f" CREATE TABLE bench.seed_chunks (id bigint PRIMARY KEY, tenant_id text NOT NULL,"
            f" embedding vector({dim}) NOT NULL)")
        t0 = time.perf_counter()
        batch = 20_000
        for t in tenants:
            for s in range(t.start, t.start + t.rows, batch):
                e = min(s + batch, t.start + t.rows)
                await conn.copy_records_to_table(
                    table, schema_name="kb",
                    columns=["tenant_id", "document_id", "chunk_index", "embedding"],
                    records=[(t.tenant_id, f"d{i // 100}", i, vectors[i]) for i in range(s, e)])
                await conn.copy_records_to_table(
                    "seed_chunks", schema_name="bench",
                    columns=["id", "tenant_id", "embedding"],
                    records=[(i, t.tenant_id, vectors[i]) for i in range(s, e)])
        timings["copy_s"] = time.perf_counter() - t0
        # Keep the tenants' counters true, as ingestion does: the service sizes ef_search
        # from them.
        for t in tenants:
            await conn.execute("UPDATE kb.tenants SET chunks = $2 WHERE tenant_id = $1",
                               t.tenant_id, t.rows)
        log(f"  loaded {len(vectors)} rows twice in {timings['copy_s']:.1f}s")
        await conn.execute(f"ANALYZE kb.{table}; ANALYZE bench.seed_chunks")
        t0 = time.perf_counter()
        await conn.execute(
            f"CREATE INDEX {table}_hnsw ON kb.{table} USING hnsw (embedding vector_cosine_ops)"
            " WITH (m = 16, ef_construction = 64)")
        timings["partition_index_s"] = time.perf_counter() - t0
        log(f"  per-tenant HNSW indexes built in {timings['partition_index_s']:.1f}s")
        t0 = time.perf_counter()
        await conn.execute(
            "CREATE INDEX seed_hnsw ON bench.seed_chunks USING hnsw (embedding vector_cosine_ops)"
            " WITH (m = 16, ef_construction = 64)")
        timings["global_index_s"] = time.perf_counter() - t0
        log(f"  global HNSW index built in {timings['global_index_s']:.1f}s")
        await conn.execute(f"ANALYZE kb.{table}; ANALYZE bench.seed_chunks")
    finally:
        await conn.close()
    return timings


QueryFn = Callable[[str, np.ndarray], Awaitable[list[int]]]
ExplainFn = Callable[[str, np.ndarray], Awaitable[tuple[float, float, int]]]
EXPLAINED = 200  # queries per tenant whose server time is measured (EXPLAIN ANALYZE)


async def explain_ms(conn: asyncpg.Connection, settings_sql: str, settings_args: list[Any],
                     sql: str, args: list[Any]) -> tuple[float, float, int]:
    """Server-side planning and execution time of one query (EXPLAIN ANALYZE, same settings,
    custom plan): the database's share of the latency, apart from the client and the
    scheduler; and the pages it had to read into shared buffers (not resident)."""
    async with conn.transaction():
        await conn.execute(settings_sql, *settings_args)
        plan = await conn.fetchval(
            "EXPLAIN (ANALYZE, BUFFERS, TIMING OFF, SUMMARY ON, FORMAT JSON) " + sql, *args)
    data = json.loads(plan) if isinstance(plan, str) else plan
    return (float(data[0]["Planning Time"]), float(data[0]["Execution Time"]),
            int(data[0]["Plan"].get("Shared Read Blocks", 0)))


async def warm_up(fn: QueryFn, tenant: Tenant, warmup: np.ndarray) -> list[float]:
    """Queries of their own (not the measured ones) through `fn`: buffer cache, plan caches.
    Returns their latencies: right after the index build that is the cold first pass."""
    out = []
    for q in warmup:
        t0 = time.perf_counter()
        await fn(tenant.tenant_id, q)
        out.append((time.perf_counter() - t0) * 1000)
    return out


async def measure(strategies: dict[str, QueryFn], tenant: Tenant, queries: np.ndarray,
                  truths: list[list[int]], explain: ExplainFn | None = None) -> list[Result]:
    """The strategies query by query, in an order rotating per query, so none of them always
    meets pages another one just read, and load on the machine hits them alike."""
    results = {label: Result(label, tenant) for label in strategies}
    order = list(strategies.items())
    for i, q in enumerate(queries):
        truth = truths[i]
        k = i % len(order)
        for label, fn in order[k:] + order[:k]:
            t0 = time.perf_counter()
            got = await fn(tenant.tenant_id, q)
            result = results[label]
            result.latencies_ms.append((time.perf_counter() - t0) * 1000)
            result.recalls.append(len(set(got) & set(truth)) / len(truth))
            if len(got) < len(truth):
                result.short += 1
    if explain is not None:
        first = results[order[0][0]]
        for q in queries[:EXPLAINED]:
            plan_ms, exec_ms, read = await explain(tenant.tenant_id, q)
            first.plan_ms.append(plan_ms)
            first.server_ms.append(exec_ms)
            first.pages_read.append(read)
    return list(results.values())


def round_trips(conn: asyncpg.Connection) -> int:
    """Messages the connection sent and waited for (asyncpg's own counter)."""
    raw = getattr(conn, "_con", conn)  # a pool's proxy wraps the connection
    return int(raw._protocol.queries_count)


async def search_benchmarks(admin_dsn: str, app_dsn: str, tenants: list[Tenant],
                            vectors: np.ndarray, n_queries: int, ef_values: list[int],
                            rng: np.random.Generator, extra: dict[str, np.ndarray],
                            n_warmup: int, tune: Callable[[], Awaitable[list[Any]]] | None = None,
                            tune_min_chunks: int = 0,
                            ) -> tuple[list[Result], dict[str, int], list[Any]]:
    """kb-svc's search path against the previous session path, per tenant size. With `tune`
    (kb-svc's tune-search), the largest tenant is measured first on the default graph, then
    tune-search runs, then every tenant is measured."""
    from parley_kb.store import _KNN_ON, PgKnowledgeStore, init_connection

    chosen = [t for t in tenants if t.label]
    chosen.sort(key=lambda t: -t.rows)
    queries = {t.tenant_id: queries_for(rng, t, extra, n_queries, vectors.shape[1])
               for t in chosen}
    warmups = {t.tenant_id: queries_for(rng, t, extra, n_warmup, vectors.shape[1])
               for t in chosen}
    by_id = {t.tenant_id: t for t in chosen}
    truths = {tid: exact_tops(vectors, by_id[tid], qs) for tid, qs in queries.items()}
    results: list[Result] = []
    counted: dict[str, int] = {}
    tuned: list[Any] = []
    cold_done = False

    def key_of(doc_chunk: tuple[str, int]) -> int:
        return doc_chunk[1]

    app_conn = await asyncpg.connect(app_dsn)
    await init_connection(app_conn)
    for ef in ef_values:
        # Two connections: a read-only session commits and returns its connection after the
        # caller has its rows, and the next search takes the other one, as in the service
        # (pool of 10 by default).
        store = await PgKnowledgeStore.connect(app_dsn, model=MODEL, dimensions=vectors.shape[1],
                                               min_size=2, max_size=2, ef_search=ef)
        try:
            async def service(tenant_id: str, q: np.ndarray, store: Any = store) -> list[int]:
                async with store.session(tenant_id, knn=True, read_only=True) as s:
                    hits = await s.vector_candidates(q, K, None, False)
                return [key_of(k) for k, _ in hits]

            async def previous(tenant_id: str, q: np.ndarray, store: Any = store) -> list[int]:
                """The store's session before the round-trip cut (ef_search cached): BEGIN,
                binding with bind parameters, query, COMMIT, each awaited."""
                async with store.pool.acquire() as conn, conn.transaction():
                    await conn.execute(
                        "SELECT set_config('app.tenant_id', $1, true),"
                        " set_config('hnsw.ef_search', $2, true),"
                        " set_config('hnsw.iterative_scan', 'relaxed_order', true)" + _KNN_ON,
                        tenant_id, str(ef_used(store, tenant_id)))
                    found = await conn.fetch(store._sql.vector, tenant_id, q, K)
                return [key_of((r["document_id"], r["chunk_index"])) for r in found]

            async def service_explain(tenant_id: str, q: np.ndarray, store: Any = store
                                      ) -> tuple[float, float, int]:
                return await explain_ms(
                    app_conn,
                    "SELECT set_config('app.tenant_id', $1, true),"
                    " set_config('hnsw.ef_search', $2, true),"
                    " set_config('hnsw.iterative_scan', 'relaxed_order', true)" + _KNN_ON,
                    [tenant_id, str(ef_used(store, tenant_id))], store._sql.vector,
                    [tenant_id, q, K])

            if not counted:
                counted = await count_round_trips(store, chosen[-1], queries, service, previous)
            if tune is not None and not tuned and chosen[0].rows < tune_min_chunks:
                tuned = await tune()  # nothing this large: reports only, nothing to compare
            if tune is not None and not tuned:
                big = chosen[0]
                await warm_up(service, big, warmups[big.tenant_id])
                await store.settle()
                used = ef_used(store, big.tenant_id)
                [before] = await measure(
                    {f"kb-svc before tune-search (ef_search {ef} -> {used})":
                     service}, big, queries[big.tenant_id], truths[big.tenant_id],
                    service_explain)
                results.append(before)
                log("  tune-search")
                tuned = await tune()
                await store.settle()
                for t in tenants:
                    store.forget_tenant(t.tenant_id)
                _EF_SEEN.clear()
            for t in chosen:
                cold = await warm_up(service, t, warmups[t.tenant_id])
                await store.settle()
                await warm_up(previous, t, warmups[t.tenant_id][:20])
                # "base -> used": the service scales ef_search with the partition's size, or
                # uses the partition's calibration (tune-search)
                used = ef_used(store, t.tenant_id)
                measured = await measure(
                    {f"kb-svc partitions (ef_search {ef} -> {used})": service,
                     f"kb-svc, previous session path (ef_search {ef} -> {used})": previous},
                    t, queries[t.tenant_id], truths[t.tenant_id], service_explain)
                if not cold_done:
                    measured[0].cold_ms = cold
                results.extend(measured)
            cold_done = True
        finally:
            await store.close()
    await app_conn.close()

    conn = await asyncpg.connect(admin_dsn)
    await init_connection(conn)
    sql = ("SELECT id FROM bench.seed_chunks WHERE tenant_id = $1"
           " ORDER BY embedding <=> $2 LIMIT 10")
    try:
        for label, iterative in (("seed: global HNSW + tenant filter (ef_search 40)", "off"),
                                 ("global HNSW + iterative scan relaxed (ef_search 40)",
                                  "relaxed_order")):
            async def baseline(tenant_id: str, q: np.ndarray, iterative: str = iterative
                               ) -> list[int]:
                async with conn.transaction():
                    await conn.execute(
                        "SELECT set_config('hnsw.ef_search', '40', true),"
                        " set_config('hnsw.iterative_scan', $1, true)", iterative)
                    rows = await conn.fetch(sql, tenant_id, q)
                return [int(r["id"]) for r in rows]

            for t in chosen:
                # No server column here: EXPLAIN would plan with the tenant as a constant,
                # where asyncpg's prepared statement runs a generic plan after five calls.
                cold = await warm_up(baseline, t, warmups[t.tenant_id])
                [base_result] = await measure({label: baseline}, t, queries[t.tenant_id],
                                              truths[t.tenant_id])
                base_result.cold_ms = cold
                results.append(base_result)
    finally:
        await conn.close()
    return results, counted, tuned


_EF_SEEN: dict[str, int] = {}


def ef_used(store: Any, tenant_id: str) -> int:
    """The ef_search the service searches this tenant with (known after one search; the
    store's cache lapses after a minute and is refilled off the caller's path)."""
    used = store.known_ef(tenant_id)
    if used is not None:
        _EF_SEEN[tenant_id] = int(used)
    return _EF_SEEN[tenant_id]


async def count_round_trips(store: Any, tenant: Tenant, queries: dict[str, np.ndarray],
                            service: QueryFn, previous: QueryFn) -> dict[str, int]:
    """Round trips of one vector search on each path: those the caller waits for, and all
    of them (the new path commits after the caller has its rows)."""
    q = queries[tenant.tenant_id][0]
    await service(tenant.tenant_id, q)  # sizes cached, statements prepared
    await store.settle()
    await previous(tenant.tenant_id, q)
    await store.settle()
    out: dict[str, int] = {}
    for name, fn in (("service", service), ("previous", previous)):
        proxies = [await store.pool.acquire() for _ in range(2)]
        raws = [p._con for p in proxies]
        before = [round_trips(c) for c in raws]
        for p in proxies:
            await store.pool.release(p)
        await fn(tenant.tenant_id, q)
        out[f"round_trips_{name}_awaited"] = sum(
            round_trips(c) - b for c, b in zip(raws, before, strict=True))
        await store.settle()
        out[f"round_trips_{name}_total"] = sum(
            round_trips(c) - b for c, b in zip(raws, before, strict=True))
    return out


def _markdown_docs(count: int) -> list[str]:
    rng = np.random.default_rng(3)
    vocab = ("invoice refund policy laptop network badge holiday expense travel server backup "
             "password contract customer report dashboard deploy release incident storage "
             "quota billing account support ticket escalation warranty shipping order").split()
    docs = []
    for d in range(count):
        parts = [f"# Document {d}"]
        for s in range(6):
            parts.append(f"## Section {s}")
            parts += [" ".join(rng.choice(vocab, size=40)).capitalize() + "." for _ in range(3)]
        docs.append("\n\n".join(parts))
    return docs


async def ingest_benchmark(admin_dsn: str, app_dsn: str, docs: int) -> dict[str, float]:
    """Ingestion with the local model through kb-svc's pipeline (extract, chunk, batch
    embedding, COPY into staging + INSERT ... SELECT, one transaction per document), against
    the naive way (one embedding call and one INSERT per chunk) on the same documents."""
    from parley_kb.chunking import MarkdownChunker
    from parley_kb.config import KbTenants, Settings
    from parley_kb.embedding_cache import EmbeddingCache
    from parley_kb.embeddings import EmbeddingService, InputType, LocalWordLlamaEmbedder
    from parley_kb.extract import extract_text
    from parley_kb.knowledge_base import KnowledgeBase, text_hash
    from parley_kb.migrator import migrate
    from parley_kb.models import ContentType, DocumentInput
    from parley_kb.store import PgKnowledgeStore, init_connection

    embedder = LocalWordLlamaEmbedder()
    names = ["ingest-seq", "ingest-par", "ingest-naive"]
    report = await migrate(admin_dsn, embedding_model=embedder.model_id,
                           embedding_dimensions=embedder.dimensions, tenants=names)
    texts = _markdown_docs(docs)
    settings = Settings(database_url=app_dsn)
    tenants = KbTenants.from_dict({"tenants": {n: {} for n in names}}, settings)
    store = await PgKnowledgeStore.connect(app_dsn, model=embedder.model_id,
                                           dimensions=embedder.dimensions, max_size=4)
    out: dict[str, float] = {}

    def fresh_kb() -> KnowledgeBase:
        service = EmbeddingService(embedder, EmbeddingCache(dimensions=embedder.dimensions,
                                                            lru_capacity=0))
        return KnowledgeBase(store=store, embeddings=service, tenants=tenants)

    try:
        kb = fresh_kb()
        chunks = 0
        t0 = time.perf_counter()
        for i, text in enumerate(texts):
            r = await kb.ingest("ingest-seq", DocumentInput(f"doc-{i}", text.encode(),
                                                            ContentType.MARKDOWN))
            chunks += r.chunks
        out["ingest_docs"] = docs
        out["ingest_chunks"] = chunks
        out["ingest_chunks_per_s"] = chunks / (time.perf_counter() - t0)

        kb = fresh_kb()
        sem = asyncio.Semaphore(4)

        async def one(i: int, text: str) -> None:
            async with sem:
                await kb.ingest("ingest-par", DocumentInput(f"doc-{i}", text.encode(),
                                                            ContentType.MARKDOWN))

        t0 = time.perf_counter()
        await asyncio.gather(*(one(i, t) for i, t in enumerate(texts)))
        out["ingest_4_concurrent_chunks_per_s"] = chunks / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        await asyncio.gather(*(one(i, t) for i, t in enumerate(texts)))
        out["reingest_unchanged_docs_per_s"] = docs / (time.perf_counter() - t0)

        chunker = MarkdownChunker()
        all_chunks = [chunker.chunk(extract_text(t.encode(), ContentType.MARKDOWN).text,
                                    markdown=True) for t in texts]
        flat = [c.text for doc in all_chunks for c in doc]
        t0 = time.perf_counter()
        embedder.embed_sync(flat)
        out["embed_only_chunks_per_s"] = len(flat) / (time.perf_counter() - t0)

        # Naive baseline: one embedding call and one INSERT statement per chunk.
        conn = await asyncpg.connect(app_dsn)
        await init_connection(conn)
        table = f"kb.{report.embedding_table}"
        t0 = time.perf_counter()
        try:
            for i, doc_chunks in enumerate(all_chunks):
                vectors = [(await embedder.embed([c.text], InputType.DOCUMENT)).vectors[0]
                           for c in doc_chunks]
                async with conn.transaction():
                    await conn.execute("SELECT set_config('app.tenant_id', 'ingest-naive', true)")
                    await conn.execute(
                        "INSERT INTO kb.documents (tenant_id, document_id, content_type,"
                        " content_hash, fingerprint, size_bytes, chunk_count, embedding_model)"
                        " VALUES ('ingest-naive', $1, 'markdown', 'h', 'f', $2, $3, $4)",
                        f"doc-{i}", len(texts[i]), len(doc_chunks), embedder.model_id)
                    for c, v in zip(doc_chunks, vectors, strict=True):
                        await conn.execute(
                            "INSERT INTO kb.chunks (tenant_id, document_id, chunk_index, heading,"
                            " body, text_hash) VALUES ('ingest-naive', $1, $2, $3, $4, $5)",
                            f"doc-{i}", c.index, c.heading, c.body, text_hash(c.text))
                        await conn.execute(
                            f"INSERT INTO {table} (tenant_id, document_id, chunk_index,"
                            " embedding) VALUES ('ingest-naive', $1, $2, $3)",
                            f"doc-{i}", c.index, v)
        finally:
            await conn.close()
        out["baseline_naive_chunks_per_s"] = len(flat) / (time.perf_counter() - t0)
    finally:
        await store.close()
    return out


def table(results: list[Result]) -> str:
    head = (f"| {'strategy':<58} | {'tenant':<8} | {'rows':>7} | {'recall@10':>9} |"
            f" {'short':>5} | {'p50 ms':>7} | {'p99 ms':>7} | {'db p50':>7} | {'db p99':>7} |"
            f" {'plan':>7} | {'reads':>5} |")
    sep = "|" + "|".join("-" * (len(c)) for c in head.split("|")[1:-1]) + "|"
    lines = [head, sep]
    for r in results:
        lines.append(
            f"| {r.strategy:<58} | {r.tenant.label:<8} | {r.tenant.rows:>7} | {r.recall:>9.3f} |"
            f" {r.short / max(1, len(r.recalls)):>5.0%} | {r.pct(50):>7.2f} | {r.pct(99):>7.2f} |"
            f" {r.server_cell(50)} | {r.server_cell(99)} | {r.plan_cell()} |"
            f" {r.reads_cell()} |"
        )
    return "\n".join(lines)


def cold_table(results: list[Result]) -> str:
    lines = [f"| {'strategy':<58} | {'tenant':<8} | {'cold p50':>8} | {'cold p99':>8} |",
             f"|{'-' * 60}|{'-' * 10}|{'-' * 10}|{'-' * 10}|"]
    for r in results:
        if r.cold_ms:
            lines.append(f"| {r.strategy:<58} | {r.tenant.label:<8} |"
                         f" {np.percentile(r.cold_ms, 50):>8.2f} |"
                         f" {np.percentile(r.cold_ms, 99):>8.2f} |")
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from parley_devstack.postgres import PostgresProcess
    from parley_devstack.procs import free_port

    total = 1_000_000 if args.full else args.chunks
    load_before = os.getloadavg()[0]
    rng = np.random.default_rng(args.seed)
    tenants = tenant_sizes(total)
    log(f"generating {total} clustered {args.dim}-d vectors for {len(tenants)} tenants")
    vectors, extra = clustered(rng, tenants, args.dim, args.clusters)
    workdir = Path(tempfile.mkdtemp(prefix="parley-bench-kb-"))
    workdir.chmod(0o755)
    pg = PostgresProcess(workdir / "pgdata", free_port())
    started = time.perf_counter()
    try:
        pg.start()
        admin = await asyncpg.connect(pg.admin_dsn)
        # Room for both layouts' heaps and HNSW indexes (~5x the raw vectors), as a
        # deployment sizes shared_buffers to keep its vector indexes resident; at most 40% of
        # the machine's memory. --shared-buffers-mb overrides it.
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        shared = args.shared_buffers_mb or max(
            256, min(int(ram * 0.4 / 2**20), int(vectors.nbytes * 5 / 2**20)))
        await admin.execute(f"ALTER SYSTEM SET shared_buffers = '{shared}MB'")
        await admin.execute("CREATE DATABASE bench")
        await admin.close()
        pg.stop()
        pg.start()
        admin_dsn = pg.dsn("bench")
        app_dsn = pg.dsn("bench", APP_ROLE, APP_PASSWORD)
        table_name = await setup_database(admin_dsn, tenants, args.dim)
        timings = await bulk_load(admin_dsn, table_name, tenants, vectors)
        log("measuring search")
        async def tune() -> list[Any]:
            from parley_kb.tuning import tune_search

            return await tune_search(
                admin_dsn, model=MODEL, min_chunks=args.tune_min_chunks,
                maintenance_work_mem="2GB", progress=lambda t, what: log(f"    {t}: {what}"))

        results, counted, tuned = await search_benchmarks(
            admin_dsn, app_dsn, tenants, vectors, args.queries, args.ef, rng, extra,
            args.warmup, None if args.no_tune else tune, args.tune_min_chunks)
        log("measuring ingestion")
        ingest = await ingest_benchmark(admin_dsn, app_dsn, args.ingest_docs)
    finally:
        pg.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    print(f"\nkb-svc search: {total} chunks, {len(tenants)} tenants, {args.dim}-d clustered "
          f"vectors, {args.queries} queries per tenant after {args.warmup} warm-up queries, "
          f"top-{K}. p50/p99: the whole search transaction seen by the client; db: kb-svc's "
          f"query alone on the server (EXPLAIN ANALYZE, same settings and plan, first "
          f"{EXPLAINED} queries), plan: its planning time (p50), reads: pages per query "
          f"(p50) not found in shared buffers ({shared} MB). short: share of queries that got "
          "fewer rows than exact search. kb-svc's rows and the previous session path's are "
          "measured interleaved, query by query.")
    print(table(results))
    print(f"\nround trips per vector search: kb-svc {counted['round_trips_service_awaited']} "
          f"awaited by the caller ({counted['round_trips_service_total']} in all, the COMMIT "
          f"after the caller has its rows); previous session path "
          f"{counted['round_trips_previous_awaited']}")
    print(f"\ncold: the {args.warmup} warm-up queries right after the index build (HNSW pages "
          "not yet in shared buffers; each strategy's first pass over its index):")
    print(cold_table(results))
    print(f"\nbuild: COPY {timings['copy_s']:.1f}s (both layouts), per-tenant HNSW "
          f"{timings['partition_index_s']:.1f}s, global HNSW {timings['global_index_s']:.1f}s")
    done = [r for r in tuned if not r.skipped]
    if args.no_tune:
        print("tune-search: not run (--no-tune)")
    else:
        print(f"tune-search (partitions of >= {args.tune_min_chunks} chunks; "
              f"{len(tuned) - len(done)} smaller ones left alone):"
              + ("" if done else " none this large"))
        for r in done:
            print(f"  {r.tenant_id}: {r.chunks} chunks, ef_construction "
                  f"{r.ef_construction_before} -> {r.ef_construction}"
                  f"{f' (rebuilt concurrently in {r.rebuild_s:.0f}s)' if r.rebuilt else ''}, "
                  f"calibrated ef_search {r.ef_search} (recall@10 {r.recall:.3f} on its own "
                  "vectors; the service searches with max(this, its base))")
    print(f"\ningestion, local model, {ingest['ingest_docs']:.0f} Markdown docs, "
          f"{ingest['ingest_chunks']:.0f} chunks:")
    print("| path | chunks/s |\n|---|---|")
    print(f"| kb-svc pipeline, one document at a time | {ingest['ingest_chunks_per_s']:.0f} |")
    print(f"| kb-svc pipeline, 4 documents concurrently | "
          f"{ingest['ingest_4_concurrent_chunks_per_s']:.0f} |")
    print(f"| baseline: one embedding call + one INSERT per chunk | "
          f"{ingest['baseline_naive_chunks_per_s']:.0f} |")
    print(f"| embedding alone (no database) | {ingest['embed_only_chunks_per_s']:.0f} |")
    print(f"unchanged re-ingest (no embedding, no write): "
          f"{ingest['reingest_unchanged_docs_per_s']:.0f} docs/s")
    print(f"load average during the run: {load_before:.1f} -> {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} cores")

    metrics: dict[str, Any] = {"chunks": total, "tenants": len(tenants), "dim": args.dim}
    short = {"kb-svc partitions": "partitions", "kb-svc, previous": "previous",
             "kb-svc before tune-search": "untuned",
             "seed: global": "seed", "global HNSW + iterative": "iterative"}
    metrics.update(counted)
    for r in results:
        prefix = next(v for k, v in short.items() if r.strategy.startswith(k))
        if prefix in ("partitions", "previous", "untuned"):
            prefix += "_ef" + r.strategy.split("ef_search ")[1].split(" ")[0]
        label = r.tenant.label.replace("%", "pct").replace(".", "_")
        metrics[f"{prefix}_recall10_{label}"] = round(r.recall, 4)
        metrics[f"{prefix}_p50_ms_{label}"] = round(r.pct(50), 3)
        metrics[f"{prefix}_p99_ms_{label}"] = round(r.pct(99), 3)
        if r.server_ms:
            metrics[f"{prefix}_db_p50_ms_{label}"] = round(r.server_pct(50), 3)
            metrics[f"{prefix}_db_p99_ms_{label}"] = round(r.server_pct(99), 3)
            metrics[f"{prefix}_plan_p50_ms_{label}"] = round(
                float(np.percentile(r.plan_ms, 50)), 3)
            metrics[f"{prefix}_db_pages_read_p50_{label}"] = float(
                np.percentile(r.pages_read, 50))
        if r.cold_ms:
            metrics[f"{prefix}_cold_p50_ms_{label}"] = round(
                float(np.percentile(r.cold_ms, 50)), 3)
            metrics[f"{prefix}_cold_p99_ms_{label}"] = round(
                float(np.percentile(r.cold_ms, 99)), 3)
    metrics.update({k: round(v, 1) for k, v in ingest.items()})
    metrics.update({k: round(v, 1) for k, v in timings.items()})
    for r in tuned:
        if not r.skipped:
            metrics[f"tune_{r.tenant_id}_chunks"] = r.chunks
            metrics[f"tune_{r.tenant_id}_rebuild_s"] = r.rebuild_s
            metrics[f"tune_{r.tenant_id}_ef_search"] = r.ef_search
            metrics[f"tune_{r.tenant_id}_self_recall"] = r.recall
    metrics["wall_s"] = round(time.perf_counter() - started, 1)
    metrics["shared_buffers_mb"] = shared
    metrics["loadavg_start"] = round(load_before, 2)
    metrics["loadavg_end"] = round(os.getloadavg()[0], 2)
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunks", type=int, default=int(os.environ.get("KB_BENCH_CHUNKS",
                                                                         200_000)))
    parser.add_argument("--full", action="store_true", help="1M chunks")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=200,
                        help="warm-up queries per tenant and strategy (their own queries)")
    parser.add_argument("--ef", type=int, nargs="+", default=[40, 100],
                        help="ef_search values for kb-svc's partitions")
    parser.add_argument("--ingest-docs", type=int, default=200)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--no-tune", action="store_true",
                        help="skip kb-svc's tune-search (partitions keep the default graph "
                             "and the size rule for ef_search)")
    parser.add_argument("--tune-min-chunks", type=int, default=50_000,
                        help="tune-search's --min-chunks (default: kb-svc's default)")
    parser.add_argument("--shared-buffers-mb", type=int, default=0,
                        help="the server's shared_buffers (default: room for both layouts)")
    args = parser.parse_args()
    metrics = asyncio.run(run(args))
    print(json.dumps({"bench": "kb", "metrics": metrics}))


if __name__ == "__main__":
    main()
