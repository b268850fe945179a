"""Who a job is for: tenant, user, session and role, from dispatch and room metadata (JSON).

Dispatch metadata (set by whoever dispatched the agent) and room metadata (set when the room was
created) are both JSON objects; either may carry the identity. When both name a tenant they must
agree: a job whose two sources disagree is refused rather than guessed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from parley_runtime.tenants import TENANT_ID_RE

from .config import Role

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}\Z")
_ROLES: tuple[Role, ...] = ("assistant", "notetaker")
_MAX_METADATA_BYTES = 16 * 1024


class MetadataError(ValueError):
    """The job's metadata cannot identify a tenant; `reason` is a short machine-readable code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True, slots=True)
class JobIdentity:
    tenant_id: str
    user_id: str | None
    # Shared by every service's usage events for this conversation; billing's session bill key.
    session_id: str | None
    role: Role
    # Remaining metadata keys, for the session (e.g. a display name); never secrets.
    extra: dict[str, Any]


def _parse_object(raw: str | None, source: str) -> dict[str, Any]:
    if raw is None or not raw.strip():
        return {}
    if len(raw.encode()) > _MAX_METADATA_BYTES:
        raise MetadataError("metadata_too_large", f"{source} metadata exceeds 16 KiB")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise MetadataError(
            "malformed_metadata", f"{source} metadata is not valid JSON: {exc.msg}"
        ) from None
    except (ValueError, RecursionError) as exc:
        # valid JSON this parser will not hold: nesting past the recursion limit, or an
        # integer past Python's digit limit
        raise MetadataError(
            "malformed_metadata",
            f"{source} metadata cannot be read ({type(exc).__name__}: nesting or a number "
            "too large)",
        ) from None
    if not isinstance(value, dict):
        raise MetadataError("malformed_metadata", f"{source} metadata must be a JSON object")
    return value


def _optional_id(data: dict[str, Any], key: str, source: str) -> str | None:
    value = data.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not _ID_RE.match(value):
        raise MetadataError(
            "malformed_metadata",
            f"{source} metadata field {key!r} must be a string of letters, digits and ._:@- "
            "(max 128)",
        )
    return value


def parse_job_identity(dispatch_metadata: str | None, room_metadata: str | None) -> JobIdentity:
    """Merge dispatch and room metadata into a JobIdentity.

    Raises:
        MetadataError: no tenant, malformed JSON or fields, or conflicting tenants.
    """
    dispatch = _parse_object(dispatch_metadata, "dispatch")
    room = _parse_object(room_metadata, "room")

    tenants = {
        src: t
        for src, t in (
            ("dispatch", _optional_id(dispatch, "tenant_id", "dispatch")),
            ("room", _optional_id(room, "tenant_id", "room")),
        )
        if t is not None
    }
    if not tenants:
        raise MetadataError(
            "missing_tenant", "neither dispatch nor room metadata carries a tenant_id"
        )
    if len(set(tenants.values())) > 1:
        raise MetadataError(
            "conflicting_tenant", "dispatch and room metadata name different tenants"
        )
    tenant_id = next(iter(tenants.values()))
    if not TENANT_ID_RE.match(tenant_id):
        raise MetadataError(
            "malformed_metadata", f"tenant_id must match {TENANT_ID_RE.pattern}"
        )

    merged = {**room, **dispatch}
    # The role is per dispatch (two agents share one room's metadata).
    role_value = dispatch.get("role") or "assistant"
    if role_value not in _ROLES:
        raise MetadataError("malformed_metadata", f"role must be one of {', '.join(_ROLES)}")
    role: Role = role_value
    user_id = _optional_id(dispatch, "user_id", "dispatch") or _optional_id(room, "user_id", "room")
    session_id = _optional_id(dispatch, "session_id", "dispatch") or _optional_id(
        room, "session_id", "room"
    )
    extra = {
        k: v
        for k, v in merged.items()
        if k not in ("tenant_id", "user_id", "session_id", "role")
    }
    return JobIdentity(
        tenant_id=tenant_id, user_id=user_id, session_id=session_id, role=role, extra=extra
    )
