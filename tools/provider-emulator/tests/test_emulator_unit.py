"""Unit tests of the emulator's deterministic pieces (no server started)."""

from __future__ import annotations

import base64
import math
import random
from typing import Any

import numpy as np
import pytest
from parley_emulator import EmulatorConfig, create_app
from parley_emulator.answer import (
    Conversation,
    ImageInfo,
    ToolSpec,
    apply_stop,
    build_answer,
    build_arguments,
    choose_tool,
    content_words,
    is_question,
    stream_chunks,
)
from parley_emulator.anthropic_api import Invalid, apply_prompt_cache, parse_request
from parley_emulator.faults import FaultSpec, FaultSpecError, FaultTable, Timing
from parley_emulator.state import EmulatorState
from parley_emulator.testing import long_knowledge, png_b64
from parley_emulator.tokens import (
    anthropic_image_tokens,
    count_text_tokens,
    decode_image_size,
    gemini_image_tokens,
)
from parley_emulator.voyage_api import embed_text, quantize
from starlette.testclient import TestClient

pytestmark = pytest.mark.unit


def test_token_counting_rule() -> None:
    assert count_text_tokens("") == 0
    assert count_text_tokens("abcd") == 1
    assert count_text_tokens("abcde") == 2
    assert count_text_tokens("x" * 4096) == 1024
    assert anthropic_image_tokens(750, 1) == 1
    assert anthropic_image_tokens(800, 600) == math.ceil(800 * 600 / 750)
    assert anthropic_image_tokens(3136, 3136) == anthropic_image_tokens(1072, 1072)  # area cap
    assert gemini_image_tokens(384, 384) == 258
    assert gemini_image_tokens(385, 100) == 258
    assert gemini_image_tokens(1536, 769) == 4 * 258


def test_image_size_decoding_accepts_urlsafe_unpadded() -> None:
    data = png_b64(123, 45)
    assert decode_image_size(data) == (123, 45)
    urlsafe = base64.urlsafe_b64encode(base64.b64decode(data)).decode().rstrip("=")
    assert decode_image_size(urlsafe) == (123, 45)
    with pytest.raises(ValueError):
        decode_image_size(base64.b64encode(b"not an image").decode())


def test_answer_picks_the_best_overlapping_sentence() -> None:
    conv = Conversation(
        question="When does the Lisbon office open on Saturdays?",
        context=[
            "The Porto office opens at 10am. The Lisbon office opens at 9am on Saturdays.",
            "Parking is free for visitors.",
        ],
    )
    assert build_answer(conv) == (
        "Based on the information I have: The Lisbon office opens at 9am on Saturdays."
    )


def test_answer_ties_give_two_sentences_in_order() -> None:
    conv = Conversation(
        question="What about pricing?",
        context=["Pricing starts at 10 euros. Nothing else here. Enterprise pricing is custom."],
    )
    assert build_answer(conv) == (
        "Based on the information I have: Pricing starts at 10 euros. Enterprise pricing is "
        "custom."
    )


def test_generic_answer_restates_key_words_and_images_are_mentioned() -> None:
    generic = build_answer(Conversation(question="Tell me about volcanic soil chemistry",
                                        context=["Our store opens at 9am."]))
    assert "volcanic, soil and chemistry" in generic
    assert not generic.startswith("Based on")
    with_image = build_answer(
        Conversation(question="", images=[ImageInfo(640, 480)], context=["x"])
    )
    assert with_image == "I can see the image you shared (640x480)."
    two = build_answer(Conversation(question="Hi", images=[ImageInfo(1, 2), ImageInfo(3, 4)]))
    assert two.startswith("I can see the 2 images you shared (1x2, 3x4).")


def test_answer_from_tool_results() -> None:
    conv = Conversation(
        question="What is the refund window?",
        context=["The refund window is 90 days (outdated)."],
        tool_results=["Refund window: 30 days from delivery.", "Contact support for help."],
        ends_with_tool_result=True,
    )
    assert build_answer(conv) == (
        "Based on the information I have: Refund window: 30 days from delivery."
    )
    no_overlap = Conversation(question="Anything?", tool_results=["Sunny. 21 degrees."],
                              ends_with_tool_result=True)
    assert build_answer(no_overlap) == "Based on the information I have: Sunny. 21 degrees."


def test_words_questions_and_chunks() -> None:
    assert content_words("The stores' policies are changing") == ["store", "policy", "changing"]
    assert is_question("what is this")
    assert is_question("Refund status?")
    assert not is_question("Book a table for two")
    text = "Based on the information I have: one two three four."
    chunks = stream_chunks(text)
    assert "".join(chunks) == text and len(chunks) == 4  # 10 words, 3 per delta
    cut, reason, matched = apply_stop("alpha beta gamma", None, ["beta"], count_text_tokens)
    assert (cut, reason, matched) == ("alpha ", "stop_sequence", "beta")
    cut, reason, _ = apply_stop("x" * 100, 5, [], count_text_tokens)
    assert reason == "max_tokens" and count_text_tokens(cut) == 5


SEARCH = ToolSpec("kb_search", "Look up documents", {"type": "object", "properties": {
    "query": {"type": "string"}}, "required": ["query"]})
ORDER = ToolSpec("get_order_status", "Status of a customer order", {
    "type": "OBJECT",
    "properties": {
        "order_id": {"type": "STRING"},
        "verbose": {"type": "BOOLEAN"},
        "page": {"type": "INTEGER", "minimum": 10},
        "channel": {"type": "STRING", "enum": ["web", "phone"]},
        "filters": {"type": "OBJECT", "properties": {"since": {"type": "string",
                                                               "format": "date"}},
                    "required": ["since"]},
        "tags": {"type": "ARRAY", "items": {"type": "STRING"}},
        "optional_note": {"type": "STRING"},
    },
    "required": ["order_id", "verbose", "page", "channel", "filters", "tags"],
})


def test_tool_choice_rules() -> None:
    tools = [ORDER, SEARCH]
    assert choose_tool(tools, "Where is my order 123?") is SEARCH  # questions go to search
    assert choose_tool(tools, "Check the order status for order 123") is ORDER
    assert choose_tool(tools, "Thanks a lot") is None
    assert choose_tool(tools, "Thanks a lot", mode="any") is ORDER
    assert choose_tool(tools, "Where is my order?", mode="none") is None
    assert choose_tool(tools, "anything", mode="tool", forced="kb_search") is SEARCH


def test_arguments_follow_the_schema() -> None:
    args = build_arguments(ORDER.schema, "Check order #A-991 please")
    assert args == {
        "order_id": "#A-991",
        "verbose": False,
        "page": 10,
        "channel": "web",
        "filters": {"since": "2025-01-01"},
        "tags": [],
    }
    assert build_arguments(SEARCH.schema, "  What is Parley?  ") == {"query": "What is Parley?"}


def test_embeddings_are_deterministic_unit_vectors() -> None:
    a = embed_text("reset my password", 1024)
    assert a.dtype == np.float32 and a.shape == (1024,)
    assert np.array_equal(a, embed_text("reset my password", 1024))
    assert abs(float(np.linalg.norm(a)) - 1.0) < 1e-5
    assert embed_text("", 256).shape == (256,)
    close = float(a @ embed_text("How can I reset the password?", 1024))
    far = float(a @ embed_text("Lunch menu for Friday", 1024))
    assert close > 0.3 > far
    assert quantize(a, "int8").dtype == np.int8
    assert quantize(a, "ubinary").shape == (128,)
    assert quantize(a, "binary").dtype == np.int8


def test_fault_table_matching_and_determinism() -> None:
    table = FaultTable(Timing(1.0, 2.0, 3.0))
    table.set(FaultSpec(model="*", error_rate=0.0, ttft_ms=50))
    table.set(FaultSpec(model="claude-*", error_rate=1.0, error_status=529, max_errors=2))
    table.set(FaultSpec(model="claude-haiku-4-5", error_rate=0.5, error_status=429, seed=3))
    other = table.decide("gemini-2.5-flash", True)
    assert other.error_status is None and other.timing == Timing(1.0, 50.0, 3.0)
    sonnet = [table.decide("claude-sonnet-4-6", False).error_status for _ in range(3)]
    assert sonnet == [529, 529, None]  # max_errors
    rng = random.Random(3)
    haiku = [table.decide("claude-haiku-4-5", False).error_status for _ in range(20)]
    assert haiku == [429 if rng.random() < 0.5 else None for _ in range(20)]
    table.clear("claude-haiku-4-5")
    assert table.decide("claude-haiku-4-5", False).error_status is None  # glob exhausted
    with pytest.raises(FaultSpecError):
        FaultSpec.from_json({"model": "x", "error_status": 302})
    with pytest.raises(FaultSpecError):
        FaultSpec.from_json({"model": "x", "cut_after_tokens": -1})


def _req(system: list[dict[str, Any]], messages: list[dict[str, Any]]) -> Any:
    return parse_request({"model": "claude-sonnet-4-6", "max_tokens": 10,
                          "system": system, "messages": messages})


def test_prompt_cache_accounting_and_limits() -> None:
    state = EmulatorState(EmulatorConfig())
    knowledge = long_knowledge(1100)
    cc = {"type": "ephemeral"}
    system = [{"type": "text", "text": knowledge, "cache_control": cc}]
    p1 = _req(system, [{"role": "user", "content": "hello"}])
    u1 = apply_prompt_cache(state, "key", p1)
    assert (u1.read, u1.write) == (0, count_text_tokens(knowledge))
    assert u1.write - u1.write_5m == 0
    u2 = apply_prompt_cache(state, "key", _req(system, [{"role": "user", "content": "other"}]))
    assert (u2.read, u2.write) == (count_text_tokens(knowledge), 0)
    # two breakpoints: the second one adds only its increment
    system2 = [*system, {"type": "text", "text": "Extra rules. " * 40, "cache_control": cc}]
    u3 = apply_prompt_cache(state, "key", _req(system2, [{"role": "user", "content": "x"}]))
    assert u3.read == count_text_tokens(knowledge)
    assert u3.write == count_text_tokens("Extra rules. " * 40)
    state.clock.advance(301)
    u4 = apply_prompt_cache(state, "key", _req(system, [{"role": "user", "content": "x"}]))
    assert u4.read == 0 and u4.write == count_text_tokens(knowledge)

    five = [{"type": "text", "text": f"block {i}", "cache_control": cc} for i in range(5)]
    with pytest.raises(Invalid, match="maximum of 4"):
        _req(five, [{"role": "user", "content": "x"}])


def test_app_routes_without_a_server() -> None:
    app = create_app()
    with TestClient(app) as http:
        assert http.get("/healthz").json() == {"status": "ok"}
        resp = http.post("/v1/messages", headers={"x-api-key": "k"}, json={
            "model": "claude-haiku-4-5", "max_tokens": 20,
            "messages": [{"role": "user", "content": "Hello"}]})
        assert resp.status_code == 200 and resp.headers["request-id"].startswith("req_emu_")
        body = resp.json()
        assert body["content"][0]["text"] == "Hello! How can I help you today?"
        bad_version = http.post("/v9/models/gemini-2.5-flash:generateContent",
                                headers={"x-goog-api-key": "k"}, json={})
        assert bad_version.status_code == 404
        retired = http.post("/v1/messages", headers={"x-api-key": "k"}, json={
            "model": "claude-2.1", "max_tokens": 5,
            "messages": [{"role": "user", "content": "Hello"}]})
        assert retired.status_code == 404


def test_prompt_cache_breakpoint_on_tools_and_top_level() -> None:
    state = EmulatorState(EmulatorConfig())
    tools = [
        {"name": "lookup", "description": "Look things up. " * 300,
         "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}},
         "cache_control": {"type": "ephemeral"}},
    ]
    body = {"model": "claude-opus-4-5", "max_tokens": 10, "tools": tools,
            "messages": [{"role": "user", "content": "hello"}]}
    parsed = parse_request(body)
    tool_tokens = parsed.segments[0].tokens
    assert tool_tokens >= 1024
    assert apply_prompt_cache(state, "k", parsed).write == tool_tokens
    assert apply_prompt_cache(state, "k", parse_request(body)).read == tool_tokens

    # top-level cache_control marks the last block (here: the whole prompt)
    auto = {"model": "claude-opus-4-5", "max_tokens": 10, "system": long_knowledge(1100),
            "cache_control": {"type": "ephemeral"},
            "messages": [{"role": "user", "content": "hi"}]}
    first = apply_prompt_cache(state, "k", parse_request(auto))
    assert first.write == parse_request(auto).total_tokens
    assert apply_prompt_cache(state, "k", parse_request(auto)).read == first.write
