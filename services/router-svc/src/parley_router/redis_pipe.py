"""A lean Redis client for the rate limiter's hot path: one connection, pipelined commands.

Every turn makes one rate-limit call (an EVALSHA). Through redis-py's pool that call costs
~0.13 ms of CPU and several event-loop turns before the request is even written (pool lock,
health checks, retry wrappers), which sits on the turn's first-token path. This client writes
the command at once and matches replies to requests in order (Redis answers a connection's
commands in the order they arrive), so concurrent turns share one connection with no lock.

Failure handling matches what the limiter expects from redis-py: connection trouble raises
`redis.exceptions.ConnectionError` (a RedisError), a command that does not answer within its
timeout raises `TimeoutError` and drops the connection (the next command reconnects), and an
error reply raises `redis.exceptions.ResponseError`. A caller that is cancelled (its turn went
away) just abandons its reply: the connection stays in step.

Only plain `redis://` and `rediss://` URLs without query options are handled
(`PipelinedRedis.supports`); anything else keeps using redis-py.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from typing import Any
from urllib.parse import unquote, urlsplit

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError

__all__ = ["PipelinedRedis", "pack_command"]

Reply = None | int | bytes | list[Any] | ResponseError


def pack_command(*args: str | bytes | int | float) -> bytes:
    """RESP array of bulk strings (what every Redis command is on the wire)."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, str):
            data = arg.encode()
        elif isinstance(arg, float):
            data = repr(arg).encode()
        else:
            data = b"%d" % arg
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class _Incomplete(Exception):
    pass


def _parse(buf: bytearray | bytes, pos: int) -> tuple[Reply, int]:
    """One RESP2 reply from `buf` at `pos`; raises _Incomplete when more bytes are needed."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        raise _Incomplete
    kind = buf[pos]
    line = bytes(buf[pos + 1:end])
    pos = end + 2
    if kind == 0x3A:  # ':' integer
        return int(line), pos
    if kind == 0x24:  # '$' bulk string
        n = int(line)
        if n < 0:
            return None, pos
        if len(buf) < pos + n + 2:
            raise _Incomplete
        return bytes(buf[pos:pos + n]), pos + n + 2
    if kind == 0x2A:  # '*' array
        n = int(line)
        if n < 0:
            return None, pos
        items: list[Any] = []
        for _ in range(n):
            item, pos = _parse(buf, pos)
            items.append(item)
        return items, pos
    if kind == 0x2B:  # '+' simple string
        return line, pos
    if kind == 0x2D:  # '-' error
        message = line.decode(errors="replace")
        if message.startswith("NOSCRIPT"):
            return NoScriptError(message), pos
        return ResponseError(message), pos
    raise RedisConnectionError(f"unexpected reply from Redis: {bytes(buf[pos - 2:pos + 16])!r}")


class _Protocol(asyncio.Protocol):
    def __init__(self, on_lost: Any) -> None:
        self.transport: asyncio.Transport | None = None
        self.waiting: deque[asyncio.Future[Reply]] = deque()
        self._buf = bytearray()
        self._on_lost = on_lost
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        pos = 0
        try:
            while pos < len(buf) and self.waiting:
                try:
                    reply, pos = _parse(buf, pos)
                except _Incomplete:
                    break
                fut = self.waiting.popleft()
                if not fut.done():  # a cancelled caller's reply is dropped, in step
                    fut.set_result(reply)
        except Exception as exc:  # malformed stream: nothing after it can be trusted
            self.fail(RedisConnectionError(f"Redis protocol error: {exc}"))
            return
        del buf[:pos]
        if buf and not self.waiting:
            self.fail(RedisConnectionError("Redis sent a reply nobody asked for"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(RedisConnectionError(f"connection to Redis lost ({exc or 'closed'})"))

    def fail(self, exc: Exception) -> None:
        if not self.closed:
            self.closed = True
            self._on_lost(self)
            if self.transport is not None:
                self.transport.close()
        while self.waiting:
            fut = self.waiting.popleft()
            if not fut.done():
                fut.set_exception(exc)


class PipelinedRedis:
    """One pipelined connection to the Redis server of `url` (opened on first use)."""

    def __init__(self, url: str, *, connect_timeout_s: float = 0.25) -> None:
        if not self.supports(url):
            raise ValueError(f"unsupported Redis URL for the pipelined client: {url!r}")
        parts = urlsplit(url)
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or 6379
        self._ssl = ssl.create_default_context() if parts.scheme == "rediss" else None
        self._user = unquote(parts.username) if parts.username else None
        self._password = unquote(parts.password) if parts.password else None
        path = parts.path.strip("/")
        self._db = int(path) if path else 0
        self._connect_timeout = connect_timeout_s
        self._proto: _Protocol | None = None
        self._connecting: asyncio.Task[_Protocol] | None = None

    @staticmethod
    def supports(url: str) -> bool:
        """True for `redis://[[user]:password@]host[:port][/db]` (and `rediss://`)."""
        try:
            parts = urlsplit(url)
            _ = parts.port  # a malformed port raises ValueError
        except ValueError:
            return False
        path = parts.path.strip("/")
        return (parts.scheme in ("redis", "rediss") and bool(parts.hostname)
                and not parts.query and not parts.fragment and (not path or path.isdigit()))

    def _lost(self, proto: _Protocol) -> None:
        if self._proto is proto:
            self._proto = None

    async def _open(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        proto: _Protocol | None = None
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, proto = await loop.create_connection(
                    lambda: _Protocol(self._lost), self._host, self._port, ssl=self._ssl,
                    server_hostname=self._host if self._ssl else None,
                )
                hello: list[bytes] = []
                if self._password is not None:
                    hello.append(pack_command("AUTH", self._password) if self._user is None
                                 else pack_command("AUTH", self._user, self._password))
                if self._db:
                    hello.append(pack_command("SELECT", self._db))
                for cmd in hello:
                    reply = await self._send(proto, cmd)
                    if isinstance(reply, ResponseError):
                        raise RedisConnectionError(f"Redis refused the connection: {reply}")
        except BaseException as exc:
            if proto is not None:
                proto.fail(RedisConnectionError("connection set-up failed"))
            if isinstance(exc, (OSError, TimeoutError)):
                raise RedisConnectionError(
                    f"cannot connect to Redis at {self._host}:{self._port}: "
                    f"{type(exc).__name__}: {exc}"
                ) from None
            raise
        self._proto = proto
        return proto

    async def _connected(self) -> _Protocol:
        proto = self._proto
        if proto is not None and not proto.closed:
            return proto
        task = self._connecting
        if task is None or task.done():
            # Its own task: one caller giving up (cancelled) does not abort the others' connect.
            task = self._connecting = asyncio.ensure_future(self._open())
            task.add_done_callback(_retrieve)
        return await asyncio.shield(task)

    @staticmethod
    def _send(proto: _Protocol, command: bytes) -> asyncio.Future[Reply]:
        if proto.closed or proto.transport is None:
            raise RedisConnectionError("connection to Redis is closed")
        fut: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        proto.waiting.append(fut)
        proto.transport.write(command)
        return fut

    async def execute(self, command: bytes, *, timeout_s: float) -> Reply:
        """Send one packed command and return its reply (error replies are raised).

        The whole call (connecting included) is bounded by `timeout_s`; a command that does
        not answer in time drops the connection (TimeoutError).
        """
        proto = self._proto
        try:
            async with asyncio.timeout(timeout_s):
                if proto is None or proto.closed:
                    proto = await self._connected()
                reply = await self._send(proto, command)
        except TimeoutError:
            if proto is not None:
                proto.fail(RedisConnectionError("Redis did not answer in time"))
            raise
        if isinstance(reply, ResponseError):
            raise reply
        return reply

    async def evalsha(self, sha: str, script: str, keys: list[str], args: list[Any], *,
                      timeout_s: float) -> Reply:
        """EVALSHA, falling back to EVAL (which caches the script) when Redis lacks it."""
        try:
            return await self.execute(
                pack_command("EVALSHA", sha, len(keys), *keys, *args), timeout_s=timeout_s)
        except NoScriptError:
            return await self.execute(
                pack_command("EVAL", script, len(keys), *keys, *args), timeout_s=timeout_s)

    async def aclose(self) -> None:
        task, self._connecting = self._connecting, None
        if task is not None and not task.done():
            task.cancel()
        proto, self._proto = self._proto, None
        if proto is not None:
            proto.fail(RedisConnectionError("client closed"))


def _retrieve(task: asyncio.Task[Any]) -> None:
    # Connect failures reach every waiting caller; nobody waiting is not an error to log.
    if not task.cancelled():
        task.exception()
