"""Voyage embeddings through the official ``voyageai`` SDK."""

from __future__ import annotations

import base64

import httpx
import numpy as np
import pytest
import voyageai
import voyageai.error
from parley_emulator import EmulatorServer
from parley_emulator.tokens import count_text_tokens

pytestmark = pytest.mark.integration


def client(emu: EmulatorServer) -> voyageai.AsyncClient:
    return voyageai.AsyncClient(api_key="v-test", base_url=emu.voyage_base_url, max_retries=0)


def cos(a: list[float], b: list[float]) -> float:
    va, vb = np.asarray(a), np.asarray(b)
    return float(va @ vb / (np.linalg.norm(va) * np.linalg.norm(vb)))


async def test_dimensions_and_usage(emu: EmulatorServer) -> None:
    c = client(emu)
    texts = ["The cat sat on the mat.", "Quarterly revenue grew by 12 percent."]
    r = await c.embed(texts, model="voyage-3.5", input_type="document")
    assert len(r.embeddings) == 2
    assert all(len(e) == 1024 for e in r.embeddings)
    assert r.total_tokens == sum(count_text_tokens(t) for t in texts)
    assert abs(float(np.linalg.norm(r.embeddings[0])) - 1.0) < 1e-5
    lite = await c.embed(texts, model="voyage-3.5-lite", input_type="query")
    assert all(len(e) == 512 for e in lite.embeddings)
    large = await c.embed(texts, model="voyage-3-large", output_dimension=256)
    assert all(len(e) == 256 for e in large.embeddings)
    with pytest.raises(voyageai.error.InvalidRequestError):
        await c.embed(texts, model="voyage-3.5", output_dimension=300)
    with pytest.raises(voyageai.error.InvalidRequestError):
        await c.embed(texts, model="text-embedding-3-small")


async def test_deterministic_and_lexically_meaningful(emu: EmulatorServer) -> None:
    c = client(emu)
    texts = [
        "How do I reset my account password?",
        "Steps to reset the password of your account",
        "The weather in Lisbon is sunny and warm today",
    ]
    a = await c.embed(texts, model="voyage-3.5", input_type="document")
    b = await c.embed(texts, model="voyage-3.5", input_type="document")
    assert a.embeddings == b.embeddings
    similar = cos(a.embeddings[0], a.embeddings[1])
    unrelated = cos(a.embeddings[0], a.embeddings[2])
    assert similar > 0.4
    assert similar > unrelated + 0.3


async def test_dtypes_and_plain_lists(emu: EmulatorServer) -> None:
    c = client(emu)
    text = ["hello embeddings world"]
    as_int8 = await c.embed(text, model="voyage-3.5", output_dtype="int8")
    values = as_int8.embeddings[0]
    assert len(values) == 1024 and all(isinstance(v, int) and -128 <= v <= 127 for v in values)
    as_bits = await c.embed(text, model="voyage-3.5", output_dtype="ubinary")
    assert len(as_bits.embeddings[0]) == 1024 // 8

    floats = await c.embed(text, model="voyage-3.5")
    async with httpx.AsyncClient(base_url=emu.voyage_base_url,
                                 headers={"authorization": "Bearer v-test"}) as http:
        plain = await http.post("/embeddings", json={"input": text, "model": "voyage-3.5"})
        assert plain.status_code == 200
        listed = plain.json()["data"][0]["embedding"]
        assert isinstance(listed, list)
        np.testing.assert_allclose(listed, floats.embeddings[0], rtol=1e-6)
        b64 = await http.post("/embeddings", json={"input": text, "model": "voyage-3.5",
                                                   "encoding_format": "base64"})
        raw = base64.b64decode(b64.json()["data"][0]["embedding"])
        np.testing.assert_array_equal(np.frombuffer(raw, "<f4"), np.asarray(listed, "<f4"))
        unauth = await http.post("/embeddings", json={"input": text, "model": "voyage-3.5"},
                                 headers={"authorization": ""})
        assert unauth.status_code == 401 and "detail" in unauth.json()


async def test_rerank(emu: EmulatorServer) -> None:
    c = client(emu)
    docs = ["Paris is the capital of France.", "Bananas are yellow.",
            "The capital city of France is Paris, on the Seine."]
    r = await c.rerank("What is the capital of France?", docs, model="rerank-2.5", top_k=2)
    assert [item.index for item in r.results] == [0, 2] or [i.index for i in r.results] == [2, 0]
    assert r.results[0].relevance_score >= r.results[1].relevance_score
