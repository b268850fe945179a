"""The livekit-agents AgentServer: job admission by tenant, prewarm, load, and the job entrypoint.

One worker process serves many rooms; each job (room) runs in its own process, forked from a
forkserver that preloaded the plugins and models. The settings travel to every job process as
an argument of the (pickled) entrypoint, never through mutable globals.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections import deque
from typing import Any

import psutil
from livekit import rtc
from livekit.agents import AgentServer, JobContext, JobProcess, JobRequest
from livekit.agents.worker import ServerEnvOption
from parley_runtime.server import make_signer
from parley_runtime.telemetry import configure_tracing
from parley_runtime.usage import (
    UsageClientSettings,
    make_usage_recorder,
    ship_orphaned_spools,
)

from . import local_stt
from .config import WorkerSettings
from .log import logger
from .metadata import JobIdentity, MetadataError, parse_job_identity
from .metrics import ACTIVE_SESSIONS, JOBS
from .session import AssistantRuntime, Backends, NoteTakerRuntime, default_session_id
from .speech import voice_problem
from .tenancy import TenantDirectory, TenantProfile, TenantRefused
from .vad import load_vad

AGENT_IDENTITY_PREFIX = "parley-"
ATTR_ROLE = "parley.role"
ATTR_TENANT = "parley.tenant_id"
ATTR_SESSION = "parley.session_id"


class JobRefused(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def admit(
    directory: TenantDirectory, dispatch_metadata: str | None, room_metadata: str | None
) -> tuple[JobIdentity, TenantProfile]:
    """Identify the job and load its tenant, or raise JobRefused with a reason code."""
    try:
        identity = parse_job_identity(dispatch_metadata, room_metadata)
    except MetadataError as exc:
        raise JobRefused(exc.reason, exc.message) from None
    try:
        profile = directory.profile(identity.tenant_id)
    except TenantRefused as exc:
        raise JobRefused(exc.reason, exc.message) from None
    return identity, profile


# ---------------------------------------------------------------------------------------------
# Load


class SessionLoad:
    """Worker load in [0, 1]: the larger of CPU use (moving average) and the share of the session
    cap in use, scaled so that reaching the cap reaches the load threshold exactly."""

    def __init__(
        self, *, max_sessions: int, threshold: float, use_cpu: bool = True, window: int = 5
    ) -> None:
        self._max = max_sessions
        self._threshold = threshold
        self._use_cpu = use_cpu
        self._cpu: deque[float] = deque(maxlen=window)
        self._lock = threading.Lock()
        psutil.cpu_percent(interval=None)  # prime the counter

    def sample_cpu(self) -> float:
        value = psutil.cpu_percent(interval=None) / 100.0
        with self._lock:
            self._cpu.append(value)
            return sum(self._cpu) / len(self._cpu)

    def compute(self, active_sessions: int, cpu: float) -> float:
        sessions = active_sessions / self._max * self._threshold
        return min(1.0, max(cpu, sessions))

    def __call__(self, server: AgentServer) -> float:
        cpu = self.sample_cpu() if self._use_cpu else 0.0
        return self.compute(len(server.active_jobs), cpu)


# ---------------------------------------------------------------------------------------------
# Process set-up and job admission


def configure_telemetry(service_name: str = "agent-worker") -> None:
    """OpenTelemetry from the standard OTEL_* variables (parley_runtime.telemetry), in this
    process: livekit-agents' own spans (turns, LLM and TTS nodes) and the gRPC calls to the
    services then share one trace per turn, exported when an exporter is configured."""
    configure_tracing(service_name)


def prewarm(settings: WorkerSettings, proc: JobProcess) -> None:
    """Runs once in each job process before it takes a job: load the models it will use."""
    # per process: a span exporter's thread does not survive the fork
    configure_telemetry(settings.service_name)
    started = time.perf_counter()
    proc.userdata["vad"] = load_vad(
        runtime=settings.agent_vad_runtime,
        inline=settings.agent_vad_inline,
        skip_silence=settings.agent_vad_skip_silence,
        silence_dbfs=settings.agent_vad_silence_dbfs,
    )
    if settings.agent_preload_stt:
        local_stt.load_whisper(settings.agent_stt_threads)
    logger.info("job process ready", extra={"prewarm_s": round(time.perf_counter() - started, 3)})


_directories: dict[str | None, TenantDirectory] = {}


def tenant_directory(settings: WorkerSettings) -> TenantDirectory:
    directory = _directories.get(settings.tenants_file)
    if directory is None:
        directory = _directories[settings.tenants_file] = TenantDirectory(settings.tenants_file)
    return directory


async def on_request(settings: WorkerSettings, req: JobRequest) -> None:
    """Accept only jobs whose metadata names a known tenant with a valid agent config."""
    log_ctx = {"job_id": req.id, "room": req.room.name, "agent_name": req.agent_name}
    try:
        identity, _ = admit(tenant_directory(settings), req.job.metadata, req.room.metadata)
    except JobRefused as exc:
        JOBS.labels("refused", exc.reason).inc()
        logger.warning("job refused", extra={**log_ctx, "reason": exc.reason,
                                              "detail": exc.message})
        await req.reject()
        return
    JOBS.labels("accepted", identity.role).inc()
    logger.info("job accepted", extra={**log_ctx, "tenant_id": identity.tenant_id,
                                        "role": identity.role})
    await req.accept(
        identity=f"{AGENT_IDENTITY_PREFIX}{identity.role}-{req.id}",
        name=f"Parley {identity.role}",
        attributes={ATTR_ROLE: identity.role, ATTR_TENANT: identity.tenant_id},
    )


async def entrypoint(settings: WorkerSettings, ctx: JobContext) -> None:
    """One job: re-check the tenant (room metadata may have changed), then run its role."""
    log_ctx = {"job_id": ctx.job.id, "room": ctx.job.room.name}
    try:
        identity, profile = admit(
            tenant_directory(settings), ctx.job.metadata, ctx.job.room.metadata
        )
    except JobRefused as exc:
        JOBS.labels("refused", exc.reason).inc()
        logger.warning("job refused at start", extra={**log_ctx, "reason": exc.reason,
                                                      "detail": exc.message})
        ctx.shutdown(reason=f"refused: {exc.reason}")
        return

    session_id = default_session_id(identity, ctx.job.room.sid, ctx.job.room.name)
    ctx.log_context_fields = {**log_ctx, "tenant_id": identity.tenant_id,
                              "session_id": session_id, "role": identity.role}
    signer = make_signer(settings)
    backends = Backends.connect(settings, signer)
    usage_settings = UsageClientSettings().model_copy(
        update={"billing_addr": settings.billing_addr}
    )
    recorder = make_usage_recorder("agent-worker", signer, settings=usage_settings)
    ACTIVE_SESSIONS.labels(identity.role).inc()
    runtime: AssistantRuntime | NoteTakerRuntime
    try:
        if identity.role == "notetaker":
            runtime = NoteTakerRuntime(
                identity=identity, profile=profile, settings=settings, backends=backends,
                recorder=recorder, session_id=session_id, job_id=ctx.job.id,
            )
        else:
            runtime = AssistantRuntime(
                identity=identity, profile=profile, settings=settings, backends=backends,
                recorder=recorder, session_id=session_id, job_id=ctx.job.id,
                room_name=ctx.job.room.name, vad_model=ctx.proc.userdata.get("vad"),
            )
    except Exception:
        ACTIVE_SESSIONS.labels(identity.role).dec()
        await backends.aclose()
        raise

    async def cleanup(reason: str) -> None:
        try:
            await runtime.aclose()
        finally:
            await recorder.close()
            await backends.aclose()
            ACTIVE_SESSIONS.labels(identity.role).dec()
            logger.info("session ended", extra={"reason": reason})

    ctx.add_shutdown_callback(cleanup)
    ctx.proc.userdata[_RUNTIME_KEY] = runtime

    try:
        if isinstance(runtime, NoteTakerRuntime):
            await ctx.connect()
            runtime.start(ctx.room)
            _end_when_users_leave(ctx)
        else:
            await runtime.start(ctx.room, on_close=lambda reason: ctx.shutdown(reason=reason))
        await ctx.room.local_participant.set_attributes({ATTR_SESSION: session_id})
    except Exception as exc:
        # The shutdown callback still releases everything; the worker keeps serving.
        JOBS.labels("failed", type(exc).__name__).inc()
        logger.exception("session failed to start")
        ctx.shutdown(reason=f"failed: {type(exc).__name__}")
        return
    logger.info("session started", extra={"tenant_id": identity.tenant_id,
                                           "user_id": identity.user_id})


_RUNTIME_KEY = "parley_runtime"


async def session_end(ctx: JobContext) -> None:
    """livekit's session-end hook: runs before the job leaves the room, unlike the shutdown
    callbacks, so what the session still has to say to the room (the note-taker's final
    summary, the last turn events) is published here."""
    runtime = ctx.proc.userdata.pop(_RUNTIME_KEY, None)
    if runtime is None:
        return
    try:
        await asyncio.wait_for(runtime.finish(), timeout=30)
    except Exception:
        logger.warning("session end: not everything was published", exc_info=True)


def _end_when_users_leave(ctx: JobContext) -> None:
    """The note-taker leaves when no user is left in the room."""

    def check(_: Any = None) -> None:
        users = [
            p for p in ctx.room.remote_participants.values()
            if p.kind != rtc.ParticipantKind.PARTICIPANT_KIND_AGENT
        ]
        if not users:
            ctx.shutdown(reason="no users left")

    ctx.room.on("participant_disconnected", check)


# ---------------------------------------------------------------------------------------------


def build_server(settings: WorkerSettings, **overrides: Any) -> AgentServer:
    """The AgentServer for these settings (`overrides` go to AgentServer, e.g. ws_url in tests)."""
    load = SessionLoad(
        max_sessions=settings.agent_max_sessions,
        threshold=settings.agent_load_threshold,
        use_cpu=settings.agent_cpu_load,
    )
    idle: int | ServerEnvOption[int] = (
        settings.agent_idle_processes
        if settings.agent_idle_processes is not None
        # livekit-agents counts each job being accepted as load_threshold / idle processes until
        # it runs: with fewer than two idle processes a second simultaneous dispatch (e.g. the
        # note-taker joining with the assistant) is refused.
        else ServerEnvOption(
            dev_default=min(2, settings.agent_max_sessions),
            prod_default=min(4, settings.agent_max_sessions),
        )
    )
    kwargs: dict[str, Any] = {
        "setup_fnc": functools.partial(prewarm, settings),
        "load_fnc": load,
        "load_threshold": settings.agent_load_threshold,
        "num_idle_processes": idle,
        "drain_timeout": settings.agent_drain_timeout_s,
        "job_memory_warn_mb": settings.agent_job_memory_warn_mb,
        "job_memory_limit_mb": settings.agent_job_memory_limit_mb,
        "host": settings.host,
        "port": settings.health_port,
        "prometheus_port": settings.metrics_port or None,
        "prometheus_multiproc_dir": settings.agent_prometheus_dir,
        "shutdown_process_timeout": 30.0,
    }
    kwargs.update(overrides)
    server = AgentServer(**kwargs)
    server.rtc_session(
        functools.partial(entrypoint, settings),
        agent_name=settings.agent_name,
        on_request=functools.partial(on_request, settings),
        on_session_end=session_end,
    )
    if settings.agent_orphan_spool_interval_s > 0 and settings.billing_addr:
        server.on("worker_started", functools.partial(_start_orphan_shipper, settings))
    return server


_background: set[asyncio.Task[None]] = set()


def _start_orphan_shipper(settings: WorkerSettings) -> None:
    """In the main process (livekit emits `worker_started` on its loop)."""
    task = asyncio.get_running_loop().create_task(ship_orphans_forever(settings),
                                                  name="usage-orphan-shipper")
    _background.add(task)
    task.add_done_callback(_background.discard)


async def ship_orphans_forever(settings: WorkerSettings) -> None:
    signer = make_signer(settings)
    usage_settings = UsageClientSettings().model_copy(
        update={"billing_addr": settings.billing_addr}
    )
    while True:
        await asyncio.sleep(settings.agent_orphan_spool_interval_s)
        try:
            shipped = await ship_orphaned_spools(
                "agent-worker", signer, settings=usage_settings,
                timeout_s=settings.agent_usage_flush_timeout_s,
            )
        except Exception:
            logger.exception("shipping left-over usage spools failed; retrying later")
            continue
        if shipped:
            logger.info("left-over usage events shipped", extra={"events": shipped})


def check_startup(settings: WorkerSettings) -> None:
    """Fail fast at start on what would fail every job: auth keys, tenants file, espeak-ng."""
    make_signer(settings)
    directory = tenant_directory(settings)
    try:
        registry = directory._current()
    except TenantRefused as exc:
        raise SystemExit(f"agent-worker cannot start: {exc.message}") from None
    bad = []
    for tenant_id in registry.ids():
        try:
            profile = directory.profile(tenant_id)
        except TenantRefused as exc:
            bad.append(exc.message)
            continue
        tts_choice = profile.agent.tts
        espeak = tts_choice.provider == "espeak"
        if espeak and voice_problem(tts_choice.voice, settings.espeak_binary):
            bad.append(
                f"tenant {tenant_id!r}: tts.voice {tts_choice.voice[:64]!r} is not an espeak-ng "
                "voice (`espeak-ng --voices` lists them); its sessions will speak en-us"
            )
    if bad:
        # Other tenants still work; these ones will be refused with this reason.
        logger.error("tenants with an invalid agent config", extra={"errors": bad})
    logger.info("tenants loaded", extra={"tenants": registry.ids()})
