"""The assistant's text path (no room, no audio): AgentSession.run() with RouterLLM over a fake
router-svc, search_knowledge through a fake kb-svc, handoff to a specialist."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from livekit.agents import AgentSession, llm
from parley.router.v1 import router_pb2
from parley_agent.agents import SpecialistAgent
from parley_agent.config import TenantAgentConfig, VisionOverrides, WorkerSettings
from parley_agent.metadata import JobIdentity
from parley_agent.session import AssistantRuntime, Backends
from parley_agent.tenancy import TenantProfile
from parley_agent.testing import FakeBackends, KbDoc
from parley_runtime.client import make_channel
from parley_runtime.testing import signed_as
from parley_runtime.usage import NullUsageRecorder

pytestmark = pytest.mark.unit


def profile(tenant: str = "acme", **agent: Any) -> TenantProfile:
    return TenantProfile(
        tenant_id=tenant, display_name=tenant, plan="pro",
        agent=TenantAgentConfig.model_validate(agent), vision=VisionOverrides(),
    )


@pytest.fixture
async def runtime_factory(backends: FakeBackends) -> AsyncIterator[Any]:
    made: list[AssistantRuntime] = []
    channels: list[Backends] = []

    def make(prof: TenantProfile) -> AssistantRuntime:
        signer = signed_as("agent-worker")
        b = Backends(
            router=make_channel(backends.addr("router"), signer=signer),
            vision=make_channel(backends.addr("vision"), signer=signer),
            kb=make_channel(backends.addr("kb"), signer=signer),
        )
        channels.append(b)
        rt = AssistantRuntime(
            identity=JobIdentity(prof.tenant_id, "user-1", "sess-1", "assistant", {}),
            profile=prof, settings=WorkerSettings(), backends=b,
            recorder=NullUsageRecorder(), session_id="sess-1", job_id="job-1",
            room_name="room-1", vad_model=None,
        )
        made.append(rt)
        return rt

    yield make
    for rt in made:
        if rt.session is not None:
            await rt.session.aclose()
        await rt.aclose()
    for b in channels:
        await b.aclose()


async def start_text_session(rt: AssistantRuntime) -> AgentSession[Any]:
    session = rt.build_session(text_only=True)
    await session.start(rt.build_agent())
    return session


async def test_answer_from_knowledge_base(
    backends: FakeBackends, runtime_factory: Any
) -> None:
    backends.kb.docs = {
        "acme": [KbDoc("laptops", "Laptop policy", "Every new hire gets a 14-inch laptop "
                                                      "within 3 days of starting.")],
        "globex": [KbDoc("laptops", "Globex laptops", "Globex laptops are ordered monthly.")],
    }
    rt = runtime_factory(profile("acme"))
    session = await start_text_session(rt)

    result = await session.run(user_input="What is the laptop policy for new hires?")
    result.expect.next_event().is_function_call(name="search_knowledge")
    output = result.expect.next_event().is_function_call_output()
    assert "14-inch laptop" in output.event().item.output
    assert "[1] Laptop policy (laptops)" in output.event().item.output
    msg = result.expect.next_event().is_message(role="assistant")
    assert "14-inch laptop" in (msg.event().item.text_content or "")
    result.expect.no_more_events()

    # kb-svc saw the call as tenant acme (from the worker's token), never globex's documents
    assert [t for t, _ in backends.kb.queries] == ["acme"]
    assert "Globex" not in (msg.event().item.text_content or "")
    assert backends.router.tenants and set(backends.router.tenants) == {"acme"}


async def test_kb_down_is_a_tool_error_not_a_crash(
    backends: FakeBackends, runtime_factory: Any
) -> None:
    rt = runtime_factory(profile("acme"))
    await backends.hosts["kb"].stop(grace=0)  # kb-svc goes away
    session = await start_text_session(rt)
    result = await session.run(user_input="What is the laptop policy?")
    result.expect.next_event().is_function_call(name="search_knowledge")
    out = result.expect.next_event().is_function_call_output()
    assert out.event().item.is_error
    assert "unavailable" in out.event().item.output
    result.expect.next_event().is_message(role="assistant")


async def test_handoff_keeps_history(backends: FakeBackends, runtime_factory: Any) -> None:
    rt = runtime_factory(profile(
        "acme",
        instructions="You are Acme's front desk.",
        knowledge={"enabled": False},
        specialists=[{"name": "billing", "description": "invoices and refunds",
                      "instructions": "You are Acme's billing specialist."}],
    ))
    session = await start_text_session(rt)

    first = await session.run(user_input="My name is Ada and I was charged twice")
    first.expect.next_event().is_message(role="assistant")

    second = await session.run(user_input="Please transfer me to billing")
    second.expect.next_event().is_function_call(name="transfer_to_billing")
    second.expect.next_event().is_function_call_output()
    second.expect.next_event().is_agent_handoff(new_agent_type=SpecialistAgent)
    reply = second.expect.next_event().is_message(role="assistant")
    assert reply.event().item.text_content

    # The specialist's first request carries its own instructions and the earlier turns.
    last = backends.router.requests[-1]
    system = " ".join(p.text for m in last.messages if m.role == router_pb2.ROLE_SYSTEM
                      for p in m.parts)
    users = [" ".join(p.text for p in m.parts) for m in last.messages
             if m.role == router_pb2.ROLE_USER]
    assert "billing specialist" in system and "front desk" not in system
    assert any("charged twice" in u for u in users)
    assert any("transfer me to billing" in u for u in users)
    assert type(session.current_agent).__name__ == "SpecialistAgent"
    history = [i for i in session.current_agent.chat_ctx.items if isinstance(i, llm.ChatMessage)]
    assert any("charged twice" in (m.text_content or "") for m in history)


async def test_room_audio_frames_follow_the_setting(runtime_factory: Any) -> None:
    rt = runtime_factory(profile())
    audio = rt.room_options().get_audio_input_options()
    assert audio is not None
    assert audio.frame_size_ms == WorkerSettings().agent_audio_frame_ms == 100
    assert audio.sample_rate == 16000
    rt.settings = WorkerSettings(agent_audio_frame_ms=50)
    assert rt.room_options().get_audio_input_options().frame_size_ms == 50


async def test_input_gain_control_skips_silence_unless_turned_off(runtime_factory: Any) -> None:
    from livekit.agents.utils import is_given
    from parley_agent.agc import SilenceGatedAGC

    rt = runtime_factory(profile("acme"))
    options = rt.room_options().audio_input
    assert options.sample_rate == 16000 and options.frame_size_ms == 100
    assert isinstance(options.noise_cancellation, SilenceGatedAGC)
    assert options.noise_cancellation is rt.agc and options.auto_gain_control is False

    rt.settings = WorkerSettings(agent_agc_skip_silence=False)
    options = rt.room_options().audio_input
    assert options.noise_cancellation is None
    assert not is_given(options.auto_gain_control)  # livekit's own AGC, on every frame
