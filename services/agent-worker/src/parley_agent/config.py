"""Typed settings of the agent worker (env prefix PARLEY_, peers as <DEP>_ADDR) and the model of
a tenant's `agent:` section in PARLEY_TENANTS_FILE."""

from __future__ import annotations

import re
from typing import Literal

from parley_runtime.settings import ServiceSettings
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    HttpUrl,
    field_validator,
    model_validator,
)
from pydantic_settings import SettingsConfigDict

Role = Literal["assistant", "notetaker"]
TurnDetection = Literal["vad", "eot-local", "stt"]


class WorkerSettings(ServiceSettings):
    """Process-wide settings. Picklable: they travel to every job process with the entrypoint."""

    model_config = SettingsConfigDict(env_prefix="PARLEY_", extra="ignore", populate_by_name=True)

    service_name: str = "agent-worker"
    # Prometheus /metrics of the worker and all its job processes (0 disables).
    metrics_port: int = Field(default=9105, ge=0, le=65535)
    # livekit-agents' worker HTTP server: `GET /` health, `GET /worker` JSON.
    health_port: int = Field(default=8081, ge=0, le=65535)

    agent_name: str = Field(
        default="parley-agent",
        validation_alias=AliasChoices("PARLEY_AGENT_NAME", "LIVEKIT_AGENT_NAME"),
    )
    # Hard cap on concurrent sessions in this worker; the load function reports full at the cap.
    agent_max_sessions: int = Field(default=10, ge=1)
    # Load (max of CPU and sessions/cap scaled to it) at which the worker stops taking jobs.
    agent_load_threshold: float = Field(
        default=0.75, gt=0, le=1.0
    )
    # Count CPU use in the load (production); off, only the session cap applies (a small shared
    # box running every service, where CPU spikes are not this worker's).
    agent_cpu_load: bool = True
    agent_idle_processes: int | None = Field(
        default=None, ge=0
    )
    # Seconds SIGTERM waits for running sessions to end before the worker stops.
    agent_drain_timeout_s: int = Field(
        default=600, ge=0
    )
    agent_job_memory_warn_mb: float = Field(
        default=600, ge=0
    )
    # A job process that grows past this is ended by livekit (its session only; the worker and
    # other rooms go on). A session normally holds ~180 MB USS, ~600 MB with a 4K screen share.
    agent_job_memory_limit_mb: float = Field(
        default=1500, ge=0
    )
    # Typed chat: a message becomes a turn at most this often (messages meanwhile are merged
    # into the next turn), and a message or merged turn is cut to this many characters.
    agent_chat_min_interval_s: float = Field(default=1.0, ge=0)
    agent_chat_max_chars: int = Field(default=4000, ge=100)
    # Where job processes write Prometheus samples for the worker to aggregate.
    agent_prometheus_dir: str | None = Field(
        default=None
    )

    router_addr: str = Field(default="127.0.0.1:50051", validation_alias="ROUTER_ADDR")
    vision_addr: str = Field(default="127.0.0.1:50052", validation_alias="VISION_ADDR")
    kb_addr: str = Field(default="127.0.0.1:50053", validation_alias="KB_ADDR")
    # Usage events go to billing-svc through parley_runtime's durable spool (unset: not billed).
    billing_addr: str = Field(default="", validation_alias="BILLING_ADDR")

    # Turn handling: "eot-local" is livekit's audio end-of-turn model (turn-detector-v1-mini,
    # shipped in livekit-local-inference, run in-process) on top of the VAD; "vad" ends the turn
    # on silence alone.
    agent_turn_detection: TurnDetection = "eot-local"
    agent_min_endpointing_s: float = Field(
        default=0.5, ge=0
    )
    agent_max_endpointing_s: float = Field(
        default=3.0, ge=0
    )
    # Preemptive generation starts the LLM before the turn is final: lower latency, more calls.
    agent_preemptive_generation: bool = Field(
        default=False
    )

    # LLM calls to router-svc: per-attempt gRPC deadline and retries before any output.
    agent_llm_timeout_s: float = Field(default=30.0, gt=0)
    agent_llm_max_retry: int = Field(default=2, ge=0)
    agent_llm_retry_interval_s: float = Field(
        default=0.5, ge=0
    )
    agent_max_output_tokens: int = Field(
        default=400, ge=1
    )
    agent_kb_timeout_s: float = Field(default=5.0, gt=0)

    # Offline speech.
    agent_stt_threads: int = Field(default=1, ge=1, le=16)
    agent_preload_stt: bool = Field(default=True)
    espeak_binary: str = "espeak-ng"
    # Word-by-word captions of the agent's speech, paced to its audio: livekit estimates the
    # speaking rate with an STFT of every TTS frame, ~10% of a session's CPU while the agent
    # talks (bench/agent). Off: each sentence's caption is sent as soon as it is known.
    agent_sync_transcription: bool = False
    # livekit's remote-session host (the `lk.agent.session` byte streams its console and
    # playground use): every session event (state changes, conversation items, usage) is
    # streamed to every participant, and any participant can read the chat history
    # (instructions and tool results included) and inject turns. Off: the room gets only the
    # transcription and Parley's own events.
    agent_session_host: bool = False
    # Silero VAD: "native" runs it through livekit-local-inference (~20 us per 32 ms window),
    # "onnx" through the silero plugin's onnxruntime session (~180 us); same model.
    agent_vad_runtime: Literal["native", "onnx"] = "native"
    # The VAD's per-window inference run on the session's loop instead of a thread-pool hop per
    # window (parley_agent.vad); false: the thread pool.
    agent_vad_inline: bool = True
    # No VAD inference on settled silence: after 1 s below this peak level (and out of speech)
    # frames skip the model until one is louder (parley_agent.vad); false: every frame.
    agent_vad_skip_silence: bool = True
    agent_vad_silence_dbfs: float = Field(default=-60.0, ge=-120.0, le=-30.0)
    # The input's automatic gain control (livekit's WebRTC AGC) skips frames below the same
    # floor (parley_agent.agc); false: livekit's AGC on every frame.
    agent_agc_skip_silence: bool = True
    # One VAD stream per session: the session's own stream also cuts the offline STT's
    # utterances (parley_agent.utterances) instead of livekit's StreamAdapter running a second
    # one over the same audio; false: the adapter's own stream.
    agent_vad_shared: bool = True
    # The room's audio reaches the session in frames of this many ms. Every frame wakes the
    # session's loop and its VAD, turn detector and STT streams; 100 ms frames halve those
    # wake-ups against livekit's 50 ms (bench/agent: ~6% less CPU per streaming session) and
    # detect the start and end of speech 25 ms later on average (the VAD waits for 550 ms of
    # silence before it ends an utterance).
    agent_audio_frame_ms: int = Field(default=100, ge=10, le=200)
    # The agent's voice is handed to LiveKit in frames of this many ms (parley_agent.playout):
    # each frame is an FFI round trip, and livekit-agents' room output uses 50 ms.
    agent_output_frame_ms: int = Field(default=100, ge=20, le=100)

    # Vision: frames sent to vision-svc per second at most per track (0: every frame), and the
    # reconnect backoff of a failed frame stream.
    agent_vision_max_send_fps: float = Field(
        default=15.0, ge=0
    )
    # Frames that show nothing new since the last frame sent are left out (parley_agent.vision,
    # UnchangedFrameFilter): sent when a pixel's luma moved by more than this many levels
    # (decoded VP8 of a still screen flickers by up to ~20), right after a change, and at least
    # every `agent_vision_heartbeat_s`. 0: every frame goes to vision-svc.
    agent_vision_unchanged_luma: int = Field(default=32, ge=0, le=127)
    agent_vision_heartbeat_s: float = Field(default=1.0, gt=0, le=1.0)
    agent_vision_backoff_max_s: float = Field(
        default=10.0, gt=0
    )

    # Usage shipping to billing-svc: periodic deltas, then a final flush at session end.
    agent_usage_interval_s: float = Field(
        default=60.0, gt=0
    )
    agent_usage_flush_timeout_s: float = Field(
        default=10.0, gt=0
    )
    # The worker's main process ships, this often, the usage events that ended job processes
    # left in spool folders no new job process happened to take (billing was down when their
    # session ended). 0: never.
    agent_orphan_spool_interval_s: float = Field(default=60.0, ge=0)

    # Cloud speech providers, used per tenant when their key is set.
    deepgram_api_key: str | None = Field(default=None, validation_alias="DEEPGRAM_API_KEY")
    elevenlabs_api_key: str | None = Field(
        default=None, validation_alias=AliasChoices("ELEVEN_API_KEY", "ELEVENLABS_API_KEY")
    )


# ---------------------------------------------------------------------------------------------
# The tenant's `agent:` section.

ActionName = Literal["create_task", "log_insight", "fetch_user_profile"]
_SPECIALIST_RE = re.compile(r"^[a-z][a-z0-9_]{0,30}\Z")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SttChoice(_Strict):
    provider: Literal["local", "deepgram"] = "local"
    model: str | None = None
    language: str = "en"


class TtsChoice(_Strict):
    provider: Literal["espeak", "elevenlabs"] = "espeak"
    # espeak-ng voice (e.g. "en-us", "en-gb+f3") or ElevenLabs voice id.
    voice: str = "en-us"
    model: str | None = None
    # espeak-ng speaking rate, words per minute.
    rate_wpm: int = Field(default=175, ge=80, le=450)


class KnowledgeOptions(_Strict):
    enabled: bool = True
    top_k: int = Field(default=4, ge=1, le=20)
    mode: Literal["hybrid", "vector", "full_text"] = "hybrid"
    min_score: float = Field(default=0.0, ge=0)
    max_snippet_chars: int = Field(default=400, ge=50, le=4000)


class ActionEndpoint(_Strict):
    """One tenant-hosted HTTP endpoint the agent may call, signed with the tenant's secret."""

    url: HttpUrl
    # Name of the environment variable (e.g. a mounted Kubernetes secret) holding the secret.
    secret_env: str = Field(pattern=r"^[A-Z_][A-Z0-9_]*$")
    timeout_s: float = Field(default=5.0, gt=0, le=30)
    description: str | None = None


class Specialist(_Strict):
    name: str
    description: str
    instructions: str

    @field_validator("name")
    @classmethod
    def _name_ok(cls, value: str) -> str:
        if not _SPECIALIST_RE.match(value):
            raise ValueError("specialist name must be snake_case (a-z, 0-9, _), max 31 chars")
        return value


class VisionAttachOptions(_Strict):
    enabled: bool = True
    # Words that mean the user refers to what they show; a turn that uses one gets the latest
    # kept frame even when it did not change.
    keywords: tuple[str, ...] = (
        "this", "that", "these", "here", "screen", "slide", "slides", "see", "look", "show",
        "shown", "showing", "display", "image", "picture", "camera", "page", "chart", "diagram",
        "window", "tab",
    )
    max_images: int = Field(default=2, ge=1, le=4)
    # Frames older than this are never attached.
    max_age_s: float = Field(default=120.0, gt=0)


class RoutingPolicy(_Strict):
    max_tier: Literal["simple", "standard", "premium"] | None = None
    max_cost_usd: float = Field(default=0.0, ge=0)


class NoteTakerOptions(_Strict):
    enabled: bool = True
    summary_every_turns: int = Field(default=4, ge=1, le=100)
    # and no more often than this: each summary sends the transcript to the model, so a burst of
    # short turns would otherwise cost a summary every few turns
    min_summary_interval_s: float = Field(default=60.0, ge=0, le=3600)
    max_transcript_chars: int = Field(default=12000, ge=500)


class TenantAgentConfig(_Strict):
    """A tenant's `agent:` section, validated when a job for that tenant starts."""

    instructions: str = (
        "You are a helpful voice assistant. Answer briefly in plain spoken language. Use the "
        "search_knowledge tool for anything about the organisation, and say so when you "
        "cannot find it."
    )
    greeting: str | None = None
    stt: SttChoice = SttChoice()
    tts: TtsChoice = TtsChoice()
    knowledge: KnowledgeOptions = KnowledgeOptions()
    actions: dict[ActionName, ActionEndpoint] = Field(default_factory=dict)
    specialists: tuple[Specialist, ...] = ()
    vision_attach: VisionAttachOptions = VisionAttachOptions()
    routing: RoutingPolicy = RoutingPolicy()
    notetaker: NoteTakerOptions = NoteTakerOptions()
    video_enabled: bool = True

    @model_validator(mode="after")
    def _specialists_unique(self) -> TenantAgentConfig:
        # each becomes a `transfer_to_<name>` tool; two of one name would fail every session
        names = [s.name for s in self.specialists]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"specialist names must be unique; repeated: {', '.join(dupes)}")
        if "intake" in names:
            raise ValueError("'intake' is the first agent's name; give the specialist another")
        return self


class VisionOverrides(BaseModel):
    """The keys of a tenant's `vision:` section this worker forwards to vision-svc per stream
    (vision-svc validates the whole section itself; other keys are ignored here)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    speaking_fps: float | None = Field(default=None, gt=0)
    idle_fps: float | None = Field(default=None, gt=0)
    hamming_threshold: int | None = Field(default=None, ge=0, le=64)
    tile_hamming_threshold: int | None = Field(default=None, ge=0, le=64)
    max_staleness_s: float | None = Field(default=None, gt=0)
    jpeg_quality: int | None = Field(default=None, ge=1, le=100)
    max_image_side: int | None = Field(default=None, ge=16)
