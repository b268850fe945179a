"""Voyage AI embeddings (``POST /v1/embeddings``) and rerank (``POST /v1/rerank``).

Embeddings are deterministic, signed feature hashing of lower-cased word unigrams (weight 1.0,
stopwords 0.25), word bigrams (0.5) and character trigrams inside words (0.1 each), hashed with
CRC-32 into the output dimension and L2-normalized, so texts sharing words are close.
"""

from __future__ import annotations

import base64
import math
import zlib
from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import Response

from .answer import STOPWORDS, normalize_word, words
from .common import BadJSON, bearer_token, json_response, read_json, retry_after_value, sleep_ms
from .state import EmulatorState, key_fingerprint
from .tokens import count_text_tokens

DEFAULT_DIMS = {
    "voyage-3.5": 1024,
    "voyage-3-large": 1024,
    "voyage-3.5-lite": 512,
    "voyage-3": 1024,
    "voyage-3-lite": 512,
    "voyage-code-3": 1024,
    "voyage-finance-2": 1024,
    "voyage-law-2": 1024,
    "voyage-multilingual-2": 1024,
    "voyage-context-3": 1024,
    "voyage-4": 1024,
    "voyage-4-large": 1024,
    "voyage-4-lite": 1024,
}
FLEXIBLE_DIMS = frozenset({256, 512, 1024, 2048})
CONTEXT_TOKENS = 32_000
MAX_INPUTS = 1000
MAX_BATCH_TOKENS = 320_000
OUTPUT_DTYPES = ("float", "int8", "uint8", "binary", "ubinary")
RERANK_MODELS = frozenset({"rerank-2.5", "rerank-2.5-lite", "rerank-2", "rerank-2-lite"})

W_UNIGRAM = 1.0
W_STOPWORD = 0.25
W_BIGRAM = 0.5
W_TRIGRAM = 0.1


def model_known(model: str) -> bool:
    return model in DEFAULT_DIMS or model.startswith("voyage-")


def error_response(status: int, detail: str, retry_after: str | None = None) -> Response:
    headers = {"retry-after": retry_after} if retry_after is not None else None
    return json_response({"detail": detail}, status, headers)


def _features(text: str) -> tuple[list[bytes], list[float]]:
    feats: list[bytes] = []
    weights: list[float] = []
    toks = words(text)
    norm = [normalize_word(t) for t in toks]
    for raw, tok in zip(toks, norm, strict=True):
        feats.append(b"w:" + tok.encode())
        weights.append(W_STOPWORD if raw in STOPWORDS else W_UNIGRAM)
        padded = f"#{tok}#"
        for i in range(len(padded) - 2):
            feats.append(b"c:" + padded[i : i + 3].encode())
            weights.append(W_TRIGRAM)
    for a, b in zip(norm, norm[1:], strict=False):
        feats.append(b"b:" + a.encode() + b" " + b.encode())
        weights.append(W_BIGRAM)
    return feats, weights


def embed_text(text: str, dim: int) -> np.ndarray[Any, np.dtype[np.float32]]:
    """Unit-length float32 vector of size ``dim`` (deterministic across processes)."""
    feats, weights = _features(text)
    vec = np.zeros(dim, dtype=np.float64)
    if feats:
        hashes = np.fromiter((zlib.crc32(f) for f in feats), dtype=np.uint64, count=len(feats))
        idx = (hashes % np.uint64(dim)).astype(np.int64)
        sign = np.where((hashes >> np.uint64(31)) & np.uint64(1), -1.0, 1.0)
        np.add.at(vec, idx, sign * np.asarray(weights, dtype=np.float64))
    norm = float(np.linalg.norm(vec))
    if norm == 0.0:
        vec[0] = 1.0
        norm = 1.0
    return (vec / norm).astype(np.float32)


def quantize(vec: np.ndarray[Any, np.dtype[np.float32]], dtype: str) -> np.ndarray[Any, Any]:
    if dtype == "float":
        return vec
    scale = float(np.max(np.abs(vec))) or 1.0
    if dtype == "int8":
        return np.clip(np.round(vec / scale * 127.0), -128, 127).astype(np.int8)
    if dtype == "uint8":
        shifted = np.round(vec / scale * 127.0).astype(np.int16) + np.int16(128)
        return shifted.astype(np.uint8)
    bits: np.ndarray[Any, np.dtype[np.uint8]] = np.packbits(vec > 0)
    if dtype == "ubinary":
        return bits
    return (bits.astype(np.int16) - 128).astype(np.int8)  # binary: offset binary in int8


def _encode(arr: np.ndarray[Any, Any], encoding: str | None) -> Any:
    if encoding == "base64":
        little = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
        return base64.b64encode(little.tobytes()).decode("ascii")
    return arr.tolist()


def _auth(request: Request) -> tuple[str, Response | None]:
    key = bearer_token(request)
    if key is None:
        return "", error_response(401, "Unauthorized. Provide your API key.")
    if key.startswith("invalid"):
        return key, error_response(401, "Provided API key is invalid.")
    return key, None


def _truncate(text: str, limit: int) -> str:
    return text if count_text_tokens(text) <= limit else text[: limit * 4]


async def embeddings(request: Request) -> Response:
    state: EmulatorState = request.app.state.emulator
    key, err = _auth(request)
    if err is not None:
        return err
    try:
        body = await read_json(request)
    except BadJSON as exc:
        return error_response(400, str(exc))
    if not isinstance(body, dict):
        return error_response(400, "Request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return error_response(400, "Field 'model' is required.")
    if not model_known(model):
        return error_response(
            400, f"Model {model} is not supported. Supported models are "
            f"{sorted(DEFAULT_DIMS)}."
        )
    raw_input = body.get("input")
    inputs: list[str]
    if isinstance(raw_input, str):
        inputs = [raw_input]
    elif isinstance(raw_input, list) and all(isinstance(x, str) for x in raw_input):
        inputs = list(raw_input)
    else:
        state.stats.add(model, invalid_requests=1)
        return error_response(400, "Field 'input' must be a string or a list of strings.")
    if not inputs:
        return error_response(400, "Field 'input' must not be empty.")
    if len(inputs) > MAX_INPUTS:
        return error_response(
            400, f"The batch size limit is {MAX_INPUTS}. Your batch size is {len(inputs)}."
        )
    input_type = body.get("input_type")
    if input_type not in (None, "query", "document"):
        return error_response(400, "Field 'input_type' must be null, 'query' or 'document'.")
    truncation = body.get("truncation", True)
    dtype = body.get("output_dtype") or "float"
    if dtype not in OUTPUT_DTYPES:
        return error_response(400, f"Field 'output_dtype' must be one of {list(OUTPUT_DTYPES)}.")
    encoding = body.get("encoding_format")
    if encoding not in (None, "base64"):
        return error_response(400, "Field 'encoding_format' must be null or 'base64'.")
    dim = DEFAULT_DIMS.get(model, 1024)
    out_dim = body.get("output_dimension")
    if out_dim is not None:
        if out_dim not in FLEXIBLE_DIMS:
            return error_response(
                400, f"Field 'output_dimension' must be one of {sorted(FLEXIBLE_DIMS)}."
            )
        dim = int(out_dim)

    texts: list[str] = []
    total = 0
    for i, text in enumerate(inputs):
        tokens = count_text_tokens(text)
        if tokens > CONTEXT_TOKENS:
            if truncation is False:
                return error_response(
                    400, f"Input {i} has {tokens} tokens, more than the context length "
                    f"{CONTEXT_TOKENS} of {model}; set truncation=true."
                )
            text = _truncate(text, CONTEXT_TOKENS)
            tokens = CONTEXT_TOKENS
        texts.append(text)
        total += tokens
    if total > MAX_BATCH_TOKENS:
        return error_response(
            400, f"Request to model '{model}' failed. The max allowed tokens per submitted "
            f"batch is {MAX_BATCH_TOKENS}. Your batch has {total} tokens after truncation."
        )

    state.stats.add(model, requests=1)
    decision = state.faults.decide(model, False)
    await sleep_ms(decision.timing.latency_ms)
    key_id = key_fingerprint(key)
    if decision.error_status is not None:
        state.stats.add(model, errors_injected=1)
        # Voyage has no 529: an "overloaded" fault is reported as 503
        status = 503 if decision.error_status == 529 else decision.error_status
        state.log_request(api="voyage", model=model, key_id=key_id, status=status, injected=True)
        return error_response(
            status,
            f"Emulated error {decision.error_status}",
            retry_after_value(decision.retry_after_s, decision.error_status),
        )
    await sleep_ms(decision.timing.ttft_ms)
    data = [
        {"object": "embedding", "embedding": _encode(quantize(embed_text(t, dim), dtype), encoding),
         "index": i}
        for i, t in enumerate(texts)
    ]
    state.stats.add(model, input_tokens=total, embedding_inputs=len(texts))
    state.log_request(api="voyage", model=model, key_id=key_id, status=200, inputs=len(texts))
    return json_response(
        {"object": "list", "data": data, "model": model, "usage": {"total_tokens": total}}
    )


async def rerank(request: Request) -> Response:
    state: EmulatorState = request.app.state.emulator
    key, err = _auth(request)
    if err is not None:
        return err
    try:
        body = await read_json(request)
    except BadJSON as exc:
        return error_response(400, str(exc))
    if not isinstance(body, dict):
        return error_response(400, "Request body must be a JSON object.")
    model = body.get("model")
    query = body.get("query")
    documents = body.get("documents")
    if not isinstance(model, str) or not (model in RERANK_MODELS or model.startswith("rerank-")):
        return error_response(400, f"Model {model} is not supported for rerank.")
    if not isinstance(query, str) or not isinstance(documents, list) or not all(
        isinstance(d, str) for d in documents
    ):
        return error_response(400, "Fields 'query' (string) and 'documents' (list) are required.")
    top_k = body.get("top_k")
    return_documents = bool(body.get("return_documents", False))
    state.stats.add(model, requests=1)
    decision = state.faults.decide(model, False)
    await sleep_ms(decision.timing.latency_ms)
    if decision.error_status is not None:
        state.stats.add(model, errors_injected=1)
        return error_response(
            decision.error_status,
            f"Emulated error {decision.error_status}",
            retry_after_value(decision.retry_after_s, decision.error_status),
        )
    q = embed_text(query, 1024)
    scored = []
    for i, doc in enumerate(documents):
        score = float(np.dot(q, embed_text(doc, 1024)))
        # squash cosine into (0, 1) like a relevance score
        scored.append((1.0 / (1.0 + math.exp(-6.0 * (score - 0.3))), i, doc))
    scored.sort(key=lambda s: (-s[0], s[1]))
    if isinstance(top_k, int) and top_k > 0:
        scored = scored[:top_k]
    data = []
    for score, i, doc in scored:
        item: dict[str, Any] = {"relevance_score": round(score, 6), "index": i}
        if return_documents:
            item["document"] = doc
        data.append(item)
    total = count_text_tokens(query) * len(documents) + sum(count_text_tokens(d) for d in documents)
    state.stats.add(model, input_tokens=total)
    state.log_request(api="voyage-rerank", model=model, key_id=key_fingerprint(key), status=200)
    return json_response(
        {"object": "list", "data": data, "model": model, "usage": {"total_tokens": total}}
    )
