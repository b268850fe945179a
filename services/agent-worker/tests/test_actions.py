"""Tenant actions: HMAC-signed HTTP calls verified by a local receiver playing the tenant."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from livekit.agents import llm
from parley_agent import signing
from parley_agent.config import ActionEndpoint
from parley_agent.tools import TenantActions, ToolScope

pytestmark = pytest.mark.unit

SECRET = "tenant-hook-secret-0123456789"


@dataclass
class Receiver:
    url: str
    received: list[dict[str, Any]] = field(default_factory=list)
    rejected: int = 0
    delay_s: float = 0.0


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    state = Receiver(url="")

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        if not signing.verify(SECRET, request.headers.get(signing.SIGNATURE_HEADER), body):
            state.rejected += 1
            return web.json_response({"error": "bad signature"}, status=401)
        if state.delay_s:
            await asyncio.sleep(state.delay_s)
        payload = json.loads(body)
        state.received.append(payload)
        if payload["action"] == "fetch_user_profile":
            return web.json_response({"name": "Ada", "plan": "pro"})
        return web.json_response({"id": f"T-{len(state.received)}", "status": "created"})

    app = web.Application()
    app.router.add_post("/hooks/{name}", handle)
    runner, base = await _serve(app)
    state.url = f"{base}/hooks"
    try:
        yield state
    finally:
        await runner.cleanup()


async def _serve(app: web.Application) -> tuple[web.AppRunner, str]:
    """`app` on a free loopback port: its runner (clean it up) and base URL."""
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


def actions_for(receiver: Receiver, http: aiohttp.ClientSession, secret: str,
                timeout_s: float = 2.0) -> TenantActions:
    endpoints = {
        name: ActionEndpoint(url=f"{receiver.url}/{name}", secret_env="ACME_HOOK_SECRET",  # type: ignore[arg-type]
                             timeout_s=timeout_s)
        for name in ("create_task", "log_insight", "fetch_user_profile")
    }
    return TenantActions(
        endpoints=endpoints,  # type: ignore[arg-type]
        scope=ToolScope("acme", "user-7", "sess-1", "room-1"),
        http=http,
        environ={"ACME_HOOK_SECRET": secret},
    )


def test_signature_roundtrip_and_tampering() -> None:
    body = b'{"a":1}'
    header = signing.sign(SECRET, body)
    assert signing.verify(SECRET, header, body)
    assert not signing.verify(SECRET, header, b'{"a":2}')
    assert not signing.verify("other-secret", header, body)
    assert not signing.verify(SECRET, None, body)
    assert not signing.verify(SECRET, "garbage", body)
    old = signing.sign(SECRET, body, timestamp=int(time.time()) - 3600)
    assert not signing.verify(SECRET, old, body)  # replay outside the window


async def test_signed_actions_reach_the_tenant(receiver: Receiver) -> None:
    async with aiohttp.ClientSession() as http:
        actions = actions_for(receiver, http, SECRET)
        tools = {t.info.name: t for t in actions.tools()}
        assert set(tools) == {"create_task", "log_insight", "fetch_user_profile"}

        out = await actions.call("create_task", {"title": "Send the contract"})
        assert json.loads(out)["status"] == "created"
        profile = await actions.call("fetch_user_profile", {})
        assert json.loads(profile)["name"] == "Ada"

    first = receiver.received[0]
    assert first["action"] == "create_task" and first["tenant_id"] == "acme"
    assert first["user_id"] == "user-7" and first["session_id"] == "sess-1"
    assert first["arguments"] == {"title": "Send the contract"}
    assert receiver.rejected == 0


async def test_bad_signature_is_rejected_and_reported_as_tool_error(receiver: Receiver) -> None:
    async with aiohttp.ClientSession() as http:
        actions = actions_for(receiver, http, "a-different-secret")
        tool = next(t for t in actions.tools() if t.info.name == "log_insight")
        with pytest.raises(llm.ToolError) as info:
            await tool(raw_arguments={"insight": "wants SSO"})
    assert "HTTP 401" in str(info.value)
    assert receiver.rejected == 1 and receiver.received == []


async def test_timeout_and_unreachable_are_tool_errors(receiver: Receiver) -> None:
    receiver.delay_s = 1.0
    async with aiohttp.ClientSession() as http:
        actions = actions_for(receiver, http, SECRET, timeout_s=0.2)
        tool = next(t for t in actions.tools() if t.info.name == "create_task")
        with pytest.raises(llm.ToolError, match="timed out"):
            await tool(raw_arguments={"title": "x"})
        dead = TenantActions(
            endpoints={"create_task": ActionEndpoint(  # type: ignore[dict-item]
                url="http://127.0.0.1:9/nothing", secret_env="S", timeout_s=1)},  # type: ignore[arg-type]
            scope=ToolScope("acme", None, "s", "r"), http=http, environ={"S": SECRET},
        )
        with pytest.raises(llm.ToolError, match="could not reach"):
            await dead.tools()[0](raw_arguments={"title": "x"})


async def test_action_without_secret_is_not_offered(receiver: Receiver) -> None:
    async with aiohttp.ClientSession() as http:
        actions = TenantActions(
            endpoints={"create_task": ActionEndpoint(  # type: ignore[dict-item]
                url=f"{receiver.url}/create_task", secret_env="MISSING")},  # type: ignore[arg-type]
            scope=ToolScope("acme", None, "s", "r"), http=http, environ={},
        )
        assert actions.tools() == []


def test_malformed_timestamps_are_rejected_not_raised() -> None:
    body = b'{"a":1}'
    mac = signing.compute_mac(SECRET, int(time.time()), body)
    for t in ("1" + "0" * 400, "-5", "+5", " 5", "5e3", "٣", ""):
        assert not signing.verify(SECRET, f"t={t},v1={mac}", body)


async def _serve_hook(handler: Any) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_post("/hook", handler)
    runner, base = await _serve(app)
    return runner, f"{base}/hook"


def _one_action(url: str, http: aiohttp.ClientSession, name: str = "create_task",
                user_id: str | None = "user-7") -> TenantActions:
    return TenantActions(
        endpoints={name: ActionEndpoint(url=url, secret_env="S", timeout_s=2)},  # type: ignore[dict-item,arg-type]
        scope=ToolScope("acme", user_id, "s", "r"), http=http, environ={"S": SECRET},
    )


async def test_a_response_sent_in_pieces_is_read_whole() -> None:
    async def handle(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        await resp.write(b'{"name":"Ada",')
        await asyncio.sleep(0.05)
        await resp.write(b'"plan":"pro"}')
        await resp.write_eof()
        return resp

    runner, url = await _serve_hook(handle)
    try:
        async with aiohttp.ClientSession() as http:
            out = await _one_action(url, http).call("create_task", {"title": "x"})
    finally:
        await runner.cleanup()
    assert json.loads(out) == {"name": "Ada", "plan": "pro"}


async def test_a_redirect_is_a_failed_action_and_is_not_followed() -> None:
    followed: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        return web.Response(status=302, headers={"Location": "/elsewhere"})

    async def elsewhere(request: web.Request) -> web.Response:
        followed.append(request.path)
        return web.json_response({"status": "created"})

    app = web.Application()
    app.router.add_post("/hook", handle)
    app.router.add_post("/elsewhere", elsewhere)
    app.router.add_get("/elsewhere", elsewhere)
    runner, base = await _serve(app)
    try:
        async with aiohttp.ClientSession() as http:
            tool = _one_action(f"{base}/hook", http).tools()[0]
            with pytest.raises(llm.ToolError, match="HTTP 302.*redirect"):
                await tool(raw_arguments={"title": "x"})
    finally:
        await runner.cleanup()
    assert followed == []


async def test_nan_arguments_are_refused_before_any_call(receiver: Receiver) -> None:
    async with aiohttp.ClientSession() as http:
        tool = next(t for t in actions_for(receiver, http, SECRET).tools()
                    if t.info.name == "log_insight")
        for bad in (float("nan"), float("inf"), [1, float("-inf")]):
            with pytest.raises(llm.ToolError, match="NaN or Infinity"):
                await tool(raw_arguments={"insight": "x", "score": bad})
    assert receiver.received == [] and receiver.rejected == 0


async def test_profile_action_is_not_offered_without_a_user(receiver: Receiver) -> None:
    async with aiohttp.ClientSession() as http:
        with_user = _one_action(f"{receiver.url}/fetch_user_profile", http, "fetch_user_profile")
        anonymous = _one_action(f"{receiver.url}/fetch_user_profile", http, "fetch_user_profile",
                                user_id=None)
        assert [t.info.name for t in with_user.tools()] == ["fetch_user_profile"]
        assert anonymous.tools() == []
