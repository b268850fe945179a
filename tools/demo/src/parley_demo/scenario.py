"""The platform's main job, scripted: per tenant, a knowledge base is ingested, then a user joins
a real LiveKit room with tenant metadata, shares a screen whose slides change, speaks and types
questions, and the agent answers from the tenant's knowledge base over router-svc; afterwards
the session's bill (with savings by lever) is read back from billing-svc.

Used by `make demo` (prints it) and by tests/e2e (asserts it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx
from parley.billing.v1 import billing_pb2, billing_pb2_grpc
from parley.kb.v1 import kb_pb2, kb_pb2_grpc
from parley.vision.v1 import vision_pb2, vision_pb2_grpc
from parley_devstack.livekit import DEV_KEY, DEV_SECRET
from parley_devstack.stack import Stack
from parley_runtime import context
from parley_runtime.auth import TokenSigner
from parley_runtime.client import make_channel


@dataclass(frozen=True)
class Document:
    document_id: str
    title: str
    text: str


@dataclass(frozen=True)
class Turn:
    """One user turn: typed over the chat text stream, or spoken (espeak-ng audio)."""

    text: str
    spoken: bool = False
    # Slide to show before this turn (index into the tenant's slides), if any.
    slide: int | None = None
    # Words the answer must contain (a fact only this tenant's KB holds).
    expect: tuple[str, ...] = ()


@dataclass(frozen=True)
class TenantScript:
    tenant_id: str
    user_id: str
    documents: tuple[Document, ...]
    slides: tuple[str, ...]
    turns: tuple[Turn, ...]


@dataclass
class TurnResult:
    question: str
    spoken: bool
    answer: str
    tier: str | None
    model: str | None
    fallback: bool | None
    images: int
    platform_ms: float | None
    seconds: float
    expected: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        low = self.answer.lower()
        return all(w.lower() in low for w in self.expected)


@dataclass
class SessionReport:
    tenant_id: str
    session_id: str
    room: str
    turns: list[TurnResult] = field(default_factory=list)
    transcript: list[dict[str, Any]] = field(default_factory=list)
    agent_audio_tracks: int = 0
    agent_voiced_s: float = 0.0
    vision: dict[str, int] = field(default_factory=dict)
    bill: dict[str, Any] = field(default_factory=dict)
    notes: list[dict[str, Any]] = field(default_factory=list)


DEMO_TENANTS: tuple[TenantScript, ...] = (
    TenantScript(
        tenant_id="acme",
        user_id="alice",
        documents=(
            Document(
                "acme-laptops",
                "Acme hardware policy",
                "# Hardware policy\n\nEvery Acme engineer receives a new laptop every 30 months. "
                "Laptop refresh requests go to the IT desk named Foundry. "
                "Lost laptops must be reported within 24 hours to security.\n\n"
                "## Phones\n\nAcme does not provide phones; a monthly phone stipend of 45 "
                "dollars is paid instead.",
            ),
            Document(
                "acme-travel",
                "Acme travel policy",
                "Acme travel must be booked through the Compass portal. Economy class is the "
                "default; flights over 9 hours may be booked in premium economy.",
            ),
        ),
        slides=("Q3 review: revenue 4.2M", "Q3 review: churn fell to 2%",
                "Next steps: hire 3 engineers"),
        turns=(
            Turn("How often does an engineer get a new laptop?", expect=("30 months",)),
            Turn("What is the phone stipend?", spoken=True, slide=1),
            Turn("Where must travel be booked?", slide=2, expect=("compass",)),
        ),
    ),
    TenantScript(
        tenant_id="globex",
        user_id="bob",
        documents=(
            Document(
                "globex-laptops",
                "Globex equipment handbook",
                "Globex staff lease laptops from the Harbor program; leases renew every 48 "
                "months. Phones are company owned and managed by the Lighthouse team.",
            ),
        ),
        slides=("Globex fleet status", "Globex fleet status: 12 trucks in repair"),
        turns=(
            Turn("How often does an engineer get a new laptop?", expect=("48 months",)),
            Turn("Where must travel be booked?", slide=1),
        ),
    ),
)


class Platform:
    """Signed gRPC access to the stack's services, acting for one tenant at a time."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        keys = stack.auth_keys()
        self.signer = TokenSigner(service="demo-client", kid="demo-client",
                                  secret=keys["demo-client"])
        p = stack.ports
        self.kb = make_channel(f"127.0.0.1:{p.kb}", signer=self.signer)
        self.billing = make_channel(f"127.0.0.1:{p.billing}", signer=self.signer)
        self.vision = make_channel(f"127.0.0.1:{p.vision}", signer=self.signer)
        self.livekit_url = f"ws://127.0.0.1:{p.livekit}"
        self.emulator_url = f"http://127.0.0.1:{p.emulator}"

    async def aclose(self) -> None:
        for ch in (self.kb, self.billing, self.vision):
            await ch.close()

    @staticmethod
    def md(tenant: str) -> tuple[tuple[str, str], ...]:
        return (("x-parley-tenant-id", tenant),)

    async def ingest(self, tenant: str, docs: tuple[Document, ...]) -> list[Any]:
        stub = kb_pb2_grpc.KnowledgeBaseServiceStub(self.kb)
        out = []
        for d in docs:
            out.append(await stub.IngestDocument(
                kb_pb2.IngestDocumentRequest(
                    document_id=d.document_id, title=d.title,
                    content_type=kb_pb2.CONTENT_TYPE_MARKDOWN, content=d.text.encode()),
                metadata=self.md(tenant), timeout=60))
        return out

    async def search(self, tenant: str, query: str) -> Any:
        stub = kb_pb2_grpc.KnowledgeBaseServiceStub(self.kb)
        return await stub.Search(
            kb_pb2.SearchRequest(query=query, top_k=5, mode=kb_pb2.SEARCH_MODE_HYBRID),
            metadata=self.md(tenant), timeout=10)

    async def session_bill(self, tenant: str, session_id: str) -> Any:
        stub = billing_pb2_grpc.BillingServiceStub(self.billing)
        return await stub.GetSessionBill(
            billing_pb2.GetSessionBillRequest(session_id=session_id),
            metadata=self.md(tenant), timeout=10)

    async def vision_stats(self, tenant: str) -> Any:
        stub = vision_pb2_grpc.VisionServiceStub(self.vision)
        return await stub.GetTenantStats(vision_pb2.GetTenantStatsRequest(),
                                         metadata=self.md(tenant), timeout=10)

    async def set_faults(self, rules: list[dict[str, Any]] | None) -> None:
        async with httpx.AsyncClient(base_url=self.emulator_url, timeout=5) as client:
            if rules is None:
                (await client.delete("/admin/faults")).raise_for_status()
            else:
                (await client.post("/admin/faults", json=rules)).raise_for_status()


def bill_to_dict(bill: Any) -> dict[str, Any]:
    return {
        "total_usd": bill.total_usd,
        "items": [
            {"usage_type": i.usage_type, "service": i.service, "model": i.model_id,
             "quantity": i.quantity, "unit": i.unit, "cost_usd": i.cost_usd,
             "price_version": i.price_version}
            for i in bill.items
        ],
        "savings": {
            "actual_usd": bill.savings.actual_usd,
            "naive_usd": bill.savings.naive_usd,
            "levers": {lv.lever: lv.saved_usd for lv in bill.savings.levers},
        },
    }


async def run_session(
    platform: Platform,
    script: TenantScript,
    *,
    agent_name: str = "parley-agent",
    fail_primary_after_turn: int | None = None,
    primary_models: tuple[str, ...] = (),
    log: Any = print,
) -> SessionReport:
    """One scripted voice + screen-share session through the real LiveKit server."""
    from parley_agent.sim import SimulatedUser, create_room

    room = f"{script.tenant_id}-{uuid.uuid4().hex[:8]}"
    session_id = f"sess-{room}"
    meta = {"tenant_id": script.tenant_id, "user_id": script.user_id, "session_id": session_id}
    await create_room(platform.livekit_url, DEV_KEY, DEV_SECRET, room=room, metadata=meta,
                      dispatches=[(agent_name, meta),
                                  (agent_name, {**meta, "role": "notetaker"})])
    report = SessionReport(script.tenant_id, session_id, room)
    async with SimulatedUser.join(platform.livekit_url, DEV_KEY, DEV_SECRET, room=room,
                                  identity=script.user_id) as user:
        await user.wait_for_agent(timeout=90, role="assistant")
        log(f"  [{script.tenant_id}] agent joined room {room}")
        await user.start_screen_share(list(script.slides), fps=15)
        await user.publish_microphone()
        for i, turn in enumerate(script.turns):
            if fail_primary_after_turn is not None and i == fail_primary_after_turn:
                await platform.set_faults([
                    {"model": m, "error_rate": 1.0, "error_status": 503}
                    for m in primary_models
                ])
                log(f"  [{script.tenant_id}] emulator: primary models DOWN {primary_models}")
            if turn.slide is not None:
                user.show_slide(turn.slide)
                await asyncio.sleep(0.8)
            before = len(user.turn_events)
            t0 = time.monotonic()
            if turn.spoken:
                await user.say(turn.text)
            else:
                await user.type_chat(turn.text)
            ev = await user.wait_for_turn(role="assistant", after=before, timeout=90)
            # A turn may hold several agent messages (a preamble spoken before a tool call, then
            # the answer, each reported once played out): when the answer must hold known
            # words, wait for them; otherwise until the agent has been quiet for a while.
            if turn.expect:
                words = [w.lower() for w in turn.expect]
                with contextlib.suppress(TimeoutError):
                    await user.wait_for_turn(
                        role="assistant", after=before, timeout=60,
                        predicate=lambda e, ws=words: all(  # type: ignore[misc]
                            w in str(e.get("text", "")).lower() for w in ws
                        ),
                    )
            ev = await _settled_reply(user, before, ev)
            result = TurnResult(
                question=turn.text, spoken=turn.spoken, answer=str(ev.get("text", "")),
                tier=ev.get("tier"), model=ev.get("model"), fallback=ev.get("fallback"),
                images=int(ev.get("images", 0)), platform_ms=ev.get("platform_ms"),
                seconds=time.monotonic() - t0, expected=turn.expect,
            )
            # The user's own turn as the agent heard it (STT for spoken turns).
            heard = [e for e in user.turn_events[before:] if e.get("role") == "user"]
            if heard:
                result.images = max(result.images, int(heard[-1].get("images", 0)))
            report.turns.append(result)
            log(f"  [{script.tenant_id}] {'said' if turn.spoken else 'typed'}: {turn.text!r}")
            if heard and turn.spoken:
                log(f"  [{script.tenant_id}] agent heard: {heard[-1].get('text')!r}")
            log(f"  [{script.tenant_id}] agent ({result.tier}/{result.model}"
                f"{', fallback' if result.fallback else ''}): {result.answer!r}")
        try:
            await user.wait_for_agent_audio(timeout=30)
        except TimeoutError:
            pass
        with contextlib.suppress(TimeoutError):
            await user.wait_for_note(timeout=20)
        report.agent_audio_tracks = len(user.agent_audio_tracks)
        report.agent_voiced_s = user.agent_voiced_s
        report.transcript = list(user.turn_events)
        report.notes = list(user.notes)
    if fail_primary_after_turn is not None:
        await platform.set_faults(None)
    return report


async def _settled_reply(
    user: Any, before: int, first: dict[str, Any], quiet_s: float = 6.0, max_s: float = 45
) -> dict[str, Any]:
    deadline = time.monotonic() + max_s
    seen = len(user.turn_events)
    quiet_until = time.monotonic() + quiet_s
    while time.monotonic() < min(deadline, quiet_until):
        await asyncio.sleep(0.2)
        if len(user.turn_events) != seen:
            seen = len(user.turn_events)
            quiet_until = time.monotonic() + quiet_s
    replies = [e for e in user.turn_events[before:] if e.get("role") == "assistant"]
    if not replies:
        return first
    merged = dict(replies[-1])
    merged["text"] = " ".join(str(e.get("text", "")) for e in replies).strip()
    merged["fallback"] = any(bool(e.get("fallback")) for e in replies)
    merged["images"] = max(int(e.get("images", 0)) for e in replies)
    return merged


async def collect_bill(platform: Platform, report: SessionReport, timeout: float = 60) -> None:
    """Poll billing-svc until the session's bill holds LLM, vision and session usage."""
    deadline = time.monotonic() + timeout
    bill: Any = None
    context.tenant_id_var.set(report.tenant_id)
    while time.monotonic() < deadline:
        try:
            bill = await platform.session_bill(report.tenant_id, report.session_id)
            kinds = {i.usage_type for i in bill.items}
            if {"llm", "vision", "session"} <= kinds:
                break
        except Exception:  # noqa: BLE001 - keep polling until the deadline
            pass
        await asyncio.sleep(1.0)
    if bill is not None:
        report.bill = bill_to_dict(bill)
    stats = await platform.vision_stats(report.tenant_id)
    s = stats.stats
    report.vision = {
        "frames_seen": s.frames_seen, "dropped_rate": s.dropped_rate,
        "dropped_duplicate": s.dropped_duplicate, "kept": s.kept,
        "image_tokens_sent": s.image_tokens_sent, "naive_image_tokens": s.naive_image_tokens,
    }


def report_json(reports: list[SessionReport]) -> str:
    def conv(r: SessionReport) -> dict[str, Any]:
        return {
            "tenant_id": r.tenant_id, "session_id": r.session_id, "room": r.room,
            "turns": [t.__dict__ | {"ok": t.ok} for t in r.turns],
            "agent_audio_tracks": r.agent_audio_tracks, "agent_voiced_s": r.agent_voiced_s,
            "vision": r.vision, "bill": r.bill, "notes": r.notes, "transcript": r.transcript,
        }

    return json.dumps([conv(r) for r in reports], indent=2, default=str)
