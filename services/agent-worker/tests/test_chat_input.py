"""Typed chat is paced into turns: bursts merge, long messages are cut."""

from __future__ import annotations

import asyncio

import pytest
from parley_agent.chat_input import ChatPacer

pytestmark = pytest.mark.unit


async def test_a_burst_becomes_few_turns_with_every_message_in_order() -> None:
    turns: list[str] = []

    async def submit(text: str) -> None:
        turns.append(text)

    pacer = ChatPacer(submit, min_interval_s=0.2, max_chars=100_000)
    for i in range(1000):
        pacer.push(f"burst message {i}")
    pacer.push("   ")  # nothing to say: not a message
    for _ in range(100):
        if sum(t.count("burst message") for t in turns) == 1000:
            break
        await asyncio.sleep(0.05)
    await pacer.aclose()
    # one or two turns, not a thousand: every message once, in order
    assert 1 <= len(turns) <= 2
    lines = [line for t in turns for line in t.splitlines()]
    assert lines == [f"burst message {i}" for i in range(1000)]
    assert pacer.merged == 1000 - len(turns)


async def test_messages_far_apart_are_turns_of_their_own() -> None:
    turns: list[str] = []

    async def submit(text: str) -> None:
        turns.append(text)

    pacer = ChatPacer(submit, min_interval_s=0.05)
    for text in ("first", "second"):
        pacer.push(text)
        await asyncio.sleep(0.15)
    await pacer.aclose()
    assert turns == ["first", "second"]


async def test_long_messages_and_merged_turns_are_cut_keeping_the_newest() -> None:
    turns: list[str] = []

    async def submit(text: str) -> None:
        turns.append(text)

    pacer = ChatPacer(submit, min_interval_s=0.1, max_chars=200)
    pacer.push("A" * 1_000_000)
    await asyncio.sleep(0.02)  # its own turn
    pacer.push("B" * 190)
    pacer.push("the question at the end")
    for _ in range(100):
        if len(turns) == 2:
            break
        await asyncio.sleep(0.02)
    await pacer.aclose()
    assert len(turns[0]) == 200 and turns[0].endswith("[...]")
    assert len(turns[1]) <= 200 and turns[1].endswith("the question at the end")
    assert turns[1].startswith("[...]")
    assert pacer.cut == 2


async def test_a_failing_turn_does_not_stop_the_next() -> None:
    turns: list[str] = []

    async def submit(text: str) -> None:
        turns.append(text)
        if text == "boom":
            raise RuntimeError("model refused")

    pacer = ChatPacer(submit, min_interval_s=0.0)
    pacer.push("boom")
    await asyncio.sleep(0.05)
    pacer.push("after")
    await asyncio.sleep(0.05)
    await pacer.aclose()
    assert turns == ["boom", "after"]
