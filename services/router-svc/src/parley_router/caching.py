"""Prompt-caching plans (pure): where Anthropic breakpoints go, what Gemini's stable prefix is,
and when an explicit Gemini cached content pays for its storage."""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from .chat import (
    ChatRequest,
    ImagePart,
    Message,
    Role,
    TextPart,
    ToolCallPart,
    ToolResultPart,
    message_tokens,
    tool_tokens,
)

__all__ = [
    "AnthropicCachePlan",
    "ExplicitCacheEconomics",
    "GeminiPrefix",
    "PrefixSightings",
    "gemini_prefix",
    "plan_anthropic_breakpoints",
]

MAX_ANTHROPIC_BREAKPOINTS = 4


@dataclass(frozen=True, slots=True)
class AnthropicCachePlan:
    # Breakpoint on the last tool definition (used when there is no system prompt).
    tools: bool = False
    # Breakpoint on the last system block (covers the tools too: they precede it).
    system: bool = False
    # Indexes in request.messages whose last block carries a breakpoint.
    messages: frozenset[int] = frozenset()

    @property
    def count(self) -> int:
        return int(self.tools) + int(self.system) + len(self.messages)


def plan_anthropic_breakpoints(
    request: ChatRequest, min_tokens: int, *, auto_history: bool = True
) -> AnthropicCachePlan:
    """Breakpoints on the stable prefix, each only where the prefix reaches `min_tokens`.

    Anthropic caches the prefix in the order tools, system, messages. Candidates: the end of
    the system prompt (or of the tools when there is none), every message the caller marked
    `cache_breakpoint`, and (with `auto_history`) the last message before the final user turn,
    so a multi-turn session re-reads its history from cache instead of paying for it again.
    At most four; the system one and the latest ones win.
    """
    prefix = sum(tool_tokens(t) for t in request.tools)
    system_tokens = sum(message_tokens(m) for m in request.messages if m.role is Role.SYSTEM)
    has_system = system_tokens > 0
    prefix += system_tokens
    head_ok = prefix >= min_tokens
    candidates: list[int] = []
    convo = [i for i, m in enumerate(request.messages) if m.role is not Role.SYSTEM]
    history_end = -1
    if auto_history and len(convo) >= 2:
        # The final user turn (and any tool results just before it) is new each turn.
        history_end = convo[-2]
    running = prefix
    for i in convo:
        running += message_tokens(request.messages[i])
        if (request.messages[i].cache_breakpoint or i == history_end) and running >= min_tokens:
            candidates.append(i)
    budget = MAX_ANTHROPIC_BREAKPOINTS - (1 if head_ok else 0)
    chosen = frozenset(candidates[-budget:]) if budget > 0 else frozenset()
    return AnthropicCachePlan(
        tools=head_ok and not has_system and bool(request.tools),
        system=head_ok and has_system,
        messages=chosen,
    )


# ---------------------------------------------------------------------------------------------
# Gemini


@dataclass(frozen=True, slots=True)
class GeminiPrefix:
    # Conversation messages (non-system, in order) that belong to the stable prefix.
    messages: int
    tokens: int
    digest: str


def _canonical_part(part: object) -> object:
    if isinstance(part, TextPart):
        return ["t", part.text]
    if isinstance(part, ImagePart):
        return ["i", part.mime_type, hashlib.sha256(part.data).hexdigest()]
    if isinstance(part, ToolCallPart):
        return ["c", part.id, part.name, part.arguments_json]
    if isinstance(part, ToolResultPart):
        return ["r", part.call_id, part.name, part.content, part.is_error]
    return ["?"]


def _canonical(message: Message) -> object:
    return [message.role.value, [_canonical_part(p) for p in message.parts]]


def gemini_prefix(request: ChatRequest, model_id: str) -> GeminiPrefix | None:
    """The stable prefix: system + tools + conversation up to the last `cache_breakpoint`.

    None when the caller marked no breakpoint in the conversation and there is no system
    prompt or tools (nothing is known to be stable).
    """
    convo = [m for m in request.messages if m.role is not Role.SYSTEM]
    system = [m for m in request.messages if m.role is Role.SYSTEM]
    last = -1
    for i, m in enumerate(convo):
        if m.cache_breakpoint:
            last = i
    # The final user turn is never part of the prefix.
    last = min(last, len(convo) - 2)
    if not system and not request.tools and last < 0:
        return None
    included = convo[: last + 1]
    tokens = (
        sum(message_tokens(m) for m in system)
        + sum(tool_tokens(t) for t in request.tools)
        + sum(message_tokens(m) for m in included)
    )
    blob = json.dumps(
        [
            model_id,
            [_canonical(m) for m in system],
            sorted(
                [t.name, t.description, json.dumps(t.parameters, sort_keys=True)]
                for t in request.tools
            ),
            [_canonical(m) for m in included],
        ],
        separators=(",", ":"),
    ).encode()
    return GeminiPrefix(len(included), tokens, hashlib.sha256(blob).hexdigest()[:32])


@dataclass(frozen=True, slots=True)
class ExplicitCacheEconomics:
    """When is a Gemini cachedContents entry cheaper than sending the prefix each time?

    Creating it bills the prefix once at the input price and stores it at
    `storage_usd_per_mtok_hour` for `ttl_s`; each reuse saves (input - cache_read) per token.
    It pays off when the reuses expected within the TTL exceed
    (storage * ttl_h + input) / (input - cache_read). The expected reuses are predicted from
    how often the same prefix was seen in the last TTL.
    """

    input_usd_per_mtok: float
    cache_read_usd_per_mtok: float
    storage_usd_per_mtok_hour: float
    ttl_s: float

    def break_even_uses(self) -> float:
        saving = self.input_usd_per_mtok - self.cache_read_usd_per_mtok
        if saving <= 0:
            return math.inf
        cost = self.storage_usd_per_mtok_hour * self.ttl_s / 3600.0 + self.input_usd_per_mtok
        return cost / saving

    def pays_off(self, recent_uses: int) -> bool:
        needed = self.break_even_uses()
        return math.isfinite(needed) and recent_uses >= math.ceil(needed)


class PrefixSightings:
    """How often each prefix digest was seen in the last `window_s` (bounded memory)."""

    def __init__(
        self, *, window_s: float, max_keys: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._window = window_s
        self._max = max_keys
        self._clock = clock
        self._seen: dict[str, list[float]] = {}

    def add(self, key: str) -> int:
        """Record a sighting; returns the sightings within the window, this one included."""
        now = self._clock()
        horizon = now - self._window
        stamps = [t for t in self._seen.pop(key, []) if t >= horizon]
        stamps.append(now)
        if len(self._seen) >= self._max:
            # Evict the oldest-inserted key (dicts keep insertion order).
            self._seen.pop(next(iter(self._seen)))
        self._seen[key] = stamps[-64:]
        return len(stamps)
