"""Embedders, the layered cache and usage reporting."""

from __future__ import annotations

import socket
from collections.abc import Sequence
from typing import Any

import httpx
import numpy as np
import pytest
from parley_kb.cache import RedisVectorCache
from parley_kb.embedding_cache import (
    EmbeddingCache,
    LruVectorCache,
    cache_key,
    tenant_prefix,
)
from parley_kb.embeddings import (
    EmbeddingService,
    EmbeddingUsage,
    InputType,
    LocalWordLlamaEmbedder,
    VoyageEmbedder,
    load_wordllama,
)
from parley_kb.testing import CountingEmbedder
from parley_runtime.errors import Unavailable


class DictRemote:
    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.fail = False

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if self.fail:
            raise ConnectionError("remote down")
        return [self.data.get(k) for k in keys]

    async def set_many(self, items: dict[str, bytes], ttl_s: int) -> None:
        if self.fail:
            raise ConnectionError("remote down")
        self.data.update(items)


@pytest.mark.unit
def test_cache_keys_separate_tenants_models_and_input_types() -> None:
    base = cache_key("m", "document", "acme", "same text")
    assert base != cache_key("m", "document", "globex", "same text")
    assert base != cache_key("m2", "document", "acme", "same text")
    assert base != cache_key("m", "query", "acme", "same text")
    assert "same text" not in base and "acme" not in base
    # Every key of a tenant starts with its prefix (offboarding deletes by prefix), and no
    # other tenant's key does.
    assert base.startswith(tenant_prefix("acme"))
    assert cache_key("m2", "query", "acme", "other").startswith(tenant_prefix("acme"))
    assert not cache_key("m", "document", "acme-2", "x").startswith(tenant_prefix("acme"))


@pytest.mark.unit
def test_lru_evicts_least_recently_used() -> None:
    lru = LruVectorCache(2)
    lru.put("a", np.ones(2, np.float32))
    lru.put("b", np.ones(2, np.float32))
    assert lru.get("a") is not None
    lru.put("c", np.ones(2, np.float32))
    assert lru.get("b") is None and lru.get("a") is not None and len(lru) == 2


@pytest.mark.unit
def test_local_model_loads_without_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    embedder = LocalWordLlamaEmbedder(load_wordllama())
    batch = embedder.embed_sync(["refund policy for damaged goods", "how to reset a password"])
    assert batch.vectors.shape == (2, 256)
    assert np.allclose(np.linalg.norm(batch.vectors, axis=1), 1.0, atol=1e-5)
    assert batch.tokens > 4


@pytest.mark.unit
async def test_service_uses_stored_then_memory_then_remote_then_model(wordllama_model: Any) -> None:
    embedder = CountingEmbedder(wordllama_model)
    remote = DictRemote()
    usage: list[tuple[str, EmbeddingUsage]] = []
    service = EmbeddingService(
        embedder, EmbeddingCache(dimensions=256, lru_capacity=100, remote=remote),
        usage_sink=lambda tenant, u: usage.append((tenant, u)),
    )
    texts = ["alpha text", "beta text", "alpha text"]
    first = await service.embed("acme", texts, InputType.DOCUMENT)
    assert first.embedded == 3 and first.cached == 0 and embedder.texts == 2
    assert np.allclose(first.vectors[0], first.vectors[2])
    assert usage[-1] == ("acme", EmbeddingUsage("local", "local-wordllama-256",
                                                 first.tokens, 0, 3))
    # Memory layer.
    again = await service.embed("acme", texts, InputType.DOCUMENT)
    assert again.embedded == 0 and again.by_layer == {"memory": 3} and embedder.texts == 2
    np.testing.assert_allclose(again.vectors, first.vectors)
    # Remote layer: a fresh process (empty LRU) sharing the remote store.
    fresh = EmbeddingService(embedder, EmbeddingCache(dimensions=256, remote=remote))
    from_remote = await fresh.embed("acme", texts, InputType.DOCUMENT)
    assert from_remote.by_layer == {"remote": 3} and embedder.texts == 2
    # Another tenant never shares the entries.
    other = await fresh.embed("globex", ["alpha text"], InputType.DOCUMENT)
    assert other.embedded == 1 and embedder.texts == 3
    # Stored vectors (the previous version's unchanged chunks) cost nothing.
    stored = {"gamma": np.ones(256, np.float32) / 16.0}
    res = await fresh.embed("acme", ["gamma"], InputType.DOCUMENT, known=stored)
    assert res.by_layer == {"stored": 1} and embedder.texts == 3
    # A failing remote degrades to embedding.
    remote.fail = True
    res = await EmbeddingService(embedder, EmbeddingCache(dimensions=256, remote=remote)).embed(
        "acme", ["alpha text"], InputType.DOCUMENT
    )
    assert res.embedded == 1


@pytest.mark.integration
async def test_redis_layer_round_trip(redis_url: str) -> None:
    remote = RedisVectorCache.from_url(redis_url)
    try:
        cache = EmbeddingCache(dimensions=4, remote=remote, ttl_s=60)
        vec = np.array([0.5, 0.5, 0.5, 0.5], np.float32)
        await cache.put_many([("kbtest:key1", vec)])
        cold = EmbeddingCache(dimensions=4, remote=remote)
        got = await cold.get_many(["kbtest:key1", "kbtest:missing"])
        assert list(got) == ["kbtest:key1"]
        np.testing.assert_array_equal(got["kbtest:key1"][0], vec)
        assert got["kbtest:key1"][1] == "remote"
        # A value of the wrong size (another model's) is a miss, not a crash.
        wrong = EmbeddingCache(dimensions=8, remote=remote)
        assert await wrong.get_many(["kbtest:key1"]) == {}
    finally:
        await remote.aclose()


@pytest.mark.integration
async def test_unreachable_redis_is_a_miss() -> None:
    from parley_runtime.testing import free_port

    remote = RedisVectorCache.from_url(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.2)
    try:
        cache = EmbeddingCache(dimensions=4, remote=remote)
        await cache.put_many([("k", np.ones(4, np.float32))])  # logged, not raised
        assert await EmbeddingCache(dimensions=4, remote=remote).get_many(["k"]) == {}
    finally:
        await remote.aclose()


@pytest.mark.integration
async def test_voyage_through_the_emulator(emulator_url: str) -> None:
    embedder = VoyageEmbedder(api_key="pa-test-key", model_id="voyage-3.5", dimensions=1024,
                              base_url=f"{emulator_url}/v1", max_retries=0)
    batch = await embedder.embed(["refund policy", "refund policies"], InputType.DOCUMENT)
    assert batch.vectors.shape == (2, 1024) and batch.tokens > 0
    assert float(batch.vectors[0] @ batch.vectors[1]) > 0.3  # lexical emulator: shared words
    bad = VoyageEmbedder(api_key="invalid-key", model_id="voyage-3.5", dimensions=1024,
                         base_url=f"{emulator_url}/v1", max_retries=0)
    with pytest.raises(Unavailable, match="embedding provider failed"):
        await bad.embed(["x"], InputType.QUERY)
    async with httpx.AsyncClient(base_url=emulator_url) as client:
        resp = await client.post("/admin/faults", json={
            "model": "voyage-3.5", "error_status": 503, "error_rate": 1.0, "max_errors": 1})
        resp.raise_for_status()
        try:
            with pytest.raises(Unavailable):
                await embedder.embed(["x"], InputType.QUERY)
        finally:
            await client.delete("/admin/faults", params={"model": "voyage-3.5"})
