"""A guard for the services' HTTP APIs (plain ASGI, no framework import).

The server decodes a request path before routing: invalid UTF-8 becomes U+FFFD (so `bad%FF` and
`bad%FE` reach the same resource) and a route pattern's `$` matches before a trailing newline
(so `doc%0A` reaches `doc`). Ids taken from the path are therefore checked here, on the raw
bytes: a path that is not UTF-8 or holds a control character is refused before any route runs.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import unquote_to_bytes

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def path_problem(raw_path: bytes) -> str | None:
    """Why a raw (percent-encoded) request path cannot be served, or None."""
    decoded = unquote_to_bytes(raw_path)
    try:
        text = decoded.decode("utf-8")
    except UnicodeDecodeError:
        return "the request path is not valid UTF-8 once percent-decoded"
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in text):
        return "the request path holds a control character (e.g. %00 or %0A)"
    return None


class RejectBadPaths:
    """Answers 400 with `body(message)` (JSON) for a path `path_problem` refuses."""

    def __init__(
        self, app: ASGIApp, *, body: Callable[[str], dict[str, Any]] | None = None
    ) -> None:
        self.app = app
        self.body = body or (lambda message: {"error": message})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            raw = scope.get("raw_path")
            if not isinstance(raw, bytes | bytearray):
                raw = str(scope.get("path", "")).encode("utf-8", "surrogateescape")
            problem = path_problem(bytes(raw).split(b"?", 1)[0])
            if problem is not None:
                payload = json.dumps(self.body(problem)).encode()
                await send({"type": "http.response.start", "status": 400, "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                ]})
                await send({"type": "http.response.body", "body": payload})
                return
        await self.app(scope, receive, send)
