"""Helpers for tests and benchmarks of billing-svc: event builders and an in-process service."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from google.protobuf.timestamp_pb2 import Timestamp
from parley.billing.v1 import billing_pb2, billing_pb2_grpc
from parley_runtime.catalog import Catalog, load_catalog
from parley_runtime.server import GrpcServiceHost
from parley_runtime.tenants import TenantRegistry
from parley_runtime.testing import TEST_KEYS, signed_channel, start_test_host

from .budgets import defaults_from_tenants
from .config import Settings
from .ledger import Ledger, Limits
from .migrate import migrate
from .pricing import Pricer
from .server import SERVICE_NAME, register
from .store import BillingStore, create_pool
from .web import HttpServer, WebAuth, create_app


def stamp(when: dt.datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(when)
    return ts


def _event(key: str | None, at: dt.datetime | None, session: str, service: str
           ) -> billing_pb2.UsageEvent:
    ev = billing_pb2.UsageEvent(
        idempotency_key=key if key is not None else uuid.uuid4().hex,
        session_id=session, service=service,
    )
    ev.occurred_at.CopyFrom(stamp(at or dt.datetime.now(dt.UTC)))
    return ev


def llm_event(
    key: str | None = None, *, at: dt.datetime | None = None, session: str = "s1",
    model: str = "gemini-2.5-flash", input_tokens: int = 1000, cached: int = 0,
    cache_write: int = 0, output_tokens: int = 100, service: str = "router-svc",
    tier: str = "standard",
) -> billing_pb2.UsageEvent:
    ev = _event(key, at, session, service)
    ev.llm.CopyFrom(billing_pb2.LlmUsage(
        provider="", model_id=model, tier=tier, input_tokens=input_tokens,
        cached_input_tokens=cached, cache_write_tokens=cache_write, output_tokens=output_tokens,
    ))
    return ev


def vision_event(
    key: str | None = None, *, at: dt.datetime | None = None, session: str = "s1",
    frames_seen: int = 300, kept: int = 20, dropped_rate: int = 200, dropped_duplicate: int = 80,
    tokens_per_frame: int = 258, model: str = "gemini-2.5-flash", service: str = "vision-svc",
) -> billing_pb2.UsageEvent:
    ev = _event(key, at, session, service)
    ev.vision.CopyFrom(billing_pb2.VisionUsage(
        track_id="cam", frames_seen=frames_seen, dropped_rate=dropped_rate,
        dropped_duplicate=dropped_duplicate, frames_kept=kept,
        image_tokens_sent=kept * tokens_per_frame,
        naive_image_tokens=frames_seen * tokens_per_frame, source_fps=30.0, model_id=model,
    ))
    return ev


def stt_event(key: str | None = None, *, at: dt.datetime | None = None, session: str = "s1",
              seconds: float = 60.0, model: str = "deepgram-nova-3",
              service: str = "agent-worker") -> billing_pb2.UsageEvent:
    ev = _event(key, at, session, service)
    ev.stt.CopyFrom(billing_pb2.SttUsage(provider="deepgram", model_id=model,
                                         audio_seconds=seconds))
    return ev


def tts_event(key: str | None = None, *, at: dt.datetime | None = None, session: str = "s1",
              characters: int = 1000, model: str = "elevenlabs-flash-v2.5",
              service: str = "agent-worker") -> billing_pb2.UsageEvent:
    ev = _event(key, at, session, service)
    ev.tts.CopyFrom(billing_pb2.TtsUsage(provider="elevenlabs", model_id=model,
                                         characters=characters))
    return ev


def embedding_event(key: str | None = None, *, at: dt.datetime | None = None,
                    session: str = "", tokens: int = 10_000, cached_texts: int = 0,
                    embedded_texts: int = 10, model: str = "voyage-3.5",
                    service: str = "kb-svc") -> billing_pb2.UsageEvent:
    ev = _event(key, at, session, service)
    ev.embedding.CopyFrom(billing_pb2.EmbeddingUsage(
        provider="voyage", model_id=model, tokens=tokens, cached_texts=cached_texts,
        embedded_texts=embedded_texts,
    ))
    return ev


def session_event(key: str | None = None, *, at: dt.datetime | None = None,
                  session: str = "s1", minutes: float = 10.0,
                  service: str = "agent-worker") -> billing_pb2.UsageEvent:
    ev = _event(key, at, session, service)
    ev.session.CopyFrom(billing_pb2.SessionUsage(minutes=minutes))
    return ev


def tenant_md(tenant: str) -> tuple[tuple[str, str]]:
    """gRPC metadata acting for `tenant` (the signed channel puts it in the token)."""
    return (("x-parley-tenant-id", tenant),)


@asynccontextmanager
async def billing_stub(
    port: int, service: str = "router-svc"
) -> AsyncIterator[billing_pb2_grpc.BillingServiceStub]:
    """A BillingService stub on a channel signed as `service`."""
    async with signed_channel(port, service=service) as channel:
        yield billing_pb2_grpc.BillingServiceStub(channel)


CRASH_BASE = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)


def crash_event(client: str, n: int) -> tuple[str, billing_pb2.UsageEvent]:
    """The n-th event a crash-test client sends: deterministic, so the expected totals can be
    recomputed from (client, count) alone. Mixed tenants and usage types."""
    tenant = ("acme", "globex")[n % 2]
    key = f"{client}-{n}"
    at = CRASH_BASE + dt.timedelta(seconds=n)
    session = f"{client}-s{n // 50}"
    kind = n % 5
    if kind == 0:
        ev = llm_event(key, at=at, session=session, input_tokens=1000 + n % 997,
                       cached=n % 300, output_tokens=50 + n % 101)
    elif kind == 1:
        ev = stt_event(key, at=at, session=session, seconds=1.0 + (n % 13) / 4)
    elif kind == 2:
        ev = tts_event(key, at=at, session=session, characters=20 + n % 400)
    elif kind == 3:
        ev = vision_event(key, at=at, session=session, frames_seen=30, kept=2 + n % 5,
                          dropped_rate=10, dropped_duplicate=8)
    else:
        ev = llm_event(key, at=at, session=session, model="claude-sonnet-4-6",
                       input_tokens=3000 + n % 1009, cache_write=n % 100,
                       output_tokens=n % 77)
    return tenant, ev


def with_user(dsn: str, user: str, password: str | None = None) -> str:
    """`dsn` with another user (and password)."""
    parts = urlsplit(dsn)
    host = parts.hostname or "127.0.0.1"
    netloc = f"{user}:{password}@{host}" if password else f"{user}@{host}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


async def prepare_database(owner_dsn: str, app_user: str | None = None) -> str:
    """Migrate a fresh database; returns the DSN of its (created) non-owner app role."""
    app_user = app_user or f"billing_app_{uuid.uuid4().hex[:8]}"
    app_dsn = with_user(owner_dsn, app_user, "app-secret")
    await migrate(owner_dsn, app_dsn)
    return app_dsn


@dataclass
class BillingHarness:
    """billing-svc in this process: gRPC on a free port, REST on another."""

    host: GrpcServiceHost
    http: HttpServer
    ledger: Ledger
    pool: asyncpg.Pool
    owner_dsn: str
    app_dsn: str
    closed: bool = field(default=False)

    @property
    def port(self) -> int:
        return self.host.port

    @property
    def http_port(self) -> int:
        return self.http.port

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        await self.http.stop()
        await self.host.stop(0)
        await self.ledger.close()
        await self.pool.close()


async def start_billing(
    owner_dsn: str,
    app_dsn: str,
    *,
    catalog: Catalog | None = None,
    registry: TenantRegistry | None = None,
    budget_cache_s: float = 5.0,
    metrics_max_tenants: int = 50,
    limits: Limits | None = None,
) -> BillingHarness:
    catalog = catalog or load_catalog()
    pool = await create_pool(app_dsn, min_size=1, max_size=8)
    store = BillingStore(pool)
    await store.check_role()
    ledger = Ledger(
        store=store, pricer=Pricer(catalog), registry=registry,
        budget_defaults=defaults_from_tenants(registry), budget_cache_s=budget_cache_s,
        metrics_max_tenants=metrics_max_tenants, limits=limits,
    )
    settings = Settings(drain_delay_seconds=0)

    def setup(h: GrpcServiceHost) -> None:
        register(h.server, ledger)
        h.add_service_name(SERVICE_NAME)

    host = await start_test_host(settings, setup)
    keys = dict(TEST_KEYS)
    from parley_runtime.auth import TokenVerifier

    auth = WebAuth(
        verifier=TokenVerifier(keys=keys, audience="billing-svc"), keys=keys,
        page_kid="billing-svc", page_ttl_s=900,
    )
    http = HttpServer(create_app(ledger, auth), "127.0.0.1", 0)
    await http.start()
    return BillingHarness(host, http, ledger, pool, owner_dsn, app_dsn)
