"""Gemini generateContent through the official SDK (google-genai, `client.aio`), streaming.

SDK retries are off (HttpRetryOptions(attempts=1), which also stops the SDK's implicit
reconnect-and-sleep on connection errors): the router's failover owns retries.

Caching: the request is laid out in a stable order (system instruction, tools sorted by name,
then the conversation) so Gemini's implicit cache matches the prefix across turns. For large
tenant prefixes that recur often enough to pay for storage (caching.ExplicitCacheEconomics),
an explicit `cachedContents` entry is created in the background and its name shared across
replicas (CachedContentRegistry) per tenant + model + prefix hash, with a TTL.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import re
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from google import genai
from google.genai import errors as genai_errors
from google.genai import types
from parley_runtime.catalog import ModelEntry

from ..caching import ExplicitCacheEconomics, GeminiPrefix, PrefixSightings, gemini_prefix
from ..chat import (
    ChatRequest,
    FinishReason,
    ImagePart,
    Message,
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
from ..metrics import GEMINI_EXPLICIT_CACHE
from .base import CallContext, ProviderError, ProviderErrorKind, kind_for_status

logger = logging.getLogger(__name__)

__all__ = ["CachedContentRegistry", "ExplicitCacheOptions", "GeminiProvider", "build_gemini_call"]

_FINISH = {
    "STOP": FinishReason.STOP,
    "MAX_TOKENS": FinishReason.LENGTH,
    "SAFETY": FinishReason.CONTENT_FILTER,
    "RECITATION": FinishReason.CONTENT_FILTER,
    "BLOCKLIST": FinishReason.CONTENT_FILTER,
    "PROHIBITED_CONTENT": FinishReason.CONTENT_FILTER,
    "SPII": FinishReason.CONTENT_FILTER,
    "IMAGE_SAFETY": FinishReason.CONTENT_FILTER,
}
_DURATION_RE = re.compile(r"^\s*([0-9.]+)s\s*$")


class CachedContentRegistry(Protocol):
    """Names of explicit cached contents, shared by replicas (Redis) with a TTL."""

    async def get(self, key: str) -> str | None: ...

    async def put(self, key: str, name: str, ttl_s: float) -> None: ...

    async def delete(self, key: str) -> None: ...


@dataclass(frozen=True, slots=True)
class ExplicitCacheOptions:
    enabled: bool = True
    # Prefixes smaller than this stay with implicit caching.
    min_tokens: int = 4096
    ttl_s: float = 600.0
    # Storage price when the catalog has none (USD per 1M tokens per hour).
    default_storage_usd_per_mtok_hour: float = 1.0


CacheCreated = Callable[[CallContext, ModelEntry, int], None]


def _part(part: Any, names: dict[str, str]) -> dict[str, Any]:
    if isinstance(part, TextPart):
        return {"text": part.text}
    if isinstance(part, ImagePart):
        return {"inline_data": {"mime_type": part.mime_type, "data": part.data}}
    if isinstance(part, ToolCallPart):
        names[part.id] = part.name
        return {
            "function_call": {
                "id": part.id,
                "name": part.name,
                "args": json.loads(part.arguments_json or "{}"),
            }
        }
    if isinstance(part, ToolResultPart):
        key = "error" if part.is_error else "output"
        return {
            "function_response": {
                "id": part.call_id,
                "name": part.name or names.get(part.call_id, "tool"),
                "response": {key: part.content},
            }
        }
    raise TypeError(f"unknown part {type(part).__name__}")


def _contents(messages: list[Message], names: dict[str, str]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for m in messages:
        parts = [_part(p, names) for p in m.parts if not (isinstance(p, TextPart) and not p.text)]
        if not parts:
            continue
        role = "model" if m.role is Role.ASSISTANT else "user"
        if out and out[-1]["role"] == role:
            out[-1]["parts"].extend(parts)
        else:
            out.append({"role": role, "parts": parts})
    return out


def _system_text(request: ChatRequest) -> str | None:
    texts = [m.text() for m in request.messages if m.role is Role.SYSTEM]
    joined = "\n\n".join(t for t in texts if t)
    return joined or None


def _tools(request: ChatRequest) -> list[dict[str, Any]] | None:
    if not request.tools:
        return None
    decls = [
        {"name": t.name, "description": t.description, "parameters_json_schema": t.parameters}
        for t in sorted(request.tools, key=lambda t: t.name)
    ]
    return [{"function_declarations": decls}]


def build_gemini_call(
    request: ChatRequest,
    *,
    cached_content: str | None = None,
    prefix_messages: int = 0,
    disable_thinking: bool = False,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(contents, config) for generate_content_stream.

    With `cached_content`, the system instruction, tools and the first `prefix_messages`
    conversation messages live in the cache and are left out of the request.
    """
    names: dict[str, str] = {}
    convo = [m for m in request.messages if m.role is not Role.SYSTEM]
    config: dict[str, Any] = {"max_output_tokens": request.max_output_tokens}
    if request.temperature is not None:
        config["temperature"] = request.temperature
    if disable_thinking:
        config["thinking_config"] = {"thinking_budget": 0}
    if cached_content is not None:
        # Tool-call names referenced by results in the suffix may live in the prefix.
        _contents(convo[:prefix_messages], names)
        config["cached_content"] = cached_content
        return _contents(convo[prefix_messages:], names), config
    system = _system_text(request)
    if system:
        config["system_instruction"] = system
    tools = _tools(request)
    if tools:
        config["tools"] = tools
        mode = {ToolChoice.AUTO: "AUTO", ToolChoice.REQUIRED: "ANY", ToolChoice.NONE: "NONE"}
        config["tool_config"] = {
            "function_calling_config": {"mode": mode[request.tool_choice]}
        }
    return _contents(convo, names), config


def _retry_delay(exc: genai_errors.APIError) -> float | None:
    details = exc.details
    if isinstance(details, dict):
        err = details.get("error")
        for item in (err or {}).get("details") or [] if isinstance(err, dict) else []:
            if isinstance(item, dict) and str(item.get("@type", "")).endswith("RetryInfo"):
                m = _DURATION_RE.match(str(item.get("retryDelay", "")))
                if m:
                    return float(m.group(1))
    headers = getattr(exc.response, "headers", None)
    value = headers.get("retry-after") if headers is not None else None
    if value:
        try:
            return max(0.0, float(value))
        except ValueError:
            return None
    return None


def translate_error(exc: BaseException, *, in_stream: bool) -> ProviderError:
    if isinstance(exc, ProviderError):
        return exc
    if isinstance(exc, genai_errors.APIError):
        code = int(exc.code or 500)
        return ProviderError(
            kind_for_status(code),
            str(exc.message or exc),
            status=code,
            retry_after_s=_retry_delay(exc),
        )
    if isinstance(exc, TimeoutError):
        return ProviderError(ProviderErrorKind.TIMEOUT, "request timed out")
    kind = ProviderErrorKind.STREAM if in_stream else ProviderErrorKind.CONNECTION
    return ProviderError(kind, f"{type(exc).__name__}: {exc}".rstrip(": "))


class GeminiProvider:
    """ChatProvider for provider `google`."""

    name = "google"
    # Called only once admitted: the explicit-cache lookup that starts a call counts sightings
    # and may create a (billed) cache, which a refused turn must not do.
    honours_send_gate = False

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str | None,
        timeout_s: float = 30.0,
        registry: CachedContentRegistry | None = None,
        explicit_cache: ExplicitCacheOptions | None = None,
        on_cache_created: CacheCreated | None = None,
        disable_thinking: bool = True,
    ) -> None:
        http_options = types.HttpOptions(
            base_url=base_url,
            timeout=int(timeout_s * 1000),
            retry_options=types.HttpRetryOptions(attempts=1),
        )
        self._client = genai.Client(api_key=api_key, http_options=http_options)
        self._aio = self._client.aio
        self._registry = registry
        self._explicit = explicit_cache or ExplicitCacheOptions()
        self._sightings = PrefixSightings(window_s=self._explicit.ttl_s)
        self._creating: dict[str, asyncio.Task[None]] = {}
        self._on_cache_created = on_cache_created
        self._disable_thinking = disable_thinking

    async def aclose(self) -> None:
        tasks = list(self._creating.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        await self._aio.aclose()

    def _thinking_off(self, model: ModelEntry) -> bool:
        # Voice turns want the first word fast; Flash-class models can turn thinking off,
        # Pro-class models cannot (a budget of 0 is rejected there).
        return self._disable_thinking and "flash" in model.model_id

    async def _cached_name(
        self, model: ModelEntry, request: ChatRequest, ctx: CallContext
    ) -> tuple[str, GeminiPrefix] | None:
        """An explicit cache for this turn's prefix, if one exists; may start creating one."""
        opts = self._explicit
        if not opts.enabled or self._registry is None or request.tool_choice is not ToolChoice.AUTO:
            return None
        floor = max(opts.min_tokens, model.min_cacheable_tokens)
        # Cheap upper bound first: no hashing for prompts that cannot qualify.
        if sum(len(p.text) for m in request.messages for p in m.parts
               if isinstance(p, TextPart)) // 4 < floor:
            return None
        prefix = gemini_prefix(request, model.model_id)
        if prefix is None or prefix.tokens < floor:
            return None
        key = f"{ctx.tenant_id}:{model.model_id}:{prefix.digest}"
        name = await self._registry.get(key)
        if name:
            GEMINI_EXPLICIT_CACHE.labels(model.model_id, "used").inc()
            return name, prefix
        uses = self._sightings.add(key)
        price = model.price_at(_today()).usd_per_mtok
        economics = ExplicitCacheEconomics(
            input_usd_per_mtok=price.get("input", 0.0),
            cache_read_usd_per_mtok=price.get("cache_read", price.get("input", 0.0)),
            storage_usd_per_mtok_hour=price.get(
                "cache_storage_per_hour", opts.default_storage_usd_per_mtok_hour
            ),
            ttl_s=opts.ttl_s,
        )
        if economics.pays_off(uses) and key not in self._creating:
            task = asyncio.create_task(self._create_cache(key, model, request, prefix, ctx))
            self._creating[key] = task
            task.add_done_callback(self._forget_creation(key))
        return None

    def _forget_creation(self, key: str) -> Callable[[asyncio.Task[None]], None]:
        def done(_task: asyncio.Task[None]) -> None:
            self._creating.pop(key, None)

        return done

    async def _create_cache(
        self, key: str, model: ModelEntry, request: ChatRequest, prefix: GeminiPrefix,
        ctx: CallContext,
    ) -> None:
        assert self._registry is not None
        convo = [m for m in request.messages if m.role is not Role.SYSTEM]
        contents = _contents(convo[: prefix.messages], {})
        config: dict[str, Any] = {
            "ttl": f"{int(self._explicit.ttl_s)}s",
            "display_name": f"parley:{ctx.tenant_id}:{prefix.digest[:12]}",
        }
        if contents:
            config["contents"] = contents
        system = _system_text(request)
        if system:
            config["system_instruction"] = system
        tools = _tools(request)
        if tools:
            config["tools"] = tools
        try:
            created = await self._aio.caches.create(
                model=model.model_id, config=config  # type: ignore[arg-type]
            )
        except Exception as exc:  # the turn never depends on this
            logger.warning(
                "explicit cache creation failed",
                extra={"model": model.model_id, "error": str(translate_error(exc,
                                                                             in_stream=False))},
            )
            return
        if not created.name:
            return
        # Expire our pointer a little before the cache itself.
        await self._registry.put(key, created.name, max(1.0, self._explicit.ttl_s - 30.0))
        GEMINI_EXPLICIT_CACHE.labels(model.model_id, "created").inc()
        tokens = 0
        if created.usage_metadata is not None:
            tokens = int(created.usage_metadata.total_token_count or 0)
        if self._on_cache_created is not None:
            self._on_cache_created(ctx, model, tokens or prefix.tokens)
        logger.info(
            "explicit cache created",
            extra={"model": model.model_id, "cache": created.name, "tokens": tokens},
        )

    async def _start(
        self, model: ModelEntry, contents: list[dict[str, Any]], config: dict[str, Any]
    ) -> Any:
        return await self._aio.models.generate_content_stream(
            model=model.model_id, contents=contents,  # type: ignore[arg-type]
            config=config,  # type: ignore[arg-type]
        )

    async def stream(
        self, model: ModelEntry, request: ChatRequest, ctx: CallContext, *, timeout_s: float
    ) -> AsyncIterator[ProviderEvent]:
        cached = await self._cached_name(model, request, ctx)
        thinking_off = self._thinking_off(model)
        stream: Any = None
        if cached is not None:
            name, prefix = cached
            contents, config = build_gemini_call(
                request, cached_content=name, prefix_messages=prefix.messages,
                disable_thinking=thinking_off,
            )
            try:
                stream = await self._start(model, contents, config)
            except genai_errors.APIError as exc:
                if exc.code not in (400, 403, 404):
                    raise translate_error(exc, in_stream=False) from exc
                # The cache expired or was deleted early: forget it, send the full prompt.
                GEMINI_EXPLICIT_CACHE.labels(model.model_id, "expired").inc()
                if self._registry is not None:
                    await self._registry.delete(
                        f"{ctx.tenant_id}:{model.model_id}:{prefix.digest}"
                    )
            except Exception as exc:
                raise translate_error(exc, in_stream=False) from exc
        if stream is None:
            contents, config = build_gemini_call(request, disable_thinking=thinking_off)
            try:
                stream = await self._start(model, contents, config)
            except Exception as exc:
                raise translate_error(exc, in_stream=False) from exc
        usage = Usage(images=request.image_count)
        finish: FinishReason | None = None
        calls = 0
        received = False
        try:
            async for chunk in stream:
                if not received:
                    received = True
                    if ctx.on_usage is not None:  # the response started: the call is billed
                        ctx.on_usage(usage)
                meta = chunk.usage_metadata
                if meta is not None:
                    usage.input_tokens = meta.prompt_token_count or usage.input_tokens
                    usage.cached_input_tokens = (
                        meta.cached_content_token_count or usage.cached_input_tokens
                    )
                    usage.output_tokens = meta.candidates_token_count or usage.output_tokens
                candidates = chunk.candidates
                if not candidates:
                    continue
                cand = candidates[0]
                content = cand.content
                if content is not None and content.parts:
                    for part in content.parts:
                        if part.text and not part.thought:
                            yield TextDelta(part.text)
                        elif part.function_call is not None:
                            fc = part.function_call
                            calls += 1
                            # Gemini often leaves the id empty; the caller pairs results by id
                            # across the whole conversation, and turn ids may repeat or be empty.
                            call_id = fc.id or f"call_{uuid.uuid4().hex[:24]}"
                            yield ToolCallEvent(
                                call_id, fc.name or "", json.dumps(fc.args or {})
                            )
                if cand.finish_reason is not None:
                    reason = getattr(cand.finish_reason, "value", str(cand.finish_reason))
                    finish = _FINISH.get(reason, FinishReason.STOP)
        except Exception as exc:
            # The SDK sends the request on the first iteration: a failure before any chunk is
            # a connection problem, after one it is a broken stream.
            err = translate_error(exc, in_stream=received)
            err.partial_usage = usage
            raise err from exc
        if finish is None:
            err = ProviderError(
                ProviderErrorKind.STREAM, "the stream ended without a finish reason (cut short)"
            )
            err.partial_usage = usage
            raise err
        if calls and finish is FinishReason.STOP:
            finish = FinishReason.TOOL_CALLS
        yield TurnFinished(finish, usage)


def _today() -> dt.date:
    return dt.date.today()
