"""Per-request context carried through contextvars (tenant, request id, caller, deadline)."""

from __future__ import annotations

import contextvars
import time
from dataclasses import dataclass

tenant_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "tenant_id", default=None
)
request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "request_id", default=None
)
caller_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("caller", default=None)
# Absolute monotonic deadline of the inbound RPC, propagated to outbound calls.
deadline_var: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "deadline", default=None
)

TENANT_HEADER = "x-parley-tenant-id"
REQUEST_ID_HEADER = "x-parley-request-id"


@dataclass(frozen=True, slots=True)
class RequestContext:
    tenant_id: str | None
    request_id: str | None
    caller: str | None


def current() -> RequestContext:
    return RequestContext(tenant_id_var.get(), request_id_var.get(), caller_var.get())


def require_tenant() -> str:
    """The tenant of the current request; raises if the request carries none."""
    from .errors import Unauthenticated

    tenant = tenant_id_var.get()
    if not tenant:
        raise Unauthenticated("request carries no tenant (x-parley-tenant-id or token claim)")
    return tenant


def time_remaining() -> float | None:
    """Seconds left before the inbound RPC's deadline, or None when it has none."""
    deadline = deadline_var.get()
    if deadline is None:
        return None
    return max(0.0, deadline - time.monotonic())
