"""The identifiers every service accepts from callers and passes on to billing.

A session id travels from the agent into router-svc, vision-svc and billing-svc; a service
that accepted one billing refuses would answer the caller and then lose the usage (refused
events go to the spool's dead-letter file). So each service checks ids at its door with the
rules billing-svc applies to stored events.
"""

from __future__ import annotations

import re

from .errors import InvalidArgument

MAX_ID_LEN = 128
MAX_IDEMPOTENCY_KEY_LEN = 200
_PRINTABLE_RE = re.compile(r"^[\x21-\x7e]+\Z")


def is_valid_id(value: str, max_len: int = MAX_ID_LEN) -> bool:
    """1 to `max_len` printable ASCII characters, no spaces or control characters."""
    return 0 < len(value) <= max_len and _PRINTABLE_RE.match(value) is not None


def check_id(field: str, value: str, *, required: bool = False, max_len: int = MAX_ID_LEN) -> None:
    """Raises InvalidArgument unless `value` is empty (and not required) or a valid id. The
    message names the field and the rule, never echoes a long value."""
    if not value:
        if required:
            raise InvalidArgument(f"{field} is required")
        return
    if not is_valid_id(value, max_len):
        raise InvalidArgument(
            f"{field} must be 1-{max_len} printable ASCII characters without spaces "
            f"(got {len(value)} characters)"
        )
