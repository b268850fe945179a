"""Operator commands over whole tenants: re-embedding after a model change, export, offboarding.

They act as the service's own database role, one tenant-bound transaction at a time like every
request (row-level security applies), and are reachable from the CLI and the admin REST API's
operator endpoints. They do not check the tenant registry: an operator offboards tenants that
were already removed from the tenants file.

Re-embedding relies on an invariant kept by every write since migration 0002: a model's table
holds vectors of current document versions only (a changed or deleted document loses its
vectors in every model's table). A document is therefore done for the configured model when
that model's table holds `chunk_count` rows for it, and a run simply skips done documents: an
interrupted run, run again, finishes the rest without embedding the finished ones again.
Searches never mix models: each model has its own table and per-tenant HNSW indexes, and the
service searches the configured model's only.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from parley_runtime.errors import Aborted, InvalidArgument
from parley_runtime.tenants import TENANT_ID_RE

from .embedding_cache import EmbeddingCache
from .embeddings import InputType
from .knowledge_base import KnowledgeBase, document_fingerprint, legacy_fingerprint
from .models import ReembedCandidate, ReembedWrite, SpaceCoverage
from .store import PgKnowledgeStore

logger = logging.getLogger(__name__)

SCAN_PAGE_DOCUMENTS = 500
EXPORT_PAGE_DOCUMENTS = 100
DEFAULT_BATCH_CHUNKS = 256

# (tenant, chunks just re-embedded, chunks the tenant had to re-embed at the start)
ProgressFn = Callable[[str, int, int], None]


@dataclass(slots=True)
class ReembedReport:
    tenant_id: str
    model: str
    documents: int = 0  # documents of the tenant
    chunks: int = 0  # chunks of the tenant
    already_done: int = 0  # chunks that had the model's vectors at the start
    reembedded_documents: int = 0
    reembedded_chunks: int = 0  # written in this run
    chunks_embedded: int = 0  # sent to the embedding provider (cache misses)
    chunks_cached: int = 0  # found in the embedding cache
    skipped_changed: int = 0  # documents changed during the run (their new version has vectors)
    batches: int = 0
    remaining: int = 0  # chunks still without the model's vectors at the end
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True, slots=True)
class TenantStatus:
    tenant_id: str
    configured: bool
    model: str
    coverage: SpaceCoverage


@dataclass(frozen=True, slots=True)
class OffboardReport:
    tenant_id: str
    existed: bool
    documents: int
    chunks: int
    bytes: int
    embeddings: dict[str, int]  # model -> vectors deleted
    partitions_dropped: list[str]
    cache_entries_deleted: int

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def check_tenant_id(tenant_id: str) -> str:
    if not isinstance(tenant_id, str) or not TENANT_ID_RE.fullmatch(tenant_id):
        raise InvalidArgument("tenant id must match ^[a-z0-9][a-z0-9-]{0,62}$")
    return tenant_id


class KbOperations:
    """Re-embedding, status, export and offboarding of whole tenants."""

    def __init__(
        self,
        kb: KnowledgeBase,
        store: PgKnowledgeStore,
        cache: EmbeddingCache | None = None,
        *,
        offboard_lock_timeout_ms: int = 5000,
    ) -> None:
        self.kb = kb
        self.store = store
        self.cache = cache
        self.offboard_lock_timeout_ms = offboard_lock_timeout_ms
        self.jobs = ReembedJobs(self)

    @property
    def model(self) -> str:
        return self.kb.embeddings.model_id

    async def stored_tenants(self) -> list[str]:
        return await self.store.stored_tenants()

    async def status(self, tenant_ids: Sequence[str] | None = None) -> list[TenantStatus]:
        """Documents, chunks and vectors of the configured model, per stored tenant."""
        configured = set(self.kb.tenants.ids())
        out = []
        for tenant_id in tenant_ids or await self.stored_tenants():
            async with self.store.session(check_tenant_id(tenant_id), read_only=True) as session:
                coverage = await session.coverage()
            out.append(TenantStatus(tenant_id, tenant_id in configured, self.model, coverage))
        return out

    # -- re-embedding -------------------------------------------------------------------------

    async def reembed(
        self,
        tenant_id: str,
        *,
        batch_chunks: int = DEFAULT_BATCH_CHUNKS,
        progress: ProgressFn | None = None,
        on_start: Callable[[str, int], None] | None = None,
    ) -> ReembedReport:
        """Give every chunk of the tenant a vector of the configured model, in batches of about
        `batch_chunks` chunks (whole documents), each written in its own transaction."""
        check_tenant_id(tenant_id)
        if batch_chunks < 1:
            raise InvalidArgument("batch_chunks must be at least 1")
        started = time.perf_counter()
        report = ReembedReport(tenant_id, self.model)
        async with self.store.exclusive(f"reembed:{tenant_id}:{self.store.space.table}") as mine:
            if not mine:
                raise Aborted(
                    f"a re-embedding of tenant {tenant_id!r} with {self.model} is already "
                    "running (another process or request); wait for it to finish"
                )
            async with self.store.session(tenant_id, read_only=True) as session:
                start = await session.coverage()
            report.documents, report.chunks = start.documents, start.chunks
            report.already_done = start.vectors
            if on_start is not None:
                on_start(tenant_id, start.missing)
            after: str | None = None
            batch: list[ReembedCandidate] = []
            batch_size = 0
            while True:
                async with self.store.session(tenant_id, read_only=True) as session:
                    page = await session.reembed_scan(after, SCAN_PAGE_DOCUMENTS)
                if not page:
                    break
                after = page[-1].document_id
                for doc in page:
                    if doc.complete:
                        continue
                    batch.append(doc)
                    batch_size += doc.chunk_count
                    if batch_size >= batch_chunks:
                        await self._reembed_batch(tenant_id, batch, report, start, progress)
                        batch, batch_size = [], 0
            if batch:
                await self._reembed_batch(tenant_id, batch, report, start, progress)
            async with self.store.session(tenant_id, read_only=True) as session:
                report.remaining = (await session.coverage()).missing
        report.seconds = round(time.perf_counter() - started, 3)
        logger.info("re-embedding finished", extra=report.as_dict())
        return report

    async def _reembed_batch(
        self,
        tenant_id: str,
        batch: list[ReembedCandidate],
        report: ReembedReport,
        start: SpaceCoverage,
        progress: ProgressFn | None,
    ) -> None:
        async with self.store.session(tenant_id, read_only=True) as session:
            chunks = await session.chunk_texts([d.document_id for d in batch])
        docs = []
        texts: list[str] = []
        for doc in batch:
            found = chunks.get(doc.document_id, [])
            if len(found) != doc.chunk_count:  # changed or deleted since the scan
                report.skipped_changed += 1
                continue
            docs.append((doc, found))
            texts.extend(c.text for c in found)
        if not docs:
            return
        # Through the embedding service: the tenant's cache entries, provider batches and
        # usage reporting, exactly as ingestion.
        embedded = await self.kb.embeddings.embed(tenant_id, texts, InputType.DOCUMENT)
        writes = []
        row = 0
        for doc, found in docs:
            writes.append(ReembedWrite(
                document_id=doc.document_id, updated_at=doc.updated_at,
                chunk_indexes=[c.index for c in found],
                vectors=embedded.vectors[row:row + len(found)],
                fingerprint=self._upgraded_fingerprint(doc),
            ))
            row += len(found)
        async with self.store.session(tenant_id) as session:
            written = set(await session.write_reembedded(writes, self.model))
        done = sum(len(w.chunk_indexes) for w in writes if w.document_id in written)
        report.skipped_changed += len(writes) - len(written)
        report.reembedded_documents += len(written)
        report.reembedded_chunks += done
        report.chunks_embedded += embedded.embedded
        report.chunks_cached += embedded.cached
        report.batches += 1
        if progress is not None:
            progress(tenant_id, done, start.missing)

    def _upgraded_fingerprint(self, doc: ReembedCandidate) -> str:
        """A fingerprint written before migration 0002 included the model: replace it with the
        model-free one when it verifiably describes the stored version (same chunker
        settings), so an unchanged re-ingest stays a no-op after the model change."""
        version = (doc.content_hash, doc.content_type, doc.title, doc.metadata, doc.source_uri,
                   self.kb.chunker.options.version)
        if doc.fingerprint == legacy_fingerprint(*version, doc.embedding_model):
            return document_fingerprint(*version)
        return doc.fingerprint

    # -- export and offboarding ---------------------------------------------------------------

    async def export(self, tenant_id: str) -> AsyncIterator[dict[str, Any]]:
        """The tenant's documents, one JSON-ready object each (metadata and the text of every
        chunk as stored; the original files are not stored), in document id order."""
        check_tenant_id(tenant_id)
        after: str | None = None
        while True:
            async with self.store.session(tenant_id, read_only=True) as session:
                page = await session.export_page(after, EXPORT_PAGE_DOCUMENTS)
            if not page:
                return
            for row in page:
                yield {"tenant_id": tenant_id, **_jsonable(row)}
            after = page[-1]["document_id"]

    async def offboard(self, tenant_id: str, *, confirm: str | None) -> OffboardReport:
        """Delete everything kb-svc stores for the tenant: documents, chunks, vectors of every
        model, its partitions and their indexes, usage counters, and its embedding cache
        entries. `confirm` must repeat the tenant id. Idempotent."""
        check_tenant_id(tenant_id)
        if confirm != tenant_id:
            raise InvalidArgument(
                f"offboarding deletes all of {tenant_id!r}'s data: confirm by repeating the "
                "tenant id"
            )
        async with self.store.exclusive(f"offboard:{tenant_id}") as mine:
            if not mine:
                raise Aborted(f"tenant {tenant_id!r} is already being offboarded")
            async with self.store.session(tenant_id) as session:
                result = await session.offboard(self.offboard_lock_timeout_ms)
        self.kb.forget_tenant(tenant_id)
        self.store.forget_tenant(tenant_id)
        cache_deleted = 0
        if self.cache is not None:
            cache_deleted = await self.cache.delete_tenant(tenant_id)
        report = OffboardReport(
            tenant_id=tenant_id,
            existed=bool(result["existed"]),
            documents=int(result["documents"]),
            chunks=int(result["chunks"]),
            bytes=int(result["bytes"]),
            embeddings={k: int(v) for k, v in result["embeddings"].items()},
            partitions_dropped=list(result["partitions_dropped"]),
            cache_entries_deleted=cache_deleted,
        )
        logger.warning("tenant offboarded", extra=report.as_dict())
        return report


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v.isoformat() if isinstance(v, dt.datetime) else v for k, v in row.items()}


# -- background re-embedding jobs (admin REST) --------------------------------------------------


@dataclass(slots=True)
class ReembedJob:
    job_id: str
    tenants: list[str] | None  # None: every stored tenant
    model: str
    batch_chunks: int
    state: Literal["running", "succeeded", "failed"] = "running"
    started_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    finished_at: dt.datetime | None = None
    current_tenant: str | None = None
    chunks_to_do: int = 0  # summed over the tenants started so far
    chunks_done: int = 0
    reports: list[ReembedReport] = field(default_factory=list)
    error: str | None = None
    task: asyncio.Task[None] | None = None

    @property
    def scope(self) -> tuple[str, ...]:
        return tuple(self.tenants) if self.tenants is not None else ("*",)


class ReembedJobs:
    """Re-embedding runs started over REST, in this process. A job that dies with the
    process is resumed by starting it again (done documents are skipped)."""

    MAX_FINISHED = 100

    def __init__(self, ops: KbOperations) -> None:
        self._ops = ops
        self._jobs: dict[str, ReembedJob] = {}

    def get(self, job_id: str) -> ReembedJob | None:
        return self._jobs.get(job_id)

    def recent(self) -> list[ReembedJob]:
        return sorted(self._jobs.values(), key=lambda j: j.started_at, reverse=True)

    def start(self, tenants: list[str] | None, batch_chunks: int) -> tuple[ReembedJob, bool]:
        """The running job for the same scope, or a new one; and whether it is new."""
        for tenant_id in tenants or ():
            check_tenant_id(tenant_id)
        if batch_chunks < 1:
            raise InvalidArgument("batch_chunks must be at least 1")
        scope = tuple(tenants) if tenants is not None else ("*",)
        for job in self._jobs.values():
            if job.state == "running" and job.scope == scope:
                return job, False
        job = ReembedJob(uuid.uuid4().hex[:16], tenants, self._ops.model, batch_chunks)
        self._jobs[job.job_id] = job
        job.task = asyncio.create_task(self._run(job), name=f"kb-reembed-{job.job_id}")
        self._trim()
        return job, True

    async def _run(self, job: ReembedJob) -> None:
        def on_start(tenant_id: str, missing: int) -> None:
            job.current_tenant = tenant_id
            job.chunks_to_do += missing

        def progress(tenant_id: str, done: int, total: int) -> None:
            job.chunks_done += done

        try:
            tenants = job.tenants if job.tenants is not None else await self._ops.stored_tenants()
            for tenant_id in tenants:
                job.reports.append(await self._ops.reembed(
                    tenant_id, batch_chunks=job.batch_chunks, progress=progress,
                    on_start=on_start,
                ))
            job.state = "succeeded"
        except Exception as exc:
            logger.exception("re-embedding job failed", extra={"job_id": job.job_id})
            job.state = "failed"
            job.error = f"{type(exc).__name__}: {getattr(exc, 'message', None) or exc}"
        finally:
            job.current_tenant = None
            job.finished_at = dt.datetime.now(dt.UTC)

    def _trim(self) -> None:
        finished = [j for j in self.recent() if j.state != "running"]
        for job in finished[self.MAX_FINISHED:]:
            self._jobs.pop(job.job_id, None)

    async def aclose(self) -> None:
        for job in self._jobs.values():
            if job.task is not None and not job.task.done():
                job.task.cancel()
        for job in self._jobs.values():
            if job.task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await job.task
