"""Bench: router-svc against calling the provider directly, and against LiteLLM's proxy.

Run from the repo root:  .venv/bin/python bench/router/run.py [--full] [--no-litellm]

Everything runs on this machine, in the same run:
- the provider emulator (Anthropic Messages API, 20 ms to first token) and the bench client
  share one core; the system under test (router-svc, then LiteLLM) is pinned to the other;
- "direct": the Anthropic SDK (AsyncAnthropic) streaming from the emulator: the baseline;
- "router": a gRPC StreamChat through router-svc, which routes (complexity estimate, tenant
  policy, Redis rate limit, breaker) and streams from the emulator with the same SDK;
- "litellm": LiteLLM proxy 1.108.7 (`litellm[proxy]`, installed on first use into
  ~/.cache/parley/bench-venvs, never into the workspace) in front of the same emulator,
  called with the same Anthropic SDK on its /v1/messages endpoint.

Measured: time to first token (p50/p99) at 1 and 100 concurrent streams and the latency each
adds over "direct"; turns/s at 64 streams in flight with the server pinned to one core; server
CPU per turn (from /proc) and RSS; Redis rate-limit decisions/s; classifier accuracy vs the
seed heuristic. Prints a table, then one JSON line {"bench": "router", "metrics": {...}}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "services" / "router-svc" / "src"))

import anthropic  # noqa: E402
from parley.router.v1 import router_pb2, router_pb2_grpc  # noqa: E402
from parley_devstack.procs import free_port, stop_pid, wait_port  # noqa: E402
from parley_devstack.redis import RedisProcess  # noqa: E402
from parley_runtime.auth import TokenSigner  # noqa: E402
from parley_runtime.client import make_channel  # noqa: E402

LITELLM_VERSION = "1.108.7"
VENV_DIR = Path(os.environ.get("PARLEY_CACHE_DIR", Path.home() / ".cache" / "parley")) \
    / "bench-venvs" / f"litellm-{LITELLM_VERSION}"
MODEL = "claude-haiku-4-5"
EMULATOR_TTFT_MS = 20
BENCH_KEYS = {
    "bench-client": "bench-client-secret-0123456789abcdef0123456789ab",
    "router-svc": "router-svc-bench-secret-0123456789abcdef012345",
}
QUESTION = "when does the store open on sunday"
SYSTEM = "You are the assistant of a small shop. The store opens at 9am on Sunday."


@dataclass(frozen=True)
class Sizes:
    seq: int
    waves: int
    throughput_s: float
    warmup: int


QUICK = Sizes(seq=150, waves=4, throughput_s=5.0, warmup=40)
FULL = Sizes(seq=800, waves=15, throughput_s=15.0, warmup=100)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def cores() -> tuple[int, int]:
    avail = sorted(os.sched_getaffinity(0))
    if len(avail) >= 2:
        return avail[0], avail[1]
    return avail[0], avail[0]


# ---------------------------------------------------------------------------------------------
# Processes (started here, stopped here, by PID)


def proc_cpu_s(pid: int) -> float:
    """utime + stime of a process and its live children (seconds)."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for p in [pid, *children(pid)]:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            pass
    return total


def children(pid: int) -> list[int]:
    try:
        out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    except OSError:
        return []
    kids = [int(x) for x in out.split()]
    return kids + [g for k in kids for g in children(k)]


def rss_mib(pid: int) -> float:
    total = 0
    for p in [pid, *children(pid)]:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


# On a shared machine other work competes for the two cores; as root, every process of the
# bench (client, emulator, router, LiteLLM alike) runs at a higher CFS priority so the figures
# measure the code rather than the neighbours. Same treatment for every contestant.
NICE = ["nice", "-n", "-10"] if os.geteuid() == 0 else []


def start(cmd: list[str], *, core: int, env: dict[str, str] | None = None,
          log: Path) -> subprocess.Popen[bytes]:
    full_env = {**os.environ, **(env or {})}
    fh = open(log, "wb")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen([*NICE, "taskset", "-c", str(core), *cmd], env=full_env, stdout=fh,
                            stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    for kid in reversed(children(proc.pid)):
        stop_pid(kid, timeout=5)
    stop_pid(proc.pid, timeout=10)


# ---------------------------------------------------------------------------------------------
# Clients


class DirectClient:
    """The Anthropic SDK straight at a server speaking the Messages API."""

    def __init__(self, base_url: str, api_key: str) -> None:
        self.client = anthropic.AsyncAnthropic(api_key=api_key, base_url=base_url, max_retries=0,
                                               timeout=30.0)

    async def ttft(self) -> float:
        start = time.perf_counter()
        first = 0.0
        stream = await self.client.messages.create(
            model=MODEL, max_tokens=200, stream=True, system=SYSTEM,
            messages=[{"role": "user", "content": QUESTION}],
        )
        async for event in stream:
            if not first and event.type == "content_block_delta":
                first = time.perf_counter() - start
        if not first:
            raise RuntimeError("no text received")
        return first

    async def close(self) -> None:
        await self.client.close()


class RouterClient:
    """A gRPC StreamChat client, signed like any Parley service."""

    def __init__(self, port: int) -> None:
        signer = TokenSigner(service="bench-client", kid="bench-client",
                             secret=BENCH_KEYS["bench-client"])
        self.channel = make_channel(f"127.0.0.1:{port}", signer=signer)
        self.stub = router_pb2_grpc.RouterServiceStub(self.channel)
        self.n = 0

    async def ttft(self) -> float:
        self.n += 1
        req = router_pb2.StreamChatRequest(
            session_id="bench", turn_id=f"bench-{os.getpid()}-{self.n}", max_output_tokens=200,
            messages=[
                router_pb2.Message(role=router_pb2.ROLE_SYSTEM,
                                   parts=[router_pb2.ContentPart(text=SYSTEM)]),
                router_pb2.Message(role=router_pb2.ROLE_USER,
                                   parts=[router_pb2.ContentPart(text=QUESTION)]),
            ],
            hints=router_pb2.RoutingHints(model_id=MODEL),
        )
        start = time.perf_counter()
        first = 0.0
        done = False
        async for ev in self.stub.StreamChat(req, metadata=[("x-parley-tenant-id", "bench")],
                                             timeout=30):
            kind = ev.WhichOneof("event")
            if not first and kind == "text_delta":
                first = time.perf_counter() - start
            elif kind == "completion":
                done = True
        if not first or not done:
            raise RuntimeError("incomplete turn")
        return first

    async def close(self) -> None:
        await self.channel.close()


Turn = Callable[[], Awaitable[float]]


async def ttft_pair(base: Turn, other: Turn, sizes: Sizes) -> tuple[dict[str, float], ...]:
    """TTFT of `base` and `other`, interleaved so both see the same background load.

    c1: alternating single turns; c100: alternating waves of 100 concurrent turns. Failed
    turns are counted, not timed.
    """
    for _ in range(sizes.warmup):
        await base()
        await other()
    samples: dict[str, list[list[float]]] = {"c1": [[], []], "c100": [[], []]}
    errors = [0, 0]

    async def timed(fn: Turn, i: int) -> float | None:
        try:
            return await fn() * 1000
        except Exception:
            errors[i] += 1
            return None

    for _ in range(sizes.seq):
        for i, fn in enumerate((base, other)):
            x = await timed(fn, i)
            if x is not None:
                samples["c1"][i].append(x)
    for _ in range(sizes.waves):
        for i, fn in enumerate((base, other)):
            wave = await asyncio.gather(*(timed(fn, i) for _ in range(100)))
            samples["c100"][i].extend(x for x in wave if x is not None)
    out = []
    for i in range(2):
        c1, c100 = samples["c1"][i], samples["c100"][i]
        out.append({
            "c1_p50": statistics.median(c1), "c1_p99": pct(c1, 0.99),
            "c100_p50": statistics.median(c100), "c100_p99": pct(c100, 0.99),
            "errors": errors[i],
        })
    return tuple(out)


async def throughput(turn: Turn, pid: int | None, seconds: float,
                     in_flight: int = 64) -> dict[str, float]:
    stop_at = time.perf_counter() + seconds
    count = errors = 0

    async def worker() -> None:
        nonlocal count, errors
        while time.perf_counter() < stop_at:
            try:
                await turn()
                count += 1
            except Exception:
                errors += 1

    cpu0 = proc_cpu_s(pid) if pid else 0.0
    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    wall = time.perf_counter() - t0
    cpu = (proc_cpu_s(pid) - cpu0) if pid else 0.0
    return {
        "turns_per_s": count / wall,
        "cpu_ms_per_turn": cpu * 1000 / max(count, 1),
        "core_utilisation": cpu / wall,
        "errors": errors,
        "rss_mib": rss_mib(pid) if pid else 0.0,
    }


# ---------------------------------------------------------------------------------------------
# Parts


def tenants_file(tmp: Path) -> Path:
    path = tmp / "tenants.yaml"
    path.write_text(
        "tenants:\n"
        "  bench:\n"
        "    plan: enterprise\n"
        "    router:\n"
        "      rate_limits: {requests_per_minute: 100000000, tokens_per_minute: 1.0e12}\n",
        encoding="utf-8",
    )
    return path


def start_router(tmp: Path, core: int, emulator_url: str, redis_url: str) -> tuple[Any, int]:
    port = free_port()
    env = {
        "PARLEY_TENANTS_FILE": str(tenants_file(tmp)),
        "PARLEY_GRPC_PORT": str(port),
        "PARLEY_METRICS_PORT": "0",
        "PARLEY_LOG_LEVEL": "WARNING",
        "PARLEY_AUTH_KEYS": json.dumps(BENCH_KEYS),
        "PARLEY_DRAIN_SECONDS": "0",
        "REDIS_URL": redis_url,
        "ANTHROPIC_API_KEY": "bench-key",
        "ANTHROPIC_BASE_URL": emulator_url,
        "GEMINI_API_KEY": "bench-key",
        "GOOGLE_GEMINI_BASE_URL": emulator_url,
        "OTEL_TRACES_EXPORTER": "none",
    }
    env.pop("BILLING_ADDR", None)
    proc = start([sys.executable, "-m", "parley_router"], core=core, env=env,
                 log=tmp / "router.log")
    wait_port(port, 60, "router-svc")
    return proc, port


def ensure_litellm() -> Path | None:
    """The LiteLLM proxy binary in its own cached venv (installed on first use)."""
    binary = VENV_DIR / "bin" / "litellm"
    if binary.exists():
        return binary
    uv = shutil.which("uv")
    try:
        if uv:
            subprocess.run([uv, "venv", str(VENV_DIR), "--python", "3.11", "-q"], check=True)
            subprocess.run([uv, "pip", "install", "--python", str(VENV_DIR / "bin" / "python"),
                            "-q", f"litellm[proxy]=={LITELLM_VERSION}"], check=True)
        else:
            subprocess.run([sys.executable, "-m", "venv", str(VENV_DIR)], check=True)
            subprocess.run([str(VENV_DIR / "bin" / "pip"), "install", "-q",
                            f"litellm[proxy]=={LITELLM_VERSION}"], check=True)
    except (subprocess.CalledProcessError, OSError) as exc:
        print(f"LiteLLM could not be installed: {exc}", file=sys.stderr)
        shutil.rmtree(VENV_DIR, ignore_errors=True)
        return None
    return binary if binary.exists() else None


def start_litellm(binary: Path, tmp: Path, core: int, emulator_url: str) -> tuple[Any, int, str]:
    port = free_port()
    master = "sk-bench-" + os.urandom(24).hex()
    config = tmp / "litellm.yaml"
    config.write_text(
        "model_list:\n"
        f"  - model_name: {MODEL}\n"
        "    litellm_params:\n"
        f"      model: anthropic/{MODEL}\n"
        f"      api_base: {emulator_url}\n"
        "      api_key: bench-key\n"
        "litellm_settings:\n"
        "  num_retries: 0\n"
        "  request_timeout: 30\n"
        "general_settings:\n"
        "  disable_spend_logs: true\n",
        encoding="utf-8",
    )
    env = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_MASTER_KEY": master,
           "LITELLM_LOG": "ERROR"}
    proc = start([str(binary), "--config", str(config), "--port", str(port),
                  "--num_workers", "1"], core=core, env=env, log=tmp / "litellm.log")
    wait_port(port, 240, "litellm proxy")
    return proc, port, master


async def ratelimit_decisions(redis_url: str, seconds: float) -> dict[str, float]:
    """Limiter decisions/s from this process: over the router's pipelined connection
    ("seq", "c64"), and through redis-py's pool ("redispy_seq", "redispy_c64")."""
    from parley_router.policy import PlanLimits
    from parley_router.ratelimit import RedisTokenBuckets, make_redis
    from parley_router.redis_pipe import PipelinedRedis

    client = make_redis(redis_url, timeout_s=2.0)
    limits = PlanLimits(requests_per_minute=1e9, tokens_per_minute=1e12)
    out: dict[str, float] = {}
    for prefix, pipe in (("", PipelinedRedis(redis_url, connect_timeout_s=2.0)),
                         ("redispy_", None)):
        buckets = RedisTokenBuckets(client, op_timeout_s=2.0, pipe=pipe)

        async def worker(stop_at: float, buckets: RedisTokenBuckets = buckets) -> int:
            n = 0
            while time.perf_counter() < stop_at:
                await buckets.acquire("bench", "anthropic", limits, 100)
                n += 1
            return n

        for label, concurrency in (("seq", 1), ("c64", 64)):
            t0 = time.perf_counter()
            stop_at = t0 + seconds / 4
            counts = await asyncio.gather(*(worker(stop_at) for _ in range(concurrency)))
            out[prefix + label] = sum(counts) / (time.perf_counter() - t0)
        await buckets.aclose()
    await client.aclose()
    return out


def classifier() -> dict[str, float]:
    from parley_router.complexity import LinearComplexityModel, SeedHeuristic
    from parley_router.complexity_train import accuracy, load_examples

    examples = load_examples(ROOT / "services" / "router-svc" / "eval" / "complexity.jsonl")
    test = [ex for ex in examples if ex.split == "test"]
    model = LinearComplexityModel.load()
    samples = []
    for _ in range(5):
        for ex in examples:
            t = time.thread_time_ns()  # CPU time: what the estimate costs per turn
            model.estimate(ex.text)
            samples.append((time.thread_time_ns() - t) / 1e3)
    return {"seed": accuracy(SeedHeuristic(), test), "model": accuracy(model, test),
            "p99_us": pct(samples, 0.99), "n_test": len(test)}


# ---------------------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> dict[str, Any]:
    sizes = FULL if args.full else QUICK
    sut_core, aux_core = cores()
    os.sched_setaffinity(0, {aux_core})
    if NICE:
        os.nice(-10)
    tmp = Path(tempfile.mkdtemp(prefix="parley-bench-router-"))
    redis = RedisProcess(tmp / "redis", free_port())
    redis.start()
    emu_port = free_port()
    emulator = start([sys.executable, "-m", "parley_emulator", "--port", str(emu_port),
                      "--ttft-ms", str(EMULATOR_TTFT_MS)], core=aux_core, log=tmp / "emu.log")
    results: dict[str, Any] = {"sizes": sizes.__dict__, "cores": [sut_core, aux_core]}
    procs: list[Any] = [emulator]
    try:
        wait_port(emu_port, 30, "emulator")
        emu_url = f"http://127.0.0.1:{emu_port}"
        print(f"emulator {emu_url} (ttft {EMULATOR_TTFT_MS} ms), system under test on core "
              f"{sut_core}, client+emulator on core {aux_core}", flush=True)

        direct = DirectClient(emu_url, "bench-key")
        router, port = start_router(tmp, sut_core, emu_url, redis.url)
        procs.append(router)
        rc = RouterClient(port)
        results["direct"], results["router"] = await ttft_pair(direct.ttft, rc.ttft, sizes)
        print("direct:", _fmt(results["direct"]), flush=True)
        print("router:", _fmt(results["router"]), flush=True)
        results["router_tp"] = await throughput(rc.ttft, router.pid, sizes.throughput_s)
        print("router throughput:", _fmt(results["router_tp"]), flush=True)
        await rc.close()
        stop(router)
        procs.remove(router)

        results["ratelimit"] = await ratelimit_decisions(redis.url, sizes.throughput_s)
        print("rate-limit decisions/s:", _fmt(results["ratelimit"]), flush=True)

        if args.no_litellm:
            results["litellm_skipped"] = "disabled by --no-litellm"
        else:
            binary = ensure_litellm()
            if binary is None:
                results["litellm_skipped"] = "could not be installed (see stderr)"
            else:
                try:
                    ll, ll_port, master = start_litellm(binary, tmp, sut_core, emu_url)
                except TimeoutError as exc:
                    results["litellm_skipped"] = f"did not start: {exc}"
                else:
                    procs.append(ll)
                    lc = DirectClient(f"http://127.0.0.1:{ll_port}", master)
                    results["direct_ll"], results["litellm"] = await ttft_pair(
                        direct.ttft, lc.ttft, sizes)
                    print("direct (LiteLLM phase):", _fmt(results["direct_ll"]), flush=True)
                    print("litellm:", _fmt(results["litellm"]), flush=True)
                    results["litellm_tp"] = await throughput(lc.ttft, ll.pid, sizes.throughput_s)
                    print("litellm throughput:", _fmt(results["litellm_tp"]), flush=True)
                    await lc.close()
                    stop(ll)
                    procs.remove(ll)
        await direct.close()
        results["classifier"] = classifier()
    finally:
        for p in procs:
            stop(p)
        redis.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return results


def _fmt(d: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in d.items())


TTFT_KEYS = ("c1_p50", "c1_p99", "c100_p50", "c100_p99")


def report(r: dict[str, Any]) -> None:
    d, ro = r["direct"], r["router"]
    ll = r.get("litellm")
    tp, ltp = r["router_tp"], r.get("litellm_tp")
    rows = [("direct (Anthropic SDK)", d, None, None)]
    rows.append(("router-svc", ro, tp, {k: ro[k] - d[k] for k in TTFT_KEYS}))
    if ll:
        dl = r["direct_ll"]
        rows.append((f"LiteLLM proxy {LITELLM_VERSION}", ll, ltp,
                     {k: ll[k] - dl[k] for k in TTFT_KEYS}))
    print()
    print(f"Time to first token, ms (emulator TTFT {EMULATOR_TTFT_MS} ms); added = over direct "
          "calls interleaved with the same run's (LiteLLM: with its own phase's direct calls)")
    head = (f"{'path':<26}{'c1 p50':>8}{'c1 p99':>8}{'c100 p50':>10}{'c100 p99':>10}"
            f"{'+c1 p50':>9}{'+c1 p99':>9}{'+c100 p50':>11}{'+c100 p99':>11}")
    print(head)
    for name, t, _, added in rows:
        line = (f"{name:<26}{t['c1_p50']:>8.2f}{t['c1_p99']:>8.2f}{t['c100_p50']:>10.2f}"
                f"{t['c100_p99']:>10.2f}")
        if added:
            line += (f"{added['c1_p50']:>9.2f}{added['c1_p99']:>9.2f}{added['c100_p50']:>11.2f}"
                     f"{added['c100_p99']:>11.2f}")
        if t.get("errors"):
            line += f"  ({t['errors']} failed turns)"
        print(line)
    print()
    print("Server pinned to one core, 64 streams in flight")
    print(f"{'server':<26}{'turns/s':>9}{'core use':>10}{'CPU ms/turn':>13}"
          f"{'turns/CPU-s':>13}{'RSS MiB':>9}{'errors':>8}")
    for name, _, t, _ in rows[1:]:
        assert t is not None
        per_cpu = 1000 / t["cpu_ms_per_turn"] if t["cpu_ms_per_turn"] else 0.0
        print(f"{name:<26}{t['turns_per_s']:>9.0f}{t['core_utilisation']:>10.0%}"
              f"{t['cpu_ms_per_turn']:>13.2f}{per_cpu:>13.0f}{t['rss_mib']:>9.0f}"
              f"{t['errors']:>8}")
    if ll and ltp:
        added_r = ro["c1_p50"] - d["c1_p50"]
        added_l = ll["c1_p50"] - r["direct_ll"]["c1_p50"]
        print()
        print("router-svc vs LiteLLM (same run):")
        print(f"  turns/s per core   {tp['turns_per_s'] / ltp['turns_per_s']:.1f}x")
        print(f"  turns per CPU-s    {ltp['cpu_ms_per_turn'] / tp['cpu_ms_per_turn']:.1f}x")
        print(f"  added TTFT c1 p50  {added_r:.2f} ms vs {added_l:.2f} ms "
              f"({(added_r / added_l) if added_l > 0 else float('nan'):.2f} of LiteLLM's)")
        print(f"  RSS                {tp['rss_mib']:.0f} vs {ltp['rss_mib']:.0f} MiB")
    elif "litellm_skipped" in r:
        print(f"\nLiteLLM: skipped ({r['litellm_skipped']})")
    rl = r["ratelimit"]
    c = r["classifier"]
    print()
    print(f"Rate-limit decisions/s (Redis Lua, one round trip, pipelined connection as in the "
          f"router): sequential {rl['seq']:.0f}, 64 in flight {rl['c64']:.0f} (redis-py pool: "
          f"{rl['redispy_seq']:.0f} and {rl['redispy_c64']:.0f})")
    print(f"Classifier accuracy on the held-out split (n={c['n_test']}): linear-v1 "
          f"{c['model']:.1%} vs seed heuristic {c['seed']:.1%}; p99 {c['p99_us']:.0f} us")


def metrics(r: dict[str, Any]) -> dict[str, Any]:
    d, ro, tp = r["direct"], r["router"], r["router_tp"]
    m: dict[str, Any] = {
        "direct_ttft_c1_p50_ms": d["c1_p50"], "direct_ttft_c1_p99_ms": d["c1_p99"],
        "direct_ttft_c100_p50_ms": d["c100_p50"], "direct_ttft_c100_p99_ms": d["c100_p99"],
        "router_added_ttft_c1_p50_ms": ro["c1_p50"] - d["c1_p50"],
        "router_added_ttft_c1_p99_ms": ro["c1_p99"] - d["c1_p99"],
        "router_added_ttft_c100_p50_ms": ro["c100_p50"] - d["c100_p50"],
        "router_added_ttft_c100_p99_ms": ro["c100_p99"] - d["c100_p99"],
        "router_failed_turns": ro["errors"] + tp["errors"],
        "router_turns_per_s_one_core": tp["turns_per_s"],
        "router_core_utilisation": tp["core_utilisation"],
        "router_cpu_ms_per_turn": tp["cpu_ms_per_turn"],
        "router_rss_mib": tp["rss_mib"],
        "ratelimit_decisions_per_s_seq": r["ratelimit"]["seq"],
        "ratelimit_decisions_per_s_c64": r["ratelimit"]["c64"],
        "ratelimit_redispy_decisions_per_s_seq": r["ratelimit"]["redispy_seq"],
        "ratelimit_redispy_decisions_per_s_c64": r["ratelimit"]["redispy_c64"],
        "classifier_accuracy": r["classifier"]["model"],
        "seed_heuristic_accuracy": r["classifier"]["seed"],
        "classifier_p99_us": r["classifier"]["p99_us"],
    }
    ll, ltp = r.get("litellm"), r.get("litellm_tp")
    if ll and ltp:
        dl = r["direct_ll"]
        added_r = ro["c1_p50"] - d["c1_p50"]
        added_l = ll["c1_p50"] - dl["c1_p50"]
        m.update({
            "litellm_added_ttft_c1_p50_ms": added_l,
            "litellm_added_ttft_c1_p99_ms": ll["c1_p99"] - dl["c1_p99"],
            "litellm_added_ttft_c100_p50_ms": ll["c100_p50"] - dl["c100_p50"],
            "litellm_added_ttft_c100_p99_ms": ll["c100_p99"] - dl["c100_p99"],
            "litellm_failed_turns": ll["errors"] + ltp["errors"],
            "litellm_turns_per_s_one_core": ltp["turns_per_s"],
            "litellm_core_utilisation": ltp["core_utilisation"],
            "litellm_cpu_ms_per_turn": ltp["cpu_ms_per_turn"],
            "litellm_rss_mib": ltp["rss_mib"],
            "ratio_turns_per_s": tp["turns_per_s"] / ltp["turns_per_s"],
            "ratio_turns_per_cpu_s": ltp["cpu_ms_per_turn"] / tp["cpu_ms_per_turn"],
            "ratio_added_ttft_c1_p50": added_r / added_l if added_l > 0 else None,
        })
    else:
        m["litellm_skipped"] = r.get("litellm_skipped", "unknown")
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in m.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="longer runs (default: quick)")
    parser.add_argument("--no-litellm", action="store_true", help="skip the LiteLLM peer")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    results = asyncio.run(run(args))
    report(results)
    print(json.dumps({"bench": "router", "metrics": metrics(results)}))


if __name__ == "__main__":
    main()
