"""Admin REST API (FastAPI, OpenAPI at /openapi.json and /docs) for operators and tools.

Authenticated with the same service JWTs as gRPC (`Authorization: Bearer <token>`). The
tenant endpoints (/v1/documents, /v1/search, /v1/usage) act for the token's `tenant` claim
only. The operator endpoints (/v1/admin/...: re-embedding, tenant status, export, offboarding)
act on any tenant and accept only callers named in PARLEY_KB_OPERATOR_CALLERS (token `iss`).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import logging
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from parley_runtime.asgi import RejectBadPaths
from parley_runtime.auth import TokenVerifier
from parley_runtime.context import TENANT_HEADER, tenant_id_var
from parley_runtime.errors import (
    InvalidArgument,
    NotFound,
    ParleyError,
    PermissionDenied,
    Unauthenticated,
)
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from .knowledge_base import KnowledgeBase
from .models import ContentType, Document, DocumentInput, SearchMode, SearchQuery
from .operations import KbOperations, ReembedJob, check_tenant_id

logger = logging.getLogger(__name__)

_HTTP_STATUS = {
    "INVALID_ARGUMENT": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "ABORTED": 409,
    "FAILED_PRECONDITION": 412,
    "RESOURCE_EXHAUSTED": 429,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}


class DocumentOut(BaseModel):
    document_id: str
    title: str
    content_type: ContentType
    content_hash: str
    chunks: int
    metadata: dict[str, Any]
    source_uri: str
    size_bytes: int
    embedding_model: str
    created_at: dt.datetime
    updated_at: dt.datetime

    @classmethod
    def of(cls, doc: Document) -> DocumentOut:
        return cls(
            document_id=doc.document_id, title=doc.title, content_type=doc.content_type,
            content_hash=doc.content_hash, chunks=doc.chunk_count, metadata=doc.metadata,
            source_uri=doc.source_uri, size_bytes=doc.size_bytes,
            embedding_model=doc.embedding_model, created_at=doc.created_at,
            updated_at=doc.updated_at,
        )


class DocumentList(BaseModel):
    documents: list[DocumentOut]
    next_page_token: str


class IngestBody(BaseModel):
    """Text content in `content`, or any content (PDF) base64-encoded in `content_base64`."""

    title: str = ""
    content_type: ContentType
    content: str | None = None
    content_base64: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    source_uri: str = ""


class IngestOut(BaseModel):
    document_id: str
    outcome: Literal["created", "updated", "unchanged"]
    chunks: int
    chunks_embedded: int
    content_hash: str
    embedding_model: str


class SearchBody(BaseModel):
    query: str
    top_k: int = 0
    mode: SearchMode = SearchMode.HYBRID
    min_score: float = 0.0
    metadata_filter: dict[str, Any] = Field(default_factory=dict)
    document_ids: list[str] = Field(default_factory=list)


class HitOut(BaseModel):
    chunk_id: str
    document_id: str
    document_title: str
    chunk_index: int
    text: str
    score: float
    metadata: dict[str, Any]


class SearchOut(BaseModel):
    hits: list[HitOut]
    embedding_model: str


class DeleteOut(BaseModel):
    deleted: bool
    chunks_deleted: int


class UsageOut(BaseModel):
    tenant_id: str
    documents: int
    bytes: int
    chunks: int
    max_documents: int
    max_total_bytes: int
    max_chunks: int
    max_document_bytes: int
    read_only: bool


class TenantStatusOut(BaseModel):
    tenant_id: str
    configured: bool = Field(description="named in the tenants file")
    model: str = Field(description="the configured embedding model")
    documents: int
    chunks: int
    chunks_with_model: int = Field(description="chunks that have a vector of `model`")
    chunks_missing_model: int = Field(description="chunks `reembed` would embed")


class ReembedBody(BaseModel):
    """Name the tenants, or set `all_tenants` for every tenant with storage."""

    tenant_ids: list[str] = Field(default_factory=list)
    all_tenants: bool = False
    batch_chunks: int | None = Field(default=None, ge=1, le=100_000)


class ReembedReportOut(BaseModel):
    tenant_id: str
    model: str
    documents: int
    chunks: int
    already_done: int
    reembedded_documents: int
    reembedded_chunks: int
    chunks_embedded: int
    chunks_cached: int
    skipped_changed: int
    batches: int
    remaining: int
    seconds: float


class ReembedJobOut(BaseModel):
    job_id: str
    state: Literal["running", "succeeded", "failed"]
    tenant_ids: list[str] | None = Field(description="null: every tenant with storage")
    model: str
    batch_chunks: int
    started_at: dt.datetime
    finished_at: dt.datetime | None
    current_tenant: str | None
    chunks_to_do: int = Field(description="summed over the tenants started so far")
    chunks_done: int
    reports: list[ReembedReportOut]
    error: str | None

    @classmethod
    def of(cls, job: ReembedJob) -> ReembedJobOut:
        return cls(
            job_id=job.job_id, state=job.state, tenant_ids=job.tenants, model=job.model,
            batch_chunks=job.batch_chunks, started_at=job.started_at,
            finished_at=job.finished_at, current_tenant=job.current_tenant,
            chunks_to_do=job.chunks_to_do, chunks_done=job.chunks_done,
            reports=[ReembedReportOut(**r.as_dict()) for r in job.reports], error=job.error,
        )


class OffboardOut(BaseModel):
    tenant_id: str
    existed: bool = Field(description="false: nothing was stored (already offboarded)")
    documents: int
    chunks: int
    bytes: int
    embeddings: dict[str, int] = Field(description="vectors deleted, per model")
    partitions_dropped: list[str]
    cache_entries_deleted: int


class _BodyLimit:
    """Refuse request bodies larger than `limit` bytes (413) before they are buffered."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                await _send_error(send, 413, "PAYLOAD_TOO_LARGE",
                                  f"request body is larger than {self.limit} bytes")
                return
        # Read the body first (FastAPI buffers it anyway), refusing it past the limit, then
        # replay it to the app.
        messages: list[Any] = []
        seen = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                messages.append(message)
                break
            seen += len(message.get("body", b""))
            if seen > self.limit:
                await _send_error(send, 413, "PAYLOAD_TOO_LARGE",
                                  f"request body is larger than {self.limit} bytes")
                return
            messages.append(message)
            if not message.get("more_body", False):
                break

        async def replay() -> Any:
            if messages:
                return messages.pop(0)
            return await receive()

        await self.app(scope, replay, send)


async def _send_error(send: Any, status: int, code: str, message: str) -> None:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


_bearer = HTTPBearer(auto_error=False, description="Parley service JWT (HS256)")


async def _tenant_of(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    x_parley_tenant_id: Annotated[str | None, Header()] = None,
) -> str:
    """The tenant the request acts for: the verified token's `tenant` claim."""
    verifier: TokenVerifier | None = request.app.state.verifier
    requested = x_parley_tenant_id or None
    if verifier is None:  # PARLEY_AUTH_DISABLED: local experiments only
        if not requested:
            raise Unauthenticated(f"auth is disabled: send {TENANT_HEADER}")
        tenant = requested
    else:
        if credentials is None or credentials.scheme.lower() != "bearer":
            raise Unauthenticated("missing authorization: send 'Bearer <service JWT>'")
        ident = verifier.verify(credentials.credentials)
        if ident.tenant is None:
            raise PermissionDenied("token names no tenant; it cannot act for a tenant")
        if requested is not None and requested != ident.tenant:
            raise PermissionDenied(
                f"tenant {requested!r} in the request differs from the token's tenant"
            )
        tenant = ident.tenant
    tenant_id_var.set(tenant)
    return tenant


Tenant = Annotated[str, Depends(_tenant_of)]


async def _operator_of(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    """The calling operator: a verified token whose issuer is an allowed operator caller."""
    verifier: TokenVerifier | None = request.app.state.verifier
    if verifier is None:  # PARLEY_AUTH_DISABLED: local experiments only
        return "anonymous"
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthenticated("missing authorization: send 'Bearer <service JWT>'")
    ident = verifier.verify(credentials.credentials)
    if ident.service not in request.app.state.operators:
        raise PermissionDenied(
            f"caller {ident.service!r} may not use operator endpoints "
            "(PARLEY_KB_OPERATOR_CALLERS)"
        )
    return ident.service


Operator = Annotated[str, Depends(_operator_of)]


def create_admin_app(
    kb: KnowledgeBase,
    *,
    verifier: TokenVerifier | None,
    max_body_bytes: int = 48 * 1024 * 1024,
    ops: KbOperations | None = None,
    operators: Sequence[str] = ("kb-svc",),
    reembed_batch_chunks: int = 256,
) -> FastAPI:
    app = FastAPI(
        title="Parley kb-svc admin API",
        version="1.0.0",
        description=(
            "Manage and search the calling tenant's knowledge base. Authenticate with a "
            "Parley service JWT (`Authorization: Bearer ...`); the tenant is the token's "
            "`tenant` claim."
        ),
    )
    app.state.verifier = verifier
    app.state.operators = frozenset(operators)

    @app.exception_handler(ParleyError)
    async def _parley_error(request: Request, exc: ParleyError) -> JSONResponse:
        status = _HTTP_STATUS.get(exc.code.name, 500)
        headers = {}
        if exc.retry_after_s is not None:
            headers["Retry-After"] = str(max(1, round(exc.retry_after_s)))
        return JSONResponse(
            {"error": {"code": exc.code.name, "message": exc.message}},
            status_code=status, headers=headers,
        )

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        details = "; ".join(
            f"{'.'.join(str(p) for p in err.get('loc', ()))}: {err.get('msg')}"
            for err in exc.errors()
        )
        return JSONResponse(
            {"error": {"code": "INVALID_ARGUMENT", "message": details}}, status_code=400
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # the framework's own 404/405/400 (unknown route, method, unparsable body), in this
        # API's error shape
        code = {400: "INVALID_ARGUMENT", 404: "NOT_FOUND",
                405: "METHOD_NOT_ALLOWED"}.get(exc.status_code, "HTTP_ERROR")
        return JSONResponse({"error": {"code": code, "message": str(exc.detail)}},
                            status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        ref = uuid.uuid4().hex
        logger.exception("admin API request failed", extra={"ref": ref, "path": request.url.path})
        return JSONResponse(
            {"error": {"code": "INTERNAL", "message": f"internal error (ref {ref})"}},
            status_code=500,
        )

    @app.get("/healthz", tags=["health"], summary="Liveness (no authentication)")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/usage", response_model=UsageOut, tags=["tenant"])
    async def usage(tenant: Tenant) -> UsageOut:
        used, limits = await kb.usage(tenant)
        return UsageOut(
            tenant_id=tenant, documents=used.documents, bytes=used.bytes, chunks=used.chunks,
            **limits.model_dump(),
        )

    @app.get("/v1/documents", response_model=DocumentList, tags=["documents"])
    async def list_documents(
        tenant: Tenant,
        page_size: Annotated[int, Query(ge=0, le=500)] = 0,
        page_token: str = "",
    ) -> DocumentList:
        page = await kb.list_documents(tenant, page_size, page_token)
        return DocumentList(
            documents=[DocumentOut.of(d) for d in page.documents],
            next_page_token=page.next_page_token,
        )

    @app.get("/v1/documents/{document_id:path}", response_model=DocumentOut, tags=["documents"])
    async def get_document(tenant: Tenant, document_id: str) -> DocumentOut:
        return DocumentOut.of(await kb.get_document(tenant, document_id))

    @app.put(
        "/v1/documents/{document_id:path}",
        response_model=IngestOut,
        tags=["documents"],
        summary="Create or replace a document (unchanged content is a no-op)",
    )
    async def put_document(tenant: Tenant, document_id: str, body: IngestBody) -> IngestOut:
        content = _content_bytes(body)
        result = await kb.ingest(
            tenant,
            DocumentInput(
                document_id=document_id, content=content, content_type=body.content_type,
                title=body.title, metadata=body.metadata, source_uri=body.source_uri,
            ),
        )
        return IngestOut(
            document_id=result.document_id, outcome=result.outcome.value, chunks=result.chunks,
            chunks_embedded=result.chunks_embedded, content_hash=result.content_hash,
            embedding_model=result.embedding_model,
        )

    @app.delete("/v1/documents/{document_id:path}", response_model=DeleteOut, tags=["documents"])
    async def delete_document(tenant: Tenant, document_id: str) -> DeleteOut:
        result = await kb.delete_document(tenant, document_id)
        return DeleteOut(deleted=result.deleted, chunks_deleted=result.chunks_deleted)

    @app.post("/v1/search", response_model=SearchOut, tags=["search"])
    async def search(tenant: Tenant, body: SearchBody) -> SearchOut:
        result = await kb.search(
            tenant,
            SearchQuery(
                text=body.query, top_k=body.top_k, mode=body.mode, min_score=body.min_score,
                metadata_filter=body.metadata_filter, document_ids=tuple(body.document_ids),
            ),
        )
        return SearchOut(
            hits=[
                HitOut(
                    chunk_id=h.chunk_id, document_id=h.document_id,
                    document_title=h.document_title, chunk_index=h.chunk_index, text=h.text,
                    score=h.score, metadata=h.metadata,
                )
                for h in result.hits
            ],
            embedding_model=result.embedding_model,
        )

    if ops is not None:
        _add_operator_routes(app, ops, reembed_batch_chunks)
    app.add_middleware(_BodyLimit, limit=max_body_bytes)
    # outermost: ids in the path are checked on the raw bytes (parley_runtime.asgi)
    app.add_middleware(
        RejectBadPaths,
        body=lambda message: {"error": {"code": "INVALID_ARGUMENT", "message": message}},
    )
    return app


def _add_operator_routes(app: FastAPI, ops: KbOperations, default_batch: int) -> None:
    async def known(tenant_ids: list[str]) -> None:
        """Operator routes act on tenants kb-svc knows: in the tenants file or with stored
        data. Anything else is most likely a typo, which an empty export or a re-embedding
        job that 'succeeded' with nothing to do would hide."""
        configured = set(ops.kb.tenants.ids())
        missing = [t for t in tenant_ids if t not in configured]
        if missing:
            stored = set(await ops.stored_tenants())
            missing = [t for t in missing if t not in stored]
        if missing:
            shown = ", ".join(repr(t[:64]) for t in missing[:5])
            raise NotFound(f"unknown tenant(s) {shown}: neither in the tenants file nor with "
                           "stored data (check the id; GET /v1/admin/tenants lists them)")

    @app.get("/v1/admin/tenants", response_model=list[TenantStatusOut], tags=["operator"],
             summary="Tenants with storage, and their coverage by the configured model")
    async def tenant_status(operator: Operator) -> list[TenantStatusOut]:
        return [
            TenantStatusOut(
                tenant_id=st.tenant_id, configured=st.configured, model=st.model,
                documents=st.coverage.documents, chunks=st.coverage.chunks,
                chunks_with_model=st.coverage.vectors,
                chunks_missing_model=st.coverage.missing,
            )
            for st in await ops.status()
        ]

    @app.post("/v1/admin/reembed", response_model=ReembedJobOut, status_code=202,
              tags=["operator"],
              summary="Re-embed tenants with the configured model (background job; "
                      "resumable: starting it again skips finished documents)")
    async def start_reembed(operator: Operator, body: ReembedBody) -> ReembedJobOut:
        if bool(body.tenant_ids) == body.all_tenants:
            raise InvalidArgument("name tenant_ids or set all_tenants (not both)")
        if body.tenant_ids:
            await known([check_tenant_id(t) for t in body.tenant_ids])
        job, created = ops.jobs.start(
            None if body.all_tenants else list(dict.fromkeys(body.tenant_ids)),
            body.batch_chunks or default_batch,
        )
        logger.info("re-embedding requested", extra={"operator": operator,
                                                      "job_id": job.job_id, "new": created})
        return ReembedJobOut.of(job)

    @app.get("/v1/admin/reembed", response_model=list[ReembedJobOut], tags=["operator"])
    async def list_reembeds(operator: Operator) -> list[ReembedJobOut]:
        return [ReembedJobOut.of(job) for job in ops.jobs.recent()]

    @app.get("/v1/admin/reembed/{job_id}", response_model=ReembedJobOut, tags=["operator"])
    async def get_reembed(operator: Operator, job_id: str) -> ReembedJobOut:
        job = ops.jobs.get(job_id)
        if job is None:
            raise NotFound(f"no re-embedding job {job_id!r} in this process")
        return ReembedJobOut.of(job)

    @app.get("/v1/admin/tenants/{tenant_id}/export", tags=["operator"],
             response_class=StreamingResponse,
             responses={200: {"content": {"application/x-ndjson": {}}}},
             summary="The tenant's documents as JSON lines (metadata and chunk text)")
    async def export_tenant(operator: Operator, tenant_id: str) -> StreamingResponse:
        check_tenant_id(tenant_id)
        await known([tenant_id])
        rows = ops.export(tenant_id)
        try:
            first = await anext(rows)
        except StopAsyncIteration:
            first = None

        async def lines() -> AsyncIterator[bytes]:
            if first is None:
                return
            yield _json_line(first)
            async for row in rows:
                yield _json_line(row)

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    @app.delete("/v1/admin/tenants/{tenant_id}", response_model=OffboardOut, tags=["operator"],
                summary="Offboard: delete all of the tenant's data (confirm = the tenant id)")
    async def offboard_tenant(
        operator: Operator,
        tenant_id: str,
        confirm: Annotated[str, Query(description="repeat the tenant id")] = "",
    ) -> OffboardOut:
        logger.warning("offboarding requested",
                       extra={"operator": operator, "tenant": tenant_id})
        report = await ops.offboard(tenant_id, confirm=confirm or None)
        return OffboardOut(**report.as_dict())


def _json_line(row: dict[str, Any]) -> bytes:
    return (json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n").encode()


def _content_bytes(body: IngestBody) -> bytes:
    if (body.content is None) == (body.content_base64 is None):
        raise InvalidArgument("send exactly one of content and content_base64")
    if body.content_base64 is not None:
        try:
            return base64.b64decode(body.content_base64, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidArgument("content_base64 is not valid base64") from None
    assert body.content is not None
    try:
        return body.content.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidArgument("content is not valid UTF-8 (it has unpaired surrogates)") from None
