"""Prompt-caching plans: Anthropic breakpoints, Gemini prefixes, explicit cache economics."""

from __future__ import annotations

import pytest
from parley_router.caching import (
    ExplicitCacheEconomics,
    PrefixSightings,
    gemini_prefix,
    plan_anthropic_breakpoints,
)
from parley_router.chat import ChatRequest, Message, Role, TextPart, ToolSpec
from parley_router.providers.anthropic import build_anthropic_params

pytestmark = pytest.mark.unit

LONG = "The store's return policy allows returns within thirty days. " * 100  # ~1.5k tokens


def msg(role: Role, text: str, bp: bool = False) -> Message:
    return Message(role, (TextPart(text),), bp)


def test_short_prompts_get_no_breakpoints() -> None:
    req = ChatRequest((msg(Role.SYSTEM, "be brief"), msg(Role.USER, "hi")))
    plan = plan_anthropic_breakpoints(req, 1024)
    assert plan.count == 0
    params = build_anthropic_params("claude-sonnet-4-6", req, plan)
    assert "cache_control" not in str(params)


def test_long_system_prompt_gets_a_breakpoint_and_history_is_cached() -> None:
    req = ChatRequest((
        msg(Role.SYSTEM, LONG),
        msg(Role.USER, "first question"),
        msg(Role.ASSISTANT, "first answer"),
        msg(Role.USER, "second question"),
    ))
    plan = plan_anthropic_breakpoints(req, 1024)
    assert plan.system and plan.messages == frozenset({2})
    params = build_anthropic_params("claude-sonnet-4-6", req, plan)
    assert params["system"][-1]["cache_control"] == {"type": "ephemeral"}
    assert params["messages"][1]["content"][-1]["cache_control"] == {"type": "ephemeral"}
    assert "cache_control" not in str(params["messages"][-1])


def test_caller_breakpoints_only_past_the_minimum_and_at_most_four() -> None:
    msgs = [msg(Role.SYSTEM, LONG)]
    for i in range(6):
        msgs.append(msg(Role.USER, f"question {i}", bp=True))
        msgs.append(msg(Role.ASSISTANT, f"answer {i}", bp=True))
    msgs.append(msg(Role.USER, "now"))
    plan = plan_anthropic_breakpoints(ChatRequest(tuple(msgs)), 1024)
    assert plan.count == 4
    assert max(plan.messages) == 12  # the latest ones win
    # Below the minimum: nothing.
    assert plan_anthropic_breakpoints(ChatRequest(tuple(msgs)), 100_000).count == 0


def test_tools_get_the_breakpoint_when_there_is_no_system_prompt() -> None:
    tool = ToolSpec("search", LONG, {"type": "object", "properties": {}})
    req = ChatRequest((msg(Role.USER, "hi"),), tools=(tool,))
    plan = plan_anthropic_breakpoints(req, 1024)
    assert plan.tools and not plan.system
    params = build_anthropic_params("m", req, plan)
    assert params["tools"][-1]["cache_control"] == {"type": "ephemeral"}


def test_gemini_prefix_is_stable_and_excludes_the_new_turn() -> None:
    base = [msg(Role.SYSTEM, LONG), msg(Role.USER, "q1", bp=True),
            msg(Role.ASSISTANT, "a1", bp=True)]
    a = gemini_prefix(ChatRequest((*base, msg(Role.USER, "q2"))), "gemini-2.5-flash")
    b = gemini_prefix(ChatRequest((*base, msg(Role.USER, "something else"))), "gemini-2.5-flash")
    assert a is not None and b is not None
    assert a.digest == b.digest and a.messages == 2
    c = gemini_prefix(ChatRequest((*base, msg(Role.USER, "q2"))), "gemini-2.5-pro")
    assert c is not None and c.digest != a.digest
    assert gemini_prefix(ChatRequest((msg(Role.USER, "hi"),)), "m") is None


def test_explicit_cache_pays_off_only_with_enough_reuse() -> None:
    flash = ExplicitCacheEconomics(0.30, 0.03, 1.0, ttl_s=600)
    assert flash.break_even_uses() == pytest.approx((1.0 / 6 + 0.30) / 0.27)
    assert not flash.pays_off(1)
    assert flash.pays_off(2)
    hour = ExplicitCacheEconomics(0.10, 0.01, 1.0, ttl_s=3600)
    assert not hour.pays_off(12) and hour.pays_off(13)
    assert not ExplicitCacheEconomics(0.1, 0.1, 1.0, 600).pays_off(1000)


def test_prefix_sightings_count_within_the_window() -> None:
    t = [0.0]
    s = PrefixSightings(window_s=10, max_keys=2, clock=lambda: t[0])
    assert s.add("a") == 1
    t[0] = 5
    assert s.add("a") == 2
    t[0] = 16
    assert s.add("a") == 1
    s.add("b")
    s.add("c")  # evicts the oldest key
    assert s.add("a") == 1
