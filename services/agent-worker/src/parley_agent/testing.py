"""In-process fake back-ends implementing the real protos, for tests and the benchmark.

They run on real grpc.aio servers (`parley_runtime.testing.start_test_host`), behind the real
auth interceptor, and behave deterministically: `FakeRouter` streams scripted answers and tool
calls, `FakeKnowledgeBase` does per-tenant keyword search, `FakeVision` keeps a frame when its
mean luma moved and rejects malformed frames, `FakeBilling` stores usage idempotently.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
from parley.billing.v1 import billing_pb2, billing_pb2_grpc
from parley.common.v1 import common_pb2
from parley.kb.v1 import kb_pb2, kb_pb2_grpc
from parley.router.v1 import router_pb2, router_pb2_grpc
from parley.vision.v1 import vision_pb2, vision_pb2_grpc
from parley_runtime.context import require_tenant
from parley_runtime.server import GrpcServiceHost
from parley_runtime.settings import ServiceSettings
from parley_runtime.testing import TEST_KEYS, start_test_host
from PIL import Image

RouterEvent = router_pb2.StreamChatResponse
Responder = Callable[[router_pb2.StreamChatRequest], Iterable[RouterEvent]]


def last_user_text(req: router_pb2.StreamChatRequest) -> str:
    for msg in reversed(req.messages):
        if msg.role == router_pb2.ROLE_USER:
            return " ".join(p.text for p in msg.parts if p.HasField("text"))
    return ""


def has_images(req: router_pb2.StreamChatRequest) -> bool:
    return any(p.HasField("image") for m in req.messages for p in m.parts)


def text_events(text: str) -> list[RouterEvent]:
    words = text.split(" ")
    return [
        RouterEvent(text_delta=(w if i == 0 else " " + w)) for i, w in enumerate(words) if w
    ]


def tool_call_event(name: str, arguments: dict[str, Any], call_id: str) -> RouterEvent:
    return RouterEvent(
        tool_call=router_pb2.ToolCall(id=call_id, name=name, arguments_json=json.dumps(arguments))
    )


def default_responder(req: router_pb2.StreamChatRequest) -> list[RouterEvent]:
    """Deterministic behaviour good enough for a conversation:

    - after tool results: answer with the first result's text;
    - a user turn naming a `transfer_to_<x>` tool's specialist ("transfer to billing"): call it;
    - a user question with `search_knowledge` available: search with the question;
    - otherwise: "You said: <text>" (mentioning an image when one is attached).
    """
    last = req.messages[-1] if req.messages else None
    tools = {t.name for t in req.tools}
    if last is not None and last.role == router_pb2.ROLE_TOOL:
        results = [p.tool_result for p in last.parts if p.HasField("tool_result")]
        body = results[0].content if results else ""
        return text_events(f"Here is what I found: {body[:300]}")
    text = last_user_text(req)
    lowered = text.lower()
    for tool in sorted(tools):
        if tool.startswith("transfer_to_") and tool.removeprefix("transfer_to_") in lowered:
            return [tool_call_event(tool, {}, f"call_{tool}")]
    if "search_knowledge" in tools and "?" in text:
        return [tool_call_event("search_knowledge", {"query": text}, "call_search")]
    suffix = " I can see the image you shared." if has_images(req) else ""
    return text_events(f"You said: {text}.{suffix}")


class FakeRouter(router_pb2_grpc.RouterServiceServicer):
    """StreamChat with scripted answers; records requests, tenants and cancellations."""

    def __init__(
        self,
        responder: Responder = default_responder,
        *,
        ttft_s: float = 0.0,
        delta_delay_s: float = 0.0,
        fail_with: grpc.StatusCode | None = None,
    ) -> None:
        self.responder = responder
        self.ttft_s = ttft_s
        self.delta_delay_s = delta_delay_s
        self.fail_with = fail_with
        self.requests: list[router_pb2.StreamChatRequest] = []
        self.tenants: list[str | None] = []
        self.cancelled = 0
        self.completed = 0
        self.started = asyncio.Event()

    async def ClassifyTurn(  # noqa: N802
        self, request: router_pb2.ClassifyTurnRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> router_pb2.ClassifyTurnResponse:
        images = any(p.HasField("image") for m in request.messages for p in m.parts)
        tier = router_pb2.TIER_PREMIUM if images else router_pb2.TIER_SIMPLE
        return router_pb2.ClassifyTurnResponse(
            decision=router_pb2.RouteDecision(tier=tier, provider="fake", model_id="fake-model"),
            baseline_tier=tier,
        )

    async def ListModels(  # noqa: N802
        self, request: router_pb2.ListModelsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> router_pb2.ListModelsResponse:
        return router_pb2.ListModelsResponse(catalog_version="fake")

    async def StreamChat(  # noqa: N802
        self, request: router_pb2.StreamChatRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[router_pb2.StreamChatResponse]:
        self.requests.append(request)
        self.tenants.append(require_tenant())
        self.started.set()
        if self.fail_with is not None:
            await context.abort(self.fail_with, "injected failure")
        start = time.perf_counter()
        images = sum(1 for m in request.messages for p in m.parts if p.HasField("image"))
        tier = router_pb2.TIER_PREMIUM if images else router_pb2.TIER_SIMPLE
        yield RouterEvent(
            route=router_pb2.RouteDecision(
                tier=tier, provider="fake", model_id="fake-model", complexity=0.1,
                estimator="fake", reason="images" if images else "simple",
            )
        )
        try:
            events = list(self.responder(request))
            if self.ttft_s:
                await asyncio.sleep(self.ttft_s)
            ttft_ms = (time.perf_counter() - start) * 1000
            for i, ev in enumerate(events):
                if i and self.delta_delay_s:
                    await asyncio.sleep(self.delta_delay_s)
                yield ev
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        prompt_chars = sum(len(p.text) for m in request.messages for p in m.parts)
        out_chars = sum(len(e.text_delta) for e in events)
        cached = sum(
            len(p.text) for m in request.messages if m.cache_breakpoint for p in m.parts
        ) // 4
        self.completed += 1
        yield RouterEvent(
            completion=router_pb2.Completion(
                finish_reason=(
                    router_pb2.FINISH_REASON_TOOL_CALLS
                    if any(e.HasField("tool_call") for e in events)
                    else router_pb2.FINISH_REASON_STOP
                ),
                usage=router_pb2.Usage(
                    input_tokens=prompt_chars // 4 + 1, cached_input_tokens=cached,
                    output_tokens=out_chars // 4 + 1, images=images,
                ),
                provider="fake", model_id="fake-model", tier=tier, attempts=1,
                time_to_first_token_ms=ttft_ms,
                total_ms=(time.perf_counter() - start) * 1000,
            )
        )


@dataclass
class KbDoc:
    document_id: str
    title: str
    text: str


_WORD = re.compile(r"[a-z0-9]+")


class FakeKnowledgeBase(kb_pb2_grpc.KnowledgeBaseServiceServicer):
    """Search over per-tenant documents by word overlap; the tenant comes from the call's auth."""

    def __init__(self, docs: dict[str, list[KbDoc]] | None = None) -> None:
        self.docs = docs or {}
        self.queries: list[tuple[str, kb_pb2.SearchRequest]] = []

    async def Search(  # noqa: N802
        self, request: kb_pb2.SearchRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> kb_pb2.SearchResponse:
        tenant = require_tenant()
        self.queries.append((tenant, request))
        terms = set(_WORD.findall(request.query.lower()))
        scored = []
        for doc in self.docs.get(tenant, []):
            words = set(_WORD.findall(doc.text.lower()))
            score = len(terms & words) / max(1, len(terms))
            if score > 0:
                scored.append((score, doc))
        scored.sort(key=lambda s: -s[0])
        hits = [
            kb_pb2.SearchHit(
                chunk_id=f"{d.document_id}#0", document_id=d.document_id, document_title=d.title,
                chunk_index=0, text=d.text, score=s,
            )
            for s, d in scored[: request.top_k or 5]
        ]
        return kb_pb2.SearchResponse(hits=hits, embedding_model="fake")


class FakeVision(vision_pb2_grpc.VisionServiceServicer):
    """Keeps a frame when its mean luma moved by more than `threshold` since the last kept one."""

    def __init__(self, *, threshold: float = 4.0) -> None:
        self.threshold = threshold
        self.configs: list[vision_pb2.StreamConfig] = []
        self.frames: list[vision_pb2.Frame] = []
        self.kept = 0
        self.rejected = 0
        self.streams_closed = 0
        self.last_stats = vision_pb2.FrameStats()

    async def GetTenantStats(  # noqa: N802
        self, request: vision_pb2.GetTenantStatsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> vision_pb2.GetTenantStatsResponse:
        return vision_pb2.GetTenantStatsResponse(stats=self.last_stats)

    async def ProcessFrames(  # noqa: N802
        self,
        request_iterator: AsyncIterator[vision_pb2.ProcessFramesRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[vision_pb2.ProcessFramesResponse]:
        config: vision_pb2.StreamConfig | None = None
        last_mean: float | None = None
        stats = vision_pb2.FrameStats()
        async for req in request_iterator:
            if req.HasField("config"):
                config = req.config
                self.configs.append(config)
                continue
            frame = req.frame
            self.frames.append(vision_pb2.Frame(
                sequence=frame.sequence, timestamp_us=frame.timestamp_us, width=frame.width,
                height=frame.height, speaking=frame.speaking, format=frame.format,
                unchanged_skipped=frame.unchanged_skipped,
            ))
            stats.frames_seen += 1 + frame.unchanged_skipped
            stats.dropped_duplicate += frame.unchanged_skipped
            w, h = frame.width, frame.height
            if config is None:
                await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "config first")
            if frame.format != vision_pb2.FRAME_FORMAT_I420 or w <= 0 or h <= 0 or len(
                frame.data
            ) < w * h + 2 * ((w + 1) // 2) * ((h + 1) // 2):
                stats.rejected += 1
                self.rejected += 1
                yield vision_pb2.ProcessFramesResponse(decision=vision_pb2.FrameDecision(
                    sequence=frame.sequence, timestamp_us=frame.timestamp_us,
                    decision=vision_pb2.DECISION_REJECTED, error_code="INVALID_ARGUMENT",
                    error_message="frame data shorter than width x height I420",
                ))
                continue
            luma = np.frombuffer(frame.data, dtype=np.uint8, count=w * h).reshape(h, w)
            mean = float(luma.mean())
            if last_mean is not None and abs(mean - last_mean) <= self.threshold:
                stats.dropped_duplicate += 1
                yield vision_pb2.ProcessFramesResponse(decision=vision_pb2.FrameDecision(
                    sequence=frame.sequence, timestamp_us=frame.timestamp_us,
                    decision=vision_pb2.DECISION_DROP_DUPLICATE,
                ))
                continue
            last_mean = mean
            buf = io.BytesIO()
            Image.fromarray(luma).resize((max(1, w // 4), max(1, h // 4))).save(
                buf, format="JPEG", quality=60
            )
            data = buf.getvalue()
            stats.kept += 1
            self.kept += 1
            assert config is not None
            yield vision_pb2.ProcessFramesResponse(decision=vision_pb2.FrameDecision(
                sequence=frame.sequence, timestamp_us=frame.timestamp_us,
                decision=vision_pb2.DECISION_KEEP,
                kept=vision_pb2.KeptFrame(
                    image=common_pb2.Image(
                        data=data, mime_type="image/jpeg", width=max(1, w // 4),
                        height=max(1, h // 4),
                        source_ref=f"vision:{config.session_id}/{config.track_id}/{frame.sequence}",
                    ),
                    byte_size=len(data), estimated_image_tokens=85,
                ),
            ))
        self.streams_closed += 1
        self.last_stats = stats
        yield vision_pb2.ProcessFramesResponse(stats=vision_pb2.StreamStats(
            session_id=config.session_id if config else "", track_id=config.track_id if config
            else "", stats=stats,
        ))


class FakeBilling(billing_pb2_grpc.BillingServiceServicer):
    def __init__(self) -> None:
        self.events: dict[str, tuple[str, billing_pb2.UsageEvent]] = {}
        self.duplicates = 0

    async def IngestUsage(  # noqa: N802
        self, request: billing_pb2.IngestUsageRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> billing_pb2.IngestUsageResponse:
        tenant = require_tenant()
        accepted = 0
        for ev in request.events:
            if ev.idempotency_key in self.events:
                self.duplicates += 1
                continue
            self.events[ev.idempotency_key] = (tenant, ev)
            accepted += 1
        return billing_pb2.IngestUsageResponse(accepted=accepted, duplicates=len(request.events)
                                               - accepted)


ALL_SERVICES = ("router", "vision", "kb", "billing")


@dataclass
class FakeBackends:
    """The fakes, each on its own loopback server (`services` picks which ones start)."""

    router: FakeRouter = field(default_factory=FakeRouter)
    kb: FakeKnowledgeBase = field(default_factory=FakeKnowledgeBase)
    vision: FakeVision = field(default_factory=FakeVision)
    billing: FakeBilling = field(default_factory=FakeBilling)
    services: tuple[str, ...] = ALL_SERVICES
    hosts: dict[str, GrpcServiceHost] = field(default_factory=dict)

    def addr(self, name: str) -> str:
        return f"127.0.0.1:{self.hosts[name].port}"

    async def start(self) -> FakeBackends:
        def reg(add: Any, servicer: Any, name: str) -> Any:
            def register(host: GrpcServiceHost) -> None:
                add(servicer, host.server)
                host.add_service_name(name)
            return register

        specs = {
            "router": ("router-svc", router_pb2_grpc.add_RouterServiceServicer_to_server,
                       self.router, "parley.router.v1.RouterService"),
            "vision": ("vision-svc", vision_pb2_grpc.add_VisionServiceServicer_to_server,
                       self.vision, "parley.vision.v1.VisionService"),
            "kb": ("kb-svc", kb_pb2_grpc.add_KnowledgeBaseServiceServicer_to_server, self.kb,
                   "parley.kb.v1.KnowledgeBaseService"),
            "billing": ("billing-svc", billing_pb2_grpc.add_BillingServiceServicer_to_server,
                        self.billing, "parley.billing.v1.BillingService"),
        }
        for key in self.services:
            service, add, servicer, name = specs[key]
            settings = ServiceSettings(service_name=service, drain_seconds=0,
                                       drain_delay_seconds=0)
            self.hosts[key] = await start_test_host(settings, reg(add, servicer, name))
        return self

    async def stop(self) -> None:
        for host in self.hosts.values():
            await host.stop(grace=0)
        self.hosts.clear()

    def env(self) -> dict[str, str]:
        """Environment for a worker talking to these fakes (auth with the test keyring)."""
        env = {f"{key.upper()}_ADDR": self.addr(key) for key in self.hosts}
        env.update({"PARLEY_AUTH_KEYS": json.dumps(TEST_KEYS), "PARLEY_AUTH_KID": "agent-worker"})
        return env


async def serve_fakes(
    *,
    ttft_ms: float,
    vision_threshold: float,
    docs: dict[str, list[dict[str, str]]],
    services: tuple[str, ...] = ALL_SERVICES,
) -> None:
    """Run the fakes until SIGTERM/SIGINT: print their env as one JSON line on start and the
    vision/router statistics as one JSON line on exit (`python -m parley_agent.testing`)."""
    import signal
    import sys

    fakes = FakeBackends(
        router=FakeRouter(ttft_s=ttft_ms / 1000), vision=FakeVision(threshold=vision_threshold),
        services=services,
    )
    fakes.kb.docs = {t: [KbDoc(**d) for d in items] for t, items in docs.items()}
    await fakes.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(json.dumps(fakes.env()), flush=True)
    try:
        await stop.wait()
    finally:
        stats = {
            "vision_frames": len(fakes.vision.frames), "vision_kept": fakes.vision.kept,
            "vision_rejected": fakes.vision.rejected, "router_calls": len(fakes.router.requests),
            "usage_events": len(fakes.billing.events),
        }
        await fakes.stop()
        sys.stdout.write(json.dumps(stats) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Parley fake back-ends (tests, benchmarks)")
    parser.add_argument("--ttft-ms", type=float, default=0.0)
    parser.add_argument("--vision-threshold", type=float, default=0.5)
    parser.add_argument("--docs-json", default=None, help="{tenant: [{document_id, title, text}]}")
    parser.add_argument("--services", default=",".join(ALL_SERVICES),
                        help="comma-separated subset of router,vision,kb,billing")
    ns = parser.parse_args()
    documents = json.loads(open(ns.docs_json).read()) if ns.docs_json else {}
    chosen = tuple(x for x in ns.services.split(",") if x)
    asyncio.run(serve_fakes(ttft_ms=ns.ttft_ms, vision_threshold=ns.vision_threshold,
                            docs=documents, services=chosen))
