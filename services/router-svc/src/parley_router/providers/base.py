"""What every provider adapter implements, and the errors they raise."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from parley_runtime.catalog import ModelEntry

from ..chat import ChatRequest, ProviderEvent, Usage

__all__ = [
    "CallContext",
    "ChatProvider",
    "NotAdmitted",
    "ProviderError",
    "ProviderErrorKind",
    "SendGate",
    "kind_for_status",
]


class ProviderErrorKind(Enum):
    RATE_LIMITED = "rate_limited"  # 429
    OVERLOADED = "overloaded"  # 529 / 503
    SERVER = "server"  # other 5xx
    TIMEOUT = "timeout"
    CONNECTION = "connection"
    INVALID_REQUEST = "invalid_request"  # 400/413/422: this request, on this provider
    AUTH = "auth"  # 401/403: configuration
    NOT_FOUND = "not_found"  # 404: unknown or retired model id
    STREAM = "stream"  # the stream broke (cut, malformed, in-stream error)


def kind_for_status(status: int) -> ProviderErrorKind:
    """The error kind of an HTTP status from any provider's API."""
    if status == 429:
        return ProviderErrorKind.RATE_LIMITED
    if status in (503, 529):
        return ProviderErrorKind.OVERLOADED
    if status in (408, 504):
        return ProviderErrorKind.TIMEOUT
    if status >= 500:
        return ProviderErrorKind.SERVER
    if status in (401, 403):
        return ProviderErrorKind.AUTH
    if status == 404:
        return ProviderErrorKind.NOT_FOUND
    return ProviderErrorKind.INVALID_REQUEST


RETRYABLE = frozenset(
    {
        ProviderErrorKind.RATE_LIMITED,
        ProviderErrorKind.OVERLOADED,
        ProviderErrorKind.SERVER,
        ProviderErrorKind.TIMEOUT,
        ProviderErrorKind.CONNECTION,
        ProviderErrorKind.STREAM,
    }
)


class ProviderError(Exception):
    """A provider call failed; `kind` says whether another attempt can help."""

    def __init__(
        self,
        kind: ProviderErrorKind,
        message: str,
        *,
        status: int | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.status = status
        self.retry_after_s = retry_after_s
        # What the provider had reported when the stream broke (billed even though it failed).
        self.partial_usage: Usage | None = None

    @property
    def retryable(self) -> bool:
        return self.kind in RETRYABLE

    @property
    def counts_against_model(self) -> bool:
        """Does this failure say something about the model's health (for the breaker)?"""
        return self.kind is not ProviderErrorKind.INVALID_REQUEST

    def __str__(self) -> str:
        code = f" {self.status}" if self.status else ""
        return f"{self.kind.value}{code}: {self.message}"


class NotAdmitted(Exception):
    """The call's admission (tenant rate limit) refused it: its request must not be sent."""


# Awaited by a provider right before its request leaves the process: returns when the call may
# be sent, raises NotAdmitted when it must not be (or the admission's own error).
SendGate = Callable[[], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class CallContext:
    tenant_id: str
    session_id: str
    turn_id: str
    attempt: int
    # Set when the call's admission is still being decided (see ChatProvider.honours_send_gate).
    send_gate: SendGate | None = None
    # Called by the provider, when set, once its request has gone out and been accepted (the
    # response has started) and before it waits for the first output: the router then tells
    # its caller the route while the model thinks. Optional for providers: without it the
    # route goes out right before the first output.
    on_sent: Callable[[], None] | None = None
    # Called by the provider, when set, with its Usage of this call (the object it keeps
    # updating) once its response has started: if the call then ends early (the caller
    # leaves, the stream breaks) the router bills what it had counted. Optional for providers:
    # without it an early-ended call is billed at the router's estimate.
    on_usage: Callable[[Usage], None] | None = None


class ChatProvider(Protocol):
    name: str
    # True when `stream` awaits `ctx.send_gate` before its request leaves the process: the
    # runner then prepares the call while the admission is decided (never sending before it).
    # Providers without it are only called once admitted.
    honours_send_gate: bool

    def stream(
        self, model: ModelEntry, request: ChatRequest, ctx: CallContext, *, timeout_s: float
    ) -> AsyncIterator[ProviderEvent]:
        """Stream one call: TextDelta/ToolCallEvent..., then exactly one TurnFinished.

        Raises ProviderError for every failure, before or during the stream.
        """
        ...

    async def aclose(self) -> None: ...
