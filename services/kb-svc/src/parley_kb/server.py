"""gRPC KnowledgeBaseService: protobuf <-> domain. Errors are ParleyError subclasses raised by
the domain; the runtime's interceptor turns them into status codes with their message."""

from __future__ import annotations

import math
from typing import Any

from google.protobuf import json_format, struct_pb2, timestamp_pb2
from parley.common.v1 import common_pb2
from parley.kb.v1 import kb_pb2, kb_pb2_grpc
from parley_runtime.context import require_tenant
from parley_runtime.errors import InvalidArgument

from .knowledge_base import KnowledgeBase
from .models import ContentType, Document, DocumentInput, IngestOutcome, SearchMode, SearchQuery

SERVICE_NAME = "parley.kb.v1.KnowledgeBaseService"

_CONTENT_TYPES = {
    kb_pb2.CONTENT_TYPE_TEXT: ContentType.TEXT,
    kb_pb2.CONTENT_TYPE_MARKDOWN: ContentType.MARKDOWN,
    kb_pb2.CONTENT_TYPE_HTML: ContentType.HTML,
    kb_pb2.CONTENT_TYPE_PDF: ContentType.PDF,
}
_CONTENT_TYPES_PB = {v: k for k, v in _CONTENT_TYPES.items()}
_MODES = {
    kb_pb2.SEARCH_MODE_UNSPECIFIED: SearchMode.HYBRID,
    kb_pb2.SEARCH_MODE_VECTOR: SearchMode.VECTOR,
    kb_pb2.SEARCH_MODE_FULL_TEXT: SearchMode.FULL_TEXT,
    kb_pb2.SEARCH_MODE_HYBRID: SearchMode.HYBRID,
}
_OUTCOMES = {
    IngestOutcome.CREATED: kb_pb2.INGEST_OUTCOME_CREATED,
    IngestOutcome.UPDATED: kb_pb2.INGEST_OUTCOME_UPDATED,
    IngestOutcome.UNCHANGED: kb_pb2.INGEST_OUTCOME_UNCHANGED,
}


def content_type_from_pb(value: int) -> ContentType:
    found: ContentType | None = _CONTENT_TYPES.get(value)  # type: ignore[call-overload]
    if found is None:
        raise InvalidArgument(
            f"unsupported content_type {value}: use TEXT, MARKDOWN, HTML or PDF"
        )
    return found


def struct_to_dict(value: struct_pb2.Struct, field: str) -> dict[str, Any]:
    """The Struct as plain JSON values; INVALID_ARGUMENT naming the place of a NaN or infinity
    (JSON has no such numbers: MessageToDict would raise ValueError, an INTERNAL error)."""
    if not value.fields:
        return {}
    _check_finite(value, field)
    return json_format.MessageToDict(value)


def _check_finite(value: struct_pb2.Struct | struct_pb2.ListValue, path: str) -> None:
    # Protobuf parsing caps nesting at 100 levels, so the recursion is bounded.
    items: Any = (
        value.fields.items() if isinstance(value, struct_pb2.Struct) else enumerate(value.values)
    )
    for key, item in items:
        if isinstance(key, int):
            where = f"{path}[{key}]"
        else:  # the key is the caller's: bounded, and quoted when it has control characters
            short = key[:60]
            where = f"{path}.{short if short.isprintable() else repr(short)}"
        kind = item.WhichOneof("kind")
        if kind == "number_value" and not math.isfinite(item.number_value):
            raise InvalidArgument(
                f"{where} is {item.number_value}: JSON numbers must be finite (send a finite "
                "number, or a string such as \"NaN\")"
            )
        if kind == "struct_value":
            _check_finite(item.struct_value, where)
        elif kind == "list_value":
            _check_finite(item.list_value, where)


def dict_to_struct(value: dict[str, Any]) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    if value:
        out.update(value)
    return out


def document_to_pb(doc: Document) -> kb_pb2.Document:
    created = timestamp_pb2.Timestamp()
    created.FromDatetime(doc.created_at)
    updated = timestamp_pb2.Timestamp()
    updated.FromDatetime(doc.updated_at)
    return kb_pb2.Document(
        document_id=doc.document_id,
        title=doc.title,
        content_type=_CONTENT_TYPES_PB[doc.content_type],
        content_hash=doc.content_hash,
        chunks=doc.chunk_count,
        metadata=dict_to_struct(doc.metadata),
        source_uri=doc.source_uri,
        size_bytes=doc.size_bytes,
        created_at=created,
        updated_at=updated,
    )


class KnowledgeBaseServicer(kb_pb2_grpc.KnowledgeBaseServiceServicer):
    """Each RPC acts for the tenant bound by the interceptor from the verified token."""

    def __init__(self, kb: KnowledgeBase) -> None:
        self.kb = kb

    async def IngestDocument(
        self, request: kb_pb2.IngestDocumentRequest, context: Any
    ) -> kb_pb2.IngestDocumentResponse:
        tenant = require_tenant()
        doc = DocumentInput(
            document_id=request.document_id,
            content=bytes(request.content),
            content_type=content_type_from_pb(request.content_type),
            title=request.title,
            metadata=struct_to_dict(request.metadata, "metadata"),
            source_uri=request.source_uri,
        )
        result = await self.kb.ingest(tenant, doc)
        return kb_pb2.IngestDocumentResponse(
            document_id=result.document_id,
            outcome=_OUTCOMES[result.outcome],
            chunks=result.chunks,
            chunks_embedded=result.chunks_embedded,
            content_hash=result.content_hash,
            embedding_model=result.embedding_model,
        )

    async def Search(self, request: kb_pb2.SearchRequest, context: Any) -> kb_pb2.SearchResponse:
        tenant = require_tenant()
        mode = _MODES.get(request.mode)
        if mode is None:
            raise InvalidArgument(f"unsupported search mode {request.mode}")
        query = SearchQuery(
            text=request.query,
            top_k=request.top_k,
            mode=mode,
            min_score=request.min_score,
            metadata_filter=struct_to_dict(request.metadata_filter, "metadata_filter"),
            document_ids=tuple(request.document_ids),
        )
        result = await self.kb.search(tenant, query)
        return kb_pb2.SearchResponse(
            hits=[
                kb_pb2.SearchHit(
                    chunk_id=hit.chunk_id,
                    document_id=hit.document_id,
                    document_title=hit.document_title,
                    chunk_index=hit.chunk_index,
                    text=hit.text,
                    score=hit.score,
                    metadata=dict_to_struct(hit.metadata),
                )
                for hit in result.hits
            ],
            embedding_model=result.embedding_model,
        )

    async def GetDocument(
        self, request: kb_pb2.GetDocumentRequest, context: Any
    ) -> kb_pb2.GetDocumentResponse:
        tenant = require_tenant()
        doc = await self.kb.get_document(tenant, request.document_id)
        return kb_pb2.GetDocumentResponse(document=document_to_pb(doc))

    async def ListDocuments(
        self, request: kb_pb2.ListDocumentsRequest, context: Any
    ) -> kb_pb2.ListDocumentsResponse:
        tenant = require_tenant()
        page = await self.kb.list_documents(
            tenant, request.page.page_size, request.page.page_token
        )
        return kb_pb2.ListDocumentsResponse(
            documents=[document_to_pb(d) for d in page.documents],
            page=common_pb2.PageInfo(next_page_token=page.next_page_token),
        )

    async def DeleteDocument(
        self, request: kb_pb2.DeleteDocumentRequest, context: Any
    ) -> kb_pb2.DeleteDocumentResponse:
        tenant = require_tenant()
        result = await self.kb.delete_document(tenant, request.document_id)
        return kb_pb2.DeleteDocumentResponse(
            deleted=result.deleted, chunks_deleted=result.chunks_deleted
        )
