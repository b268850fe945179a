"""PostgreSQL + pgvector storage (asyncpg).

Every session is one transaction whose first statement binds it to a tenant
(`set_config('app.tenant_id', $1, true)`); row-level security on every table does the rest.
The service connects as a role that is neither superuser, BYPASSRLS nor owner of the tables,
and refuses to start otherwise.

Vector search runs on per-tenant LIST partitions, each with its own HNSW index, so a tenant
holding 0.01% of the rows searches its own small graph instead of filtering a global one
(bench/kb measures both). Nearest-neighbour queries run with custom plans (pruned to the
tenant's partition at plan time, whatever asyncpg's prepared-statement cache would switch to)
and without sequential or bitmap scans; see _KNN_ON.

Round trips: BEGIN, the tenant binding and the planner settings travel in one simple-protocol
message, and a read-only session's COMMIT (and the connection's return to the pool) happens
after the caller has its rows, so a vector search waits for two round trips (binding, query)
where it used to wait for four (BEGIN, binding, query, COMMIT).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import struct
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import asyncpg
import numpy as np
from parley_runtime.errors import DeadlineExceeded, InvalidArgument, Unavailable
from parley_runtime.tenants import TENANT_ID_RE

from .knowledge_base import (
    ChunkDetails,
    ChunkKey,
    DocumentRecord,
    QuotaCheck,
    StoredState,
)
from .models import (
    Chunk,
    ContentType,
    DeleteResult,
    Document,
    ReembedCandidate,
    ReembedWrite,
    SpaceCoverage,
    TenantUsage,
)

logger = logging.getLogger(__name__)

_VEC_HEADER = struct.Struct(">HH")
_ACQUIRE_TIMEOUT_S = 10.0
_SIZE_TTL_S = 60.0


def encode_vector(value: Any) -> bytes:
    """pgvector's binary format: uint16 dimensions, uint16 unused, big-endian float32s."""
    if hasattr(value, "to_numpy"):
        value = value.to_numpy()
    arr = np.asarray(value, dtype=">f4")
    if arr.ndim != 1:
        raise ValueError("a vector must be one-dimensional")
    return _VEC_HEADER.pack(arr.shape[0], 0) + arr.tobytes()


def decode_vector(data: bytes) -> np.ndarray:
    dims, _ = _VEC_HEADER.unpack_from(data)
    return np.frombuffer(data, dtype=">f4", count=dims, offset=4).astype(np.float32)


async def init_connection(conn: asyncpg.Connection) -> None:
    """Codecs for vector (binary, numpy) and jsonb (Python objects)."""
    schema = await conn.fetchval(
        "SELECT n.nspname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace"
        " WHERE t.typname = 'vector' ORDER BY n.nspname = 'public' DESC LIMIT 1"
    )
    if schema is not None:
        await conn.set_type_codec(
            "vector", schema=schema, encoder=encode_vector, decoder=decode_vector,
            format="binary",
        )
    await conn.set_type_codec(
        "jsonb", schema="pg_catalog", encoder=_json_dumps, decoder=json.loads, format="text"
    )


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Pool reset: nothing to undo. Every setting is transaction-local (set_config(..., true))
    and asyncpg itself rolls back an unfinished transaction; skipping its default RESET ALL
    saves a round trip per request and keeps the staging temp tables."""


def _json_dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class EmbeddingSpace:
    model: str
    dimensions: int
    table: str  # kb.<table>; created by migrations, named emb_<id>

    @property
    def qualified(self) -> str:
        if not self.table.startswith("emb_") or not self.table[4:].isdigit():
            raise ValueError(f"unexpected embedding table name {self.table!r}")
        return f"kb.{self.table}"


class PgKnowledgeStore:
    """The KnowledgeStore over an asyncpg pool."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        space: EmbeddingSpace,
        *,
        ef_search: int = 100,
        ef_reference_chunks: int = 50_000,
    ) -> None:
        self.pool = pool
        self.space = space
        self.ef_search = ef_search
        self.ef_reference_chunks = ef_reference_chunks
        self._sql = _Statements(space)
        self._table = space.qualified.removeprefix("kb.")  # emb_<n>, checked
        # Tenant -> (chunks, calibration (ef_search, chunks then) or None, monotonic time
        # read): sizes ef_search for the tenant's index.
        self._sizes: dict[str, tuple[int, tuple[int, int] | None, float]] = {}
        # Read-only sessions finishing (COMMIT, pool release) after their caller moved on.
        self._finishing: set[asyncio.Task[None]] = set()

    def ef_for(self, chunks: int, calibrated: tuple[int, int] | None = None) -> int:
        """ef_search for a tenant's partition. Without a calibration: the base value up to
        `ef_reference_chunks` rows, growing with the square root of the size beyond (a
        200k-row partition of the default graph needs ~200 for recall@10 >= 0.95; bench/kb).
        With one (`tune-search`: (ef_search, rows then)): that breadth, grown by
        sqrt(rows now / rows then), never below the base. At most 1000; rounds half up, like
        the SQL twin in _EF_FROM_SIZE."""
        if calibrated is not None:
            ef, at = calibrated
            scale = math.sqrt(max(1.0, max(chunks, 1) / max(at, 1)))
            wanted = math.floor(ef * scale + 0.5)
        else:
            scale = math.sqrt(max(chunks, 1) / self.ef_reference_chunks)
            wanted = math.floor(self.ef_search * scale + 0.5)
        return int(min(1000, max(self.ef_search, wanted)))

    def known_ef(self, tenant_id: str) -> int | None:
        """The ef_search this process searches the tenant with, if it knows it (cached)."""
        cached = self._sizes.get(tenant_id)
        if cached is None or time.monotonic() - cached[2] > _SIZE_TTL_S:
            return None
        return self.ef_for(cached[0], cached[1])

    def remember_size(self, tenant_id: str, chunks: int,
                      calibrated: tuple[int, int] | None = None) -> None:
        if len(self._sizes) > 100_000:
            self._sizes.clear()
        self._sizes[tenant_id] = (chunks, calibrated, time.monotonic())

    @classmethod
    async def connect(
        cls,
        dsn: str,
        *,
        model: str,
        dimensions: int,
        min_size: int = 1,
        max_size: int = 10,
        ef_search: int = 100,
        ef_reference_chunks: int = 50_000,
        statement_timeout_ms: int = 15_000,
        application_name: str = "kb-svc",
        check_role: bool = True,
    ) -> PgKnowledgeStore:
        pool = await asyncpg.create_pool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            init=init_connection,
            reset=_keep_session,
            server_settings={
                "application_name": application_name,
                "statement_timeout": str(statement_timeout_ms),
                "idle_in_transaction_session_timeout": "60000",
            },
        )
        try:
            async with pool.acquire() as conn:
                if check_role:
                    await verify_runtime_role(conn)
                space = await load_space(conn, model)
            if space.dimensions != dimensions:
                raise SystemExit(
                    f"embedding model {model!r} is stored with {space.dimensions} dimensions but "
                    f"the embedder produces {dimensions}"
                )
        except BaseException:
            await pool.close()
            raise
        return cls(pool, space, ef_search=ef_search, ef_reference_chunks=ef_reference_chunks)

    async def settle(self) -> None:
        """Wait until every session has committed or rolled back and released its
        connection (read-only sessions finish after their caller moved on)."""
        while self._finishing:
            await asyncio.gather(*list(self._finishing), return_exceptions=True)

    async def close(self) -> None:
        await self.settle()
        await self.pool.close()

    def bind_sql(self, tenant_id: str, *, knn: bool) -> tuple[str, bool]:
        """The message that opens a session: BEGIN, the tenant binding (RLS policies read
        app.tenant_id; is_local ends it with the transaction) and the search settings, in one
        round trip; and whether the tenant's size must be read for the ef_search cache."""
        if not TENANT_ID_RE.fullmatch(tenant_id):
            # Sent as a literal (the simple protocol takes no parameters): only ids of the
            # tenant-id grammar, which cannot contain a quote, ever reach the SQL text.
            raise InvalidArgument("invalid tenant id")
        literal = f"'{tenant_id}'"
        known_ef = self.known_ef(tenant_id)
        sql = (
            f"BEGIN; SELECT set_config('app.tenant_id', {literal}, true),"
            f" set_config('hnsw.ef_search', '{int(known_ef or self.ef_search)}', true),"
            " set_config('hnsw.iterative_scan', 'relaxed_order', true)"
            + (_KNN_ON if knn else "")
        )
        if known_ef is None:
            sql += _EF_FROM_SIZE.format(
                tenant=literal, base=int(self.ef_search), ref=int(self.ef_reference_chunks),
                table=self._table,
            )
        return sql, known_ef is None

    @asynccontextmanager
    async def session(
        self, tenant_id: str, *, knn: bool = False, read_only: bool = False
    ) -> AsyncIterator[PgTenantSession]:
        """One transaction bound to `tenant_id`. `knn=True` says its first query is a vector
        nearest-neighbour search, so the planner settings for it are sent with the binding.
        `read_only=True` (the session writes nothing) lets it commit after the caller has
        its results."""
        bind, learn_size = self.bind_sql(tenant_id, knn=knn)
        try:
            conn = await self.pool.acquire(timeout=_ACQUIRE_TIMEOUT_S)
        except TimeoutError:
            raise Unavailable("database connection pool exhausted; retry") from None
        except (asyncpg.PostgresConnectionError, asyncpg.TooManyConnectionsError, OSError):
            logger.warning("database unavailable", exc_info=True)
            raise Unavailable("database unavailable; retry") from None
        done = False
        try:
            try:
                await conn.execute(bind)
                yield PgTenantSession(conn, tenant_id, self._sql, knn_mode=knn)
                if not read_only:
                    # A write commits before the caller hears it succeeded (_end releases
                    # the connection whatever happens).
                    done = True
                    await self._end(conn, tenant_id, learn_size, "COMMIT")
            except asyncpg.QueryCanceledError:
                raise DeadlineExceeded("database statement timed out") from None
            except (asyncpg.PostgresConnectionError, OSError):
                logger.warning("database unavailable", exc_info=True)
                raise Unavailable("database unavailable; retry") from None
            if read_only:
                # The caller has its rows: COMMIT and return the connection off its path.
                self._later(conn, tenant_id, learn_size, "COMMIT")
                done = True
        finally:
            if not done:
                self._later(conn, tenant_id, False, "ROLLBACK")

    async def _end(self, conn: asyncpg.Connection, tenant_id: str, learn_size: bool,
                   verb: str) -> None:
        """Finish the transaction (learning the tenant's size first if asked) and release."""
        try:
            if not conn.is_closed() and conn.is_in_transaction():
                if learn_size and verb == "COMMIT":
                    try:
                        row = await conn.fetchrow(_SIZE_SQL, tenant_id, self._table)
                        calibrated = None
                        if row is not None and row["ef"] is not None:
                            calibrated = (int(row["ef"]), int(row["at"]))
                        chunks = row["chunks"] if row is not None else 0
                        self.remember_size(tenant_id, int(chunks or 0), calibrated)
                    except asyncpg.PostgresError:  # an aborted transaction: next time
                        pass
                await conn.execute(verb)
        finally:
            await self.pool.release(conn)

    def _later(self, conn: asyncpg.Connection, tenant_id: str, learn_size: bool,
               verb: str) -> None:
        async def finish() -> None:
            try:
                await self._end(conn, tenant_id, learn_size, verb)
            except Exception:
                logger.warning("finishing a database session failed", exc_info=True)

        task = asyncio.get_running_loop().create_task(finish())
        self._finishing.add(task)
        task.add_done_callback(self._finishing.discard)

    async def ensure_tenant(self, tenant_id: str) -> None:
        """Create the tenant's partitions (SECURITY DEFINER function; acts for this tenant only)."""
        async with self.pool.acquire(timeout=_ACQUIRE_TIMEOUT_S) as conn:
            async with conn.transaction():
                await conn.execute("SELECT set_config('app.tenant_id', $1, true)", tenant_id)
                await conn.execute("SELECT kb.ensure_tenant($1)", tenant_id)

    async def stored_tenants(self) -> list[str]:
        """Every tenant that has storage (partitions), configured or not."""
        async with self.pool.acquire(timeout=_ACQUIRE_TIMEOUT_S) as conn:
            rows = await conn.fetch("SELECT t FROM kb.stored_tenants() AS t")
        return [row["t"] for row in rows]

    def forget_tenant(self, tenant_id: str) -> None:
        """Drop what this process remembers about a tenant (after offboarding)."""
        self._sizes.pop(tenant_id, None)

    @asynccontextmanager
    async def exclusive(self, name: str) -> AsyncIterator[bool]:
        """A session-level advisory lock held on a dedicated pooled connection for the body
        (a crashed process releases it with its connection). Yields False when another
        session holds it."""
        conn = await self.pool.acquire(timeout=_ACQUIRE_TIMEOUT_S)
        try:
            got = bool(await conn.fetchval(
                "SELECT pg_try_advisory_lock(hashtext('parley_kb.ops'), hashtext($1))", name
            ))
            try:
                yield got
            finally:
                if got:
                    await conn.execute(
                        "SELECT pg_advisory_unlock(hashtext('parley_kb.ops'), hashtext($1))", name
                    )
        finally:
            await self.pool.release(conn)


async def verify_runtime_role(conn: asyncpg.Connection) -> None:
    """Refuse to run as a role that row-level security would not apply to."""
    row = await conn.fetchrow(
        "SELECT current_user AS name, rolsuper, rolbypassrls FROM pg_roles"
        " WHERE rolname = current_user"
    )
    assert row is not None
    if row["rolsuper"] or row["rolbypassrls"]:
        raise SystemExit(
            f"DATABASE_URL connects as {row['name']!r}, a superuser or BYPASSRLS role: "
            "row-level security would not isolate tenants. Use the application role created "
            "by `python -m parley_kb migrate`."
        )
    owns = await conn.fetchval(
        "SELECT bool_or(pg_has_role(current_user, c.relowner, 'USAGE'))"
        " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = 'kb' AND c.relname IN ('documents', 'chunks', 'tenants')"
    )
    if owns is None:
        raise SystemExit("the kb schema is missing: run `python -m parley_kb migrate` first")
    if owns:
        raise SystemExit(
            f"DATABASE_URL connects as {row['name']!r}, which owns the kb tables: connect as "
            "the application role instead (owners are exempt from row-level security)"
        )


async def load_space(conn: asyncpg.Connection, model: str) -> EmbeddingSpace:
    row = await conn.fetchrow(
        "SELECT model, dimensions, table_name FROM kb.embedding_spaces WHERE model = $1", model
    )
    if row is None:
        raise SystemExit(
            f"no embedding table for model {model!r}: run `python -m parley_kb migrate` with the "
            "same embedding settings (or set MIGRATE_DATABASE_URL to migrate at start-up)"
        )
    return EmbeddingSpace(row["model"], row["dimensions"], row["table_name"])


class _Statements:
    """SQL texts, built once: only the embedding table's name (emb_<id>) is interpolated."""

    def __init__(self, space: EmbeddingSpace) -> None:
        emb = space.qualified
        dims = space.dimensions
        self.stage_emb = f"kb_stage_{space.table}"
        self.create_stage = (
            "CREATE TEMP TABLE IF NOT EXISTS kb_stage_chunks ("
            " chunk_index integer, heading text, body text, text_hash text)"
            " ON COMMIT DELETE ROWS;"
            f" CREATE TEMP TABLE IF NOT EXISTS {self.stage_emb} ("
            f" chunk_index integer, embedding vector({dims})) ON COMMIT DELETE ROWS"
        )
        self.insert_chunks = (
            "INSERT INTO kb.chunks (tenant_id, document_id, chunk_index, heading, body, text_hash)"
            " SELECT $1, $2, chunk_index, heading, body, text_hash FROM pg_temp.kb_stage_chunks"
        )
        self.insert_emb = (
            f"INSERT INTO {emb} (tenant_id, document_id, chunk_index, embedding)"
            f" SELECT $1, $2, chunk_index, embedding FROM pg_temp.{self.stage_emb}"
        )
        # A changed or deleted document loses its vectors in every model's table, so each
        # table only ever holds vectors of current versions (migration 0002).
        self.delete_vectors = "SELECT kb.delete_document_vectors($1, $2)"
        self.ingest_state = (
            "SELECT d.fingerprint, d.content_hash, d.size_bytes, d.chunk_count,"
            " d.embedding_model, t.documents, t.bytes, t.chunks,"
            " t.tenant_id IS NOT NULL AS initialised,"
            " CASE WHEN d.document_id IS NULL THEN 0 ELSE"
            f" (SELECT count(*) FROM {emb} e WHERE e.tenant_id = $1 AND e.document_id = $2)"
            " END AS vectors"
            " FROM (SELECT 1) one"
            " LEFT JOIN kb.tenants t ON t.tenant_id = $1"
            " LEFT JOIN kb.documents d ON d.tenant_id = $1 AND d.document_id = $2"
        )
        # Re-embedding: documents in id order with how many vectors the configured model's
        # table holds for each (complete = chunk_count).
        self.reembed_scan = (
            "SELECT d.document_id, d.chunk_count, d.updated_at, d.fingerprint, d.content_hash,"
            " d.content_type, d.title, d.metadata, d.source_uri, d.embedding_model,"
            f" (SELECT count(*) FROM {emb} e WHERE e.tenant_id = $1"
            " AND e.document_id = d.document_id) AS vectors"
            " FROM kb.documents d WHERE d.tenant_id = $1"
            " AND ($2::text IS NULL OR d.document_id > $2) ORDER BY d.document_id LIMIT $3"
        )
        self.coverage = (
            "SELECT (SELECT count(*) FROM kb.documents WHERE tenant_id = $1) AS documents,"
            " (SELECT coalesce(sum(chunk_count), 0) FROM kb.documents WHERE tenant_id = $1)"
            " AS chunks,"
            f" (SELECT count(*) FROM {emb} WHERE tenant_id = $1) AS vectors"
        )
        self.stage_reembed = f"kb_stage_reembed_{space.table}"
        self.create_stage_reembed = (
            f"CREATE TEMP TABLE IF NOT EXISTS {self.stage_reembed} ("
            f" document_id text, chunk_index integer, embedding vector({dims}))"
            " ON COMMIT DELETE ROWS"
        )
        self.reembed_delete = (
            f"DELETE FROM {emb} WHERE tenant_id = $1 AND document_id = ANY($2::text[])"
        )
        self.reembed_insert = (
            f"INSERT INTO {emb} (tenant_id, document_id, chunk_index, embedding)"
            f" SELECT $1, document_id, chunk_index, embedding FROM pg_temp.{self.stage_reembed}"
        )
        self.stored_embeddings = (
            f"SELECT c.text_hash, e.embedding FROM kb.chunks c JOIN {emb} e"
            " ON e.tenant_id = c.tenant_id AND e.document_id = c.document_id"
            " AND e.chunk_index = c.chunk_index"
            " WHERE c.tenant_id = $1 AND c.document_id = $2"
            " AND e.tenant_id = $1 AND e.document_id = $2"
        )
        self.vector = (
            f"SELECT document_id, chunk_index, embedding <=> $2 AS distance FROM {emb}"
            " WHERE tenant_id = $1 ORDER BY embedding <=> $2 LIMIT $3"
        )
        # Filtered: the HNSW scan of the tenant's partition continues (iterative scan) until
        # enough rows pass the filter.
        self.vector_filtered = (
            f"SELECT document_id, chunk_index, embedding <=> $2 AS distance FROM {emb}"
            " WHERE tenant_id = $1 AND document_id = ANY($4::text[])"
            " ORDER BY embedding <=> $2 LIMIT $3"
        )
        # Narrow filter: score every candidate exactly (the materialized CTE keeps the
        # planner off the HNSW index, whose filtered scan could return fewer rows).
        self.vector_exact = (
            "WITH candidates AS MATERIALIZED ("
            f" SELECT document_id, chunk_index, embedding <=> $2 AS distance FROM {emb}"
            " WHERE tenant_id = $1 AND document_id = ANY($4::text[]))"
            " SELECT document_id, chunk_index, distance FROM candidates"
            " ORDER BY distance LIMIT $3"
        )


# Planner settings for nearest-neighbour queries, local to the transaction. With plain costs
# the planner scans partitions of ~1-7k rows sequentially and sorts them (2-8 ms at 384-d)
# where their HNSW index answers in ~0.5 ms; without seq and bitmap scans it takes the HNSW
# index, or for a small partition the primary key and an exact sort (<1 ms), never both, and
# runtime pruning still keeps the other tenants' partitions out. Custom plans keep every
# execution planned for the tenant at hand (pruned at plan time) whatever asyncpg caches.
_KNN_ON = (
    ", set_config('enable_seqscan', 'off', true), set_config('enable_bitmapscan', 'off', true),"
    " set_config('plan_cache_mode', 'force_custom_plan', true)"
)
# ef_search from the tenant's size and its partition's calibration (tune-search), when this
# process has not cached them (the SQL twin of PgKnowledgeStore.ef_for), run in the binding
# message after app.tenant_id is set. {table} is the embedding table's name (emb_<n>).
_EF_FROM_SIZE = (
    "; SELECT set_config('hnsw.ef_search', least(1000, greatest({base}, CASE"
    " WHEN b.ef_search IS NULL"
    " THEN floor({base} * sqrt(greatest(t.chunks, 1)::float8 / {ref}) + 0.5)"
    " ELSE floor(b.ef_search * sqrt(greatest(1, greatest(t.chunks, 1)::float8"
    " / greatest(b.chunks, 1))) + 0.5) END))::int::text, true)"
    " FROM kb.tenants t LEFT JOIN kb.search_breadth b"
    " ON b.tenant_id = t.tenant_id AND b.table_name = '{table}'"
    " WHERE t.tenant_id = {tenant}"
)
_SIZE_SQL = (
    "SELECT t.chunks, b.ef_search AS ef, b.chunks AS at FROM kb.tenants t"
    " LEFT JOIN kb.search_breadth b ON b.tenant_id = t.tenant_id AND b.table_name = $2"
    " WHERE t.tenant_id = $1"
)
_KNN_OFF = (
    "SELECT set_config('enable_seqscan', 'on', true), set_config('enable_bitmapscan', 'on', true),"
    " set_config('plan_cache_mode', 'auto', true)"
)
# Full text, ranked by the inverse document frequency of the query terms each chunk matches
# (BM25's idf, within the tenant), so a rare identifier ("E-217") outweighs common words;
# ts_rank_cd (headings weigh more) breaks ties. Scores are in [0, 1]: 0.9 x the share of the
# query's idf mass matched + 0.1 x ts_rank_cd/(1 + ts_rank_cd). Terms arrive as an array and
# are parsed by websearch_to_tsquery, which accepts any input without syntax errors.
_TEXT_SQL = (
    "WITH terms AS ("
    " SELECT DISTINCT websearch_to_tsquery('english', w) AS q FROM unnest($2::text[]) AS w"
    " WHERE numnode(websearch_to_tsquery('english', w)) > 0),"
    " query AS (SELECT websearch_to_tsquery('english', array_to_string($2::text[], ' or ')) AS q),"
    " matched AS MATERIALIZED ("
    " SELECT c.document_id, c.chunk_index, c.tsv FROM kb.chunks c, query"
    " WHERE c.tenant_id = $1 AND c.tsv @@ query.q"
    " AND ($4::text[] IS NULL OR c.document_id = ANY($4::text[]))),"
    " df AS ("
    " SELECT terms.q, ln(1 + (greatest(t.chunks, 1) - count(m.chunk_index) + 0.5)"
    " / (count(m.chunk_index) + 0.5)) AS idf"
    " FROM terms CROSS JOIN (SELECT chunks FROM kb.tenants WHERE tenant_id = $1) t"
    " LEFT JOIN matched m ON m.tsv @@ terms.q GROUP BY terms.q, t.chunks),"
    " total AS (SELECT greatest(sum(greatest(idf, 0)), 1e-9) AS s FROM df)"
    " SELECT m.document_id, m.chunk_index,"
    " 0.9 * sum(greatest(df.idf, 0)) / min(total.s)"
    " + 0.1 * min(ts_rank_cd(m.tsv, query.q, 32)) AS score"
    " FROM matched m JOIN df ON m.tsv @@ df.q CROSS JOIN total CROSS JOIN query"
    " GROUP BY m.document_id, m.chunk_index"
    " ORDER BY score DESC, m.document_id, m.chunk_index LIMIT $3"
)
_DETAILS_SQL = (
    "SELECT c.document_id, c.chunk_index, c.heading, c.body, d.title, d.metadata"
    " FROM unnest($2::text[], $3::integer[]) AS k(document_id, chunk_index)"
    " JOIN kb.chunks c ON c.tenant_id = $1 AND c.document_id = k.document_id"
    " AND c.chunk_index = k.chunk_index"
    " JOIN kb.documents d ON d.tenant_id = $1 AND d.document_id = k.document_id"
)
_DOC_COLUMNS = (
    "document_id, title, content_type, content_hash, chunk_count, metadata, source_uri,"
    " size_bytes, embedding_model, created_at, updated_at"
)


class PgTenantSession:
    """One tenant's transaction (implements knowledge_base.TenantSession)."""

    def __init__(
        self,
        conn: asyncpg.Connection,
        tenant_id: str,
        sql: _Statements,
        *,
        knn_mode: bool = False,
    ) -> None:
        self._conn = conn
        self._tenant = tenant_id
        self._sql = sql
        self._knn_mode = knn_mode

    async def _knn(self, on: bool) -> None:
        if on != self._knn_mode:
            await self._conn.execute(("SELECT 1" + _KNN_ON) if on else _KNN_OFF)
            self._knn_mode = on

    async def usage(self) -> TenantUsage:
        row = await self._conn.fetchrow(
            "SELECT documents, bytes, chunks FROM kb.tenants WHERE tenant_id = $1", self._tenant
        )
        if row is None:
            return TenantUsage(0, 0, 0)
        return TenantUsage(row["documents"], row["bytes"], row["chunks"])

    async def ingest_state(
        self, document_id: str
    ) -> tuple[StoredState | None, TenantUsage | None]:
        row = await self._conn.fetchrow(self._sql.ingest_state, self._tenant, document_id)
        assert row is not None
        usage = None
        if row["initialised"]:
            usage = TenantUsage(row["documents"], row["bytes"], row["chunks"])
        if row["fingerprint"] is None:
            return None, usage
        state = StoredState(
            row["fingerprint"], row["content_hash"], row["size_bytes"], row["chunk_count"],
            row["embedding_model"], int(row["vectors"]),
        )
        return state, usage

    async def stored_embeddings(self, document_id: str) -> dict[str, np.ndarray]:
        rows = await self._conn.fetch(self._sql.stored_embeddings, self._tenant, document_id)
        return {row["text_hash"]: row["embedding"] for row in rows}

    async def write_document(
        self,
        record: DocumentRecord,
        chunks: Sequence[Chunk],
        text_hashes: Sequence[str],
        vectors: np.ndarray,
        check: QuotaCheck,
    ) -> bool:
        conn, tenant, doc_id = self._conn, self._tenant, record.document_id
        counters = await conn.fetchrow(
            "SELECT documents, bytes, chunks FROM kb.tenants WHERE tenant_id = $1 FOR UPDATE",
            tenant,
        )
        if counters is None:
            raise Unavailable("tenant storage is not initialised yet; retry")
        before = TenantUsage(counters["documents"], counters["bytes"], counters["chunks"])
        old = await conn.fetchrow(
            "SELECT size_bytes, chunk_count FROM kb.documents"
            " WHERE tenant_id = $1 AND document_id = $2 FOR UPDATE",
            tenant, doc_id,
        )
        if old is None:
            after = TenantUsage(
                before.documents + 1, before.bytes + record.size_bytes,
                before.chunks + len(chunks),
            )
        else:
            after = TenantUsage(
                before.documents,
                before.bytes - old["size_bytes"] + record.size_bytes,
                before.chunks - old["chunk_count"] + len(chunks),
            )
        check(before, after)

        await conn.execute(
            "INSERT INTO kb.documents (tenant_id, document_id, title, content_type, content_hash,"
            " fingerprint, size_bytes, chunk_count, metadata, source_uri, embedding_model)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
            " ON CONFLICT (tenant_id, document_id) DO UPDATE SET"
            " title = EXCLUDED.title, content_type = EXCLUDED.content_type,"
            " content_hash = EXCLUDED.content_hash, fingerprint = EXCLUDED.fingerprint,"
            " size_bytes = EXCLUDED.size_bytes, chunk_count = EXCLUDED.chunk_count,"
            " metadata = EXCLUDED.metadata, source_uri = EXCLUDED.source_uri,"
            " embedding_model = EXCLUDED.embedding_model, updated_at = now()",
            tenant, doc_id, record.title, record.content_type, record.content_hash,
            record.fingerprint, record.size_bytes, len(chunks), record.metadata,
            record.source_uri, record.embedding_model,
        )
        if old is not None:
            await conn.execute(self._sql.delete_vectors, tenant, doc_id)
            await conn.execute(
                "DELETE FROM kb.chunks WHERE tenant_id = $1 AND document_id = $2", tenant, doc_id
            )
        # COPY cannot write to a table with row-level security, so rows go through
        # transaction-scoped temp tables and one INSERT ... SELECT each, which the policies'
        # WITH CHECK clauses see. The tenant and document come from bind parameters.
        await conn.execute(self._sql.create_stage)
        await conn.copy_records_to_table(
            "kb_stage_chunks",
            schema_name="pg_temp",
            columns=("chunk_index", "heading", "body", "text_hash"),
            records=[
                (c.index, c.heading, c.body, h) for c, h in zip(chunks, text_hashes, strict=True)
            ],
        )
        await conn.copy_records_to_table(
            self._sql.stage_emb,
            schema_name="pg_temp",
            columns=("chunk_index", "embedding"),
            records=[(c.index, vectors[i]) for i, c in enumerate(chunks)],
        )
        await conn.execute(self._sql.insert_chunks, tenant, doc_id)
        await conn.execute(self._sql.insert_emb, tenant, doc_id)
        await conn.execute(
            "UPDATE kb.tenants SET documents = $2, bytes = $3, chunks = $4, updated_at = now()"
            " WHERE tenant_id = $1",
            tenant, after.documents, after.bytes, after.chunks,
        )
        return old is None

    async def delete_document(self, document_id: str) -> DeleteResult:
        conn, tenant = self._conn, self._tenant
        await conn.execute("SELECT 1 FROM kb.tenants WHERE tenant_id = $1 FOR UPDATE", tenant)
        old = await conn.fetchrow(
            "DELETE FROM kb.documents WHERE tenant_id = $1 AND document_id = $2"
            " RETURNING size_bytes, chunk_count",
            tenant, document_id,
        )
        if old is None:
            return DeleteResult(False, 0)
        await conn.execute(self._sql.delete_vectors, tenant, document_id)
        status = await conn.execute(
            "DELETE FROM kb.chunks WHERE tenant_id = $1 AND document_id = $2", tenant, document_id
        )
        deleted = int(status.split()[-1])
        await conn.execute(
            "UPDATE kb.tenants SET documents = documents - 1, bytes = bytes - $2,"
            " chunks = chunks - $3, updated_at = now() WHERE tenant_id = $1",
            tenant, old["size_bytes"], deleted,
        )
        return DeleteResult(True, deleted)

    async def get_document(self, document_id: str) -> Document | None:
        row = await self._conn.fetchrow(
            f"SELECT {_DOC_COLUMNS} FROM kb.documents WHERE tenant_id = $1 AND document_id = $2",
            self._tenant, document_id,
        )
        return _document(row) if row is not None else None

    async def list_documents(self, after: str | None, limit: int) -> list[Document]:
        rows = await self._conn.fetch(
            f"SELECT {_DOC_COLUMNS} FROM kb.documents WHERE tenant_id = $1"
            " AND ($2::text IS NULL OR document_id > $2) ORDER BY document_id LIMIT $3",
            self._tenant, after, limit,
        )
        return [_document(row) for row in rows]

    async def resolve_filter(
        self, metadata_filter: Mapping[str, Any] | None, document_ids: Sequence[str] | None
    ) -> tuple[list[str], int]:
        await self._knn(False)
        rows = await self._conn.fetch(
            "SELECT document_id, chunk_count FROM kb.documents WHERE tenant_id = $1"
            " AND ($2::jsonb IS NULL OR metadata @> $2::jsonb)"
            " AND ($3::text[] IS NULL OR document_id = ANY($3::text[]))",
            self._tenant,
            dict(metadata_filter) if metadata_filter else None,
            list(document_ids) if document_ids else None,
        )
        return [row["document_id"] for row in rows], sum(row["chunk_count"] for row in rows)

    async def vector_candidates(
        self, vector: np.ndarray, limit: int, document_ids: Sequence[str] | None, exact: bool
    ) -> list[tuple[ChunkKey, float]]:
        await self._knn(True)
        if document_ids is None:
            rows = await self._conn.fetch(self._sql.vector, self._tenant, vector, limit)
        else:
            sql = self._sql.vector_exact if exact else self._sql.vector_filtered
            rows = await self._conn.fetch(sql, self._tenant, vector, limit, list(document_ids))
        return [((r["document_id"], r["chunk_index"]), 1.0 - float(r["distance"])) for r in rows]

    async def text_candidates(
        self, terms: Sequence[str], limit: int, document_ids: Sequence[str] | None
    ) -> list[tuple[ChunkKey, float]]:
        await self._knn(False)  # full text needs bitmap scans of its GIN index
        rows = await self._conn.fetch(
            _TEXT_SQL, self._tenant, list(terms), limit,
            list(document_ids) if document_ids is not None else None,
        )
        return [((r["document_id"], r["chunk_index"]), float(r["score"])) for r in rows]

    async def chunk_details(self, keys: Sequence[ChunkKey]) -> dict[ChunkKey, ChunkDetails]:
        rows = await self._conn.fetch(
            _DETAILS_SQL, self._tenant, [k[0] for k in keys], [k[1] for k in keys]
        )
        return {
            (r["document_id"], r["chunk_index"]): ChunkDetails(
                r["heading"], r["body"], r["title"], r["metadata"]
            )
            for r in rows
        }


    # -- operator commands: re-embedding, export, offboarding -------------------------------

    async def coverage(self) -> SpaceCoverage:
        """Documents, chunks and vectors in the configured model's table."""
        row = await self._conn.fetchrow(self._sql.coverage, self._tenant)
        assert row is not None
        return SpaceCoverage(int(row["documents"]), int(row["chunks"]), int(row["vectors"]))

    async def reembed_scan(self, after: str | None, limit: int) -> list[ReembedCandidate]:
        rows = await self._conn.fetch(self._sql.reembed_scan, self._tenant, after, limit)
        return [
            ReembedCandidate(
                document_id=r["document_id"], chunk_count=r["chunk_count"],
                vectors=int(r["vectors"]), updated_at=r["updated_at"],
                fingerprint=r["fingerprint"], content_hash=r["content_hash"],
                content_type=r["content_type"], title=r["title"], metadata=r["metadata"],
                source_uri=r["source_uri"], embedding_model=r["embedding_model"],
            )
            for r in rows
        ]

    async def chunk_texts(self, document_ids: Sequence[str]) -> dict[str, list[Chunk]]:
        rows = await self._conn.fetch(
            "SELECT document_id, chunk_index, heading, body FROM kb.chunks"
            " WHERE tenant_id = $1 AND document_id = ANY($2::text[])"
            " ORDER BY document_id, chunk_index",
            self._tenant, list(document_ids),
        )
        out: dict[str, list[Chunk]] = {}
        for r in rows:
            out.setdefault(r["document_id"], []).append(
                Chunk(r["chunk_index"], r["heading"], r["body"])
            )
        return out

    async def write_reembedded(
        self, writes: Sequence[ReembedWrite], model: str
    ) -> list[str]:
        """Replace the configured model's vectors of each document that is still at the
        version it was read at (same updated_at); returns the ids written. Documents changed
        meanwhile are skipped: their new version was written with fresh vectors."""
        if not writes:
            return []
        conn, tenant = self._conn, self._tenant
        wanted = {w.document_id: w for w in writes}
        rows = await conn.fetch(
            "SELECT document_id, updated_at, chunk_count FROM kb.documents"
            " WHERE tenant_id = $1 AND document_id = ANY($2::text[])"
            " ORDER BY document_id FOR UPDATE",
            tenant, sorted(wanted),
        )
        keep = [
            wanted[r["document_id"]] for r in rows
            if r["updated_at"] == wanted[r["document_id"]].updated_at
            and r["chunk_count"] == len(wanted[r["document_id"]].chunk_indexes)
        ]
        if not keep:
            return []
        ids = [w.document_id for w in keep]
        await conn.execute(self._sql.create_stage_reembed)
        await conn.copy_records_to_table(
            self._sql.stage_reembed,
            schema_name="pg_temp",
            columns=("document_id", "chunk_index", "embedding"),
            records=[
                (w.document_id, idx, w.vectors[i])
                for w in keep for i, idx in enumerate(w.chunk_indexes)
            ],
        )
        await conn.execute(self._sql.reembed_delete, tenant, ids)
        await conn.execute(self._sql.reembed_insert, tenant)
        await conn.execute(
            "UPDATE kb.documents d SET embedding_model = $2, fingerprint = u.fingerprint"
            " FROM unnest($3::text[], $4::text[]) AS u(document_id, fingerprint)"
            " WHERE d.tenant_id = $1 AND d.document_id = u.document_id",
            tenant, model, ids, [w.fingerprint for w in keep],
        )
        return ids

    async def export_page(self, after: str | None, limit: int) -> list[dict[str, Any]]:
        """Documents in id order with their chunks (text as stored: heading path and body)."""
        rows = await self._conn.fetch(
            f"SELECT {_DOC_COLUMNS},"
            " coalesce((SELECT jsonb_agg(jsonb_build_object('index', c.chunk_index,"
            " 'heading', c.heading, 'body', c.body) ORDER BY c.chunk_index)"
            " FROM kb.chunks c WHERE c.tenant_id = $1 AND c.document_id = d.document_id),"
            " '[]'::jsonb) AS chunks"
            " FROM kb.documents d WHERE d.tenant_id = $1"
            " AND ($2::text IS NULL OR d.document_id > $2) ORDER BY d.document_id LIMIT $3",
            self._tenant, after, limit,
        )
        return [dict(row) for row in rows]

    async def offboard(self, lock_timeout_ms: int) -> dict[str, Any]:
        """Drop the tenant's partitions and rows (kb.offboard_tenant); what was deleted."""
        report: dict[str, Any] = await self._conn.fetchval(
            "SELECT kb.offboard_tenant($1, $2)", self._tenant, lock_timeout_ms
        )
        return report


def _document(row: Mapping[str, Any]) -> Document:
    return Document(
        document_id=row["document_id"],
        title=row["title"],
        content_type=ContentType(row["content_type"]),
        content_hash=row["content_hash"],
        chunk_count=row["chunk_count"],
        metadata=row["metadata"],
        source_uri=row["source_uri"],
        size_bytes=row["size_bytes"],
        embedding_model=row["embedding_model"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )
