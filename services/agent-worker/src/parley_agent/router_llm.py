"""RouterLLM: a livekit `llm.LLM` whose answers stream from router-svc over gRPC.

The chat context becomes router `Message`s (text, images, tool calls and results; the leading
system prompt marked as the cacheable prefix), tools become `ToolDefinition`s, and the stream's
deltas, tool calls and usage become `ChatChunk`s. Each attempt carries the connect options'
timeout as its gRPC deadline; closing the stream (an interruption) cancels the RPC, which the
router sees as a cancelled call and stops the provider request. gRPC errors map to livekit's
API errors, retryable only while nothing has been streamed to the listener yet.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from livekit.agents import llm
from livekit.agents._exceptions import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
)
from livekit.agents.llm.utils import serialize_image
from livekit.agents.types import (
    DEFAULT_API_CONNECT_OPTIONS,
    NOT_GIVEN,
    APIConnectOptions,
    NotGivenOr,
)
from livekit.agents.utils import is_given
from parley.common.v1 import common_pb2
from parley.router.v1 import router_pb2, router_pb2_grpc
from parley_runtime.context import TENANT_HEADER

from .log import logger

_TIER_NAMES: dict[int, str] = {
    router_pb2.TIER_SIMPLE: "simple",
    router_pb2.TIER_STANDARD: "standard",
    router_pb2.TIER_PREMIUM: "premium",
}
TIER_BY_NAME: dict[str, router_pb2.Tier] = {
    "simple": router_pb2.TIER_SIMPLE,
    "standard": router_pb2.TIER_STANDARD,
    "premium": router_pb2.TIER_PREMIUM,
}

# gRPC status -> (HTTP-like status for APIStatusError, retryable)
_STATUS_MAP: dict[grpc.StatusCode, tuple[int, bool]] = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, False),
    grpc.StatusCode.FAILED_PRECONDITION: (412, False),
    grpc.StatusCode.OUT_OF_RANGE: (400, False),
    grpc.StatusCode.UNAUTHENTICATED: (401, False),
    grpc.StatusCode.PERMISSION_DENIED: (403, False),
    grpc.StatusCode.NOT_FOUND: (404, False),
    grpc.StatusCode.ALREADY_EXISTS: (409, False),
    grpc.StatusCode.UNIMPLEMENTED: (501, False),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, True),
    grpc.StatusCode.ABORTED: (409, True),
    grpc.StatusCode.INTERNAL: (500, True),
    grpc.StatusCode.UNKNOWN: (500, True),
    grpc.StatusCode.DATA_LOSS: (500, False),
}


def tier_name(tier: int) -> str:
    return _TIER_NAMES.get(tier, "unspecified")


@dataclass(frozen=True, slots=True)
class TurnOutcome:
    """What the router reported about one LLM call, for observers (transcripts, latency)."""

    turn_id: str
    # The last RouteDecision received: a router sends one per model it tried (while that model
    # thinks), so it names the model that answered, or on a failed call the last one tried.
    route: router_pb2.RouteDecision | None
    completion: router_pb2.Completion | None
    # Seconds from the RPC start to the first text delta or tool call seen here (None: none).
    first_token_s: float | None
    # Monotonic time of that first token.
    first_token_at: float | None
    started_at: float


class RouterObserver:
    """Hooks a session attaches to its RouterLLM; the defaults do nothing."""

    def on_first_token(self, started_at: float, first_token_at: float) -> None:
        return None

    def on_outcome(self, outcome: TurnOutcome) -> None:
        return None


@dataclass
class RouterLLMOptions:
    session_id: str
    tenant_id: str
    hints: router_pb2.RoutingHints = field(default_factory=router_pb2.RoutingHints)
    max_output_tokens: int = 400
    temperature: float | None = None
    # Older user turns keep a placeholder instead of their images: each image is billed on
    # every request it appears in, and the latest frame is what matters.
    keep_history_images: bool = False


# ---------------------------------------------------------------------------------------------
# chat_ctx / tools -> router request


def _image_part(image: llm.ImageContent) -> router_pb2.ContentPart | None:
    try:
        serialized = serialize_image(image)
    except Exception:
        logger.warning("image dropped: cannot serialise it", exc_info=True)
        return None
    if serialized.data_bytes is None:
        # An external URL: the router does not fetch URLs on the agent's behalf.
        return None
    width = image.inference_width or 0
    height = image.inference_height or 0
    source_ref = image.id if image.id.startswith("vision:") else ""
    return router_pb2.ContentPart(
        image=common_pb2.Image(
            data=serialized.data_bytes,
            mime_type=serialized.mime_type or "image/jpeg",
            width=width,
            height=height,
            source_ref=source_ref,
        )
    )


def _message_parts(
    msg: llm.ChatMessage, *, keep_images: bool
) -> tuple[list[router_pb2.ContentPart], bool]:
    """Parts of a message and whether it carries a cache breakpoint marker."""
    parts: list[router_pb2.ContentPart] = []
    breakpoint_ = False
    dropped_images = 0
    for content in msg.content:
        if isinstance(content, str):
            if content:
                parts.append(router_pb2.ContentPart(text=content))
        elif isinstance(content, llm.ImageContent):
            if not keep_images:
                dropped_images += 1
                continue
            part = _image_part(content)
            if part is not None:
                parts.append(part)
        elif isinstance(content, llm.CacheBreakpoint):
            breakpoint_ = True
        # AudioContent: transcribed upstream; the router takes text.
    if dropped_images:
        parts.append(
            router_pb2.ContentPart(text=f"[{dropped_images} image(s) shown earlier]")
        )
    return parts, breakpoint_


_ROLE = {
    "system": router_pb2.ROLE_SYSTEM,
    "developer": router_pb2.ROLE_SYSTEM,
    "user": router_pb2.ROLE_USER,
    "assistant": router_pb2.ROLE_ASSISTANT,
}


def chat_ctx_to_messages(
    chat_ctx: llm.ChatContext, *, keep_history_images: bool = False
) -> list[router_pb2.Message]:
    """Convert a livekit chat context to router messages.

    Function calls join the assistant message they follow (one assistant turn may say something
    and call tools), consecutive outputs form one tool message, and the leading system messages
    end with a cache breakpoint: they are the stable prefix the router may cache.
    """
    items = list(chat_ctx.items)
    last_user = max(
        (i for i, it in enumerate(items) if isinstance(it, llm.ChatMessage) and it.role == "user"),
        default=-1,
    )
    out: list[router_pb2.Message] = []
    for index, item in enumerate(items):
        if isinstance(item, llm.ChatMessage):
            keep_images = keep_history_images or index == last_user
            parts, marker = _message_parts(item, keep_images=keep_images)
            if not parts:
                continue
            role = _ROLE[item.role]
            if role == router_pb2.ROLE_ASSISTANT and out and out[-1].role == role and not any(
                p.HasField("tool_call") for p in out[-1].parts
            ):
                out[-1].parts.extend(parts)
                continue
            out.append(router_pb2.Message(role=role, parts=parts, cache_breakpoint=marker))
        elif isinstance(item, llm.FunctionCall):
            part = router_pb2.ContentPart(
                tool_call=router_pb2.ToolCall(
                    id=item.call_id, name=item.name, arguments_json=item.arguments or "{}"
                )
            )
            if out and out[-1].role == router_pb2.ROLE_ASSISTANT:
                out[-1].parts.append(part)
            else:
                out.append(router_pb2.Message(role=router_pb2.ROLE_ASSISTANT, parts=[part]))
        elif isinstance(item, llm.FunctionCallOutput):
            part = router_pb2.ContentPart(
                tool_result=router_pb2.ToolResult(
                    call_id=item.call_id, name=item.name, content=item.output,
                    is_error=item.is_error,
                )
            )
            if out and out[-1].role == router_pb2.ROLE_TOOL:
                out[-1].parts.append(part)
            else:
                out.append(router_pb2.Message(role=router_pb2.ROLE_TOOL, parts=[part]))
        # AgentHandoff / AgentConfigUpdate are bookkeeping, not conversation.

    # The stable prefix: the leading run of system messages.
    prefix_end = -1
    for i, m in enumerate(out):
        if m.role != router_pb2.ROLE_SYSTEM:
            break
        prefix_end = i
    if prefix_end >= 0:
        out[prefix_end].cache_breakpoint = True
    return out


def tools_to_definitions(tools: Sequence[llm.Tool]) -> list[router_pb2.ToolDefinition]:
    """Function tools as router ToolDefinitions with their JSON Schema (provider tools skipped)."""
    if not tools:
        return []
    schemas = llm.ToolContext(list(tools)).parse_function_tools("openai", strict=False)
    defs: list[router_pb2.ToolDefinition] = []
    for schema in schemas:
        fn = schema.get("function", schema)
        params = fn.get("parameters") or {"type": "object", "properties": {}}
        defs.append(
            router_pb2.ToolDefinition(
                name=fn["name"],
                description=fn.get("description") or "",
                parameters_json_schema=json.dumps(params, separators=(",", ":")),
            )
        )
    return defs


def tool_choice_to_proto(
    choice: NotGivenOr[llm.ToolChoice], definitions: list[router_pb2.ToolDefinition]
) -> tuple[router_pb2.ToolChoice, list[router_pb2.ToolDefinition]]:
    """Map livekit's tool choice; a named choice becomes REQUIRED over that one tool."""
    if not is_given(choice) or not choice:
        return router_pb2.TOOL_CHOICE_AUTO, definitions
    if choice == "auto":
        return router_pb2.TOOL_CHOICE_AUTO, definitions
    if choice == "none":
        return router_pb2.TOOL_CHOICE_NONE, definitions
    if choice == "required":
        return router_pb2.TOOL_CHOICE_REQUIRED, definitions
    if isinstance(choice, dict):
        name = choice.get("function", {}).get("name")
        named = [d for d in definitions if d.name == name]
        if named:
            return router_pb2.TOOL_CHOICE_REQUIRED, named
    return router_pb2.TOOL_CHOICE_AUTO, definitions


def map_rpc_error(err: grpc.aio.AioRpcError, *, streamed: bool) -> Exception:
    """Translate a failed StreamChat call into the livekit API error the session understands."""
    code = err.code()
    details = err.details() or code.name
    retryable = not streamed
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return APITimeoutError(f"router-svc deadline exceeded: {details}", retryable=retryable)
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
        return APIConnectionError(f"router-svc unavailable: {details}", retryable=retryable)
    status, code_retryable = _STATUS_MAP.get(code, (500, True))
    return APIStatusError(
        f"router-svc {code.name}: {details}",
        status_code=status,
        body={"grpc_code": code.name, "details": details},
        retryable=code_retryable and retryable,
    )


# ---------------------------------------------------------------------------------------------


class RouterLLM(llm.LLM[Any]):
    """Streams turns from router-svc; one instance per session (it carries the session id)."""

    def __init__(
        self,
        *,
        channel: grpc.aio.Channel,
        options: RouterLLMOptions,
        observer: RouterObserver | None = None,
    ) -> None:
        super().__init__()
        self._stub = router_pb2_grpc.RouterServiceStub(channel)
        self._opts = options
        self._observer = observer or RouterObserver()
        self._last_model = "router"
        self._last_provider = "parley-router"

    @property
    def model(self) -> str:
        return self._last_model

    @property
    def provider(self) -> str:
        return self._last_provider

    @property
    def options(self) -> RouterLLMOptions:
        return self._opts

    @property
    def observer(self) -> RouterObserver:
        return self._observer

    @observer.setter
    def observer(self, value: RouterObserver) -> None:
        self._observer = value

    def chat(
        self,
        *,
        chat_ctx: llm.ChatContext,
        tools: list[llm.Tool] | None = None,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
        parallel_tool_calls: NotGivenOr[bool] = NOT_GIVEN,
        tool_choice: NotGivenOr[llm.ToolChoice] = NOT_GIVEN,
        extra_kwargs: NotGivenOr[dict[str, Any]] = NOT_GIVEN,
    ) -> RouterLLMStream:
        return RouterLLMStream(
            self,
            chat_ctx=chat_ctx,
            tools=tools or [],
            conn_options=conn_options,
            tool_choice=tool_choice,
        )

    def _remember_model(self, provider: str, model_id: str) -> None:
        if model_id:
            self._last_model = model_id
        if provider:
            self._last_provider = provider


class RouterLLMStream(llm.LLMStream):
    def __init__(
        self,
        router: RouterLLM,
        *,
        chat_ctx: llm.ChatContext,
        tools: list[llm.Tool],
        conn_options: APIConnectOptions,
        tool_choice: NotGivenOr[llm.ToolChoice],
    ) -> None:
        super().__init__(router, chat_ctx=chat_ctx, tools=tools, conn_options=conn_options)
        self._router = router
        self._tool_choice = tool_choice
        # A retry after the listener heard part of an answer would repeat it.
        self._retry_on_chunk_sent = False
        self._stream_id = uuid.uuid4().hex[:16]
        self._attempt = 0

    def build_request(self) -> router_pb2.StreamChatRequest:
        opts = self._router.options
        definitions = tools_to_definitions(self._tools)
        choice, definitions = tool_choice_to_proto(self._tool_choice, definitions)
        req = router_pb2.StreamChatRequest(
            session_id=opts.session_id,
            # Unique per attempt: the router derives its usage event's idempotency key from it.
            turn_id=f"{self._stream_id}.{self._attempt}",
            messages=chat_ctx_to_messages(
                self._chat_ctx, keep_history_images=opts.keep_history_images
            ),
            tools=definitions,
            tool_choice=choice,
            hints=opts.hints,
            max_output_tokens=opts.max_output_tokens,
        )
        if opts.temperature is not None:
            req.temperature = opts.temperature
        return req

    async def _run(self) -> None:
        request = self.build_request()
        self._attempt += 1
        opts = self._router.options
        timeout = self._conn_options.timeout or None
        started = time.monotonic()
        first_token_at: float | None = None
        route: router_pb2.RouteDecision | None = None
        completion: router_pb2.Completion | None = None
        streamed = False
        call = self._router._stub.StreamChat(
            request, timeout=timeout, metadata=((TENANT_HEADER, opts.tenant_id),)
        )
        try:
            async for resp in call:
                kind = resp.WhichOneof("event")
                if kind == "text_delta":
                    if not resp.text_delta:
                        continue
                    if first_token_at is None:
                        first_token_at = time.monotonic()
                        self._router.observer.on_first_token(started, first_token_at)
                    streamed = True
                    self._event_ch.send_nowait(
                        llm.ChatChunk(
                            id=request.turn_id,
                            delta=llm.ChoiceDelta(role="assistant", content=resp.text_delta),
                        )
                    )
                elif kind == "tool_call":
                    if first_token_at is None:
                        first_token_at = time.monotonic()
                        self._router.observer.on_first_token(started, first_token_at)
                    streamed = True
                    tc = resp.tool_call
                    self._event_ch.send_nowait(
                        llm.ChatChunk(
                            id=request.turn_id,
                            delta=llm.ChoiceDelta(
                                role="assistant",
                                tool_calls=[
                                    llm.FunctionToolCall(
                                        name=tc.name,
                                        arguments=tc.arguments_json or "{}",
                                        call_id=tc.id or f"call_{uuid.uuid4().hex[:12]}",
                                    )
                                ],
                            ),
                        )
                    )
                elif kind == "route":
                    route = resp.route
                    self._router._remember_model(route.provider, route.model_id)
                elif kind == "completion":
                    completion = resp.completion
                    self._router._remember_model(completion.provider, completion.model_id)
                    usage = completion.usage
                    self._event_ch.send_nowait(
                        llm.ChatChunk(
                            id=request.turn_id,
                            usage=llm.CompletionUsage(
                                completion_tokens=int(usage.output_tokens),
                                prompt_tokens=int(usage.input_tokens),
                                prompt_cached_tokens=int(usage.cached_input_tokens),
                                cache_creation_tokens=int(usage.cache_write_tokens),
                                total_tokens=int(usage.input_tokens + usage.output_tokens),
                            ),
                        )
                    )
        except grpc.aio.AioRpcError as err:
            raise map_rpc_error(err, streamed=streamed) from None
        finally:
            if not call.done():
                # Interrupted (aclose cancelled us) or failed mid-stream: stop the router's work.
                call.cancel()
            self._router.observer.on_outcome(
                TurnOutcome(
                    turn_id=request.turn_id,
                    route=route,
                    completion=completion,
                    first_token_s=(first_token_at - started) if first_token_at else None,
                    first_token_at=first_token_at,
                    started_at=started,
                )
            )


async def complete_text(
    router: RouterLLM,
    chat_ctx: llm.ChatContext,
    *,
    conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
    on_chunk: Callable[[llm.ChatChunk], None] | None = None,
) -> str:
    """Run one tool-less completion to the end and return its text (e.g. a summary)."""
    parts: list[str] = []
    async with router.chat(chat_ctx=chat_ctx, conn_options=conn_options) as stream:
        async for chunk in stream:
            if on_chunk is not None:
                on_chunk(chunk)
            if chunk.delta and chunk.delta.content:
                parts.append(chunk.delta.content)
    await asyncio.sleep(0)
    return "".join(parts)
