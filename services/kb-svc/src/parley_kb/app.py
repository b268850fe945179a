"""Builds kb-svc's parts from Settings (shared by `serve`, the CLI, tests and the bench)."""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from dataclasses import dataclass

from google.protobuf import timestamp_pb2
from parley.billing.v1 import billing_pb2
from parley_runtime.catalog import load_catalog
from parley_runtime.usage import UsageRecorder

from .cache import RedisVectorCache
from .chunking import ChunkingOptions, MarkdownChunker
from .config import KbTenants, Settings
from .embedding_cache import EmbeddingCache
from .embeddings import (
    Embedder,
    EmbeddingService,
    EmbeddingUsage,
    LocalWordLlamaEmbedder,
    UsageSink,
    VoyageEmbedder,
)
from .knowledge_base import KnowledgeBase, SearchOptions
from .migrator import MigrationReport, migrate
from .operations import KbOperations
from .store import PgKnowledgeStore

logger = logging.getLogger(__name__)


def build_embedder(settings: Settings) -> Embedder:
    """Voyage when VOYAGE_API_KEY is set, else the local model shipped in its wheel."""
    if settings.voyage_api_key:
        entry = load_catalog().get(settings.kb_voyage_model)
        if entry.kind != "embedding" or not entry.dimensions:
            raise SystemExit(f"{settings.kb_voyage_model!r} is not an embedding model")
        return VoyageEmbedder(
            api_key=settings.voyage_api_key,
            model_id=settings.kb_voyage_model,
            dimensions=int(entry.dimensions),
            base_url=settings.voyage_base_url,
            timeout_s=settings.kb_voyage_timeout_s,
            max_retries=settings.kb_voyage_max_retries,
        )
    return LocalWordLlamaEmbedder()


def usage_sink(recorder: UsageRecorder, service: str = "kb-svc") -> UsageSink:
    """Report each embedding operation as a billing UsageEvent."""

    def sink(tenant_id: str, usage: EmbeddingUsage) -> None:
        occurred = timestamp_pb2.Timestamp()
        occurred.FromDatetime(dt.datetime.now(dt.UTC))
        recorder.record(
            tenant_id,
            billing_pb2.UsageEvent(
                idempotency_key=f"{service}:embed:{uuid.uuid4().hex}",
                occurred_at=occurred,
                service=service,
                embedding=billing_pb2.EmbeddingUsage(
                    provider=usage.provider,
                    model_id=usage.model_id,
                    tokens=usage.tokens,
                    cached_texts=usage.cached_texts,
                    embedded_texts=usage.embedded_texts,
                ),
            ),
        )

    return sink


async def run_migrations(
    settings: Settings, tenants: KbTenants | None, embedder: Embedder, dsn: str | None = None
) -> MigrationReport:
    dsn = dsn or settings.migrate_database_url
    if not dsn:
        raise SystemExit("MIGRATE_DATABASE_URL is not set (the owner/superuser DSN)")
    role, password = settings.app_role_credentials()
    return await migrate(
        dsn,
        app_role=role,
        app_password=password,
        embedding_model=embedder.model_id,
        embedding_dimensions=embedder.dimensions,
        tenants=tenants.ids() if tenants is not None else (),
    )


@dataclass
class KbRuntime:
    kb: KnowledgeBase
    store: PgKnowledgeStore
    embeddings: EmbeddingService
    remote_cache: RedisVectorCache | None
    ops: KbOperations

    async def aclose(self) -> None:
        await self.ops.jobs.aclose()
        await self.store.close()
        if self.remote_cache is not None:
            await self.remote_cache.aclose()
        await self.embeddings.aclose()


async def build_runtime(
    settings: Settings,
    *,
    tenants: KbTenants,
    embedder: Embedder | None = None,
    recorder: UsageRecorder | None = None,
    prepare_tenants: bool = True,
) -> KbRuntime:
    """Connect the store and the cache and assemble the KnowledgeBase."""
    if not settings.database_url:
        raise SystemExit("DATABASE_URL is not set (the application role's DSN)")
    embedder = embedder or build_embedder(settings)
    if settings.migrate_database_url:
        await run_migrations(settings, tenants, embedder)
    store = await PgKnowledgeStore.connect(
        settings.database_url,
        model=embedder.model_id,
        dimensions=embedder.dimensions,
        min_size=settings.db_pool_min,
        max_size=settings.db_pool_max,
        ef_search=settings.kb_hnsw_ef_search,
        ef_reference_chunks=settings.kb_hnsw_ef_reference_chunks,
        statement_timeout_ms=settings.db_statement_timeout_ms,
        application_name=settings.service_name,
    )
    remote = RedisVectorCache.from_url(settings.redis_url) if settings.redis_url else None
    cache = EmbeddingCache(
        dimensions=embedder.dimensions,
        lru_capacity=settings.kb_embed_cache_entries,
        remote=remote,
        ttl_s=settings.kb_embed_cache_ttl_s,
    )
    embeddings = EmbeddingService(
        embedder,
        cache,
        batch_size=settings.kb_embed_batch_size,
        usage_sink=usage_sink(recorder, settings.service_name) if recorder is not None else None,
    )
    kb = KnowledgeBase(
        store=store,
        embeddings=embeddings,
        tenants=tenants,
        chunker=MarkdownChunker(
            ChunkingOptions(settings.kb_chunk_chars, settings.kb_chunk_overlap_chars)
        ),
        search_options=SearchOptions(
            top_k_default=settings.kb_top_k_default,
            top_k_max=settings.kb_top_k_max,
            exact_scan_max_chunks=settings.kb_exact_scan_max_chunks,
            max_query_chars=settings.kb_max_query_chars,
        ),
    )
    if prepare_tenants:
        await kb.prepare_tenants()
    ops = KbOperations(kb, store, cache,
                       offboard_lock_timeout_ms=settings.kb_offboard_lock_timeout_ms)
    return KbRuntime(kb, store, embeddings, remote, ops)
