"""Domain types of the knowledge base (no protobuf, no database)."""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass, field
from typing import Any

import numpy as np


class ContentType(enum.StrEnum):
    TEXT = "text"
    MARKDOWN = "markdown"
    HTML = "html"
    PDF = "pdf"


class SearchMode(enum.StrEnum):
    VECTOR = "vector"
    FULL_TEXT = "full_text"
    HYBRID = "hybrid"


class IngestOutcome(enum.StrEnum):
    CREATED = "created"
    UPDATED = "updated"
    UNCHANGED = "unchanged"


@dataclass(frozen=True, slots=True)
class DocumentInput:
    """A document as a caller submits it (validated by KnowledgeBase.ingest)."""

    document_id: str
    content: bytes
    content_type: ContentType
    title: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    source_uri: str = ""


@dataclass(frozen=True, slots=True)
class Chunk:
    index: int
    heading: str
    body: str

    @property
    def text(self) -> str:
        """What is embedded and returned: the heading path, then the body."""
        return f"{self.heading}\n\n{self.body}" if self.heading else self.body


@dataclass(frozen=True, slots=True)
class Document:
    document_id: str
    title: str
    content_type: ContentType
    content_hash: str
    chunk_count: int
    metadata: dict[str, Any]
    source_uri: str
    size_bytes: int
    embedding_model: str
    created_at: dt.datetime
    updated_at: dt.datetime


@dataclass(frozen=True, slots=True)
class IngestResult:
    document_id: str
    outcome: IngestOutcome
    chunks: int
    chunks_embedded: int
    content_hash: str
    embedding_model: str


@dataclass(frozen=True, slots=True)
class SearchQuery:
    text: str
    top_k: int = 5
    mode: SearchMode = SearchMode.HYBRID
    min_score: float = 0.0
    metadata_filter: dict[str, Any] = field(default_factory=dict)
    document_ids: tuple[str, ...] = ()

    @property
    def filtered(self) -> bool:
        return bool(self.metadata_filter) or bool(self.document_ids)


@dataclass(frozen=True, slots=True)
class SearchHit:
    document_id: str
    chunk_index: int
    document_title: str
    text: str
    score: float
    metadata: dict[str, Any]

    @property
    def chunk_id(self) -> str:
        return f"{self.document_id}#{self.chunk_index}"


@dataclass(frozen=True, slots=True)
class SearchResult:
    hits: list[SearchHit]
    embedding_model: str


@dataclass(frozen=True, slots=True)
class DocumentPage:
    documents: list[Document]
    next_page_token: str


@dataclass(frozen=True, slots=True)
class DeleteResult:
    deleted: bool
    chunks_deleted: int


@dataclass(frozen=True, slots=True)
class TenantUsage:
    documents: int
    bytes: int
    chunks: int


@dataclass(frozen=True, slots=True)
class SpaceCoverage:
    """A tenant's documents and chunks, and how many vectors the configured model holds."""

    documents: int
    chunks: int
    vectors: int

    @property
    def missing(self) -> int:
        return max(0, self.chunks - self.vectors)


@dataclass(frozen=True, slots=True)
class ReembedCandidate:
    """A document as the re-embedding scan reads it."""

    document_id: str
    chunk_count: int
    vectors: int  # rows in the configured model's table (complete = chunk_count)
    updated_at: dt.datetime  # the version token: writes of the document change it
    fingerprint: str
    content_hash: str
    content_type: str
    title: str
    metadata: dict[str, Any]
    source_uri: str
    embedding_model: str

    @property
    def complete(self) -> bool:
        return self.vectors >= self.chunk_count


@dataclass(frozen=True, slots=True)
class ReembedWrite:
    """New vectors for every chunk of one document, for the version read at `updated_at`."""

    document_id: str
    updated_at: dt.datetime
    chunk_indexes: list[int]
    vectors: np.ndarray
    fingerprint: str
