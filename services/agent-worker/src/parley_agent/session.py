"""One job's runtime: the assistant (AgentSession with STT/LLM/TTS, tools, vision, transcript
events, usage) or the note-taker. Everything a runtime starts, its `aclose()` stops."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import grpc
from livekit import rtc
from livekit.agents import AgentSession, inference, llm, vad
from livekit.agents.types import APIConnectOptions
from livekit.agents.voice import room_io
from livekit.agents.voice.agent_session import SessionConnectOptions
from livekit.agents.voice.events import (
    CloseEvent,
    CloseReason,
    ConversationItemAddedEvent,
    SessionUsageUpdatedEvent,
)
from livekit.agents.voice.room_io.types import DEFAULT_CLOSE_ON_DISCONNECT_REASONS
from livekit.agents.voice.turn import TurnDetectionMode, TurnHandlingOptions
from parley.router.v1 import router_pb2
from parley_runtime.auth import TokenSigner
from parley_runtime.client import make_channel
from parley_runtime.usage import UsageRecorder

from .agc import SilenceGatedAGC
from .agents import IntakeAgent
from .chat_input import ChatPacer
from .config import WorkerSettings
from .coordination import TOPIC_NOTES, TOPIC_TURNS, EventPublisher, decode_event, from_agent
from .latency import TurnLatencyTracker
from .log import logger
from .metadata import JobIdentity
from .notetaker import NoteTaker
from .playout import set_output_frame_ms
from .router_llm import TIER_BY_NAME, RouterLLM, RouterLLMOptions, tier_name
from .speech import SpeechStack, build_speech
from .tenancy import TenantProfile
from .tools import KnowledgeSearch, TenantActions, ToolScope
from .usage import MeteredModels, SessionUsageMeter
from .utterances import SessionVAD
from .vision import KeptFrameStore, VisionCapture, attach_frames, describe


@dataclass
class Backends:
    """gRPC channels to the services a job talks to (authenticated as agent-worker)."""

    router: grpc.aio.Channel
    vision: grpc.aio.Channel
    kb: grpc.aio.Channel

    @classmethod
    def connect(cls, settings: WorkerSettings, signer: TokenSigner | None) -> Backends:
        return cls(
            router=make_channel(settings.router_addr, signer=signer, audience="router-svc"),
            vision=make_channel(settings.vision_addr, signer=signer, audience="vision-svc"),
            kb=make_channel(settings.kb_addr, signer=signer, audience="kb-svc"),
        )

    async def aclose(self) -> None:
        for channel in (self.router, self.vision, self.kb):
            await channel.close()


def routing_hints(profile: TenantProfile) -> router_pb2.RoutingHints:
    hints = router_pb2.RoutingHints()
    policy = profile.agent.routing
    if policy.max_tier:
        hints.max_tier = TIER_BY_NAME[policy.max_tier]
    if policy.max_cost_usd:
        hints.max_cost_usd = policy.max_cost_usd
    return hints


def llm_conn_options(settings: WorkerSettings) -> APIConnectOptions:
    return APIConnectOptions(
        max_retry=settings.agent_llm_max_retry,
        retry_interval=settings.agent_llm_retry_interval_s,
        timeout=settings.agent_llm_timeout_s,
    )


_LEAVE_GRACE_S = 3.0


class AssistantRuntime:
    """The assistant for one session. Build the agent and session, `start()` them in a room (or
    use `build_session(text_only=True)` without one), and `aclose()` at the end."""

    def __init__(
        self,
        *,
        identity: JobIdentity,
        profile: TenantProfile,
        settings: WorkerSettings,
        backends: Backends,
        recorder: UsageRecorder,
        session_id: str,
        job_id: str,
        room_name: str,
        vad_model: vad.VAD | None,
        environ: dict[str, str] | None = None,
    ) -> None:
        self.identity = identity
        self.profile = profile
        self.settings = settings
        self.backends = backends
        self.session_id = session_id
        self.job_id = job_id
        self.vad = vad_model
        self.session_vad: SessionVAD | None = None
        self.latency = TurnLatencyTracker()
        self.frames = KeptFrameStore()
        self.router_llm = RouterLLM(
            channel=backends.router,
            options=RouterLLMOptions(
                session_id=session_id,
                tenant_id=identity.tenant_id,
                hints=routing_hints(profile),
                max_output_tokens=settings.agent_max_output_tokens,
            ),
            observer=self.latency,
        )
        self.scope = ToolScope(
            tenant_id=identity.tenant_id, user_id=identity.user_id, session_id=session_id,
            room=room_name,
        )
        self.http = aiohttp.ClientSession()
        self.knowledge = KnowledgeSearch(
            channel=backends.kb, scope=self.scope, options=profile.agent.knowledge,
            timeout_s=settings.agent_kb_timeout_s,
        )
        self.actions = TenantActions(
            endpoints=dict(profile.agent.actions), scope=self.scope, http=self.http,
            environ=environ,
        )
        self.speech: SpeechStack | None = None
        self.session: AgentSession[Any] | None = None
        self._room: rtc.Room | None = None
        self.vision: VisionCapture | None = None
        self.agc: SilenceGatedAGC | None = None
        self.turns: EventPublisher | None = None
        self.meter = SessionUsageMeter(
            recorder=recorder, tenant_id=identity.tenant_id, session_id=session_id,
            job_id=job_id, models=MeteredModels(None, None, None, None),
        )
        self._tasks: set[asyncio.Task[Any]] = set()
        self._chat: ChatPacer | None = None
        self._closed = False

    # -- building -------------------------------------------------------------------------

    def tools(self) -> list[llm.Tool]:
        tools: list[llm.Tool] = []
        if self.profile.agent.knowledge.enabled:
            tools.append(self.knowledge.tool())
        tools.extend(self.actions.tools())
        return tools

    def prepare_user_message(self, message: llm.ChatMessage) -> None:
        """Runs at the end of every user turn: start the latency clock, attach frames."""
        self.latency.mark_turn_end()
        if self.profile.agent.video_enabled:
            attached = attach_frames(message, self.frames, self.profile.agent.vision_attach)
            if attached:
                logger.info("frames attached to the user turn",
                            extra={"frames": describe(attached)})

    def build_agent(self) -> IntakeAgent:
        return IntakeAgent(
            instructions=self.profile.agent.instructions,
            tools=self.tools(),
            specialists=self.profile.agent.specialists,
            on_user_turn=self.prepare_user_message,
        )

    def _turn_detection(self) -> TurnDetectionMode:
        mode = self.settings.agent_turn_detection
        if mode == "eot-local":
            return inference.TurnDetector(version="v1-mini")
        return mode

    def build_session(self, *, text_only: bool = False) -> AgentSession[Any]:
        conn = SessionConnectOptions(llm_conn_options=llm_conn_options(self.settings))
        if text_only:
            session: AgentSession[Any] = AgentSession(
                vad=None, llm=self.router_llm,
                turn_handling=TurnHandlingOptions(turn_detection=None),
                conn_options=conn,
            )
        else:
            if self.vad is None:
                raise ValueError("a voice session needs the VAD")
            session_vad: vad.VAD = self.vad
            if self.settings.agent_vad_shared:
                session_vad = self.session_vad = SessionVAD(self.vad)
            self.speech = build_speech(self.profile.agent, self.settings, vad_model=session_vad)
            session = AgentSession(
                vad=session_vad,
                stt=self.speech.stt,
                llm=self.router_llm,
                tts=self.speech.tts,
                turn_handling=TurnHandlingOptions(
                    turn_detection=self._turn_detection(),
                    endpointing={
                        "min_delay": self.settings.agent_min_endpointing_s,
                        "max_delay": self.settings.agent_max_endpointing_s,
                    },
                    interruption={"enabled": True, "mode": "vad"},
                    preemptive_generation={"enabled": self.settings.agent_preemptive_generation},
                ),
                conn_options=conn,
                user_away_timeout=None,
            )
            self.meter = SessionUsageMeter(
                recorder=self.meter._recorder, tenant_id=self.identity.tenant_id,
                session_id=self.session_id, job_id=self.job_id,
                models=MeteredModels(
                    self.speech.stt_model_id, self.speech.stt_provider,
                    self.speech.tts_model_id, self.speech.tts_provider,
                ),
            )
        session.on("session_usage_updated", self._on_usage)
        self.session = session
        return session

    # -- running in a room ----------------------------------------------------------------

    async def start(self, room: rtc.Room, *, on_close: Callable[[str], None] | None = None) -> None:
        session = self.build_session()
        self.turns = EventPublisher(room=room, topic=TOPIC_TURNS, session_id=self.session_id)
        session.on("conversation_item_added", self._on_item)
        if on_close is not None:

            def _closed(ev: CloseEvent) -> None:
                on_close(f"session closed: {ev.reason}")

            session.on("close", _closed)
        await session.start(
            agent=self.build_agent(),
            room=room,
            room_options=self.room_options(),
            session_host=self.settings.agent_session_host,
        )
        room.on("participant_disconnected", self._on_participant_left)
        self._room = room
        if self.speech is not None:
            set_output_frame_ms(session.room_io.audio_output, self.settings.agent_output_frame_ms)
        if self.profile.agent.video_enabled:
            self.vision = VisionCapture(
                room=room, channel=self.backends.vision, tenant_id=self.identity.tenant_id,
                session_id=self.session_id, store=self.frames,
                speaking=lambda: session.user_state == "speaking",
                overrides=self.profile.vision,
                max_send_fps=self.settings.agent_vision_max_send_fps,
                backoff_max_s=self.settings.agent_vision_backoff_max_s,
                unchanged_threshold=self.settings.agent_vision_unchanged_luma,
                heartbeat_s=self.settings.agent_vision_heartbeat_s,
            )
            self.vision.start()
        self.meter.start(self.settings.agent_usage_interval_s)
        if self.profile.agent.greeting:
            session.say(self.profile.agent.greeting)

    def _on_participant_left(self, participant: rtc.RemoteParticipant) -> None:
        # after livekit's RoomIO has seen the same event (it unlinks its user first)
        asyncio.get_running_loop().call_soon(self._relink, participant)

    def _relink(self, left: rtc.RemoteParticipant, *, retried: bool = False) -> None:
        """The session talks with one user of the room at a time (livekit's RoomIO links one).
        When that user leaves and others stay, it goes on with one of them; when the last user
        leaves, it closes as livekit's own close-on-disconnect would."""
        session, room = self.session, self._room
        if session is None or room is None or self._closed:
            return
        rio = session.room_io
        if rio.linked_participant is not None:
            return  # someone else left; the linked user is still here
        users = [
            p for p in room.remote_participants.values()
            if p.kind != rtc.ParticipantKind.PARTICIPANT_KIND_AGENT and p.identity != left.identity
        ]
        if users:
            logger.info("the linked user left: going on with another user of the room",
                        extra={"left": left.identity, "now": users[0].identity})
            rio.set_participant(users[0].identity)
        elif not retried:
            # A user who just joined reaches the agent's view only once their connection is up
            # (a second or so): look again before ending the session.
            asyncio.get_running_loop().call_later(
                _LEAVE_GRACE_S, functools.partial(self._relink, left, retried=True)
            )
        elif left.disconnect_reason in DEFAULT_CLOSE_ON_DISCONNECT_REASONS:
            logger.info("the last user left: closing the session",
                        extra={"participant": left.identity})
            session._close_soon(reason=CloseReason.PARTICIPANT_DISCONNECTED)

    def room_options(self) -> room_io.RoomOptions:
        return room_io.RoomOptions(
            # the session's own handler (_relink) decides when a user leaving ends it
            close_on_disconnect=False,
            video_input=False,  # video goes to vision-svc, not to livekit's sampler
            text_input=room_io.TextInputOptions(text_input_cb=self._on_text_input),
            audio_input=self.audio_input_options(),
            text_output=room_io.TextOutputOptions(
                sync_transcription=self.settings.agent_sync_transcription
            ),
        )

    def audio_input_options(self) -> room_io.AudioInputOptions:
        # 16 kHz is what the VAD and the STT models take: one resampling step, not two
        options = room_io.AudioInputOptions(
            sample_rate=16000, frame_size_ms=self.settings.agent_audio_frame_ms
        )
        if self.settings.agent_agc_skip_silence:
            self.agc = SilenceGatedAGC(floor_dbfs=self.settings.agent_vad_silence_dbfs)
            options.noise_cancellation = self.agc
            options.auto_gain_control = False  # the gated processor is the AGC
        return options

    async def _on_text_input(self, sess: AgentSession[Any], ev: room_io.TextInputEvent) -> None:
        """A chat message typed by the user: paced and merged into turns (chat_input)."""
        if self._chat is None:
            self._chat = ChatPacer(
                functools.partial(self._chat_turn, sess),
                min_interval_s=self.settings.agent_chat_min_interval_s,
                max_chars=self.settings.agent_chat_max_chars,
            )
        self._chat.push(ev.text)

    async def _chat_turn(self, sess: AgentSession[Any], text: str) -> None:
        """The same turn preparation as speech."""
        message = llm.ChatMessage(role="user", content=[text])
        self.prepare_user_message(message)
        async with sess._claim_user_turn():
            await sess.interrupt()
            sess.generate_reply(user_input=message)

    def _on_usage(self, ev: SessionUsageUpdatedEvent) -> None:
        self.meter.observe(ev.usage)

    def _spawn(self, coro: Awaitable[Any], name: str) -> None:
        async def guarded() -> None:
            try:
                await coro
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("background task failed", extra={"task": name})

        task = asyncio.create_task(guarded(), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_item(self, ev: ConversationItemAddedEvent) -> None:
        item = ev.item
        if not isinstance(item, llm.ChatMessage) or item.role not in ("user", "assistant"):
            return
        text = item.text_content or ""
        if not text and item.role == "assistant":
            return
        fields: dict[str, Any] = {
            "role": item.role, "text": text, "interrupted": item.interrupted,
            "images": sum(1 for c in item.content if isinstance(c, llm.ImageContent)),
        }
        if item.role == "assistant":
            outcome = self.latency.last_outcome
            if outcome is not None and outcome.completion is not None:
                fields["tier"] = tier_name(outcome.completion.tier)
                fields["model"] = outcome.completion.model_id
                fields["fallback"] = outcome.completion.fallback_used
            lat = self.latency.last_latency
            if lat is not None:
                fields["first_token_ms"] = round(lat.first_token_s * 1000, 2)
                fields["model_ttft_ms"] = round(lat.model_ttft_s * 1000, 2)
                fields["platform_ms"] = round(lat.platform_s * 1000, 2)
                fields["pre_rpc_ms"] = round(lat.pre_rpc_s * 1000, 2)
                fields["rpc_overhead_ms"] = round(lat.rpc_overhead_s * 1000, 2)
                self.latency.last_latency = None
        if self.turns is not None:
            self._spawn(self.turns.publish("turn", **fields), "publish-turn")

    async def finish(self) -> None:
        """While the room is still connected (livekit's session-end hook, before it leaves the
        room): let the turn events still being published go out."""
        tasks = list(self._tasks)
        if tasks:
            await asyncio.wait(tasks, timeout=5)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._room is not None:
            self._room.off("participant_disconnected", self._on_participant_left)
        if self._chat is not None:
            await self._chat.aclose()
        if self.vision is not None:
            await self.vision.aclose()
        tasks = list(self._tasks)
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.session is not None:
            self.meter.observe(self.session.usage)
        await self.meter.aclose(flush_timeout_s=self.settings.agent_usage_flush_timeout_s)
        await self.http.close()
        await self.router_llm.aclose()
        if self.session_vad is not None:
            self.session_vad.close()


class NoteTakerRuntime:
    """The note-taker for one room: turn events in, summaries out."""

    def __init__(
        self,
        *,
        identity: JobIdentity,
        profile: TenantProfile,
        settings: WorkerSettings,
        backends: Backends,
        recorder: UsageRecorder,
        session_id: str,
        job_id: str,
    ) -> None:
        self.identity = identity
        self.settings = settings
        hints = routing_hints(profile)
        hints.max_tier = router_pb2.TIER_SIMPLE
        self.router_llm = RouterLLM(
            channel=backends.router,
            options=RouterLLMOptions(
                session_id=session_id, tenant_id=identity.tenant_id, hints=hints,
                max_output_tokens=600,
            ),
        )
        self.session_id = session_id
        self.options = profile.agent.notetaker
        self.meter = SessionUsageMeter(
            recorder=recorder, tenant_id=identity.tenant_id, session_id=session_id,
            job_id=job_id, models=MeteredModels(None, None, None, None),
            kind_prefix="notetaker-",
        )
        self.notes: NoteTaker | None = None
        self._room: rtc.Room | None = None
        self._closed = False

    def start(self, room: rtc.Room) -> NoteTaker:
        self._room = room
        publisher = EventPublisher(room=room, topic=TOPIC_NOTES, session_id=self.session_id)
        self.notes = NoteTaker(
            router=self.router_llm, options=self.options, publish=publisher.publish
        )
        room.on("data_received", self._on_data)
        self.meter.start(self.settings.agent_usage_interval_s)
        return self.notes

    def _on_data(self, packet: rtc.DataPacket) -> None:
        if packet.topic != TOPIC_TURNS or not from_agent(packet) or self.notes is None:
            return
        event = decode_event(packet.data)
        if event is not None and event.get("session_id") == self.session_id:
            self.notes.on_turn_event(event)

    async def finish(self) -> None:
        """While the room is still connected (livekit's session-end hook; it leaves the room
        before the shutdown callbacks run): the final summary, published to the room."""
        if self.notes is not None and not self._closed:
            await self.notes.aclose()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._room is not None:
            self._room.off("data_received", self._on_data)
        if self.notes is not None:
            await self.notes.aclose()  # nothing left to do when finish() ran
        await self.meter.aclose(flush_timeout_s=self.settings.agent_usage_flush_timeout_s)
        await self.router_llm.aclose()


def default_session_id(identity: JobIdentity, room_sid: str, room_name: str) -> str:
    """The session id when the metadata names none: the room's sid (unique per room instance)."""
    return identity.session_id or room_sid or f"{room_name}-{int(time.time())}"
