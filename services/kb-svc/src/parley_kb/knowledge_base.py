"""The knowledge base: ingestion, search and document management for one tenant at a time.

Tenant isolation is enforced twice: every call names the tenant of the authenticated request,
and the store binds its database transaction to that tenant so row-level security filters
every statement (a bug in a query cannot reach another tenant's rows).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import logging
import math
import re
import string
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from parley_runtime.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)

from . import metrics
from .chunking import MarkdownChunker
from .config import KbTenants, TenantLimits
from .embeddings import EmbeddingService, InputType
from .extract import extract_text
from .models import (
    Chunk,
    ContentType,
    DeleteResult,
    Document,
    DocumentInput,
    DocumentPage,
    IngestOutcome,
    IngestResult,
    SearchHit,
    SearchMode,
    SearchQuery,
    SearchResult,
    TenantUsage,
)
from .ranking import reciprocal_rank_fusion

logger = logging.getLogger(__name__)

DOCUMENT_ID_RE = re.compile(r"^[^\x00-\x1f\x7f]{1,256}\Z")
MAX_TITLE_CHARS = 1000
MAX_SOURCE_URI_CHARS = 2048
MAX_METADATA_BYTES = 16 * 1024
MAX_FILTER_DOCUMENT_IDS = 1000
MAX_QUERY_TERMS = 64
MAX_PAGE_SIZE = 500
DEFAULT_PAGE_SIZE = 50
HYBRID_MIN_CANDIDATES = 40

ChunkKey = tuple[str, int]


@dataclass(frozen=True, slots=True)
class StoredState:
    fingerprint: str
    content_hash: str
    size_bytes: int
    chunk_count: int
    embedding_model: str
    vectors: int  # the document's rows in the configured model's table


@dataclass(frozen=True, slots=True)
class DocumentRecord:
    """What the store writes for one document version."""

    document_id: str
    title: str
    content_type: str
    content_hash: str
    fingerprint: str
    size_bytes: int
    metadata: dict[str, Any]
    source_uri: str
    embedding_model: str


@dataclass(frozen=True, slots=True)
class ChunkDetails:
    heading: str
    body: str
    document_title: str
    metadata: dict[str, Any]


QuotaCheck = Callable[[TenantUsage, TenantUsage], None]


class TenantSession(Protocol):
    """Reads and writes of one tenant inside one database transaction."""

    async def usage(self) -> TenantUsage: ...

    async def ingest_state(
        self, document_id: str
    ) -> tuple[StoredState | None, TenantUsage | None]:
        """The stored version of a document (None if absent) and the tenant's usage (None if
        the tenant has no storage: never prepared, or offboarded)."""
        ...

    async def stored_embeddings(self, document_id: str) -> dict[str, np.ndarray]: ...

    async def write_document(
        self,
        record: DocumentRecord,
        chunks: Sequence[Chunk],
        text_hashes: Sequence[str],
        vectors: np.ndarray,
        check: QuotaCheck,
    ) -> bool: ...

    async def delete_document(self, document_id: str) -> DeleteResult: ...

    async def get_document(self, document_id: str) -> Document | None: ...

    async def list_documents(self, after: str | None, limit: int) -> list[Document]: ...

    async def resolve_filter(
        self, metadata_filter: Mapping[str, Any] | None, document_ids: Sequence[str] | None
    ) -> tuple[list[str], int]: ...

    async def vector_candidates(
        self, vector: np.ndarray, limit: int, document_ids: Sequence[str] | None, exact: bool
    ) -> list[tuple[ChunkKey, float]]: ...

    async def text_candidates(
        self, terms: Sequence[str], limit: int, document_ids: Sequence[str] | None
    ) -> list[tuple[ChunkKey, float]]: ...

    async def chunk_details(self, keys: Sequence[ChunkKey]) -> dict[ChunkKey, ChunkDetails]: ...


class KnowledgeStore(Protocol):
    def session(
        self, tenant_id: str, *, knn: bool = False, read_only: bool = False
    ) -> AbstractAsyncContextManager[TenantSession]:
        """A transaction bound to the tenant; `knn` hints that it starts with a vector search;
        `read_only` says it writes nothing (it may then commit after the caller moved on)."""
        ...

    async def ensure_tenant(self, tenant_id: str) -> None: ...


@dataclass(frozen=True, slots=True)
class SearchOptions:
    top_k_default: int = 5
    top_k_max: int = 50
    exact_scan_max_chunks: int = 4000
    max_query_chars: int = 4000
    rrf_k: int = 60


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class KnowledgeBase:
    """Domain service behind the gRPC API, the admin REST API and the CLI."""

    def __init__(
        self,
        *,
        store: KnowledgeStore,
        embeddings: EmbeddingService,
        tenants: KbTenants,
        chunker: MarkdownChunker | None = None,
        search_options: SearchOptions | None = None,
    ) -> None:
        self.store = store
        self.embeddings = embeddings
        self.tenants = tenants
        self.chunker = chunker or MarkdownChunker()
        self.search_options = search_options or SearchOptions()
        self._ready_tenants: set[str] = set()
        self._tenant_locks: dict[str, asyncio.Lock] = {}

    @property
    def embedding_model(self) -> str:
        return self.embeddings.model_id

    # -- tenants ------------------------------------------------------------------------------

    async def prepare_tenants(self) -> None:
        """Create the partitions of every configured tenant (idempotent)."""
        for tenant_id in self.tenants.ids():
            await self._ensure_tenant(tenant_id)

    def forget_tenant(self, tenant_id: str) -> None:
        """The tenant's storage is gone (offboarded): create it again before its next write."""
        self._ready_tenants.discard(tenant_id)

    async def _ensure_tenant(self, tenant_id: str) -> None:
        if tenant_id in self._ready_tenants:
            return
        lock = self._tenant_locks.setdefault(tenant_id, asyncio.Lock())
        async with lock:
            if tenant_id not in self._ready_tenants:
                await self.store.ensure_tenant(tenant_id)
                self._ready_tenants.add(tenant_id)

    async def usage(self, tenant_id: str) -> tuple[TenantUsage, TenantLimits]:
        limits = self.tenants.limits(tenant_id)
        async with self.store.session(tenant_id, read_only=True) as session:
            return await session.usage(), limits

    # -- ingestion ----------------------------------------------------------------------------

    async def ingest(self, tenant_id: str, doc: DocumentInput) -> IngestResult:
        start = time.perf_counter()
        try:
            result = await self._ingest(tenant_id, doc)
        except (InvalidArgument, ResourceExhausted, FailedPrecondition):
            metrics.INGESTS.labels("rejected").inc()
            raise
        except Exception:
            metrics.INGESTS.labels("failed").inc()
            raise
        metrics.INGESTS.labels(result.outcome.value).inc()
        metrics.INGEST_SECONDS.labels(result.outcome.value).observe(time.perf_counter() - start)
        return result

    async def _ingest(self, tenant_id: str, doc: DocumentInput) -> IngestResult:
        limits = self.tenants.limits(tenant_id)
        _validate_document_id(doc.document_id)
        title = _clean_text_field(doc.title, "title", MAX_TITLE_CHARS)
        source_uri = _clean_text_field(doc.source_uri, "source_uri", MAX_SOURCE_URI_CHARS)
        metadata = validate_metadata(doc.metadata, "metadata")
        if limits.read_only:
            raise FailedPrecondition("ingestion is disabled for this tenant (kb.read_only)")
        size = len(doc.content)
        if size == 0:
            raise InvalidArgument("document content is empty")
        if size > limits.max_document_bytes:
            raise InvalidArgument(
                f"document is {size} bytes; the limit is {limits.max_document_bytes} bytes"
            )
        model = self.embeddings.model_id
        content_hash = hashlib.sha256(doc.content).hexdigest()
        version = (content_hash, doc.content_type.value, title, metadata, source_uri,
                   self.chunker.options.version)
        fingerprint = document_fingerprint(*version)
        await self._ensure_tenant(tenant_id)

        stored: dict[str, np.ndarray] = {}
        async with self.store.session(tenant_id, read_only=True) as session:
            state, usage = await session.ingest_state(doc.document_id)
            # Unchanged: same version, and the configured model's table holds all of its
            # vectors (after a model change it does not until `reembed` or a write adds them).
            unchanged = (
                usage is not None and state is not None
                and state.fingerprint in (fingerprint, legacy_fingerprint(*version, model))
                and state.vectors >= state.chunk_count
            )
            if not unchanged and state is not None and state.vectors:
                stored = await session.stored_embeddings(doc.document_id)
        if unchanged:
            assert state is not None
            return IngestResult(
                document_id=doc.document_id, outcome=IngestOutcome.UNCHANGED,
                chunks=state.chunk_count, chunks_embedded=0,
                content_hash=state.content_hash, embedding_model=model,
            )
        if usage is None:
            # The tenant's storage is gone (offboarded while this process had it ready):
            # create it again, as for a new tenant.
            self._ready_tenants.discard(tenant_id)
            await self._ensure_tenant(tenant_id)
            usage = TenantUsage(0, 0, 0)

        if doc.content_type in (ContentType.TEXT, ContentType.MARKDOWN) and size <= 32 * 1024:
            chunks = self._extract_and_chunk(doc)  # well under a millisecond: no thread hop
        else:
            chunks = await asyncio.to_thread(self._extract_and_chunk, doc)
        if not chunks:
            raise InvalidArgument("document has no text content to index")
        check = _quota_check(limits)
        # Fail before paying for embeddings when the quota cannot hold the new version.
        check(usage, _after(usage, state, size, len(chunks)))

        texts = [c.text for c in chunks]
        hashes = [text_hash(t) for t in texts]
        known = {t: stored[h] for t, h in zip(texts, hashes, strict=True) if h in stored}
        embedded = await self.embeddings.embed(
            tenant_id, texts, InputType.DOCUMENT, known=known
        )
        record = DocumentRecord(
            document_id=doc.document_id, title=title, content_type=doc.content_type.value,
            content_hash=content_hash, fingerprint=fingerprint, size_bytes=size,
            metadata=metadata, source_uri=source_uri, embedding_model=model,
        )
        async with self.store.session(tenant_id) as session:
            created = await session.write_document(
                record, chunks, hashes, embedded.vectors, check
            )
        return IngestResult(
            document_id=doc.document_id,
            outcome=IngestOutcome.CREATED if created else IngestOutcome.UPDATED,
            chunks=len(chunks), chunks_embedded=embedded.embedded,
            content_hash=content_hash, embedding_model=model,
        )

    def _extract_and_chunk(self, doc: DocumentInput) -> list[Chunk]:
        extracted = extract_text(doc.content, doc.content_type)
        return self.chunker.chunk(extracted.text, markdown=extracted.markdown)

    # -- documents ----------------------------------------------------------------------------

    async def get_document(self, tenant_id: str, document_id: str) -> Document:
        self.tenants.limits(tenant_id)
        _validate_document_id(document_id)
        async with self.store.session(tenant_id, read_only=True) as session:
            found = await session.get_document(document_id)
        if found is None:
            raise NotFound(f"no document {document_id!r}")
        return found

    async def list_documents(
        self, tenant_id: str, page_size: int = 0, page_token: str = ""
    ) -> DocumentPage:
        self.tenants.limits(tenant_id)
        if page_size < 0:
            raise InvalidArgument("page_size must not be negative")
        size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        after = _decode_page_token(page_token) if page_token else None
        async with self.store.session(tenant_id, read_only=True) as session:
            docs = await session.list_documents(after, size + 1)
        next_token = ""
        if len(docs) > size:
            docs = docs[:size]
            next_token = _encode_page_token(docs[-1].document_id)
        return DocumentPage(docs, next_token)

    async def delete_document(self, tenant_id: str, document_id: str) -> DeleteResult:
        self.tenants.limits(tenant_id)
        _validate_document_id(document_id)
        async with self.store.session(tenant_id) as session:
            return await session.delete_document(document_id)

    # -- search -------------------------------------------------------------------------------

    async def search(self, tenant_id: str, query: SearchQuery) -> SearchResult:
        self.tenants.limits(tenant_id)
        opts = self.search_options
        text = query.text.strip()
        if not text:
            raise InvalidArgument("query is empty")
        if len(text) > opts.max_query_chars:
            raise InvalidArgument(f"query is longer than {opts.max_query_chars} characters")
        if "\x00" in text:
            raise InvalidArgument("query contains NUL characters")
        if not _is_unicode(text):
            raise InvalidArgument("query is not valid Unicode (it has a lone surrogate)")
        if query.top_k < 0:
            raise InvalidArgument("top_k must not be negative")
        top_k = min(query.top_k or opts.top_k_default, opts.top_k_max)
        if not math.isfinite(query.min_score):
            raise InvalidArgument("min_score must be a finite number")
        metadata_filter = validate_metadata(query.metadata_filter, "metadata_filter")
        if len(query.document_ids) > MAX_FILTER_DOCUMENT_IDS:
            raise InvalidArgument(f"at most {MAX_FILTER_DOCUMENT_IDS} document_ids per search")
        for doc_id in query.document_ids:
            _validate_document_id(doc_id)
        mode = query.mode

        start = time.perf_counter()
        vector: np.ndarray | None = None
        if mode in (SearchMode.VECTOR, SearchMode.HYBRID):
            try:
                embedded = await self.embeddings.embed(tenant_id, [text], InputType.QUERY)
                vector = embedded.vectors[0]
            except Unavailable:
                if mode is SearchMode.VECTOR:
                    raise
                # Hybrid degrades to full text while the embedding provider is down: the
                # agent still gets answers, ranked by words only.
                logger.warning("query embedding failed; hybrid search falls back to full text")
                metrics.SEARCH_DEGRADED.inc()
        n_candidates = top_k if mode is not SearchMode.HYBRID else max(
            top_k * 4, HYBRID_MIN_CANDIDATES
        )
        fts_terms = full_text_terms(text)

        filtered = bool(metadata_filter or query.document_ids)
        knn_first = vector is not None and not filtered
        async with self.store.session(tenant_id, knn=knn_first, read_only=True) as session:
            doc_filter: list[str] | None = None
            exact = False
            if filtered:
                doc_filter, total_chunks = await session.resolve_filter(
                    metadata_filter or None, list(query.document_ids) or None
                )
                if not doc_filter:
                    return SearchResult([], self.embedding_model)
                exact = total_chunks <= opts.exact_scan_max_chunks
            vec_hits: list[tuple[ChunkKey, float]] = []
            txt_hits: list[tuple[ChunkKey, float]] = []
            if vector is not None:
                vec_hits = await session.vector_candidates(vector, n_candidates, doc_filter, exact)
                vec_hits.sort(key=lambda item: -item[1])  # relaxed_order scans may misorder
            if mode in (SearchMode.FULL_TEXT, SearchMode.HYBRID) and fts_terms:
                txt_hits = await session.text_candidates(fts_terms, n_candidates, doc_filter)
            ranked = _rank(mode, vec_hits, txt_hits, opts.rrf_k)
            if query.min_score:  # 0 keeps all (cosine similarities can be negative)
                ranked = [(key, score) for key, score in ranked if score >= query.min_score]
            ranked = ranked[:top_k]
            details = await session.chunk_details([key for key, _ in ranked]) if ranked else {}

        hits = []
        for key, score in ranked:
            info = details.get(key)
            if info is None:  # deleted between the two statements of this transaction: skip
                continue
            body = f"{info.heading}\n\n{info.body}" if info.heading else info.body
            hits.append(
                SearchHit(
                    document_id=key[0], chunk_index=key[1], document_title=info.document_title,
                    text=body, score=score, metadata=info.metadata,
                )
            )
        metrics.SEARCH_SECONDS.labels(mode.value).observe(time.perf_counter() - start)
        return SearchResult(hits, self.embedding_model)


def _rank(
    mode: SearchMode,
    vec_hits: list[tuple[ChunkKey, float]],
    txt_hits: list[tuple[ChunkKey, float]],
    rrf_k: int,
) -> list[tuple[ChunkKey, float]]:
    if mode is SearchMode.VECTOR:
        return vec_hits
    if mode is SearchMode.FULL_TEXT:
        return txt_hits
    return reciprocal_rank_fusion(
        [[key for key, _ in vec_hits], [key for key, _ in txt_hits]], k=rrf_k
    )


_EDGE_PUNCTUATION = string.punctuation + "\u2018\u2019\u201c\u201d"


def full_text_terms(text: str) -> list[str]:
    """The query's words for full-text search, ORed together by the store.

    Questions rarely contain every word of the passage that answers them, so AND semantics
    (websearch_to_tsquery's default) finds little. Words keep inner punctuation, so "E-217"
    or "HMAC-SHA256" stay one term (a phrase to PostgreSQL); edge punctuation, quotes and a
    leading "-" (websearch's NOT) are stripped, and "or" is dropped, so no operator syntax
    reaches the parser. The terms travel as a bind parameter in any case.
    """
    terms: list[str] = []
    for raw in text.split():
        word = raw.replace('"', "").strip(_EDGE_PUNCTUATION)
        if word and word.lower() != "or" and word not in terms:
            terms.append(word)
    return terms[:MAX_QUERY_TERMS]


def _is_unicode(value: str) -> bool:
    """Encodable as UTF-8, i.e. no lone surrogates. gRPC strings never have them, but JSON
    bodies of the admin API can ("\\ud800"), and the database driver fails on them."""
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def _is_document_id(value: str) -> bool:
    # fullmatch: `$` alone also matches before a trailing newline
    return DOCUMENT_ID_RE.fullmatch(value) is not None and _is_unicode(value)


def _validate_document_id(document_id: str) -> None:
    if not document_id:
        raise InvalidArgument("document_id is required")
    if not _is_document_id(document_id):
        raise InvalidArgument(
            "document_id must be 1-256 characters of valid Unicode with no control characters"
        )


def _clean_text_field(value: str, name: str, limit: int) -> str:
    if len(value) > limit:
        raise InvalidArgument(f"{name} is longer than {limit} characters")
    if "\x00" in value:
        raise InvalidArgument(f"{name} contains NUL characters")
    if not _is_unicode(value):
        raise InvalidArgument(f"{name} is not valid Unicode (it has a lone surrogate)")
    return value.strip()


def validate_metadata(value: Mapping[str, Any] | None, name: str) -> dict[str, Any]:
    """A JSON object of bounded size whose strings PostgreSQL's jsonb can store."""
    if not value:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidArgument(f"{name} must be an object")
    try:
        encoded = json.dumps(value, sort_keys=True, allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError):
        raise InvalidArgument(
            f"{name} must contain only JSON values (strings, finite numbers, booleans, null, "
            "lists and objects with string keys)"
        ) from None
    if not _is_unicode(encoded):
        raise InvalidArgument(f"{name} is not valid Unicode (it has a lone surrogate)")
    if len(encoded.encode()) > MAX_METADATA_BYTES:
        raise InvalidArgument(f"{name} is larger than {MAX_METADATA_BYTES} bytes")
    if "\\u0000" in encoded or "\x00" in encoded:
        raise InvalidArgument(f"{name} contains NUL characters")
    decoded: dict[str, Any] = json.loads(encoded)
    return decoded


def _fingerprint(*parts: Any) -> str:
    return hashlib.sha256(
        json.dumps(parts, sort_keys=True, ensure_ascii=False).encode()
    ).hexdigest()


def document_fingerprint(
    content_hash: str, content_type: str, title: str, metadata: Mapping[str, Any],
    source_uri: str, chunker_version: str,
) -> str:
    """Everything that defines a stored version (what is chunked, and how). The embedding
    model is not part of it: whether the configured model's vectors exist is checked apart,
    so re-embedding with another model does not make documents look changed."""
    return _fingerprint(content_hash, content_type, title, dict(metadata), source_uri,
                        chunker_version)


def legacy_fingerprint(
    content_hash: str, content_type: str, title: str, metadata: Mapping[str, Any],
    source_uri: str, chunker_version: str, model: str,
) -> str:
    """The fingerprint written before migration 0002 (it included the model)."""
    return _fingerprint(content_hash, content_type, title, dict(metadata), source_uri,
                        chunker_version, model)


def _after(usage: TenantUsage, state: StoredState | None, size: int, chunks: int) -> TenantUsage:
    if state is None:
        return TenantUsage(usage.documents + 1, usage.bytes + size, usage.chunks + chunks)
    return TenantUsage(
        usage.documents,
        usage.bytes - state.size_bytes + size,
        usage.chunks - state.chunk_count + chunks,
    )


def _quota_check(limits: TenantLimits) -> QuotaCheck:
    def check(before: TenantUsage, after: TenantUsage) -> None:
        if after.documents > before.documents and after.documents > limits.max_documents:
            raise ResourceExhausted(
                f"document quota reached ({limits.max_documents} documents)"
            )
        if after.bytes > before.bytes and after.bytes > limits.max_total_bytes:
            raise ResourceExhausted(
                f"storage quota exceeded: {after.bytes} bytes of {limits.max_total_bytes}"
            )
        if after.chunks > before.chunks and after.chunks > limits.max_chunks:
            raise ResourceExhausted(
                f"chunk quota exceeded: {after.chunks} chunks of {limits.max_chunks}"
            )

    return check


# A token holds one document id (at most 256 characters, up to 4 UTF-8 bytes each, JSON
# escapes of up to 12 characters) in base64: anything much longer was not issued here.
_MAX_PAGE_TOKEN_CHARS = 8192


def _encode_page_token(after: str) -> str:
    return base64.urlsafe_b64encode(json.dumps({"after": after}).encode()).decode()


def _decode_page_token(token: str) -> str:
    """The document id a page token continues after. Tokens are plain base64 JSON (not
    signed: they only say where a listing of the caller's own documents resumes), so every
    field is checked like a caller's input before it reaches SQL (a NUL or a lone surrogate
    would fail inside the driver, an INTERNAL error)."""
    bad = InvalidArgument("page_token is not one this service issued; start without it")
    if len(token) > _MAX_PAGE_TOKEN_CHARS:
        raise bad
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode()))
        after = data["after"]
    except (binascii.Error, ValueError, KeyError, TypeError, UnicodeError):
        raise bad from None
    if not isinstance(after, str) or not _is_document_id(after):
        raise bad
    return after

