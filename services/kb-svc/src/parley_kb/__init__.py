"""parley-kb: per-tenant knowledge bases on PostgreSQL + pgvector (kb-svc)."""

from .knowledge_base import KnowledgeBase
from .models import (
    ContentType,
    DocumentInput,
    IngestOutcome,
    IngestResult,
    SearchHit,
    SearchMode,
    SearchQuery,
    SearchResult,
)

__all__ = [
    "ContentType",
    "DocumentInput",
    "IngestOutcome",
    "IngestResult",
    "KnowledgeBase",
    "SearchHit",
    "SearchMode",
    "SearchQuery",
    "SearchResult",
]
