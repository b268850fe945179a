"""The agent's tools: knowledge search through kb-svc and tenant-configured actions, which are
HMAC-signed HTTP POSTs to the tenant's own endpoints. Failures come back to the LLM as tool
errors (it can tell the user); they never end the session."""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass
from typing import Any

import aiohttp
import grpc
from livekit.agents import llm
from parley.kb.v1 import kb_pb2, kb_pb2_grpc
from parley_runtime.context import TENANT_HEADER

from . import signing
from .config import ActionEndpoint, ActionName, KnowledgeOptions
from .log import logger
from .metrics import TOOL_CALLS

_MAX_RESULT_CHARS = 1500
_MAX_RESPONSE_BYTES = 64 * 1024
_MODES = {
    "hybrid": kb_pb2.SEARCH_MODE_HYBRID,
    "vector": kb_pb2.SEARCH_MODE_VECTOR,
    "full_text": kb_pb2.SEARCH_MODE_FULL_TEXT,
}


@dataclass(frozen=True, slots=True)
class ToolScope:
    """Who the tools act for."""

    tenant_id: str
    user_id: str | None
    session_id: str
    room: str


# ---------------------------------------------------------------------------------------------
# Knowledge search


def format_hits(hits: list[kb_pb2.SearchHit], *, max_chars: int) -> str:
    """Numbered, cited snippets: `[1] Title (doc-id): text…`."""
    if not hits:
        return "No matching passages in the knowledge base."
    lines = []
    for i, hit in enumerate(hits, 1):
        text = " ".join(hit.text.split())
        if len(text) > max_chars:
            text = text[: max_chars - 1].rstrip() + "…"
        title = hit.document_title or hit.document_id
        lines.append(f"[{i}] {title} ({hit.document_id}): {text}")
    return "\n".join(lines)


class KnowledgeSearch:
    def __init__(
        self,
        *,
        channel: grpc.aio.Channel,
        scope: ToolScope,
        options: KnowledgeOptions,
        timeout_s: float = 5.0,
    ) -> None:
        self._stub = kb_pb2_grpc.KnowledgeBaseServiceStub(channel)
        self._scope = scope
        self._opts = options
        self._timeout = timeout_s

    async def search(self, query: str) -> str:
        query = " ".join(query.split())[:1000]
        if not query:
            raise llm.ToolError("search_knowledge needs a non-empty query")
        started = time.perf_counter()
        try:
            resp = await self._stub.Search(
                kb_pb2.SearchRequest(
                    query=query,
                    top_k=self._opts.top_k,
                    mode=_MODES[self._opts.mode],
                    min_score=self._opts.min_score,
                ),
                timeout=self._timeout,
                metadata=((TENANT_HEADER, self._scope.tenant_id),),
            )
        except grpc.aio.AioRpcError as err:
            TOOL_CALLS.labels("search_knowledge", "error").inc()
            logger.warning(
                "knowledge search failed",
                extra={"code": err.code().name, "details": err.details()},
            )
            raise llm.ToolError(
                "The knowledge base is unavailable right now; answer without it and say so."
            ) from None
        TOOL_CALLS.labels("search_knowledge", "ok").inc()
        logger.debug(
            "knowledge search",
            extra={
                "hits": len(resp.hits),
                "elapsed_ms": round((time.perf_counter() - started) * 1000, 1),
                "query": query,
            },
        )
        return format_hits(list(resp.hits), max_chars=self._opts.max_snippet_chars)

    def tool(self) -> llm.RawFunctionTool[..., Any]:
        async def search_knowledge(raw_arguments: dict[str, object]) -> str:
            query = raw_arguments.get("query")
            if not isinstance(query, str):
                raise llm.ToolError("search_knowledge needs a string 'query'")
            return await self.search(query)

        return llm.function_tool(
            search_knowledge,
            raw_schema={
                "name": "search_knowledge",
                "description": (
                    "Search this organisation's knowledge base (documents, policies, product "
                    "facts). Returns numbered passages with their source; cite the source when "
                    "you use one."
                ),
                "parameters": {
                    "type": "object",
                    "properties": {
                        "query": {
                            "type": "string",
                            "description": "What to look for, in a few words or a question",
                        }
                    },
                    "required": ["query"],
                },
            },
        )


# ---------------------------------------------------------------------------------------------
# Tenant actions

_ACTION_SCHEMAS: dict[str, tuple[str, dict[str, Any]]] = {
    "create_task": (
        "Create a follow-up task for the user in the organisation's task system.",
        {
            "type": "object",
            "properties": {
                "title": {"type": "string", "description": "Short task title"},
                "description": {"type": "string", "description": "What needs doing"},
                "due_date": {"type": "string", "description": "Optional due date, YYYY-MM-DD"},
            },
            "required": ["title"],
        },
    ),
    "log_insight": (
        "Record an insight about this conversation (a need, a complaint, an idea) for the team.",
        {
            "type": "object",
            "properties": {
                "insight": {"type": "string", "description": "The insight, one or two sentences"},
                "category": {
                    "type": "string",
                    "description": "e.g. feedback, bug, sales, support",
                },
            },
            "required": ["insight"],
        },
    ),
    "fetch_user_profile": (
        "Fetch the current user's profile (name, plan, preferences) from the organisation.",
        {"type": "object", "properties": {}, "required": []},
    ),
}


class ActionError(Exception):
    pass


def _json_body(payload: dict[str, object]) -> bytes:
    """The exact bytes that are signed and sent: compact, sorted keys, strict JSON (ValueError
    on NaN or Infinity)."""
    return json.dumps(payload, separators=(",", ":"), sort_keys=True, allow_nan=False).encode()


async def _read_capped(content: aiohttp.StreamReader, cap: int) -> bytes:
    """The response body up to `cap` bytes. `StreamReader.read(n)` returns whatever has arrived
    (one chunk), not n bytes, so a body sent in pieces is read until its end or the cap."""
    buf = bytearray()
    while len(buf) < cap:
        chunk = await content.read(cap - len(buf))
        if not chunk:
            break
        buf += chunk
    return bytes(buf)


class TenantActions:
    """Signed HTTP calls to the tenant's endpoints; one aiohttp session per agent session."""

    def __init__(
        self,
        *,
        endpoints: dict[ActionName, ActionEndpoint],
        scope: ToolScope,
        http: aiohttp.ClientSession,
        environ: dict[str, str] | None = None,
    ) -> None:
        self._scope = scope
        self._http = http
        env = os.environ if environ is None else environ
        self._endpoints: dict[str, tuple[ActionEndpoint, str]] = {}
        for name, endpoint in endpoints.items():
            if name == "fetch_user_profile" and scope.user_id is None:
                # no user in the job's metadata: there is no profile to fetch
                logger.info("action disabled: the session has no user_id", extra={"action": name})
                continue
            secret = env.get(endpoint.secret_env)
            if not secret:
                # Unsigned calls are never made: the action is left out of this session.
                logger.warning(
                    "action disabled: its signing secret is not set",
                    extra={"action": name, "secret_env": endpoint.secret_env},
                )
                continue
            self._endpoints[name] = (endpoint, secret)

    @property
    def names(self) -> list[str]:
        return sorted(self._endpoints)

    async def call(self, name: str, arguments: dict[str, object]) -> str:
        endpoint, secret = self._endpoints[name]
        request_id = uuid.uuid4().hex
        try:
            body = _json_body(
                {
                    "action": name,
                    "request_id": request_id,
                    "tenant_id": self._scope.tenant_id,
                    "user_id": self._scope.user_id,
                    "session_id": self._scope.session_id,
                    "room": self._scope.room,
                    "arguments": arguments,
                }
            )
        except ValueError:
            # NaN and Infinity are not JSON: a receiver's parser would reject the signed body
            TOOL_CALLS.labels(name, "bad_arguments").inc()
            raise ActionError(
                f"{name} was not called: its arguments hold NaN or Infinity, which JSON cannot "
                "carry; call it again with plain numbers or text"
            ) from None
        headers = {
            "Content-Type": "application/json",
            signing.SIGNATURE_HEADER: signing.sign(secret, body),
            "X-Parley-Tenant-Id": self._scope.tenant_id,
            "Idempotency-Key": request_id,
            "User-Agent": "parley-agent-worker",
        }
        started = time.perf_counter()
        try:
            async with self._http.post(
                str(endpoint.url),
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=endpoint.timeout_s),
                allow_redirects=False,
            ) as resp:
                status = resp.status
                payload = await _read_capped(resp.content, _MAX_RESPONSE_BYTES)
        except TimeoutError:
            TOOL_CALLS.labels(name, "timeout").inc()
            raise ActionError(f"{name} timed out after {endpoint.timeout_s:g}s") from None
        except aiohttp.ClientError as exc:
            TOOL_CALLS.labels(name, "error").inc()
            raise ActionError(
                f"{name} could not reach the endpoint ({type(exc).__name__})"
            ) from None
        elapsed_ms = round((time.perf_counter() - started) * 1000, 1)
        if not 200 <= status < 300:
            # Redirects are not followed (the signed request must reach the configured URL and
            # nothing else), so a 3xx is a failure too: the action did not happen.
            TOOL_CALLS.labels(name, f"http_{status // 100}xx").inc()
            logger.warning(
                "action rejected by tenant endpoint",
                extra={"action": name, "status": status, "elapsed_ms": elapsed_ms},
            )
            hint = " (a redirect; the action's URL must be its final address)" if (
                300 <= status < 400
            ) else ""
            raise ActionError(f"{name} failed: the endpoint answered HTTP {status}{hint}")
        TOOL_CALLS.labels(name, "ok").inc()
        text = payload.decode("utf-8", errors="replace").strip()
        try:
            text = json.dumps(json.loads(text), separators=(",", ":"), ensure_ascii=False)
        except ValueError:
            pass
        if len(text) > _MAX_RESULT_CHARS:
            text = text[: _MAX_RESULT_CHARS - 1] + "…"
        return text or f"{name} done."

    def tools(self) -> list[llm.RawFunctionTool[..., Any]]:
        out = []
        for name in self.names:
            endpoint, _ = self._endpoints[name]
            description, parameters = _ACTION_SCHEMAS[name]
            out.append(self._tool(name, endpoint.description or description, parameters))
        return out

    def _tool(
        self, name: str, description: str, parameters: dict[str, Any]
    ) -> llm.RawFunctionTool[..., Any]:
        async def run(raw_arguments: dict[str, object]) -> str:
            try:
                return await self.call(name, raw_arguments)
            except ActionError as exc:
                raise llm.ToolError(str(exc)) from None

        run.__name__ = name
        return llm.function_tool(
            run, raw_schema={"name": name, "description": description, "parameters": parameters}
        )
