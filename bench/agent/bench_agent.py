"""bench-agent: concurrent voice+video agent sessions through the real LiveKit server.

What runs: the real `livekit-server` (dev mode, loopback), the agent worker as a child process
exactly as in production (`python -m parley_agent start`: job process per room, Silero VAD,
offline Whisper STT, espeak-ng TTS, RouterLLM over gRPC), and in-process fake back-ends
(router-svc streams a scripted answer after a fixed model TTFT, kb-svc, vision-svc, billing-svc).
Each simulated participant (livekit rtc SDK) joins its own room, publishes a microphone and a
1280x720 screen share (slides that change), and speaks several questions with espeak-ng.

What it measures:
- worker CPU (worker + forkserver + job processes) per session while sessions run, against the
  idle worker measured first in the same run (the baseline), and the sessions one core holds;
- memory per session: unique memory (USS) of each job process, and the worker tree's total;
- turn latency at the worker: end of the user's turn to the first LLM token, and the platform's
  share of it (that minus the model's TTFT as the router reported it), p50/p95; the baseline is
  the same RouterLLM call made directly (no room, no session): the gRPC floor.

The last line is one JSON object: {"bench": "agent", "metrics": {...}}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from livekit.agents import llm
from parley_agent.latency import TurnLatencyTracker
from parley_agent.router_llm import RouterLLM, RouterLLMOptions
from parley_agent.runner import WorkerProcess
from parley_agent.sim import SimulatedUser, create_room, wav_speech
from parley_devstack.livekit import DEV_KEY, DEV_SECRET, livekit_command
from parley_devstack.procs import free_port, stop_pid, wait_port
from parley_runtime.client import make_channel
from parley_runtime.testing import signed_as

QUESTIONS = [
    "What is the laptop policy for new hires?",
    "Can you look at this slide and summarise it?",
    "How many vacation days do contractors get?",
    "What does the onboarding checklist say about security training?",
    "Who approves travel expenses?",
]
SLIDES = [
    "Quarterly revenue grew to 4.2 million",
    "Churn fell to two percent",
    "Hiring plan: twelve engineers in Q3",
]
TENANTS = """
tenants:
  bench:
    agent:
      greeting: "Hello."
      notetaker: {enabled: false}
"""


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


class TreeSampler:
    """CPU seconds and memory of a process and all its descendants."""

    def __init__(self, pid: int) -> None:
        self.root = psutil.Process(pid)
        self._seen: dict[int, tuple[float, int]] = {}
        self._dead_cpu = 0.0

    def procs(self) -> list[psutil.Process]:
        try:
            return [self.root, *self.root.children(recursive=True)]
        except psutil.Error:
            return []

    def cpu_seconds(self) -> float:
        """CPU of the tree so far, counting processes too short-lived to be sampled (espeak-ng).

        A child reaped by a process of the tree is in its parent's children times; one that
        vanished any other way is counted at its last sample.
        """
        alive: dict[int, tuple[float, int]] = {}
        reaped = 0.0
        for p in self.procs():
            try:
                t = p.cpu_times()
                alive[p.pid] = (t.user + t.system, p.ppid())
                reaped += t.children_user + t.children_system
            except psutil.Error:
                continue
        for pid, (last, ppid) in self._seen.items():
            if pid not in alive and ppid not in alive:
                self._dead_cpu += last
        self._seen = alive
        return sum(own for own, _ in alive.values()) + reaped + self._dead_cpu

    def memory(self) -> tuple[float, list[tuple[float, float]]]:
        """(total PSS MB of the tree, [(USS MB, PSS MB)] of each job process).

        Job processes are the forkserver's children; PSS counts shared (copy-on-write) pages
        once across processes, so it is the fair per-process share.
        """
        pss_total, jobs = 0.0, []
        for p in self.procs():
            try:
                info = p.memory_full_info()
                pss_total += info.pss / 2**20
                parent = p.parent()
                if parent is not None and "forkserver" in " ".join(parent.cmdline()):
                    jobs.append((info.uss / 2**20, info.pss / 2**20))
            except psutil.Error:
                continue
        return pss_total, jobs


async def direct_floor(router_addr: str, n: int = 30) -> list[float]:
    """Platform share of the same RouterLLM call made directly, with no room or session (ms):
    the gRPC floor, measured the way the session measures it."""
    channel = make_channel(router_addr, signer=signed_as("agent-worker"))
    tracker = TurnLatencyTracker()
    router = RouterLLM(channel=channel, observer=tracker,
                       options=RouterLLMOptions(session_id="floor", tenant_id="bench"))
    try:
        for i in range(n):
            ctx = llm.ChatContext()
            ctx.add_message(role="system", content="You are brief.")
            ctx.add_message(role="user", content=f"hello {i}")
            tracker.mark_turn_end()
            async with router.chat(chat_ctx=ctx) as stream:
                async for _ in stream:
                    pass
    finally:
        await channel.close()
    return [s.platform_s * 1000 for s in tracker.samples]


async def run_session(
    url: str, index: int, turns: int, fps: float, width: int, height: int,
    results: list[dict[str, Any]], ready: asyncio.Barrier, go: asyncio.Barrier,
    done: asyncio.Barrier, mic_noise_dbfs: float | None = None,
    utterances: Sequence[tuple[np.ndarray, int]] = (),
) -> None:
    room = f"bench-{index}-{uuid.uuid4().hex[:6]}"
    await create_room(url, DEV_KEY, DEV_SECRET, room=room,
                      metadata={"tenant_id": "bench", "user_id": f"user-{index}",
                                "session_id": room},
                      dispatches=[("parley-agent", {})])
    async with SimulatedUser.join(url, DEV_KEY, DEV_SECRET, room=room,
                                  identity=f"user-{index}",
                                  mic_noise_dbfs=mic_noise_dbfs) as user:
        await user.wait_for_agent(timeout=90)
        await user.publish_microphone()
        if fps > 0:
            await user.start_screen_share(SLIDES, fps=fps, width=width, height=height)
        await user.wait_for_turn(role="assistant", timeout=60)  # the greeting
        await ready.wait()  # every session streaming: the harness measures the base cost
        await go.wait()
        voiced_before = user.agent_voiced_s
        answered = 0
        for t in range(turns):
            user.show_slide(t)
            before = len(user.turn_events)
            if utterances:
                pcm, rate = utterances[(index + t) % len(utterances)]
                speech_end = await user.play_pcm(pcm, rate)
            else:
                speech_end = await user.say(QUESTIONS[(index + t) % len(QUESTIONS)])
            try:
                ev = await user.wait_for_turn(role="assistant", after=before, timeout=60,
                                              predicate=lambda e: "platform_ms" in e)
                answered += 1
            except TimeoutError:
                ev = None
            await asyncio.sleep(1.0)
            if ev is not None:
                heard = user.agent_voice_after(speech_end)
                results.append({**ev, "voice_ms": None if heard is None else heard * 1000})
        results.append({"session_done": room, "answered": answered,
                        "agent_voiced_s": user.agent_voiced_s - voiced_before})
        await done.wait()  # stay in the room until the harness has read the CPU counters


async def main(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    work = Path(tempfile.mkdtemp(prefix="bench-agent-"))
    lk_port, tcp, udp = free_port(), free_port(), free_port()
    lk_log = open(work / "livekit.log", "wb")  # noqa: SIM115
    lk = subprocess.Popen(livekit_command(lk_port, tcp, udp), stdout=lk_log,
                          stderr=subprocess.STDOUT)
    url = f"ws://127.0.0.1:{lk_port}"
    # The fake back-ends get their own process: sharing the participants' event loop would add
    # the harness's own delays to the router's answers.
    (work / "docs.json").write_text(json.dumps({"bench": [
        {"document_id": "laptops", "title": "Laptop policy",
         "text": "New hires get a 14-inch laptop within 3 days."},
        {"document_id": "travel", "title": "Travel",
         "text": "Travel expenses are approved by the team lead."},
    ]}))
    # router-svc alone in one process (its answer times are what the platform share subtracts),
    # vision/kb/billing in another
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "parley_agent.testing", "--services", group,
             "--ttft-ms", str(args.model_ttft_ms), "--docs-json", str(work / "docs.json")],
            stdout=subprocess.PIPE, stderr=open(work / f"fakes-{i}.log", "wb"),  # noqa: SIM115
        )
        for i, group in enumerate(("router", "vision,kb,billing"))
    ]
    fake_env: dict[str, str] = {}
    for proc in procs:
        assert proc.stdout is not None
        fake_env.update(json.loads(proc.stdout.readline()))
    fake_stats: dict[str, Any] = {}
    worker: WorkerProcess | None = None
    try:
        wait_port(lk_port, 120, "livekit-server")
        (work / "tenants.yaml").write_text(TENANTS)
        health, metrics = free_port(), free_port()
        env = {
            **fake_env,
            "LIVEKIT_URL": url, "LIVEKIT_API_KEY": DEV_KEY, "LIVEKIT_API_SECRET": DEV_SECRET,
            "PARLEY_TENANTS_FILE": str(work / "tenants.yaml"),
            "PARLEY_HEALTH_PORT": str(health), "PARLEY_METRICS_PORT": str(metrics),
            "PARLEY_AGENT_MAX_SESSIONS": str(args.sessions + 1),
            "PARLEY_AGENT_IDLE_PROCESSES": str(args.sessions),
            "PARLEY_AGENT_CPU_LOAD": "false",
            "PARLEY_AGENT_PROMETHEUS_DIR": str(work / "prom"),
            "PARLEY_USAGE_SPOOL_DIR": str(work / "spool"),
            "PARLEY_LOG_LEVEL": "WARNING",
            "PARLEY_AGENT_TURN_DETECTION": args.turn_detection,
        }
        worker = WorkerProcess(env, log_path=work / "worker.log").start()
        worker.wait_registered(120)
        assert worker.proc is not None
        sampler = TreeSampler(worker.proc.pid)

        # idle baseline: every idle job process prewarmed, no session
        await asyncio.sleep(args.settle_s)
        idle_rss, idle_jobs = sampler.memory()
        c0, t0 = sampler.cpu_seconds(), time.monotonic()
        await asyncio.sleep(5)
        idle_cores = (sampler.cpu_seconds() - c0) / (time.monotonic() - t0)

        floor = await direct_floor(fake_env["ROUTER_ADDR"])

        results: list[dict[str, Any]] = []
        peak_rss, peak_jobs = idle_rss, idle_jobs
        ready, go, done = (asyncio.Barrier(args.sessions + 1) for _ in range(3))

        async def sample_memory() -> None:
            nonlocal peak_rss, peak_jobs
            while True:
                await asyncio.sleep(2)
                rss, jobs = sampler.memory()
                if rss > peak_rss:
                    peak_rss, peak_jobs = rss, jobs

        mem_task = asyncio.create_task(sample_memory())
        utterances = [wav_speech(path) for path in args.utterance_wav]
        sessions = asyncio.gather(*[
            run_session(url, i, args.turns, args.fps, args.width, args.height, results,
                        ready, go, done, args.mic_noise_dbfs, utterances)
            for i in range(args.sessions)
        ])
        try:
            await asyncio.wait_for(ready.wait(), 180)
            # phase 1: every session connected, audio + screen share streaming, nobody talks
            # (after the replacement idle processes have prewarmed)
            await asyncio.sleep(args.settle_s)
            c1, t1 = sampler.cpu_seconds(), time.monotonic()
            await asyncio.sleep(args.stream_s)
            streaming_cores = (sampler.cpu_seconds() - c1) / (time.monotonic() - t1)
            # phase 2: conversation
            c2, t2 = sampler.cpu_seconds(), time.monotonic()
            psutil.cpu_percent(interval=None)
            await go.wait()
            await asyncio.wait_for(done.wait(), 120 + 60 * args.turns)
            busy_cores = (sampler.cpu_seconds() - c2) / (time.monotonic() - t2)
            machine_busy_pct = psutil.cpu_percent(interval=None)
            wall = time.monotonic() - t2
            await sessions
        finally:
            mem_task.cancel()
            await asyncio.gather(mem_task, return_exceptions=True)

        turns = [r for r in results if "platform_ms" in r]
        answered = sum(r["answered"] for r in results if "session_done" in r)
        # the agent's speech as the participants heard it (frames above a low RMS): the replies
        # the turn cost pays for
        voiced = sum(r["agent_voiced_s"] for r in results if "session_done" in r)
        platform = [r["platform_ms"] for r in turns]
        # the participant's own clock: the end of its speech (handed to its audio source, at
        # most 50 ms ahead of the wire) to the first of the agent's speech it hears
        voice = [r["voice_ms"] for r in turns if r.get("voice_ms") is not None]
        first = [r["first_token_ms"] for r in turns]
        model = [r["model_ttft_ms"] for r in turns]
        pre_rpc = [r["pre_rpc_ms"] for r in turns]
        rpc = [r["rpc_overhead_ms"] for r in turns]
        # Per session: the streaming cost plus each turn's cost (STT, LLM stream, TTS) at a
        # conversational pace of one user turn every `turn_every_s` seconds.
        stream_per_session = max(0.0, (streaming_cores - idle_cores) / args.sessions)
        turn_cpu_s = max(0.0, (busy_cores - streaming_cores) * wall) / max(1, answered)
        per_session_cores = max(1e-6, stream_per_session + turn_cpu_s / args.turn_every_s)
        cpu_count = psutil.cpu_count() or 1
        busiest = sorted(peak_jobs, reverse=True)[: args.sessions]
        idle_job = min(idle_jobs) if idle_jobs else (0.0, 0.0)
        metrics_out = {
            "sessions": args.sessions,
            "turns_requested": args.sessions * args.turns,
            "turns_answered": answered,
            "video": f"{args.width}x{args.height}@{args.fps:g}fps screen share + microphone",
            "worker_cores_idle": round(idle_cores, 3),
            "worker_cores_streaming": round(streaming_cores, 3),
            "worker_cores_conversation": round(busy_cores, 3),
            "streaming_cores_per_session": round(stream_per_session, 4),
            "cpu_seconds_per_turn": round(turn_cpu_s, 3),
            "agent_speech_heard_s_per_turn": round(voiced / max(1, answered), 2),
            "turn_every_s": args.turn_every_s,
            "turn_detection": args.turn_detection,
            "mic_noise_dbfs": args.mic_noise_dbfs,
            "cores_per_session": round(per_session_cores, 3),
            "sessions_per_core": round(1 / per_session_cores, 1),
            "machine_cores": cpu_count,
            "machine_cpu_busy_pct_talking": machine_busy_pct,
            "memory_idle_tree_pss_mb": round(idle_rss, 1),
            "memory_peak_tree_pss_mb": round(peak_rss, 1),
            "memory_per_session_uss_mb": (
                round(statistics.mean(u for u, _ in busiest), 1) if busiest else None
            ),
            "memory_per_session_pss_mb": (
                round(statistics.mean(p for _, p in busiest), 1) if busiest else None
            ),
            "memory_idle_job_process_uss_mb": round(idle_job[0], 1),
            "turn_first_token_p50_ms": round(pct(first, 0.5), 2),
            "turn_first_token_p95_ms": round(pct(first, 0.95), 2),
            "model_ttft_p50_ms": round(pct(model, 0.5), 2),
            "platform_share_p50_ms": round(pct(platform, 0.5), 2),
            "platform_share_p95_ms": round(pct(platform, 0.95), 2),
            "platform_share_max_ms": round(max(platform), 2) if platform else None,
            "platform_pre_rpc_p50_ms": round(pct(pre_rpc, 0.5), 2),
            "platform_pre_rpc_p95_ms": round(pct(pre_rpc, 0.95), 2),
            "platform_rpc_p50_ms": round(pct(rpc, 0.5), 2),
            "platform_rpc_p95_ms": round(pct(rpc, 0.95), 2),
            "voice_to_voice_p50_ms": round(pct(voice, 0.5), 1),
            "voice_to_voice_p95_ms": round(pct(voice, 0.95), 1),
            "voice_to_voice_turns": len(voice),
            "baseline_direct_platform_p50_ms": round(pct(floor, 0.5), 2),
            "baseline_direct_platform_p95_ms": round(pct(floor, 0.95), 2),
            "wall_s": round(wall, 1),
        }
        return metrics_out, fake_stats
    finally:
        if worker is not None:
            worker.stop(30)
        for proc in procs:
            proc.terminate()
            out, _ = proc.communicate(timeout=30)
            if out.strip():
                for key, value in json.loads(out.strip().splitlines()[-1]).items():
                    fake_stats[key] = fake_stats.get(key, 0) + value
        stop_pid(lk.pid)
        lk_log.close()


def print_table(m: dict[str, Any]) -> None:
    def ms(*keys: str) -> str:
        return " / ".join(str(m[k]) for k in keys) + " ms"

    rows = [
        ("sessions (voice + video)", f"{m['sessions']}  ({m['video']})"),
        ("microphone between utterances",
         "digital silence" if m["mic_noise_dbfs"] is None
         else f"room noise at {m['mic_noise_dbfs']:g} dBFS RMS"),
        ("turns answered", f"{m['turns_answered']} / {m['turns_requested']}"),
        ("worker CPU idle (baseline)", f"{m['worker_cores_idle']} cores"),
        ("worker CPU, sessions streaming (no talk)", f"{m['worker_cores_streaming']} cores"),
        ("worker CPU, sessions talking", f"{m['worker_cores_conversation']} cores"),
        ("streaming CPU per session", f"{m['streaming_cores_per_session']} cores"),
        ("CPU per user turn (STT+LLM+TTS)", f"{m['cpu_seconds_per_turn']} CPU-s"),
        ("agent speech heard per turn", f"{m['agent_speech_heard_s_per_turn']} s"),
        (f"CPU per session (a turn every {m['turn_every_s']:g} s)",
         f"{m['cores_per_session']} cores"),
        ("sessions per core (projected)", f"{m['sessions_per_core']}"),
        ("whole machine CPU busy while talking",
         f"{m['machine_cpu_busy_pct_talking']}% of {m['machine_cores']} cores "
         "(LiveKit, participants, fakes and worker share it)"),
        ("memory per session: job USS / PSS",
         f"{m['memory_per_session_uss_mb']} / {m['memory_per_session_pss_mb']} MB"),
        ("idle job process USS", f"{m['memory_idle_job_process_uss_mb']} MB"),
        ("worker tree PSS idle / peak",
         f"{m['memory_idle_tree_pss_mb']} / {m['memory_peak_tree_pss_mb']} MB"),
        ("turn end -> first token p50 / p95",
         ms("turn_first_token_p50_ms", "turn_first_token_p95_ms")),
        ("model TTFT (router-reported) p50", ms("model_ttft_p50_ms")),
        ("platform share p50 / p95 / max",
         ms("platform_share_p50_ms", "platform_share_p95_ms", "platform_share_max_ms")),
        ("  of which turn end -> RPC start p50 / p95",
         ms("platform_pre_rpc_p50_ms", "platform_pre_rpc_p95_ms")),
        ("  of which gRPC + router p50 / p95", ms("platform_rpc_p50_ms", "platform_rpc_p95_ms")),
        ("baseline: direct RouterLLM call, platform p50 / p95",
         ms("baseline_direct_platform_p50_ms", "baseline_direct_platform_p95_ms")),
        ("user stops speaking -> agent heard p50 / p95",
         ms("voice_to_voice_p50_ms", "voice_to_voice_p95_ms")
         + f" ({m['voice_to_voice_turns']} turns; endpointing, STT, model, TTS, playout)"),
        ("vision frames sent / kept", f"{m['vision_frames_sent']} / {m['vision_frames_kept']}"),
    ]
    width = max(len(r[0]) for r in rows)
    print("\nbench-agent: voice+video sessions through the real LiveKit server")
    for k, v in rows:
        print(f"  {k.ljust(width)}  {v}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    env = os.environ.get
    parser.add_argument("--sessions", type=int, default=int(env("BENCH_AGENT_SESSIONS", "2")))
    parser.add_argument("--turns", type=int, default=int(env("BENCH_AGENT_TURNS", "4")))
    parser.add_argument("--fps", type=float, default=5.0)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--model-ttft-ms", type=float, default=150.0)
    parser.add_argument("--turn-detection", default="eot-local",
                        choices=["vad", "eot-local", "stt"])
    parser.add_argument("--settle-s", type=float, default=8.0)
    parser.add_argument("--stream-s", type=float, default=30.0,
                        help="seconds of the streaming-only phase")
    parser.add_argument("--mic-noise-dbfs", type=float, default=None,
                        help="room noise on each participant's microphone (RMS dBFS, e.g. -50) "
                             "instead of digital silence between utterances")
    parser.add_argument("--utterance-wav", action="append", default=[], metavar="WAV",
                        help="a recorded question (16-bit mono WAV) the participants say instead "
                             "of espeak-ng's; repeat for several, used in turn")
    parser.add_argument("--turn-every-s", type=float, default=15.0,
                        help="conversational pace assumed for the sessions-per-core projection")
    ns = parser.parse_args()
    result, fake_stats = asyncio.run(main(ns))
    result["vision_frames_sent"] = fake_stats.get("vision_frames")
    result["vision_frames_kept"] = fake_stats.get("vision_kept")
    print_table(result)
    print(json.dumps({"bench": "agent", "metrics": result}))
    sys.exit(0 if result["turns_answered"] else 1)
