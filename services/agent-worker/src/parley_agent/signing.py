"""HMAC-SHA256 request signatures for calls to tenants' own endpoints.

Header: `X-Parley-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>`.
Receivers recompute the MAC over the raw body with their copy of the secret, compare in
constant time and reject timestamps outside a tolerance window. The window bounds how long a
captured request can be replayed; within it a receiver that must not act twice de-duplicates
on the body's `request_id` (also sent as the `Idempotency-Key` header).
"""

from __future__ import annotations

import hashlib
import hmac
import time

SIGNATURE_HEADER = "X-Parley-Signature"
DEFAULT_TOLERANCE_S = 300


def compute_mac(secret: str, timestamp: int, body: bytes) -> str:
    message = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, *, timestamp: int | None = None) -> str:
    """The signature header value for `body`."""
    ts = int(time.time()) if timestamp is None else timestamp
    return f"t={ts},v1={compute_mac(secret, ts, body)}"


def verify(
    secret: str,
    header: str | None,
    body: bytes,
    *,
    now: float | None = None,
    tolerance_s: int = DEFAULT_TOLERANCE_S,
) -> bool:
    """True when `header` is a valid, fresh signature of `body` under `secret`."""
    if not header:
        return False
    fields: dict[str, list[str]] = {}
    for item in header.split(","):
        key, sep, value = item.strip().partition("=")
        if sep:
            fields.setdefault(key, []).append(value)
    raw_ts = fields.get("t", [""])[0]
    # unix seconds: a bounded run of digits (a long one would only overflow the clock maths)
    if not (raw_ts.isascii() and raw_ts.isdigit() and len(raw_ts) <= 12):
        return False
    ts = int(raw_ts)
    current = time.time() if now is None else now
    if abs(current - ts) > tolerance_s:
        return False
    expected = compute_mac(secret, ts, body)
    # Several v1 values allow secret rotation on the sender's side.
    return any(hmac.compare_digest(expected, candidate) for candidate in fields.get("v1", []))
