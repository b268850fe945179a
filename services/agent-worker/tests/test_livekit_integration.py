"""The worker against the real LiveKit server (dev mode, loopback), with fake back-end services.

A simulated participant (livekit rtc SDK) joins rooms created with tenant metadata, speaks
(espeak-ng audio), shares a screen, types chat questions and publishes garbage video; the worker
runs in this process (its job processes are real child processes).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from livekit import rtc
from livekit.agents import AgentServer
from parley_agent.config import WorkerSettings
from parley_agent.runner import run_worker
from parley_agent.sim import SimulatedUser, create_room
from parley_agent.testing import FakeBackends, FakeVision, KbDoc
from parley_runtime.testing import TEST_KEYS

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

TENANTS = """
tenants:
  acme:
    display_name: Acme
    agent:
      greeting: "Hi, I am the Acme assistant."
      notetaker: {summary_every_turns: 1}
  globex:
    agent:
      video_enabled: false
"""


class Stack:
    def __init__(self, server: AgentServer, backends: FakeBackends, lk: Any) -> None:
        self.server = server
        self.backends = backends
        self.lk = lk

    def creds(self) -> tuple[str, str, str]:
        return self.lk.url, self.lk.api_key, self.lk.api_secret


@pytest.fixture(scope="module")
async def stack(
    livekit_server: Any, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    backends = await FakeBackends(vision=FakeVision(threshold=0.5)).start()
    backends.kb.docs = {
        "acme": [KbDoc("laptops", "Laptop policy",
                       "Every new hire gets a 14-inch laptop within 3 days of starting.")],
        "globex": [KbDoc("laptops", "Globex hardware", "Globex staff use desktop towers only.")],
    }
    folder: Path = tmp_path_factory.mktemp("agent")
    (folder / "tenants.yaml").write_text(TENANTS)
    settings = WorkerSettings(
        tenants_file=str(folder / "tenants.yaml"),
        router_addr=backends.addr("router"), vision_addr=backends.addr("vision"),
        kb_addr=backends.addr("kb"), billing_addr=backends.addr("billing"),
        auth_keys=dict(TEST_KEYS), auth_kid="agent-worker", metrics_port=0,
        agent_max_sessions=4, agent_usage_interval_s=300,
        # two cores shared with the LiveKit server and the test: count sessions, not CPU
        agent_cpu_load=False,
    )
    try:
        async with run_worker(
            settings, url=livekit_server.url, api_key=livekit_server.api_key,
            api_secret=livekit_server.api_secret, idle_processes=2,
        ) as server:
            yield Stack(server, backends, livekit_server)
    finally:
        await backends.stop()


def room_name() -> str:
    return f"room-{uuid.uuid4().hex[:8]}"


async def test_refused_rooms_do_not_get_an_agent(stack: Stack) -> None:
    url, key, secret = stack.creds()
    for metadata in (None, {"tenant_id": "no-such-tenant"}, {"user_id": "u"}):
        name = room_name()
        await create_room(url, key, secret, room=name, metadata=metadata,
                          dispatches=[("parley-agent", {})])
        async with SimulatedUser.join(url, key, secret, room=name, identity="mallory") as user:
            with pytest.raises(asyncio.TimeoutError):
                await user.wait_for_agent(timeout=4)
    assert not stack.server.active_jobs


async def test_voice_screen_share_and_chat_session(stack: Stack) -> None:
    url, key, secret = stack.creds()
    b = stack.backends
    name = room_name()
    session_id = f"sess-{uuid.uuid4().hex[:8]}"
    await create_room(
        url, key, secret, room=name,
        metadata={"tenant_id": "acme", "user_id": "alice", "session_id": session_id},
        dispatches=[("parley-agent", {}), ("parley-agent", {"role": "notetaker"})],
    )
    async with SimulatedUser.join(url, key, secret, room=name, identity="alice") as user:
        agent = await user.wait_for_agent(role="assistant", timeout=60)
        assert agent.attributes.get("parley.tenant_id") == "acme"
        await user.wait_for_agent(role="notetaker", timeout=60)
        await user.wait_for_agent_audio(timeout=30)
        await user.publish_microphone()
        # the greeting plays first; speech over it (echo-cancellation warm-up) is discarded
        greeting = await user.wait_for_turn(role="assistant", timeout=30)
        assert greeting["text"] == "Hi, I am the Acme assistant."
        await asyncio.sleep(1.5)
        voiced_before = user.agent_voiced_s
        assert voiced_before > 0.5, "the greeting was heard"
        await user.start_screen_share(
            ["Quarterly revenue: 4.2 million", "Churn fell to two percent"],
            fps=5, width=640, height=360,
        )

        # 1. speech: Whisper hears the words, the router answers, the agent speaks
        speech_end = await user.say("Tell me about the laptop policy for new hires.")
        said = await user.wait_for_turn(role="user", timeout=60)
        squashed = said["text"].lower().replace(" ", "")
        assert "laptop" in squashed and "policy" in squashed, said["text"]
        assert said["images"] >= 1, "the shared screen was attached to the first turn"
        answer = await user.wait_for_turn(role="assistant", timeout=60,
                                          predicate=lambda e: "laptop" in e["text"].lower())
        assert answer["tier"] == "premium" and answer["platform_ms"] >= 0
        # the answer was spoken on the agent's audio track, after the user's turn had ended
        # (at least the endpointing silence) and within seconds of it
        assert user.agent_voiced_s > voiced_before + 0.5
        heard = user.agent_voice_after(speech_end)
        assert heard is not None and 0.4 < heard < 15, heard

        # 2. a typed chat question answered from the tenant's knowledge base
        before = len(user.turn_events)
        await user.type_chat("What is the laptop policy for new hires?")
        kb_answer = await user.wait_for_turn(
            role="assistant", after=before, timeout=30,
            predicate=lambda e: "14-inch" in e["text"],
        )
        assert kb_answer["text"]

        # 3. the slide changes and the user refers to it: a new kept frame rides the turn
        user.show_slide(1)
        await asyncio.sleep(1.5)
        before = len(user.turn_events)
        await user.type_chat("Look at this slide")
        turn = await user.wait_for_turn(role="user", after=before, timeout=30)
        assert turn["images"] >= 1

        # 4. garbage video does not break the session
        await user.publish_garbage_video(seconds=1.5)
        before = len(user.turn_events)
        await user.type_chat("Are you still there")
        await user.wait_for_turn(role="assistant", after=before, timeout=30)

        # 5. the note-taker summarised over the data channel
        note = await user.wait_for_note(timeout=30)
        assert note["session_id"] == session_id and note["summary"]
        # livekit's remote-session host is off: no participant was sent the session's events
        # (or could read its chat history and inject turns through it)
        assert user.session_streams == 0

    # vision-svc got the screen share with the session id and the speaking state
    assert any(c.session_id == session_id for c in b.vision.configs)
    assert b.vision.kept >= 2 and len(b.vision.frames) > b.vision.kept
    assert b.vision.rejected >= 0
    # every router call was for acme, with this session id
    assert {r.session_id for r in b.router.requests if r.session_id == session_id}
    # usage reached billing once the room ended (session minutes, STT seconds, TTS chars)
    async def billed() -> set[str]:
        for _ in range(150):
            kinds = {
                ev.WhichOneof("usage") for tenant, ev in b.billing.events.values()
                if ev.session_id == session_id and tenant == "acme"
            }
            if {"session", "stt", "tts"} <= kinds:
                return kinds
            await asyncio.sleep(0.1)
        return kinds

    assert {"session", "stt", "tts"} <= await billed()


async def test_a_second_user_carries_on_when_the_first_leaves(stack: Stack) -> None:
    """The session talks with one user at a time (the first to join); when that user leaves and
    another stays, it goes on with the other (it used to close with the first user)."""
    url, key, secret = stack.creds()
    name = room_name()
    await create_room(url, key, secret, room=name,
                      metadata={"tenant_id": "acme", "user_id": "alice"},
                      dispatches=[("parley-agent", {})])
    alice_cm = SimulatedUser.join(url, key, secret, room=name, identity="alice")
    alice = await alice_cm.__aenter__()
    try:
        await alice.wait_for_agent(role="assistant", timeout=60)
        await asyncio.sleep(1.0)
        async with SimulatedUser.join(url, key, secret, room=name, identity="mallory") as mallory:
            before = len(alice.turn_events)
            await alice.type_chat("What is the laptop policy for new hires?")
            await alice.wait_for_turn(role="assistant", after=before, timeout=30)
            await alice_cm.__aexit__(None, None, None)  # the linked user leaves
            alice_cm = None
            await asyncio.sleep(1.5)
            assert any(p.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT
                       for p in mallory.room.remote_participants.values()), "the agent stayed"
            before = len(mallory.turn_events)
            await mallory.type_chat("What is the laptop policy for new hires?")
            answer = await mallory.wait_for_turn(role="assistant", after=before, timeout=30,
                                                 predicate=lambda e: "14-inch" in e["text"])
            assert answer["text"]
    finally:
        if alice_cm is not None:
            await alice_cm.__aexit__(None, None, None)
