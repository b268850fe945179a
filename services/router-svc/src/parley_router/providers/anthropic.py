"""Anthropic Messages API through the official SDK (AsyncAnthropic), streaming.

Retries are off in the SDK (max_retries=0): the router's failover owns retries. Prompt caching
puts `cache_control` breakpoints on the stable prefix (see caching.plan_anthropic_breakpoints).

The answer is read as the SDK's raw server-sent events (`with_streaming_response` +
`AsyncStream.raw_events`), decoded with orjson into plain dicts: the SDK still builds, signs and
sends the request and raises its typed errors, but no pydantic event model is built per token
(about a quarter of the SDK's CPU per streamed call). The SDK's own OpenTelemetry spans are on
only when this process exports traces (`sdk_spans`).
"""

from __future__ import annotations

import base64
import contextvars
import email.utils
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import orjson
from parley_runtime.catalog import ModelEntry

from ..caching import AnthropicCachePlan, plan_anthropic_breakpoints
from ..chat import (
    ChatRequest,
    FinishReason,
    ImagePart,
    ProviderEvent,
    Role,
    TextDelta,
    TextPart,
    ToolCallEvent,
    ToolCallPart,
    ToolChoice,
    ToolResultPart,
    TurnFinished,
    Usage,
)
from .base import CallContext, ProviderError, ProviderErrorKind, SendGate, kind_for_status

__all__ = ["AnthropicProvider", "build_anthropic_params"]

_EPHEMERAL = {"type": "ephemeral"}
_FINISH = {
    "end_turn": FinishReason.STOP,
    "stop_sequence": FinishReason.STOP,
    "pause_turn": FinishReason.STOP,
    "max_tokens": FinishReason.LENGTH,
    "tool_use": FinishReason.TOOL_CALLS,
    "refusal": FinishReason.CONTENT_FILTER,
}
_ERROR_TYPES = {
    "overloaded_error": ProviderErrorKind.OVERLOADED,
    "rate_limit_error": ProviderErrorKind.RATE_LIMITED,
    "api_error": ProviderErrorKind.SERVER,
    "timeout_error": ProviderErrorKind.TIMEOUT,
    "invalid_request_error": ProviderErrorKind.INVALID_REQUEST,
    "request_too_large": ProviderErrorKind.INVALID_REQUEST,
    "authentication_error": ProviderErrorKind.AUTH,
    "permission_error": ProviderErrorKind.AUTH,
    "not_found_error": ProviderErrorKind.NOT_FOUND,
}


def _block(part: Any) -> dict[str, Any]:
    if isinstance(part, TextPart):
        return {"type": "text", "text": part.text}
    if isinstance(part, ImagePart):
        return {
            "type": "image",
            "source": {
                "type": "base64",
                "media_type": part.mime_type,
                "data": base64.b64encode(part.data).decode("ascii"),
            },
        }
    if isinstance(part, ToolCallPart):
        return {
            "type": "tool_use",
            "id": part.id,
            "name": part.name,
            "input": json.loads(part.arguments_json or "{}"),
        }
    if isinstance(part, ToolResultPart):
        out: dict[str, Any] = {
            "type": "tool_result",
            "tool_use_id": part.call_id,
            "content": part.content,
        }
        if part.is_error:
            out["is_error"] = True
        return out
    raise TypeError(f"unknown part {type(part).__name__}")


def build_anthropic_params(
    model_id: str, request: ChatRequest, plan: AnthropicCachePlan
) -> dict[str, Any]:
    """The keyword arguments of `messages.create` for `request`."""
    system: list[dict[str, Any]] = []
    messages: list[dict[str, Any]] = []
    for i, m in enumerate(request.messages):
        if m.role is Role.SYSTEM:
            system.extend({"type": "text", "text": p.text} for p in m.parts
                          if isinstance(p, TextPart) and p.text)
            continue
        blocks = [_block(p) for p in m.parts if not (isinstance(p, TextPart) and not p.text)]
        if not blocks:
            continue
        if i in plan.messages:
            blocks[-1] = {**blocks[-1], "cache_control": _EPHEMERAL}
        role = "assistant" if m.role is Role.ASSISTANT else "user"
        if messages and messages[-1]["role"] == role:
            # Consecutive turns of one role (e.g. tool results then a user message) merge.
            messages[-1]["content"].extend(blocks)
        else:
            messages.append({"role": role, "content": blocks})
    params: dict[str, Any] = {
        "model": model_id,
        "max_tokens": request.max_output_tokens,
        "messages": messages,
        "stream": True,
    }
    if system:
        if plan.system:
            system[-1] = {**system[-1], "cache_control": _EPHEMERAL}
        params["system"] = system
    if request.tools:
        # Sorted by name: a stable order keeps the cached prefix identical across turns.
        tools = [
            {"name": t.name, "description": t.description, "input_schema": t.parameters}
            for t in sorted(request.tools, key=lambda t: t.name)
        ]
        if plan.tools:
            tools[-1] = {**tools[-1], "cache_control": _EPHEMERAL}
        params["tools"] = tools
        params["tool_choice"] = {
            ToolChoice.AUTO: {"type": "auto"},
            ToolChoice.REQUIRED: {"type": "any"},
            ToolChoice.NONE: {"type": "none"},
        }[request.tool_choice]
    if request.temperature is not None:
        params["temperature"] = min(request.temperature, 1.0)
    return params


def _retry_after(headers: Any) -> float | None:
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return float(ms) / 1000.0
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value)
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None


def _error_message(body: object, default: str) -> tuple[str, str | None]:
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict):
            return str(err.get("message") or default), err.get("type")
    return default, None


def translate_error(exc: BaseException, *, in_stream: bool) -> ProviderError:
    if isinstance(exc, ProviderError):
        return exc
    if isinstance(exc, anthropic.APIStatusError):
        message, etype = _error_message(exc.body, str(exc))
        headers = getattr(exc.response, "headers", None)
        status = exc.status_code
        if etype in _ERROR_TYPES and (in_stream or status == 200):
            kind = _ERROR_TYPES[etype]
        else:
            kind = kind_for_status(status)
        return ProviderError(
            kind, message, status=None if status == 200 else status,
            retry_after_s=_retry_after(headers),
        )
    if isinstance(exc, anthropic.APITimeoutError):
        return ProviderError(ProviderErrorKind.TIMEOUT, "request timed out")
    if isinstance(exc, anthropic.APIConnectionError):
        return ProviderError(ProviderErrorKind.CONNECTION, str(exc) or "connection failed")
    kind = ProviderErrorKind.STREAM if in_stream else ProviderErrorKind.CONNECTION
    return ProviderError(kind, f"{type(exc).__name__}: {exc}".rstrip(": "))


# The send gate of the call being started in this task (see _GatedAioHttpClient).
_SEND_GATE: contextvars.ContextVar[SendGate | None] = contextvars.ContextVar(
    "parley_router_anthropic_send_gate", default=None
)


class _GatedAioHttpClient(anthropic.DefaultAioHttpClient):
    """The SDK's aiohttp transport, holding each request until its call is admitted.

    The SDK prepares the request (params, headers, body) while the router's rate-limit round
    trip is in flight; the request leaves only once `ctx.send_gate` lets it (NotAdmitted
    otherwise: nothing is sent, nothing is billed).
    """

    async def send(self, request: Any, **kwargs: Any) -> Any:
        gate = _SEND_GATE.get()
        if gate is not None:
            await gate()
        return await super().send(request, **kwargs)


def _in_stream_error(data: str, response: Any) -> ProviderError:
    """An `event: error` in the stream, classified like the SDK's own error for it."""
    body: object = data
    try:
        body = orjson.loads(data)
        message = f"{body}"
    except ValueError:
        message = data or f"Error code: {response.status_code}"
    return translate_error(anthropic.APIStatusError(message, response=response, body=body),
                           in_stream=True)


class AnthropicProvider:
    """ChatProvider for provider `anthropic`."""

    name = "anthropic"
    honours_send_gate = True

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str | None,
        connect_timeout_s: float = 3.0,
        read_timeout_s: float = 30.0,
        auto_history_cache: bool = True,
        sdk_spans: bool = False,
    ) -> None:
        timeout = anthropic.Timeout(read_timeout_s, connect=connect_timeout_s)
        self._client = anthropic.AsyncAnthropic(
            api_key=api_key,
            base_url=base_url,
            max_retries=0,
            timeout=timeout,
            # The SDK's aiohttp transport: about a third less CPU per streamed call than the
            # default pure-Python HTTP stack (measured in bench/router).
            http_client=_GatedAioHttpClient(timeout=timeout),
            # The SDK's spans (one per call, with a snapshot of the streamed message) cost
            # ~0.2 ms CPU per call: only worth it when traces go somewhere.
            open_telemetry=None if sdk_spans else False,
        )
        self._auto_history = auto_history_cache

    async def aclose(self) -> None:
        await self._client.close()

    def params(self, model: ModelEntry, request: ChatRequest) -> dict[str, Any]:
        plan = plan_anthropic_breakpoints(
            request, model.min_cacheable_tokens or 1024, auto_history=self._auto_history
        )
        return build_anthropic_params(model.model_id, request, plan)

    async def stream(
        self, model: ModelEntry, request: ChatRequest, ctx: CallContext, *, timeout_s: float
    ) -> AsyncIterator[ProviderEvent]:
        params = self.params(model, request)
        call = self._client.messages.with_streaming_response.create(**params, timeout=timeout_s)
        gate = _SEND_GATE.set(ctx.send_gate)
        try:
            response = await call.__aenter__()
        except Exception as exc:
            raise translate_error(exc, in_stream=False) from exc
        finally:
            _SEND_GATE.reset(gate)
        if ctx.on_sent is not None:
            ctx.on_sent()  # the response has started: the request is out, the model thinks
        http = response.http_response
        loads = orjson.loads
        usage = Usage(images=request.image_count)
        if ctx.on_usage is not None:
            ctx.on_usage(usage)  # filled in by message_start / message_delta below
        finish = FinishReason.STOP
        tool: dict[str, Any] | None = None
        tool_json: list[str] = []
        finished = False
        try:
            async for sse in anthropic.AsyncStream.raw_events(http):
                etype = sse.event
                if not sse.data:  # as the SDK's own stream: events without data are skipped
                    continue
                if etype == "content_block_delta":
                    delta = loads(sse.data)["delta"]
                    dtype = delta.get("type")
                    if dtype == "text_delta":
                        text = delta.get("text")
                        if text:
                            yield TextDelta(text)
                    elif dtype == "input_json_delta":
                        tool_json.append(delta.get("partial_json") or "")
                elif etype == "content_block_start":
                    block = loads(sse.data)["content_block"]
                    if block.get("type") == "tool_use":
                        tool = {"id": block.get("id", ""), "name": block.get("name", "")}
                        tool_json = []
                        initial = block.get("input")
                        if initial:
                            tool_json.append(json.dumps(initial))
                elif etype == "content_block_stop":
                    if tool is not None:
                        args = "".join(tool_json) or "{}"
                        yield ToolCallEvent(tool["id"], tool["name"], args)
                        tool = None
                elif etype == "message_start":
                    u = loads(sse.data)["message"].get("usage") or {}
                    read = u.get("cache_read_input_tokens") or 0
                    write = u.get("cache_creation_input_tokens") or 0
                    usage.input_tokens = (u.get("input_tokens") or 0) + read + write
                    usage.cached_input_tokens = read
                    usage.cache_write_tokens = write
                    usage.output_tokens = u.get("output_tokens") or 0
                elif etype == "message_delta":
                    data = loads(sse.data)
                    stop_reason = (data.get("delta") or {}).get("stop_reason")
                    if stop_reason:
                        finish = _FINISH.get(stop_reason, FinishReason.STOP)
                    out = (data.get("usage") or {}).get("output_tokens")
                    if out is not None:
                        usage.output_tokens = out
                elif etype == "message_stop":
                    finished = True
                elif etype == "error":
                    raise _in_stream_error(sse.data, http)
        except ProviderError as perr:
            perr.partial_usage = usage
            raise
        except Exception as exc:
            err = translate_error(exc, in_stream=True)
            err.partial_usage = usage
            raise err from exc
        finally:
            await call.__aexit__(None, None, None)
        if not finished:
            cut = ProviderError(
                ProviderErrorKind.STREAM, "the stream ended without message_stop (cut short)"
            )
            cut.partial_usage = usage
            raise cut
        yield TurnFinished(finish, usage)
