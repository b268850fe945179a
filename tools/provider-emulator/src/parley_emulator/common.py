"""Small helpers shared by the API modules."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from .tokens import count_text_tokens


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj)


def canonical(obj: Any) -> bytes:
    """Deterministic serialization (sorted keys) for prefix hashing."""
    return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)


def json_response(
    body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(dumps(body), status_code=status, headers=headers,
                    media_type="application/json")


class BadJSON(ValueError):
    pass


async def read_json(request: Request) -> Any:
    raw = await request.body()
    if not raw:
        raise BadJSON("request body is empty")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadJSON(f"request body is not valid JSON: {exc}") from exc


async def sleep_ms(ms: float) -> None:
    if ms > 0:
        await asyncio.sleep(ms / 1000.0)


def retry_after_value(seconds: float | None, status: int) -> str | None:
    if seconds is None:
        if status in (429, 503, 529):
            seconds = 1
        else:
            return None
    return str(int(seconds)) if float(seconds).is_integer() else f"{seconds:g}"


def bearer_token(request: Request) -> str | None:
    auth = request.headers.get("authorization")
    if auth and auth[:7].lower() == "bearer ":
        token = auth[7:].strip()
        return token or None
    return None


@dataclass
class Segment:
    """One block of a prompt, in prompt order, for token accounting and prefix hashing."""

    canon: bytes
    tokens: int
    cache_ttl_s: float | None = None  # set on an Anthropic cache_control breakpoint


def rolling_hashes(segments: Iterable[Segment], seed: bytes) -> list[bytes]:
    """Digest of every prefix: hashes[i] identifies segments[0..i] exactly."""
    out: list[bytes] = []
    h = hashlib.sha256(seed).digest()
    for seg in segments:
        h = hashlib.sha256(h + seg.canon).digest()
        out.append(h)
    return out


def text_tokens(text: str) -> int:
    return count_text_tokens(text)


def flatten_strings(value: Any, out: list[str] | None = None, key: str | None = None) -> list[str]:
    """Text leaves of a JSON value, in order; short scalars under a key become "key: value"."""
    if out is None:
        out = []
    if isinstance(value, str):
        short = key is not None and " " not in value.strip()
        out.append(f"{key}: {value}" if short else value)
    elif value is None:
        pass
    elif isinstance(value, (bool, int, float)):
        rendered = str(value).lower() if isinstance(value, bool) else str(value)
        out.append(f"{key}: {rendered}" if key is not None else rendered)
    elif isinstance(value, dict):
        for k, item in value.items():
            flatten_strings(item, out, str(k))
    elif isinstance(value, list):
        for item in value:
            flatten_strings(item, out, key)
    return out
