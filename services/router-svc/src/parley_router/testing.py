"""Test helpers for router-svc (used by its tests and the bench; no pytest imports)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from parley.billing.v1 import billing_pb2
from parley.router.v1 import router_pb2
from parley_runtime.server import GrpcServiceHost
from parley_runtime.usage import NullUsageRecorder

from .app import RouterApp
from .config import Settings

TENANTS: dict[str, Any] = {
    "plans": {
        "free": {"router": {"requests_per_minute": 30, "tokens_per_minute": 60000}},
        "pro": {"router": {"requests_per_minute": 6000, "tokens_per_minute": 50_000_000}},
    },
    "tenants": {
        "acme": {"plan": "pro"},
        "globex": {"plan": "pro"},
        "capped": {"plan": "pro", "router": {"max_premium_share": 0.2}},
        "limited": {
            "plan": "pro",
            "router": {"rate_limits": {"requests_per_minute": 3, "tokens_per_minute": 100000}},
        },
        "tiny-tokens": {
            "plan": "pro",
            "router": {"rate_limits": {"requests_per_minute": 100, "tokens_per_minute": 50}},
        },
        "anthro": {"plan": "pro", "router": {"allowed_providers": ["anthropic"]}},
        "cheap": {"plan": "pro", "router": {"max_tier": "standard",
                                            "max_cost_usd_per_turn": 0.01}},
        "budget-refuse": {"plan": "pro"},
        "budget-tiny": {"plan": "pro"},
        "budget-downgrade": {"plan": "pro", "router": {"on_budget_exceeded": "downgrade"}},
        "legacy": {"plan": "pro", "router": {"tiers": {"premium": ["claude-sonnet-4-5",
                                                                    "gemini-2.5-pro"]}}},
    },
}


def md(tenant: str) -> list[tuple[str, str]]:
    return [("x-parley-tenant-id", tenant)]


def user(text: str, *, breakpoint: bool = False) -> Any:
    return router_pb2.Message(role=router_pb2.ROLE_USER,
                              parts=[router_pb2.ContentPart(text=text)],
                              cache_breakpoint=breakpoint)


def system(text: str, *, breakpoint: bool = False) -> Any:
    return router_pb2.Message(role=router_pb2.ROLE_SYSTEM,
                              parts=[router_pb2.ContentPart(text=text)],
                              cache_breakpoint=breakpoint)


def chat(*messages: Any, tier: Any = 0, turn_id: str = "", **kw: Any) -> Any:
    hints = kw.pop("hints", None) or router_pb2.RoutingHints(force_tier=tier)
    return router_pb2.StreamChatRequest(
        session_id=kw.pop("session_id", "sess-1"),
        turn_id=turn_id or f"turn-{time.perf_counter_ns()}",
        messages=list(messages), hints=hints, **kw,
    )


@dataclass
class TurnResult:
    route: Any
    text: str
    tool_calls: list[Any]
    completion: Any
    events: list[str]
    elapsed_s: float


class RecordingRecorder(NullUsageRecorder):
    """Keeps every usage event (a real UsageRecorder, minus the shipping)."""


@dataclass
class RouterUnderTest:
    app: RouterApp
    host: GrpcServiceHost
    channel: grpc.aio.Channel
    stub: Any
    recorder: RecordingRecorder
    settings: Settings

    async def turn(self, request: Any, tenant: str = "acme", timeout: float = 10.0) -> TurnResult:
        route = completion = None
        text: list[str] = []
        calls: list[Any] = []
        kinds: list[str] = []
        start = time.perf_counter()
        async for ev in self.stub.StreamChat(request, metadata=md(tenant), timeout=timeout):
            kind = ev.WhichOneof("event")
            kinds.append(kind)
            if kind == "route":
                route = ev.route
            elif kind == "text_delta":
                text.append(ev.text_delta)
            elif kind == "tool_call":
                calls.append(ev.tool_call)
            elif kind == "completion":
                completion = ev.completion
        return TurnResult(route, "".join(text), calls, completion, kinds,
                          time.perf_counter() - start)


MakeRouter = Callable[..., Awaitable[RouterUnderTest]]


async def set_fault(emulator: Any, **spec: Any) -> None:
    """POST a fault rule to the emulator's admin API (`emulator` is an httpx.AsyncClient)."""
    resp = await emulator.post("/admin/faults", json=spec)
    assert resp.status_code == 200, resp.text


async def model_stats(emulator: Any, model: str) -> dict[str, int]:
    stats = (await emulator.get("/admin/stats")).json()
    return dict(stats.get("models", {}).get(model, {}))


def llm_events(recorder: NullUsageRecorder) -> list[tuple[str, billing_pb2.UsageEvent]]:
    return [(t, e) for t, e in recorder.events if e.WhichOneof("usage") == "llm"]


async def wait_for(predicate: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)
