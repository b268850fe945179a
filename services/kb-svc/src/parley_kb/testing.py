"""Helpers for kb-svc's tests, eval and bench: a counting embedder, tokens, an in-process stack."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import grpc
import jwt
from parley.kb.v1 import kb_pb2_grpc
from parley_runtime.auth import TokenVerifier
from parley_runtime.errors import Unavailable
from parley_runtime.server import GrpcServiceHost
from parley_runtime.testing import TEST_KEYS, start_test_host
from parley_runtime.usage import NullUsageRecorder

from .admin_api import create_admin_app
from .app import KbRuntime, build_runtime
from .config import KbTenants, Settings
from .embeddings import Embedder, EmbeddingBatch, InputType, LocalWordLlamaEmbedder
from .server import SERVICE_NAME, KnowledgeBaseServicer

APP_ROLE = "parley_kb_app"
APP_PASSWORD = "kb-test-password"

TENANTS: dict[str, Any] = {
    "tenants": {
        "acme": {"display_name": "Acme"},
        "globex": {"display_name": "Globex"},
        "initech": {},
        "quota-co": {"kb": {"max_documents": 2, "max_chunks": 12, "max_total_bytes": 6000}},
        "frozen-co": {"kb": {"read_only": True}},
        "tiny-co": {},
        "eval-co": {},
    }
}


class CountingEmbedder(LocalWordLlamaEmbedder):
    """The real local model, counting what it is asked to embed."""

    def __init__(self, model: Any) -> None:
        super().__init__(model)
        self.calls = 0
        self.texts = 0
        self.fail_next = False

    async def embed(self, texts: Sequence[str], input_type: InputType) -> EmbeddingBatch:
        if self.fail_next:
            self.fail_next = False
            raise Unavailable("injected embedding failure")
        self.calls += 1
        self.texts += len(texts)
        return await super().embed(texts, input_type)


def app_dsn(admin_dsn: str) -> str:
    parts = urlsplit(admin_dsn)
    netloc = f"{APP_ROLE}:{APP_PASSWORD}@{parts.hostname}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


@dataclass
class KbDatabase:
    admin_dsn: str
    app_dsn: str


def make_settings(db: KbDatabase, redis_url: str | None, **extra: Any) -> Settings:
    return Settings(
        database_url=db.app_dsn,
        redis_url=redis_url,
        auth_keys=dict(TEST_KEYS),
        kb_app_role=APP_ROLE,
        kb_app_password=APP_PASSWORD,
        db_pool_max=4,
        **extra,
    )


@dataclass
class KbStack:
    runtime: KbRuntime
    embedder: Any  # CountingEmbedder unless a test passes its own
    recorder: NullUsageRecorder
    host: GrpcServiceHost
    http: Any  # httpx.AsyncClient over the admin app (ASGI)
    db: KbDatabase
    settings: Settings

    @property
    def port(self) -> int:
        return self.host.port

    def channel(self) -> grpc.aio.Channel:
        return grpc.aio.insecure_channel(f"127.0.0.1:{self.port}")

    def stub(self, channel: grpc.aio.Channel) -> kb_pb2_grpc.KnowledgeBaseServiceStub:
        return kb_pb2_grpc.KnowledgeBaseServiceStub(channel)


def token_for(tenant: str | None, *, service: str = "agent-worker", audience: str = "kb-svc",
              exp_offset: int = 300, secret: str | None = None) -> str:
    now = int(time.time())
    claims: dict[str, Any] = {"iss": service, "sub": service, "aud": audience, "iat": now,
                              "exp": now + exp_offset}
    if tenant is not None:
        claims["tenant"] = tenant
    return jwt.encode(claims, secret or TEST_KEYS[service], algorithm="HS256",
                      headers={"kid": service})


def md_for(tenant: str | None, *, header_tenant: str | None = None) -> list[tuple[str, str]]:
    md = [("authorization", f"Bearer {token_for(tenant)}")]
    if header_tenant is not None:
        md.append(("x-parley-tenant-id", header_tenant))
    return md


def auth_headers(tenant: str | None, *, header_tenant: str | None = None) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {token_for(tenant)}"}
    if header_tenant is not None:
        headers["X-Parley-Tenant-Id"] = header_tenant
    return headers


async def start_stack(db: KbDatabase, redis_url: str | None, model: Any, *,
                      embedder: Embedder | None = None, **settings_extra: Any) -> KbStack:
    """The service in-process: gRPC on a free port, admin REST over ASGI, the real store."""
    settings = make_settings(db, redis_url, **settings_extra)
    tenants = KbTenants.from_dict(TENANTS, settings)
    embedder = embedder or CountingEmbedder(model)
    recorder = NullUsageRecorder()
    runtime = await build_runtime(settings, tenants=tenants, embedder=embedder, recorder=recorder)

    def register(host: GrpcServiceHost) -> None:
        kb_pb2_grpc.add_KnowledgeBaseServiceServicer_to_server(
            KnowledgeBaseServicer(runtime.kb), host.server
        )
        host.add_service_name(SERVICE_NAME)

    host = await start_test_host(settings, register)
    app = create_admin_app(
        runtime.kb, verifier=TokenVerifier(keys=dict(TEST_KEYS), audience="kb-svc"),
        max_body_bytes=settings.max_message_bytes, ops=runtime.ops,
        operators=settings.kb_operator_callers,
    )
    import httpx

    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://kb-admin")
    return KbStack(runtime, embedder, recorder, host, http, db, settings)


async def stop_stack(stack: KbStack) -> None:
    await stack.http.aclose()
    await stack.host.stop(0)
    await stack.runtime.aclose()


def make_pdf(lines: list[str]) -> bytes:
    """A minimal one-page PDF with Helvetica text (offsets computed, so readers accept it)."""
    ops = " ".join(
        "(" + line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)") + ") Tj T*"
        for line in lines
    )
    text_ops = f"BT /F1 12 Tf 72 720 Td 14 TL {ops} ET"
    objects = [
        "<< /Type /Catalog /Pages 2 0 R >>",
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        "/Resources << /Font << /F1 5 0 R >> >> >>",
        f"<< /Length {len(text_ops)} >>\nstream\n{text_ops}\nendstream",
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = b"%PDF-1.4\n"
    offsets = []
    for i, obj in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{i} 0 obj\n{obj}\nendobj\n".encode()
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    for off in offsets:
        out += f"{off:010d} 00000 n \n".encode()
    out += (
        f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n"
    ).encode()
    return out
