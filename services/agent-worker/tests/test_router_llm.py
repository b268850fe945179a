from __future__ import annotations

import asyncio
import base64
import io
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from livekit.agents import llm
from livekit.agents._exceptions import APIConnectionError, APIStatusError, APITimeoutError
from livekit.agents.types import APIConnectOptions
from parley.router.v1 import router_pb2
from parley_agent.router_llm import (
    RouterLLM,
    RouterLLMOptions,
    chat_ctx_to_messages,
    map_rpc_error,
    tools_to_definitions,
)
from parley_agent.testing import FakeBackends, FakeRouter, text_events
from PIL import Image

pytestmark = pytest.mark.unit

NO_RETRY = APIConnectOptions(max_retry=0, retry_interval=0, timeout=5)


def make_llm(channel: grpc.aio.Channel, **kw: Any) -> RouterLLM:
    return RouterLLM(
        channel=channel, options=RouterLLMOptions(session_id="sess-1", tenant_id="acme", **kw)
    )


async def collect(stream: llm.LLMStream) -> tuple[str, list[llm.FunctionToolCall], Any]:
    text, calls, usage = "", [], None
    async with stream:
        async for chunk in stream:
            if chunk.delta:
                text += chunk.delta.content or ""
                calls.extend(chunk.delta.tool_calls)
            if chunk.usage:
                usage = chunk.usage
    return text, calls, usage


def jpeg_data_url() -> str:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(buf, format="JPEG")
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


@llm.function_tool
async def lookup(query: str) -> str:
    """Look something up.

    Args:
        query: what to look up
    """
    return query


async def test_text_stream_usage_and_prefix(
    backends: FakeBackends, router_channel: grpc.aio.Channel
) -> None:
    router = make_llm(router_channel)
    ctx = llm.ChatContext()
    ctx.add_message(role="system", content="You are terse.")
    ctx.add_message(role="user", content="hello there")
    text, calls, usage = await collect(router.chat(chat_ctx=ctx, conn_options=NO_RETRY))

    assert text == "You said: hello there."
    assert calls == []
    assert usage is not None and usage.prompt_tokens > 0 and usage.completion_tokens > 0
    # the system prompt is the cached prefix; its tokens come back as cached
    assert usage.prompt_cached_tokens > 0
    req = backends.router.requests[0]
    assert req.session_id == "sess-1" and req.turn_id
    assert req.messages[0].role == router_pb2.ROLE_SYSTEM and req.messages[0].cache_breakpoint
    assert not req.messages[1].cache_breakpoint
    assert backends.router.tenants == ["acme"]
    assert router.model == "fake-model"


async def test_tool_call_round_trip(
    backends: FakeBackends, router_channel: grpc.aio.Channel
) -> None:
    router = make_llm(router_channel)
    ctx = llm.ChatContext()
    ctx.add_message(role="user", content="what is the refund window?")
    from parley_agent.config import KnowledgeOptions
    from parley_agent.tools import KnowledgeSearch, ToolScope

    search = KnowledgeSearch(
        channel=router_channel,
        scope=ToolScope("acme", None, "s", "r"),
        options=KnowledgeOptions(),
    ).tool()
    text, calls, _ = await collect(router.chat(chat_ctx=ctx, tools=[search], conn_options=NO_RETRY))
    assert text == ""
    assert [c.name for c in calls] == ["search_knowledge"]
    assert '"query"' in calls[0].arguments
    defs = backends.router.requests[0].tools
    assert defs[0].name == "search_knowledge" and '"query"' in defs[0].parameters_json_schema

    call = calls[0]
    ctx.insert(llm.FunctionCall(call_id=call.call_id, name=call.name, arguments=call.arguments))
    ctx.insert(llm.FunctionCallOutput(call_id=call.call_id, name=call.name,
                                      output="Refunds within 30 days.", is_error=False))
    text, calls, _ = await collect(router.chat(chat_ctx=ctx, tools=[search], conn_options=NO_RETRY))
    assert "Refunds within 30 days." in text and calls == []
    second = backends.router.requests[1]
    assert second.messages[1].role == router_pb2.ROLE_ASSISTANT
    assert second.messages[1].parts[0].tool_call.id == call.call_id
    assert second.messages[2].role == router_pb2.ROLE_TOOL
    assert second.messages[2].parts[0].tool_result.content == "Refunds within 30 days."


def test_images_only_on_latest_user_turn() -> None:
    ctx = llm.ChatContext()
    ctx.add_message(role="system", content="sys")
    ctx.add_message(role="user", content=["first", llm.ImageContent(image=jpeg_data_url())])
    ctx.add_message(role="assistant", content="ok")
    ctx.add_message(role="user", content=["second", llm.ImageContent(
        id="vision:s/t/3", image=jpeg_data_url(), inference_width=8, inference_height=8)])
    msgs = chat_ctx_to_messages(ctx)
    first, last = msgs[1], msgs[3]
    assert not any(p.HasField("image") for p in first.parts)
    assert "image(s) shown earlier" in first.parts[-1].text
    images = [p.image for p in last.parts if p.HasField("image")]
    assert len(images) == 1 and images[0].mime_type == "image/jpeg"
    assert images[0].source_ref == "vision:s/t/3" and images[0].data[:2] == b"\xff\xd8"


def test_tool_definitions_schema() -> None:
    (d,) = tools_to_definitions([lookup])
    assert d.name == "lookup" and "Look something up" in d.description
    assert '"query"' in d.parameters_json_schema


async def test_deadline_maps_to_timeout(
    backends: FakeBackends, router_channel: grpc.aio.Channel
) -> None:
    backends.router.ttft_s = 2.0
    router = make_llm(router_channel)
    ctx = llm.ChatContext()
    ctx.add_message(role="user", content="slow please")
    with pytest.raises(APITimeoutError):
        await collect(router.chat(
            chat_ctx=ctx, conn_options=APIConnectOptions(max_retry=0, timeout=0.3)
        ))


async def test_interruption_cancels_rpc_server_side(
    backends: FakeBackends, router_channel: grpc.aio.Channel
) -> None:
    backends.router.delta_delay_s = 0.2
    backends.router.responder = lambda req: text_events("one two three four five six seven")
    router = make_llm(router_channel)
    ctx = llm.ChatContext()
    ctx.add_message(role="user", content="talk")
    stream = router.chat(chat_ctx=ctx, conn_options=NO_RETRY)
    first = await stream.__anext__()
    assert first.delta is not None and first.delta.content == "one"
    await stream.aclose()  # what the session does when the user interrupts
    for _ in range(100):
        if backends.router.cancelled:
            break
        await asyncio.sleep(0.02)
    assert backends.router.cancelled == 1
    assert backends.router.completed == 0


class FlakyRouter(FakeRouter):
    """Fails the first call(s) with `code`, optionally after streaming some text."""

    def __init__(self, code: grpc.StatusCode, *, failures: int = 1, after_text: bool = False):
        super().__init__()
        self.code = code
        self.failures = failures
        self.after_text = after_text
        self.calls = 0
        self.turn_ids: list[str] = []

    async def StreamChat(  # noqa: N802
        self, request: router_pb2.StreamChatRequest, context: Any
    ) -> AsyncIterator[router_pb2.StreamChatResponse]:
        self.calls += 1
        self.turn_ids.append(request.turn_id)
        if self.calls <= self.failures:
            if self.after_text:
                yield router_pb2.StreamChatResponse(text_delta="partial")
            await context.abort(self.code, "injected")
        async for ev in super().StreamChat(request, context):
            yield ev


async def _with_router(router_servicer: FakeRouter) -> tuple[FakeBackends, grpc.aio.Channel]:
    from parley_runtime.client import make_channel
    from parley_runtime.testing import signed_as

    fakes = await FakeBackends(router=router_servicer).start()
    return fakes, make_channel(fakes.addr("router"), signer=signed_as("agent-worker"))


@pytest.mark.parametrize(
    ("code", "exc_type", "status", "retryable"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, APIStatusError, 400, False),
        (grpc.StatusCode.PERMISSION_DENIED, APIStatusError, 403, False),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, APIStatusError, 429, True),
        (grpc.StatusCode.INTERNAL, APIStatusError, 500, True),
        (grpc.StatusCode.UNAVAILABLE, APIConnectionError, None, True),
    ],
)
async def test_error_mapping(
    code: grpc.StatusCode, exc_type: type[Exception], status: int | None, retryable: bool
) -> None:
    fakes, channel = await _with_router(FlakyRouter(code, failures=10))
    try:
        ctx = llm.ChatContext()
        ctx.add_message(role="user", content="x")
        with pytest.raises(exc_type) as info:
            await collect(make_llm(channel).chat(chat_ctx=ctx, conn_options=NO_RETRY))
        err = info.value
        assert getattr(err, "retryable", None) is retryable
        if status is not None:
            assert isinstance(err, APIStatusError) and err.status_code == status
    finally:
        await channel.close()
        await fakes.stop()


async def test_retries_only_before_output() -> None:
    # Fails once before any output: retried, and the answer arrives.
    flaky = FlakyRouter(grpc.StatusCode.UNAVAILABLE, failures=1)
    fakes, channel = await _with_router(flaky)
    try:
        ctx = llm.ChatContext()
        ctx.add_message(role="user", content="again")
        opts = APIConnectOptions(max_retry=2, retry_interval=0.01, timeout=5)
        text, _, _ = await collect(make_llm(channel).chat(chat_ctx=ctx, conn_options=opts))
        assert text == "You said: again." and flaky.calls == 2
        # each attempt has its own turn id (the router's usage idempotency derives from it)
        assert len(flaky.turn_ids) == 2 and len(set(flaky.turn_ids)) == 2
    finally:
        await channel.close()
        await fakes.stop()

    # Fails after streaming text: not retried (the listener already heard part of it).
    flaky = FlakyRouter(grpc.StatusCode.UNAVAILABLE, failures=1, after_text=True)
    fakes, channel = await _with_router(flaky)
    try:
        ctx = llm.ChatContext()
        ctx.add_message(role="user", content="again")
        with pytest.raises(APIConnectionError) as info:
            await collect(make_llm(channel).chat(chat_ctx=ctx, conn_options=opts))
        assert info.value.retryable is False
        assert flaky.calls == 1
    finally:
        await channel.close()
        await fakes.stop()


def test_map_rpc_error_after_streaming_is_not_retryable() -> None:
    err = grpc.aio.AioRpcError(
        grpc.StatusCode.INTERNAL, grpc.aio.Metadata(), grpc.aio.Metadata(), "boom"
    )
    before = map_rpc_error(err, streamed=False)
    after = map_rpc_error(err, streamed=True)
    assert isinstance(before, APIStatusError) and before.retryable
    assert isinstance(after, APIStatusError) and not after.retryable


