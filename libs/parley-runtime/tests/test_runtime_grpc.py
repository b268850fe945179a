"""The shared runtime against a real grpc.aio server: auth, tenant, deadlines, sizes, errors."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import jwt
import pytest
from parley.router.v1 import router_pb2, router_pb2_grpc
from parley_runtime import context
from parley_runtime.auth import TokenSigner
from parley_runtime.errors import InvalidArgument, ResourceExhausted
from parley_runtime.server import GrpcServiceHost
from parley_runtime.settings import ServiceSettings
from parley_runtime.testing import TEST_KEYS, signed_channel, start_test_host

pytestmark = pytest.mark.unit


class EchoRouter(router_pb2_grpc.RouterServiceServicer):
    """Reports the request context back in RouteDecision.reason."""

    def __init__(self, downstream_port: list[int]) -> None:
        self.downstream_port = downstream_port
        self.seen_remaining: list[float | None] = []

    async def ClassifyTurn(self, request: Any, context_: Any) -> Any:
        text = request.messages[0].parts[0].text if request.messages else ""
        if text == "invalid":
            raise InvalidArgument("messages must not be 'invalid'")
        if text.startswith("echo:"):
            raise InvalidArgument(f"unknown thing {text!r}")
        if text == "limited":
            raise ResourceExhausted("slow down", retry_after_s=1.5)
        if text == "crash":
            raise RuntimeError("boom with secret detail")
        if text == "sleep":
            await asyncio.sleep(5)
        if text == "hop" and self.downstream_port:
            # Propagates the deadline and tenant to the next service.
            async with signed_channel(self.downstream_port[0], service="router-svc") as ch:
                stub = router_pb2_grpc.RouterServiceStub(ch)
                return await stub.ClassifyTurn(_req("where"))
        if text == "where":
            self.seen_remaining.append(context.time_remaining())
        ctx = context.current()
        return router_pb2.ClassifyTurnResponse(
            decision=router_pb2.RouteDecision(reason=f"{ctx.tenant_id}|{ctx.caller}")
        )

    async def StreamChat(self, request: Any, context_: Any) -> AsyncIterator[Any]:
        for i in range(3):
            yield router_pb2.StreamChatResponse(text_delta=str(i))
        if request.session_id == "fail-mid":
            raise InvalidArgument("stopped after 3 deltas")


def _req(text: str) -> router_pb2.ClassifyTurnRequest:
    return router_pb2.ClassifyTurnRequest(
        messages=[
            router_pb2.Message(role=router_pb2.ROLE_USER, parts=[router_pb2.ContentPart(text=text)])
        ]
    )


@pytest.fixture
async def servers() -> AsyncIterator[
    tuple[GrpcServiceHost, EchoRouter, GrpcServiceHost, EchoRouter]
]:
    down_servicer = EchoRouter([])
    settings = ServiceSettings(service_name="router-svc", max_message_bytes=64 * 1024)

    def reg(servicer: EchoRouter) -> Any:
        def _r(host: GrpcServiceHost) -> None:
            router_pb2_grpc.add_RouterServiceServicer_to_server(servicer, host.server)
            host.add_service_name("parley.router.v1.RouterService")

        return _r

    down = await start_test_host(settings, reg(down_servicer))
    up_servicer = EchoRouter([down.port])
    up = await start_test_host(settings, reg(up_servicer))
    yield up, up_servicer, down, down_servicer
    await up.stop(0)
    await down.stop(0)


def _md(token: str | None, tenant: str | None = None) -> list[tuple[str, str]]:
    md = []
    if token is not None:
        md.append(("authorization", f"Bearer {token}"))
    if tenant is not None:
        md.append(("x-parley-tenant-id", tenant))
    return md


async def _raw_call(port: int, metadata: list[tuple[str, str]], text: str = "x") -> Any:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = router_pb2_grpc.RouterServiceStub(ch)
        return await stub.ClassifyTurn(_req(text), metadata=metadata, timeout=5)


def _token(
    tenant: str | None = "acme",
    kid: str = "agent-worker",
    secret: str | None = None,
    exp_offset: int = 300,
) -> str:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": kid,
        "sub": kid,
        "aud": "parley",
        "iat": now,
        "exp": now + exp_offset,
    }
    if tenant:
        claims["tenant"] = tenant
    return jwt.encode(claims, secret or TEST_KEYS[kid], algorithm="HS256", headers={"kid": kid})


async def test_good_token_binds_tenant_and_caller(servers: Any) -> None:
    up, *_ = servers
    resp = await _raw_call(up.port, _md(_token("acme"), "acme"))
    assert resp.decision.reason == "acme|agent-worker"
    # Tenant comes from the token when the metadata omits it.
    resp = await _raw_call(up.port, _md(_token("globex")))
    assert resp.decision.reason == "globex|agent-worker"


@pytest.mark.parametrize(
    "metadata_factory, fragment",
    [
        (lambda: [], "missing authorization"),
        (lambda: [("authorization", "Basic abc")], "Bearer"),
        (lambda: _md("not-a-jwt"), "malformed"),
        (lambda: _md(_token(exp_offset=-120)), "expired"),
        (lambda: _md(_token(secret="x" * 40)), "signature"),
        (
            lambda: _md(
                _token(kid="unknown")
                if False
                else jwt.encode(
                    {"iss": "x", "aud": "parley", "exp": int(time.time()) + 60},
                    "k" * 40,
                    algorithm="HS256",
                    headers={"kid": "nobody"},
                )
            ),
            "unknown key id",
        ),
        (
            # agent-worker's key, claiming to be another caller
            lambda: _md(jwt.encode(
                {"iss": "kb-svc", "sub": "kb-svc", "aud": "parley", "tenant": "acme",
                 "exp": int(time.time()) + 60},
                TEST_KEYS["agent-worker"], algorithm="HS256", headers={"kid": "agent-worker"},
            )),
            "does not own its signing key",
        ),
    ],
)
async def test_bad_tokens_are_unauthenticated(
    servers: Any, metadata_factory: Any, fragment: str
) -> None:
    up, *_ = servers
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _raw_call(up.port, metadata_factory())
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert fragment in (err.value.details() or "")


async def test_tenant_mismatch_is_permission_denied(servers: Any) -> None:
    up, *_ = servers
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _raw_call(up.port, _md(_token("acme"), "globex"))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # A token with no tenant cannot act for one.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _raw_call(up.port, _md(_token(None), "globex"))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_errors_map_to_status_codes(servers: Any) -> None:
    up, *_ = servers
    md = _md(_token("acme"))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _raw_call(up.port, md, "invalid")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "invalid" in (err.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _raw_call(up.port, md, "limited")
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert dict(err.value.trailing_metadata() or ())["retry-after-s"] == "1.500"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _raw_call(up.port, md, "crash")
    assert err.value.code() == grpc.StatusCode.INTERNAL
    assert "secret detail" not in (err.value.details() or "")
    # The server survives all of it.
    assert (await _raw_call(up.port, md)).decision.reason == "acme|agent-worker"


async def test_stream_error_after_messages_keeps_messages_and_status(servers: Any) -> None:
    up, *_ = servers
    async with signed_channel(up.port) as ch:
        context.tenant_id_var.set("acme")
        stub = router_pb2_grpc.RouterServiceStub(ch)
        got = []
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for msg in stub.StreamChat(router_pb2.StreamChatRequest(session_id="fail-mid")):
                got.append(msg.text_delta)
        assert got == ["0", "1", "2"]
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_deadline_and_tenant_propagate_across_hops(servers: Any) -> None:
    up, _, _, down_servicer = servers
    token = TokenSigner(
        service="agent-worker", kid="agent-worker", secret=TEST_KEYS["agent-worker"]
    ).token(tenant="acme")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{up.port}") as ch:
        stub = router_pb2_grpc.RouterServiceStub(ch)
        resp = await stub.ClassifyTurn(_req("hop"), metadata=_md(token), timeout=2.0)
    # The downstream call acted for the same tenant, signed by the hop's own identity.
    assert resp.decision.reason == "acme|router-svc"
    remaining = down_servicer.seen_remaining[-1]
    # the downstream saw the caller's deadline, less the time already spent (timer slack allowed)
    assert remaining is not None and 0 < remaining <= 2.05


async def test_deadline_exceeded(servers: Any) -> None:
    up, *_ = servers
    async with grpc.aio.insecure_channel(f"127.0.0.1:{up.port}") as ch:
        stub = router_pb2_grpc.RouterServiceStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ClassifyTurn(_req("sleep"), metadata=_md(_token()), timeout=0.2)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_oversized_message_rejected(servers: Any) -> None:
    up, *_ = servers
    big = "x" * (128 * 1024)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _raw_call(up.port, _md(_token()), big)
    assert err.value.code() in (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.INVALID_ARGUMENT,
    )


async def test_health_and_reflection_need_no_token(servers: Any) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    up, *_ = servers
    async with grpc.aio.insecure_channel(f"127.0.0.1:{up.port}") as ch:
        h = health_pb2_grpc.HealthStub(ch)
        r = await h.Check(health_pb2.HealthCheckRequest(service="parley.router.v1.RouterService"))
        assert r.status == health_pb2.HealthCheckResponse.SERVING
        refl = reflection_pb2_grpc.ServerReflectionStub(ch)
        call = refl.ServerReflectionInfo()
        await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
        resp = await call.read()
        await call.done_writing()
        names = {s.name for s in resp.list_services_response.service}
        assert "parley.router.v1.RouterService" in names


def test_a_key_signs_only_for_its_owner() -> None:
    from parley_runtime.auth import TokenSigner, TokenVerifier, key_owner

    keys = {"router-svc": "r" * 40, "router-svc:2026-12": "n" * 40, "team-x": "t" * 40}
    verifier = TokenVerifier(keys=keys, allowed_callers=["router-svc"])
    # a rotated key of the same caller
    rotated = TokenSigner(
        service="router-svc", kid="router-svc:2026-12", secret=keys["router-svc:2026-12"]
    )
    assert verifier.verify(rotated.token(tenant="acme")).service == "router-svc"
    assert key_owner("router-svc:2026-12") == "router-svc"
    # team-x's key cannot mint a router-svc token, whether through the signer or by hand
    with pytest.raises(ValueError, match="does not belong"):
        TokenSigner(service="router-svc", kid="team-x", secret=keys["team-x"])
    forged = jwt.encode({"iss": "router-svc", "aud": "parley", "exp": int(time.time()) + 60},
                        keys["team-x"], algorithm="HS256", headers={"kid": "team-x"})
    from parley_runtime.errors import Unauthenticated

    with pytest.raises(Unauthenticated, match="does not own"):
        verifier.verify(forged)


async def test_a_message_echoing_a_long_value_is_cut_not_turned_into_a_metadata_error(
    servers: Any,
) -> None:
    up, *_ = servers
    for long_value in ("echo:" + "x" * 20000, "echo:" + "é" * 6000):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _raw_call(up.port, _md(_token("acme"), "acme"), text=long_value)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        details = err.value.details() or ""
        assert details.startswith("unknown thing 'echo:")
        assert details.endswith("(message truncated)")
        assert len(details) <= 1000
