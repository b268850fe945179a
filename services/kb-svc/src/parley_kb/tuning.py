"""Search breadth for large tenant partitions (`python -m parley_kb tune-search`, owner DSN).

A partition's HNSW graph is built with the parent index's parameters (m 16, ef_construction
64), and the service searches it with an ef_search that grows with the square root of the
partition's size (PgKnowledgeStore.ef_for), which is what a 194k-row partition of that graph
needs for recall@10 >= 0.95 (bench/kb). A denser graph needs a much smaller breadth for the
same recall (bench/kb, 194k rows of clustered 384-d vectors: ef_construction 128 reaches 0.98
at ef_search 60, the default graph 0.95 at ~120 and 0.97 at ~200), and every point of breadth
is work on every search. For each partition of at least `min_chunks` rows this:

1. rebuilds its HNSW index with `ef_construction` if it was built with less
   (`ALTER INDEX ... SET`, then `REINDEX INDEX CONCURRENTLY`: searches and writes go on
   meanwhile; the index stays attached to the parent's partitioned index);
2. calibrates: `sample` of the partition's own vectors are queries, exact top-k (sequential
   scan) is the truth, and the smallest ef_search of a ladder whose mean recall@k (the query
   itself excluded) reaches `target_recall` is stored in kb.search_breadth with the row count.

The service then searches the partition with that breadth, grown by sqrt(chunks now / chunks
at calibration) as the tenant grows, and never below its configured base ef_search (hybrid
search asks the index for up to 50 candidates). Partitions without a calibration keep the
size rule. Writes into a rebuilt partition cost more (HNSW insertion searches with
ef_construction: ~2x per row at 128 on a 194k-row partition).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import asyncpg
import numpy as np

from .store import init_connection

logger = logging.getLogger(__name__)

EF_LADDER = (10, 20, 30, 40, 50, 60, 80, 100, 120, 140, 170, 200, 250, 300, 400, 500, 600,
             800, 1000)
DEFAULT_EF_CONSTRUCTION = 128
DEFAULT_TARGET_RECALL = 0.98
DEFAULT_SAMPLE = 100
PGVECTOR_DEFAULT_EF_CONSTRUCTION = 64


@dataclass(frozen=True, slots=True)
class TuneReport:
    tenant_id: str
    chunks: int
    index: str | None
    ef_construction_before: int | None
    ef_construction: int | None
    rebuilt: bool
    rebuild_s: float
    ef_search: int | None  # calibrated; None when skipped
    recall: float | None
    skipped: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _reloption(options: Sequence[str] | None, name: str, default: int) -> int:
    for item in options or ():
        key, _, value = item.partition("=")
        if key == name:
            return int(value)
    return default


async def tune_search(
    dsn: str,
    *,
    model: str,
    tenants: Sequence[str] | None = None,
    min_chunks: int = 50_000,
    ef_construction: int = DEFAULT_EF_CONSTRUCTION,
    target_recall: float = DEFAULT_TARGET_RECALL,
    sample: int = DEFAULT_SAMPLE,
    k: int = 10,
    maintenance_work_mem: str | None = None,
    progress: Callable[[str, str], None] | None = None,
) -> list[TuneReport]:
    """Rebuild (if needed) and calibrate the partitions of `tenants` (default: every tenant
    with storage) in the configured model's table. Runs as the owner."""
    if not 0 < target_recall <= 1:
        raise ValueError("target_recall must be in (0, 1]")
    if sample < 1 or k < 1:
        raise ValueError("sample and k must be positive")
    if not 16 <= ef_construction <= 1000:
        raise ValueError("ef_construction must be between 16 and 1000")
    conn = await asyncpg.connect(dsn, server_settings={"application_name": "kb-svc-tune"})
    try:
        await init_connection(conn)
        if maintenance_work_mem:
            await conn.execute("SELECT set_config('maintenance_work_mem', $1, false)",
                               maintenance_work_mem)
        table = await conn.fetchval(
            "SELECT table_name FROM kb.embedding_spaces WHERE model = $1", model
        )
        if table is None:
            raise ValueError(f"no embedding table for model {model!r}: run migrate first")
        keys = await conn.fetch("SELECT tenant_id, tenant_key FROM kb.tenant_keys"
                                " ORDER BY tenant_id")
        known = {r["tenant_id"]: r["tenant_key"] for r in keys}
        wanted = list(tenants) if tenants is not None else list(known)
        reports = []
        for tenant_id in wanted:
            if tenant_id not in known:
                reports.append(TuneReport(tenant_id, 0, None, None, None, False, 0.0, None,
                                          None, "no storage"))
                continue
            report = await _tune_partition(
                conn, tenant_id, f"{table}_p{known[tenant_id]}", table,
                min_chunks=min_chunks, ef_construction=ef_construction,
                target_recall=target_recall, sample=sample, k=k, progress=progress,
            )
            reports.append(report)
        return reports
    finally:
        await conn.close()


async def _tune_partition(
    conn: asyncpg.Connection, tenant_id: str, partition: str, table: str, *,
    min_chunks: int, ef_construction: int, target_recall: float, sample: int, k: int,
    progress: Callable[[str, str], None] | None,
) -> TuneReport:
    def say(what: str) -> None:
        logger.info("tune-search %s: %s", tenant_id, what)
        if progress is not None:
            progress(tenant_id, what)

    index = await conn.fetchrow(
        "SELECT format('kb.%I', c.relname) AS name, c.reloptions FROM pg_index i"
        " JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am a ON a.oid = c.relam"
        " WHERE i.indrelid = to_regclass(format('kb.%I', $1::text)) AND a.amname = 'hnsw'"
        " AND i.indisvalid ORDER BY c.relname LIMIT 1",
        partition,
    )
    async with conn.transaction():
        await conn.execute("SELECT set_config('app.tenant_id', $1, true)", tenant_id)
        chunks = int(await conn.fetchval(f'SELECT count(*) FROM kb."{partition}"'))
    if index is None:
        return TuneReport(tenant_id, chunks, None, None, None, False, 0.0, None, None,
                          "no HNSW index")
    if chunks < min_chunks:
        return TuneReport(tenant_id, chunks, index["name"], None, None, False, 0.0, None, None,
                          f"fewer than {min_chunks} chunks")
    before = _reloption(index["reloptions"], "ef_construction",
                        PGVECTOR_DEFAULT_EF_CONSTRUCTION)
    rebuilt, rebuild_s, built_with = False, 0.0, before
    if before < ef_construction:
        say(f"rebuilding {index['name']} ({chunks} rows) with ef_construction "
            f"{ef_construction} (was {before})")
        t0 = time.perf_counter()
        # Not in a transaction: REINDEX CONCURRENTLY refuses to run inside one.
        await conn.execute(f"ALTER INDEX {index['name']} SET (ef_construction = "
                           f"{int(ef_construction)})")
        await conn.execute(f"REINDEX INDEX CONCURRENTLY {index['name']}")
        rebuilt, rebuild_s, built_with = True, time.perf_counter() - t0, ef_construction
    say(f"calibrating ef_search on {sample} of its vectors")
    ef, recall = await _calibrate(conn, tenant_id, partition, target_recall, sample, k)
    async with conn.transaction():
        await conn.execute("SELECT set_config('app.tenant_id', $1, true)", tenant_id)
        await conn.execute(
            "INSERT INTO kb.search_breadth (tenant_id, table_name, ef_search, chunks,"
            " ef_construction, recall) VALUES ($1, $2, $3, $4, $5, $6)"
            " ON CONFLICT (tenant_id, table_name) DO UPDATE SET ef_search = EXCLUDED.ef_search,"
            " chunks = EXCLUDED.chunks, ef_construction = EXCLUDED.ef_construction,"
            " recall = EXCLUDED.recall, calibrated_at = now()",
            tenant_id, table, ef, chunks, built_with, recall,
        )
    say(f"ef_search {ef} (recall@{k} {recall:.3f} on its own vectors)")
    return TuneReport(tenant_id, chunks, index["name"], before, built_with, rebuilt,
                      round(rebuild_s, 1), ef, round(recall, 4))


async def _calibrate(conn: asyncpg.Connection, tenant_id: str, partition: str,
                     target_recall: float, sample: int, k: int) -> tuple[int, float]:
    """Smallest ef_search of EF_LADDER with mean recall@k >= target on `sample` stored vectors
    used as queries (each excluded from its own results); (1000, recall there) if none."""
    part = f'kb."{partition}"'
    knn = (f"SELECT document_id, chunk_index FROM {part}"
           " ORDER BY embedding <=> $1 LIMIT $2")
    async with conn.transaction():
        await conn.execute("SELECT set_config('app.tenant_id', $1, true)", tenant_id)
        rows = await conn.fetch(
            f"SELECT document_id, chunk_index, embedding FROM {part}"
            " ORDER BY random() LIMIT $1", sample,
        )
        # Exact: no index, every row scored.
        await conn.execute("SELECT set_config('enable_indexscan', 'off', true),"
                           " set_config('enable_bitmapscan', 'off', true)")
        truths: list[set[tuple[str, int]]] = []
        for r in rows:
            found = await conn.fetch(knn, r["embedding"], k + 1)
            truths.append(set(_others(found, r)[:k]))
    recall = 0.0
    for ef in EF_LADDER:
        async with conn.transaction():
            await conn.execute(
                "SELECT set_config('app.tenant_id', $1, true),"
                " set_config('enable_seqscan', 'off', true),"
                " set_config('hnsw.iterative_scan', 'off', true),"
                " set_config('hnsw.ef_search', $2, true)", tenant_id, str(ef))
            scores = []
            for r, truth in zip(rows, truths, strict=True):
                if not truth:
                    continue
                found = await conn.fetch(knn, r["embedding"], k + 1)
                got = _others(found, r)[:k]
                scores.append(len(set(got) & truth) / len(truth))
        recall = float(np.mean(scores)) if scores else 1.0
        if recall >= target_recall:
            return ef, recall
    return EF_LADDER[-1], recall


def _others(found: Sequence[asyncpg.Record], query: asyncpg.Record) -> list[tuple[str, int]]:
    """Result keys in order, the query's own row left out."""
    own = (query["document_id"], query["chunk_index"])
    keys = [(f["document_id"], f["chunk_index"]) for f in found]
    return [key for key in keys if key != own]
