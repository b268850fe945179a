"""Admin API (JSON): faults, stats, reset, request log, clock, config."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from .common import BadJSON, json_response, read_json
from .faults import FaultSpec, FaultSpecError
from .state import EmulatorState

Handler = Callable[[Request], Awaitable[Response]]


def _state(request: Request) -> EmulatorState:
    state: EmulatorState = request.app.state.emulator
    return state


def _bad(message: str) -> Response:
    return json_response({"error": message}, 400)


async def healthz(request: Request) -> Response:
    return json_response({"status": "ok"})


async def set_faults(request: Request) -> Response:
    state = _state(request)
    try:
        body = await read_json(request)
        items = body if isinstance(body, list) else [body]
        specs = [FaultSpec.from_json(item) for item in items]
    except (BadJSON, FaultSpecError, TypeError) as exc:
        return _bad(str(exc))
    for spec in specs:
        state.faults.set(spec)
    return json_response({"faults": state.faults.list()})


async def get_faults(request: Request) -> Response:
    return json_response({"faults": _state(request).faults.list()})


async def clear_faults(request: Request) -> Response:
    state = _state(request)
    state.faults.clear(request.query_params.get("model"))
    return json_response({"faults": state.faults.list()})


async def get_stats(request: Request) -> Response:
    state = _state(request)
    snap = state.stats.snapshot()
    snap["caches"] = {
        "anthropic_prompt_cache_entries": len(state.anthropic_cache),
        "gemini_implicit_cache_entries": len(state.gemini_implicit),
        "gemini_cached_contents": len(state.gemini_cached_contents),
    }
    return json_response(snap)


async def reset(request: Request) -> Response:
    _state(request).reset()
    return json_response({"status": "reset"})


async def get_requests(request: Request) -> Response:
    state = _state(request)
    try:
        limit = int(request.query_params.get("limit", "100"))
    except ValueError:
        return _bad("limit must be an integer")
    items = list(state.request_log)[-limit:] if limit > 0 else []
    return json_response({"requests": items})


async def clock(request: Request) -> Response:
    state = _state(request)
    try:
        body = await read_json(request)
        advance = float(body.get("advance_s", 0)) if isinstance(body, dict) else None
    except (BadJSON, TypeError, ValueError) as exc:
        return _bad(str(exc))
    if advance is None or advance < 0:
        return _bad("body must be {\"advance_s\": <non-negative seconds>}")
    state.clock.advance(advance)
    return json_response({"offset_s": state.clock.offset})


def _config_json(state: EmulatorState) -> dict[str, Any]:
    c = state.config
    return {
        "latency_ms": c.latency_ms,
        "ttft_ms": c.ttft_ms,
        "inter_token_ms": c.inter_token_ms,
        "anthropic_min_cache_tokens": c.anthropic_min_cache_tokens,
        "gemini_min_cache_tokens": c.gemini_min_cache_tokens,
        "gemini_implicit_ttl_s": c.gemini_implicit_ttl_s,
    }


async def get_config(request: Request) -> Response:
    return json_response(_config_json(_state(request)))


def _number(body: dict[str, Any], name: str, default: float) -> float:
    value = body.get(name, default)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name} must be a non-negative number")
    return float(value)


def _table(body: dict[str, Any], name: str, current: dict[str, int]) -> dict[str, int]:
    value = body.get(name)
    if value is None:
        return current
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, int) and v >= 0 for k, v in value.items()
    ):
        raise ValueError(f"{name} must map model ids or globs to token counts")
    return dict(value)


async def set_config(request: Request) -> Response:
    state = _state(request)
    c = state.config
    try:
        body = await read_json(request)
        if not isinstance(body, dict):
            raise ValueError("body must be a JSON object")
        latency = _number(body, "latency_ms", c.latency_ms)
        ttft = _number(body, "ttft_ms", c.ttft_ms)
        inter = _number(body, "inter_token_ms", c.inter_token_ms)
        implicit_ttl = _number(body, "gemini_implicit_ttl_s", c.gemini_implicit_ttl_s)
        a_table = _table(body, "anthropic_min_cache_tokens", c.anthropic_min_cache_tokens)
        g_table = _table(body, "gemini_min_cache_tokens", c.gemini_min_cache_tokens)
    except (BadJSON, ValueError) as exc:
        return _bad(str(exc))
    state.set_timing_defaults(latency, ttft, inter)
    c.gemini_implicit_ttl_s = implicit_ttl
    c.anthropic_min_cache_tokens = a_table
    c.gemini_min_cache_tokens = g_table
    return json_response(_config_json(state))
