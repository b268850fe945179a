"""Usage events as the ledger sees them, and the rules a valid event follows.

The gRPC layer turns each `parley.billing.v1.UsageEvent` into a `Usage`; `validate` refuses
anything a well-behaved service cannot have measured (negative or absurd quantities, token
counts that do not add up, timestamps far in the future), so one bad sender cannot corrupt a
tenant's bill.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from dataclasses import dataclass
from enum import StrEnum

from parley_runtime.ids import MAX_ID_LEN, MAX_IDEMPOTENCY_KEY_LEN, is_valid_id


class UsageType(StrEnum):
    LLM = "llm"
    VISION = "vision"
    STT = "stt"
    TTS = "tts"
    EMBEDDING = "embedding"
    SESSION = "session"


# The catalog `kind` each usage type is priced from.
CATALOG_KIND = {
    UsageType.LLM: "llm",
    UsageType.VISION: "llm",
    UsageType.STT: "stt",
    UsageType.TTS: "tts",
    UsageType.EMBEDDING: "embedding",
    UsageType.SESSION: "session",
}

# Catalog entry that prices agent session minutes when the event names no model.
DEFAULT_SESSION_MODEL = "livekit-agent-session"

# the rules every service checks its ids with at its door (parley_runtime.ids)
MAX_KEY_LEN = MAX_IDEMPOTENCY_KEY_LEN
# Upper bounds per event: far above anything one call, one track period or one session can
# produce, low enough that a unit mix-up (ms for s, bytes for tokens) is caught.
MAX_TOKENS = 50_000_000
MAX_FRAMES = 10_000_000
MAX_IMAGE_TOKENS = 10_000_000_000
MAX_IMAGES = 100_000
MAX_SECONDS = 86_400.0
MAX_MINUTES = 1_440.0
MAX_CHARACTERS = 10_000_000
MAX_TEXTS = 10_000_000
MAX_FPS = 240.0
MAX_LATENCY_MS = 86_400_000.0  # a day: no single model call takes that long

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/@+-]*\Z")


class EventError(ValueError):
    """A usage event that cannot be accepted; the message says which field and why."""


@dataclass(slots=True)
class Usage:
    """One metered occurrence. Fields not used by its `usage_type` stay zero."""

    idempotency_key: str
    occurred_at: dt.datetime
    session_id: str
    service: str
    usage_type: UsageType
    provider: str = ""
    model_id: str = ""
    tier: str = ""
    # LLM (input includes cached reads and cache writes) and embedding (input = tokens).
    input_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    output_tokens: int = 0
    images: int = 0
    # LLM: wall time of the call. Not priced, but kept in the stored event, so it must be a
    # real measurement too.
    latency_ms: float = 0.0
    # Vision.
    frames_seen: int = 0
    frames_kept: int = 0
    dropped_rate: int = 0
    dropped_duplicate: int = 0
    image_tokens_sent: int = 0
    naive_image_tokens: int = 0
    source_fps: float = 0.0
    # STT / TTS / session / embedding cache.
    audio_seconds: float = 0.0
    characters: int = 0
    minutes: float = 0.0
    cached_texts: int = 0
    embedded_texts: int = 0
    # The event as received, kept in the ledger for audit.
    raw: bytes = b""


def _int(name: str, value: int, upper: int) -> None:
    if value < 0:
        raise EventError(f"{name} must not be negative (got {value})")
    if value > upper:
        raise EventError(f"{name} = {value} is implausibly large (limit {upper})")


def _float(name: str, value: float, upper: float) -> None:
    if not math.isfinite(value):
        raise EventError(f"{name} must be a finite number (got {value})")
    if value < 0:
        raise EventError(f"{name} must not be negative (got {value})")
    if value > upper:
        raise EventError(f"{name} = {value} is implausibly large (limit {upper})")


# Names already checked (service, model and provider names repeat in every batch).
_GOOD_NAMES: set[str] = set()


def _name(field: str, value: str, *, required: bool) -> None:
    if value in _GOOD_NAMES:
        return
    if not value:
        if required:
            raise EventError(f"{field} is required")
        return
    if len(value) > MAX_ID_LEN or not _NAME_RE.match(value):
        raise EventError(
            f"{field} {value[:40]!r} must be 1-{MAX_ID_LEN} characters of letters, digits "
            "and _.:/@+-"
        )
    if len(_GOOD_NAMES) < 10_000:
        _GOOD_NAMES.add(value)


_LLM, _VISION, _STT, _TTS, _EMBEDDING, _SESSION = (
    UsageType.LLM, UsageType.VISION, UsageType.STT, UsageType.TTS, UsageType.EMBEDDING,
    UsageType.SESSION,
)


def validate(
    usage: Usage,
    *,
    now: dt.datetime,
    max_age: dt.timedelta,
    max_future_skew: dt.timedelta,
) -> None:
    """Raise EventError when `usage` cannot be a real measurement."""
    key = usage.idempotency_key
    if not key:
        raise EventError("idempotency_key is required (unique per metered occurrence)")
    if not is_valid_id(key, MAX_KEY_LEN):
        raise EventError(
            f"idempotency_key must be 1-{MAX_KEY_LEN} printable ASCII characters without spaces"
        )
    at = usage.occurred_at
    if at > now + max_future_skew:  # (cheap enough: not worth a per-batch bounds object)
        raise EventError(
            f"occurred_at {at.isoformat()} is in the future "
            f"(more than {max_future_skew.total_seconds():.0f}s ahead of the server clock)"
        )
    if at < now - max_age:
        raise EventError(f"occurred_at {at.isoformat()} is older than {max_age.days} days")
    _name("service", usage.service, required=True)
    session = usage.session_id
    if session and session not in _GOOD_NAMES and not is_valid_id(session, MAX_ID_LEN):
        raise EventError(
            f"session_id must be at most {MAX_ID_LEN} printable ASCII characters without spaces"
        )
    kind = usage.usage_type
    _name("provider", usage.provider, required=False)
    _name("model_id", usage.model_id, required=kind is not _SESSION)
    _name("tier", usage.tier, required=False)

    if kind is _LLM or kind is _EMBEDDING:
        i, c, w, o = (usage.input_tokens, usage.cached_input_tokens, usage.cache_write_tokens,
                      usage.output_tokens)
        # One comparison chain for the common, valid case; the slow path names the field.
        # (NaN fails every comparison, so it takes the slow path too.)
        if (0 <= c and 0 <= w and c + w <= i <= MAX_TOKENS and 0 <= o <= MAX_TOKENS
                and 0 <= usage.images <= MAX_IMAGES and 0 <= usage.cached_texts <= MAX_TEXTS
                and 0 <= usage.embedded_texts <= MAX_TEXTS
                and 0 <= usage.latency_ms <= MAX_LATENCY_MS):
            return
        _float("latency_ms", usage.latency_ms, MAX_LATENCY_MS)
        _int("input_tokens", i, MAX_TOKENS)
        _int("cached_input_tokens", c, MAX_TOKENS)
        _int("cache_write_tokens", w, MAX_TOKENS)
        _int("output_tokens", o, MAX_TOKENS)
        _int("images", usage.images, MAX_IMAGES)
        _int("cached_texts", usage.cached_texts, MAX_TEXTS)
        _int("embedded_texts", usage.embedded_texts, MAX_TEXTS)
        raise EventError(
            "cached_input_tokens + cache_write_tokens exceed input_tokens (input_tokens "
            "counts every prompt token, cached reads and cache writes included)"
        )
    if kind is _VISION:
        _int("frames_seen", usage.frames_seen, MAX_FRAMES)
        _int("frames_kept", usage.frames_kept, MAX_FRAMES)
        _int("dropped_rate", usage.dropped_rate, MAX_FRAMES)
        _int("dropped_duplicate", usage.dropped_duplicate, MAX_FRAMES)
        _int("image_tokens_sent", usage.image_tokens_sent, MAX_IMAGE_TOKENS)
        _int("naive_image_tokens", usage.naive_image_tokens, MAX_IMAGE_TOKENS)
        _float("source_fps", usage.source_fps, MAX_FPS)
        if usage.frames_kept + usage.dropped_rate + usage.dropped_duplicate > usage.frames_seen:
            raise EventError("frames_kept + dropped_rate + dropped_duplicate exceed frames_seen")
        if usage.naive_image_tokens and not usage.frames_seen:
            raise EventError("naive_image_tokens is set but frames_seen is 0")
    elif kind is _STT:
        _float("audio_seconds", usage.audio_seconds, MAX_SECONDS)
    elif kind is _TTS:
        _int("characters", usage.characters, MAX_CHARACTERS)
    elif kind is _SESSION:
        _float("minutes", usage.minutes, MAX_MINUTES)
