"""The Anthropic Messages API as seen through the official ``anthropic`` SDK."""

from __future__ import annotations

import math
from typing import Any

import anthropic
import httpx
import pytest
from parley_emulator import EmulatorServer
from parley_emulator.testing import long_knowledge, png_b64
from parley_emulator.tokens import count_text_tokens

pytestmark = pytest.mark.integration

SONNET = "claude-sonnet-4-6"
HAIKU = "claude-haiku-4-5"
SYSTEM = (
    "You are the Parley help desk. Our store opens at 9am every weekday. "
    "Returns are accepted within 30 days of purchase. Shipping to Portugal takes 3 days."
)
SEARCH_TOOL: dict[str, Any] = {
    "name": "search_knowledge",
    "description": "Search the knowledge base for answers to customer questions",
    "input_schema": {
        "type": "object",
        "properties": {"query": {"type": "string"}, "limit": {"type": "integer"}},
        "required": ["query", "limit"],
    },
}
WEATHER_TOOL: dict[str, Any] = {
    "name": "get_weather",
    "description": "Current weather for a city",
    "input_schema": {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            "detailed": {"type": "boolean"},
        },
        "required": ["city", "unit", "detailed"],
    },
}


def client(emu: EmulatorServer, key: str = "sk-test-a") -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(api_key=key, base_url=emu.anthropic_base_url, max_retries=0)


async def test_streaming_answer_uses_the_context(emu: EmulatorServer) -> None:
    c = client(emu)
    deltas: list[str] = []
    kinds: list[str] = []
    async with c.messages.stream(
        model=SONNET,
        max_tokens=300,
        system=SYSTEM,
        messages=[{"role": "user", "content": "When does the store open?"}],
    ) as stream:
        async for event in stream:
            kinds.append(event.type)
            if event.type == "content_block_delta" and event.delta.type == "text_delta":
                deltas.append(event.delta.text)
        final = await stream.get_final_message()

    text = "".join(deltas)
    assert len(deltas) > 3, "output must arrive as several small deltas"
    assert text == "Based on the information I have: Our store opens at 9am every weekday."
    assert final.content[0].type == "text" and final.content[0].text == text
    assert final.stop_reason == "end_turn"
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert "message_delta" in kinds and "content_block_stop" in kinds
    counted = await c.messages.count_tokens(
        model=SONNET,
        system=SYSTEM,
        messages=[{"role": "user", "content": "When does the store open?"}],
    )
    expected_in = count_text_tokens(SYSTEM) + count_text_tokens("When does the store open?")
    assert counted.input_tokens == expected_in
    assert final.usage.input_tokens == expected_in
    assert final.usage.output_tokens == count_text_tokens(text)
    assert final.usage.cache_read_input_tokens == 0
    assert final.usage.cache_creation_input_tokens == 0


async def test_answer_picks_best_overlap_and_generic_fallback(emu: EmulatorServer) -> None:
    c = client(emu)
    msg = await c.messages.create(
        model=SONNET,
        max_tokens=300,
        system=SYSTEM,
        messages=[
            {"role": "user", "content": "My name is Alice and I live in Porto."},
            {"role": "assistant", "content": "Nice to meet you."},
            {"role": "user", "content": "How long does shipping to Portugal take?"},
        ],
    )
    assert msg.content[0].type == "text"
    assert msg.content[0].text.endswith("Shipping to Portugal takes 3 days.")

    generic = await c.messages.create(
        model=SONNET,
        max_tokens=300,
        system=SYSTEM,
        messages=[{"role": "user", "content": "Explain quantum entanglement"}],
    )
    assert generic.content[0].type == "text"
    text = generic.content[0].text
    assert "quantum" in text and "entanglement" in text and "Based on" not in text


async def test_raw_http_x_api_key_and_auth_errors(emu: EmulatorServer) -> None:
    body = {"model": SONNET, "max_tokens": 50, "messages": [{"role": "user", "content": "Hi"}]}
    async with httpx.AsyncClient(base_url=emu.url) as http:
        ok = await http.post(
            "/v1/messages",
            json=body,
            headers={"x-api-key": "legacy-key", "anthropic-version": "2023-06-01"},
        )
        assert ok.status_code == 200
        assert ok.json()["type"] == "message"
        missing = await http.post("/v1/messages", json=body)
        assert missing.status_code == 401
        assert missing.json()["error"]["type"] == "authentication_error"
    with pytest.raises(anthropic.AuthenticationError):
        await client(emu, key="invalid-key").messages.create(**body)  # type: ignore[arg-type]


async def test_tool_use_round_trip(emu: EmulatorServer) -> None:
    c = client(emu)
    question = "What is the refund policy for damaged items?"
    messages: list[dict[str, Any]] = [{"role": "user", "content": question}]
    json_deltas: list[str] = []
    async with c.messages.stream(
        model=SONNET, max_tokens=300, tools=[WEATHER_TOOL, SEARCH_TOOL],
        messages=messages,  # type: ignore[arg-type]
    ) as stream:
        async for event in stream:
            if event.type == "content_block_delta" and event.delta.type == "input_json_delta":
                json_deltas.append(event.delta.partial_json)
        first = await stream.get_final_message()
    assert first.stop_reason == "tool_use"
    tool_uses = [b for b in first.content if b.type == "tool_use"]
    assert len(tool_uses) == 1
    call = tool_uses[0]
    assert call.name == "search_knowledge"
    assert call.input == {"query": question, "limit": 5}
    assert len(json_deltas) > 1 and call.id.startswith("toolu_")

    messages.append({"role": "assistant", "content": [b.model_dump() for b in first.content]})
    messages.append(
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": call.id,
                    "content": "Damaged items get a full refund within 14 days. Stores close "
                    "at 8pm.",
                }
            ],
        }
    )
    second = await c.messages.create(
        model=SONNET, max_tokens=300, tools=[WEATHER_TOOL, SEARCH_TOOL],
        messages=messages,  # type: ignore[arg-type]
    )
    assert second.stop_reason == "end_turn"
    assert second.content[0].type == "text"
    assert second.content[0].text == (
        "Based on the information I have: Damaged items get a full refund within 14 days."
    )


async def test_tool_choice_variants(emu: EmulatorServer) -> None:
    c = client(emu)
    tools: Any = [WEATHER_TOOL, SEARCH_TOOL]
    none = await c.messages.create(
        model=SONNET, max_tokens=200, tools=tools, tool_choice={"type": "none"},
        messages=[{"role": "user", "content": "What is the weather in Lisbon?"}],
    )
    assert none.stop_reason == "end_turn"
    assert all(b.type == "text" for b in none.content)

    forced = await c.messages.create(
        model=SONNET, max_tokens=200, tools=tools,
        tool_choice={"type": "tool", "name": "get_weather"},
        messages=[{"role": "user", "content": "Weather Lisbon"}],
    )
    call = next(b for b in forced.content if b.type == "tool_use")
    assert call.name == "get_weather"
    assert call.input == {"city": "weather lisbon", "unit": "celsius", "detailed": False}

    # not a question: the tool whose name/description overlaps the text wins
    auto = await c.messages.create(
        model=SONNET, max_tokens=200, tools=tools,
        messages=[{"role": "user", "content": "Give me the current weather for Lisbon city"}],
    )
    assert next(b for b in auto.content if b.type == "tool_use").name == "get_weather"

    # nothing fits and not a question: plain answer
    plain = await c.messages.create(
        model=SONNET, max_tokens=200, tools=tools,
        messages=[{"role": "user", "content": "Thanks, bye"}],
    )
    assert plain.stop_reason == "end_turn"


async def test_image_is_counted_and_mentioned(emu: EmulatorServer) -> None:
    c = client(emu)
    content: Any = [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                     "data": png_b64(800, 600)}},
        {"type": "text", "text": "What is in this picture?"},
    ]
    msg = await c.messages.create(
        model=SONNET, max_tokens=200, messages=[{"role": "user", "content": content}]
    )
    assert msg.content[0].type == "text"
    assert msg.content[0].text.startswith("I can see the image you shared (800x600).")
    image_tokens = math.ceil(800 * 600 / 750)
    assert msg.usage.input_tokens == image_tokens + count_text_tokens("What is in this picture?")
    counted = await c.messages.count_tokens(
        model=SONNET, messages=[{"role": "user", "content": content}]
    )
    assert counted.input_tokens == msg.usage.input_tokens

    # large images are scaled to a 1568 px long edge first
    big: Any = [{"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                             "data": png_b64(3000, 1000)}}]
    counted_big = await c.messages.count_tokens(
        model=SONNET, messages=[{"role": "user", "content": big}]
    )
    assert counted_big.input_tokens == math.ceil(1568 * 523 / 750)

    with pytest.raises(anthropic.BadRequestError):
        await c.messages.create(
            model=SONNET, max_tokens=50,
            messages=[{"role": "user", "content": [
                {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                             "data": "bm90IGFuIGltYWdl"}}]}],
        )


def _cached_system(text: str, ttl: str | None = None) -> Any:
    cc: dict[str, str] = {"type": "ephemeral"}
    if ttl:
        cc["ttl"] = ttl
    return [{"type": "text", "text": text, "cache_control": cc}]


async def test_prompt_cache_write_then_read(emu: EmulatorServer) -> None:
    c = client(emu)
    knowledge = long_knowledge(1200)
    sys_tokens = count_text_tokens(knowledge)
    assert sys_tokens >= 1024
    question = "How much does the premium plan cost?"
    q_tokens = count_text_tokens(question)

    first = await c.messages.create(
        model=SONNET, max_tokens=200, system=_cached_system(knowledge),
        messages=[{"role": "user", "content": question}],
    )
    assert first.usage.cache_creation_input_tokens == sys_tokens
    assert first.usage.cache_read_input_tokens == 0
    assert first.usage.input_tokens == q_tokens
    assert first.usage.cache_creation is not None
    assert first.usage.cache_creation.ephemeral_5m_input_tokens == sys_tokens
    assert first.content[0].type == "text"
    assert "49 euros per month" in first.content[0].text

    async with c.messages.stream(
        model=SONNET, max_tokens=200, system=_cached_system(knowledge),
        messages=[{"role": "user", "content": "Where is the headquarters located?"}],
    ) as stream:
        second = await stream.get_final_message()
    assert second.usage.cache_read_input_tokens == sys_tokens
    assert second.usage.cache_creation_input_tokens == 0
    assert second.usage.input_tokens == count_text_tokens("Where is the headquarters located?")

    # keyed by API key: another tenant's key writes its own entry
    other = await client(emu, key="sk-test-b").messages.create(
        model=SONNET, max_tokens=200, system=_cached_system(knowledge),
        messages=[{"role": "user", "content": question}],
    )
    assert other.usage.cache_creation_input_tokens == sys_tokens
    assert other.usage.cache_read_input_tokens == 0

    # keyed by model too
    opus = await c.messages.create(
        model="claude-opus-4-5", max_tokens=200, system=_cached_system(knowledge),
        messages=[{"role": "user", "content": question}],
    )
    assert opus.usage.cache_read_input_tokens == 0
    assert opus.usage.cache_creation_input_tokens == sys_tokens


async def test_prompt_cache_minimum_and_ttl(emu: EmulatorServer, admin: Any) -> None:
    c = client(emu)
    short = "You are a helpful assistant. " * 20  # ~150 tokens, below every minimum
    below = await c.messages.create(
        model=SONNET, max_tokens=100, system=_cached_system(short),
        messages=[{"role": "user", "content": "Hello"}],
    )
    again = await c.messages.create(
        model=SONNET, max_tokens=100, system=_cached_system(short),
        messages=[{"role": "user", "content": "Hello"}],
    )
    for msg in (below, again):
        assert msg.usage.cache_creation_input_tokens == 0
        assert msg.usage.cache_read_input_tokens == 0
        assert msg.usage.input_tokens == count_text_tokens(short) + count_text_tokens("Hello")

    # ~1500 tokens: enough for sonnet (1024) but not for haiku (2048)
    mid = long_knowledge(1500)
    assert 1024 <= count_text_tokens(mid) < 2048
    for _ in range(2):
        h = await c.messages.create(
            model=HAIKU, max_tokens=100, system=_cached_system(mid),
            messages=[{"role": "user", "content": "Hello"}],
        )
        assert h.usage.cache_creation_input_tokens == 0 and h.usage.cache_read_input_tokens == 0

    # 5-minute TTL expires, 1-hour TTL does not
    knowledge = long_knowledge(1100)
    tokens = count_text_tokens(knowledge)
    w5 = await c.messages.create(model=SONNET, max_tokens=50, system=_cached_system(knowledge),
                                 messages=[{"role": "user", "content": "Hi"}])
    w1h = await c.messages.create(model=SONNET, max_tokens=50,
                                  system=_cached_system(knowledge + " v2", ttl="1h"),
                                  messages=[{"role": "user", "content": "Hi"}])
    assert w5.usage.cache_creation_input_tokens == tokens
    assert w1h.usage.cache_creation is not None
    assert w1h.usage.cache_creation.ephemeral_1h_input_tokens == count_text_tokens(
        knowledge + " v2"
    )
    await admin.advance_clock(301)
    r5 = await c.messages.create(model=SONNET, max_tokens=50, system=_cached_system(knowledge),
                                 messages=[{"role": "user", "content": "Hi"}])
    r1h = await c.messages.create(model=SONNET, max_tokens=50,
                                  system=_cached_system(knowledge + " v2", ttl="1h"),
                                  messages=[{"role": "user", "content": "Hi"}])
    assert r5.usage.cache_read_input_tokens == 0
    assert r5.usage.cache_creation_input_tokens == tokens
    assert r1h.usage.cache_read_input_tokens == count_text_tokens(knowledge + " v2")

    stats = await admin.model_stats(SONNET)
    assert stats["cached_tokens"] == count_text_tokens(knowledge + " v2")
    assert stats["cache_creation_tokens"] == 2 * tokens + count_text_tokens(knowledge + " v2")


async def test_prompt_cache_multi_turn_breakpoint_moves(emu: EmulatorServer) -> None:
    """A breakpoint on the latest user turn reads the previous turn's prefix (lookback)."""
    c = client(emu)
    knowledge = long_knowledge(1100)
    sys_tokens = count_text_tokens(knowledge)
    t1 = "Where is the headquarters located?"
    turn1: Any = [{"role": "user", "content": [
        {"type": "text", "text": t1, "cache_control": {"type": "ephemeral"}}]}]
    first = await c.messages.create(model=SONNET, max_tokens=200, system=knowledge, messages=turn1)
    assert first.usage.cache_creation_input_tokens == sys_tokens + count_text_tokens(t1)
    assert first.content[0].type == "text"
    answer = first.content[0].text
    t2 = "And when is support available?"
    turn2: Any = [
        {"role": "user", "content": [{"type": "text", "text": t1}]},
        {"role": "assistant", "content": answer},
        {"role": "user", "content": [
            {"type": "text", "text": t2, "cache_control": {"type": "ephemeral"}}]},
    ]
    second = await c.messages.create(model=SONNET, max_tokens=200, system=knowledge,
                                     messages=turn2)
    assert second.usage.cache_read_input_tokens == sys_tokens + count_text_tokens(t1)
    assert second.usage.cache_creation_input_tokens == (
        count_text_tokens(answer) + count_text_tokens(t2)
    )
    assert second.usage.input_tokens == 0
    assert second.content[0].type == "text"
    assert "every weekday from 8am to 6pm" in second.content[0].text


async def test_invalid_requests(emu: EmulatorServer) -> None:
    c = client(emu)
    async with httpx.AsyncClient(base_url=emu.url, headers={"x-api-key": "k"}) as http:
        no_max = await http.post("/v1/messages", json={
            "model": SONNET, "messages": [{"role": "user", "content": "hi"}]})
        assert no_max.status_code == 400
        err = no_max.json()
        assert err["type"] == "error"
        assert err["error"]["type"] == "invalid_request_error"
        assert "max_tokens" in err["error"]["message"]
        not_json = await http.post("/v1/messages", content=b"{nope")
        assert not_json.status_code == 400
    with pytest.raises(anthropic.BadRequestError) as empty:
        await c.messages.create(model=SONNET, max_tokens=10, messages=[])
    assert empty.value.status_code == 400
    with pytest.raises(anthropic.BadRequestError, match="input_schema"):
        await c.messages.create(
            model=SONNET, max_tokens=10,
            tools=[{"name": "bad", "input_schema": {"type": "string"}}],  # type: ignore[list-item]
            messages=[{"role": "user", "content": "hi"}],
        )
    with pytest.raises(anthropic.BadRequestError, match="tool_use_id"):
        await c.messages.create(
            model=SONNET, max_tokens=10,
            messages=[{"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_missing", "content": "x"}]}],
        )
    with pytest.raises(anthropic.NotFoundError) as unknown:
        await c.messages.create(model="gpt-4o", max_tokens=10,
                                messages=[{"role": "user", "content": "hi"}])
    assert unknown.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    # any claude-* id is accepted
    ok = await c.messages.create(model="claude-future-9", max_tokens=10,
                                 messages=[{"role": "user", "content": "hi"}])
    assert ok.model == "claude-future-9"


async def test_max_tokens_and_stop_sequences(emu: EmulatorServer) -> None:
    c = client(emu)
    short = await c.messages.create(
        model=SONNET, max_tokens=3, system=SYSTEM,
        messages=[{"role": "user", "content": "When does the store open?"}],
    )
    assert short.stop_reason == "max_tokens"
    assert short.usage.output_tokens <= 3
    stopped = await c.messages.create(
        model=SONNET, max_tokens=300, system=SYSTEM, stop_sequences=["9am"],
        messages=[{"role": "user", "content": "When does the store open?"}],
    )
    assert stopped.stop_reason == "stop_sequence"
    assert stopped.stop_sequence == "9am"
    assert stopped.content[0].type == "text"
    assert stopped.content[0].text.endswith("opens at ")
