"""Embedders (Voyage through its SDK; a local WordLlama model shipped in its wheel) and the
EmbeddingService that puts the cache, batching and usage reporting in front of them."""

from __future__ import annotations

import abc
import asyncio
import enum
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from parley_runtime.errors import Unavailable

from . import metrics
from .embedding_cache import EmbeddingCache, cache_key

logger = logging.getLogger(__name__)


# Up to this many characters the local model embeds on the event loop (a query: ~0.05 ms;
# 500 characters ~0.4 ms here), cheaper than a thread hop; longer input goes to a thread.
_INLINE_EMBED_CHARS = 500


class InputType(enum.StrEnum):
    DOCUMENT = "document"
    QUERY = "query"


@dataclass(frozen=True, slots=True)
class EmbeddingBatch:
    vectors: np.ndarray  # (n, dimensions) float32, unit length
    tokens: int


def normalise(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    out: np.ndarray = (vectors / norms).astype(np.float32)
    return out


class Embedder(abc.ABC):
    """Turns texts into unit vectors of a fixed dimension."""

    provider: str
    model_id: str
    dimensions: int
    max_batch: int = 128

    @abc.abstractmethod
    async def embed(self, texts: Sequence[str], input_type: InputType) -> EmbeddingBatch: ...

    async def aclose(self) -> None:
        return None


class LocalWordLlamaEmbedder(Embedder):
    """WordLlama's 256-d static embeddings, loaded from the wheel itself (never the network)."""

    provider = "local"
    model_id = "local-wordllama-256"
    dimensions = 256
    max_batch = 512

    def __init__(self, model: Any = None) -> None:
        from tokenizers import Tokenizer

        self._model = model if model is not None else load_wordllama()
        self._table: np.ndarray = self._model.embedding
        # Our own copy without padding: we pool each text on its own.
        self._tokenizer = Tokenizer.from_str(self._model.tokenizer.to_str())
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()
        self._encode = getattr(self._tokenizer, "encode_batch_fast", self._tokenizer.encode_batch)

    async def embed(self, texts: Sequence[str], input_type: InputType) -> EmbeddingBatch:
        if not texts:
            return EmbeddingBatch(np.zeros((0, self.dimensions), np.float32), 0)
        if sum(len(t) for t in texts) <= _INLINE_EMBED_CHARS:
            # A query or a short text: less work than a thread hop costs.
            return self.embed_sync(list(texts))
        return await asyncio.to_thread(self.embed_sync, list(texts))

    def embed_sync(self, texts: list[str]) -> EmbeddingBatch:
        """Mean of the token vectors, as WordLlama's own `embed` computes it, but per text:
        its batch path pads every text to the longest and gathers a (batch, longest, 256)
        array, which costs several times more for chunk-sized texts, and it tokenizes again
        for the token count billing needs."""
        table = self._table
        out = np.zeros((len(texts), self.dimensions), dtype=np.float32)
        tokens = 0
        for i, enc in enumerate(self._encode(texts, add_special_tokens=False)):
            ids = enc.ids
            if ids:
                arr = np.clip(np.asarray(ids, dtype=np.int64), 0, len(table) - 1)
                out[i] = table[arr].mean(axis=0)
            tokens += len(ids)
        return EmbeddingBatch(normalise(out), tokens)


def load_wordllama() -> Any:
    """Load the model bundled in the `wordllama` wheel, with downloads disabled.

    WordLlama looks for its tokenizer config beside a cache folder; pointing the cache at the
    package directory makes it find both files it ships, and `disable_download` makes any miss
    an error instead of a fetch.
    """
    import wordllama
    from wordllama import WordLlama

    package_dir = os.path.dirname(wordllama.__file__)
    return WordLlama.load(cache_dir=package_dir, disable_download=True)


class VoyageEmbedder(Embedder):
    """Voyage embeddings through the official `voyageai` SDK."""

    provider = "voyage"
    max_batch = 128

    def __init__(
        self,
        *,
        api_key: str,
        model_id: str,
        dimensions: int,
        base_url: str | None = None,
        timeout_s: float = 30.0,
        max_retries: int = 2,
    ) -> None:
        from voyageai.client_async import AsyncClient

        self.model_id = model_id
        self.dimensions = dimensions
        self._client = AsyncClient(
            api_key=api_key, max_retries=max_retries, timeout=timeout_s, base_url=base_url
        )

    async def embed(self, texts: Sequence[str], input_type: InputType) -> EmbeddingBatch:
        import voyageai.error as verr

        if not texts:
            return EmbeddingBatch(np.zeros((0, self.dimensions), np.float32), 0)
        try:
            result = await self._client.embed(
                list(texts), model=self.model_id, input_type=input_type.value, truncation=True
            )
        except verr.RateLimitError:
            raise Unavailable(
                "embedding provider is rate limiting; retry", retry_after_s=1.0
            ) from None
        except verr.VoyageError as exc:
            logger.warning("voyage embedding failed", extra={"error": type(exc).__name__})
            raise Unavailable(f"embedding provider failed ({type(exc).__name__})") from None
        vectors = np.asarray(result.embeddings, dtype=np.float32)
        if vectors.shape != (len(texts), self.dimensions):
            raise Unavailable(
                f"embedding provider returned shape {vectors.shape}, expected "
                f"({len(texts)}, {self.dimensions})"
            )
        return EmbeddingBatch(normalise(vectors), int(result.total_tokens))


@dataclass(frozen=True, slots=True)
class EmbeddingUsage:
    """One embedding operation, as reported to billing."""

    provider: str
    model_id: str
    tokens: int
    cached_texts: int
    embedded_texts: int


UsageSink = Callable[[str, EmbeddingUsage], None]


@dataclass(slots=True)
class EmbedOutcome:
    vectors: np.ndarray
    embedded: int = 0
    cached: int = 0
    tokens: int = 0
    by_layer: dict[str, int] = field(default_factory=dict)


class EmbeddingService:
    """Embeds through the cache in batches and reports usage per tenant."""

    def __init__(
        self,
        embedder: Embedder,
        cache: EmbeddingCache,
        *,
        batch_size: int = 128,
        usage_sink: UsageSink | None = None,
    ) -> None:
        self.embedder = embedder
        self.cache = cache
        self.batch_size = max(1, min(batch_size, embedder.max_batch))
        self._usage_sink = usage_sink

    @property
    def model_id(self) -> str:
        return self.embedder.model_id

    @property
    def dimensions(self) -> int:
        return self.embedder.dimensions

    async def embed(
        self,
        tenant_id: str,
        texts: Sequence[str],
        input_type: InputType,
        *,
        known: Mapping[str, np.ndarray] | None = None,
    ) -> EmbedOutcome:
        """Vectors for `texts` in order. `known` maps text to a vector already stored (an
        unchanged chunk of the previous version of a document)."""
        model = self.embedder.model_id
        dims = self.embedder.dimensions
        out = np.zeros((len(texts), dims), dtype=np.float32)
        outcome = EmbedOutcome(out)
        positions: dict[str, list[int]] = {}
        for i, text in enumerate(texts):
            positions.setdefault(text, []).append(i)

        pending: list[str] = []
        for text in positions:
            stored = known.get(text) if known else None
            if stored is not None and stored.shape == (dims,):
                self._place(out, positions[text], stored)
                _count(outcome, "stored", len(positions[text]))
            else:
                pending.append(text)

        keys = {text: cache_key(model, input_type.value, tenant_id, text) for text in pending}
        hits = await self.cache.get_many(list(keys.values())) if pending else {}
        misses: list[str] = []
        for text in pending:
            hit = hits.get(keys[text])
            if hit is not None:
                self._place(out, positions[text], hit[0])
                _count(outcome, hit[1], len(positions[text]))
            else:
                misses.append(text)

        for start in range(0, len(misses), self.batch_size):
            batch = misses[start : start + self.batch_size]
            t0 = time.perf_counter()
            result = await self.embedder.embed(batch, input_type)
            metrics.EMBED_CALL_SECONDS.labels(self.embedder.provider).observe(
                time.perf_counter() - t0
            )
            outcome.tokens += result.tokens
            await self.cache.put_many(
                (keys[text], result.vectors[j]) for j, text in enumerate(batch)
            )
            for j, text in enumerate(batch):
                self._place(out, positions[text], result.vectors[j])
                outcome.embedded += len(positions[text])

        outcome.cached = len(texts) - outcome.embedded
        metrics.CHUNKS_EMBEDDED.labels(model, input_type.value).inc(outcome.embedded)
        for layer, count in outcome.by_layer.items():
            metrics.CHUNKS_CACHED.labels(model, input_type.value, layer).inc(count)
        if self._usage_sink is not None and texts:
            try:
                self._usage_sink(
                    tenant_id,
                    EmbeddingUsage(
                        provider=self.embedder.provider,
                        model_id=model,
                        tokens=outcome.tokens,
                        cached_texts=outcome.cached,
                        embedded_texts=outcome.embedded,
                    ),
                )
            except Exception:
                logger.exception("usage recording failed")
        return outcome

    @staticmethod
    def _place(out: np.ndarray, rows: list[int], vector: np.ndarray) -> None:
        for row in rows:
            out[row] = vector

    async def aclose(self) -> None:
        await self.embedder.aclose()


def _count(outcome: EmbedOutcome, layer: str, n: int) -> None:
    outcome.by_layer[layer] = outcome.by_layer.get(layer, 0) + n
