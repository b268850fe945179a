"""Prometheus metrics of kb-svc (served on PARLEY_METRICS_PORT by the runtime)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

_LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60,
)

INGEST_SECONDS = Histogram(
    "parley_kb_ingest_seconds",
    "Document ingestion time (extraction, chunking, embedding, write), by outcome",
    ["outcome"],
    buckets=_LATENCY_BUCKETS,
)
SEARCH_SECONDS = Histogram(
    "parley_kb_search_seconds",
    "Search time including the query embedding, by mode",
    ["mode"],
    buckets=_LATENCY_BUCKETS,
)
EMBED_CALL_SECONDS = Histogram(
    "parley_kb_embedding_call_seconds",
    "Time of one batch call to the embedding model, by provider",
    ["provider"],
    buckets=_LATENCY_BUCKETS,
)
CHUNKS_EMBEDDED = Counter(
    "parley_kb_chunks_embedded_total",
    "Texts embedded by the model (cache misses), by model and input type",
    ["model", "input_type"],
)
CHUNKS_CACHED = Counter(
    "parley_kb_chunks_cached_total",
    "Texts whose embedding came from a cache layer (memory, remote, stored), by model",
    ["model", "input_type", "layer"],
)
INGESTS = Counter(
    "parley_kb_ingests_total",
    "Ingest requests by result (created, updated, unchanged, rejected, failed)",
    ["result"],
)
SEARCH_DEGRADED = Counter(
    "parley_kb_search_degraded_total",
    "Hybrid searches answered by full text alone because the query embedding failed",
)
