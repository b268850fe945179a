"""Shared mutable state of one emulator instance: config, clock, caches, faults, stats."""

from __future__ import annotations

import fnmatch
import hashlib
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from .faults import FaultTable, Stats, Timing

V = TypeVar("V")

DEFAULT_ANTHROPIC_MIN_CACHE = 1024
HAIKU_MIN_CACHE = 2048
DEFAULT_GEMINI_MIN_CACHE = 1024
GEMINI_PRO_MIN_CACHE = 2048


@dataclass
class EmulatorConfig:
    latency_ms: float = 0.0
    ttft_ms: float = 0.0
    inter_token_ms: float = 0.0
    anthropic_min_cache_tokens: dict[str, int] = field(default_factory=dict)  # glob -> tokens
    gemini_min_cache_tokens: dict[str, int] = field(default_factory=dict)  # glob -> tokens
    gemini_implicit_ttl_s: float = 300.0
    request_log_size: int = 1000
    max_cache_entries: int = 200_000


def _glob_lookup(table: dict[str, int], model: str) -> int | None:
    if model in table:
        return table[model]
    best: tuple[int, int] | None = None
    for pattern, value in table.items():
        if fnmatch.fnmatchcase(model, pattern) and (best is None or len(pattern) > best[0]):
            best = (len(pattern), value)
    return None if best is None else best[1]


class Clock:
    """Monotonic + wall clock with an adjustable offset (``POST /admin/clock``) for TTL tests."""

    def __init__(self) -> None:
        self.offset = 0.0

    def now(self) -> float:
        return time.monotonic() + self.offset

    def wall(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


class ExpiringStore(Generic[V]):
    """Map with per-entry expiry (clock seconds). Bounded: sweeps, then drops oldest entries."""

    def __init__(self, clock: Clock, max_entries: int) -> None:
        self._clock = clock
        self._max = max_entries
        self._data: dict[Any, tuple[float, V]] = {}

    def get(self, key: Any) -> V | None:
        item = self._data.get(key)
        if item is None:
            return None
        if item[0] <= self._clock.now():
            del self._data[key]
            return None
        return item[1]

    def expiry(self, key: Any) -> float | None:
        item = self._data.get(key)
        return None if item is None else item[0]

    def put(self, key: Any, value: V, ttl_s: float) -> None:
        self._data[key] = (self._clock.now() + ttl_s, value)
        if len(self._data) > self._max:
            self._shrink()

    def pop(self, key: Any) -> V | None:
        item = self._data.pop(key, None)
        return None if item is None else item[1]

    def items(self) -> list[tuple[Any, V]]:
        now = self._clock.now()
        return [(k, v) for k, (exp, v) in self._data.items() if exp > now]

    def clear(self) -> None:
        self._data.clear()

    def __len__(self) -> int:
        return len(self._data)

    def _shrink(self) -> None:
        now = self._clock.now()
        for key in [k for k, (exp, _) in self._data.items() if exp <= now]:
            del self._data[key]
        excess = len(self._data) - self._max
        if excess > 0:
            for key in list(self._data)[: excess + self._max // 10]:
                del self._data[key]


@dataclass
class CachedContent:
    """A Gemini explicit cache (``cachedContents/<id>``)."""

    name: str
    model: str  # bare id, e.g. gemini-2.5-flash
    api_key: str
    display_name: str
    contents: list[Any]
    system_instruction: Any
    tools: list[Any]
    tool_config: Any
    token_count: int
    create_time: float
    update_time: float
    expire_time: float  # wall clock seconds


class EmulatorState:
    def __init__(self, config: EmulatorConfig | None = None) -> None:
        self.config = config or EmulatorConfig()
        self.clock = Clock()
        self.faults = FaultTable(
            Timing(self.config.latency_ms, self.config.ttft_ms, self.config.inter_token_ms)
        )
        self.stats = Stats()
        n = self.config.max_cache_entries
        # (api_key, model, prefix hash) -> True
        self.anthropic_cache: ExpiringStore[bool] = ExpiringStore(self.clock, n)
        # (api_key, model, prefix hash) -> cumulative prefix tokens
        self.gemini_implicit: ExpiringStore[int] = ExpiringStore(self.clock, n)
        self.gemini_cached_contents: dict[str, CachedContent] = {}
        self.request_log: deque[dict[str, Any]] = deque(maxlen=self.config.request_log_size)
        self._counter = 0

    def next_id(self) -> int:
        self._counter += 1
        return self._counter

    def set_timing_defaults(self, latency_ms: float, ttft_ms: float, inter_token_ms: float) -> None:
        self.config.latency_ms = latency_ms
        self.config.ttft_ms = ttft_ms
        self.config.inter_token_ms = inter_token_ms
        self.faults.defaults = Timing(latency_ms, ttft_ms, inter_token_ms)

    def anthropic_min_cache(self, model: str) -> int:
        override = _glob_lookup(self.config.anthropic_min_cache_tokens, model)
        if override is not None:
            return override
        return HAIKU_MIN_CACHE if "haiku" in model else DEFAULT_ANTHROPIC_MIN_CACHE

    def gemini_min_cache(self, model: str) -> int:
        override = _glob_lookup(self.config.gemini_min_cache_tokens, model)
        if override is not None:
            return override
        if "pro" in model and "flash" not in model:
            return GEMINI_PRO_MIN_CACHE
        return DEFAULT_GEMINI_MIN_CACHE

    def gemini_cached_content(self, name: str) -> CachedContent | None:
        item = self.gemini_cached_contents.get(name)
        if item is not None and item.expire_time <= self.clock.wall():
            del self.gemini_cached_contents[name]
            return None
        return item

    def log_request(self, **entry: Any) -> None:
        entry["ts"] = round(self.clock.wall(), 3)
        self.request_log.append(entry)

    def reset(self) -> None:
        self.faults.clear()
        self.stats.clear()
        self.anthropic_cache.clear()
        self.gemini_implicit.clear()
        self.gemini_cached_contents.clear()
        self.request_log.clear()
        self.clock.offset = 0.0


def key_fingerprint(api_key: str) -> str:
    """Short, stable fingerprint of an API key for logs and admin output."""
    return hashlib.sha256(api_key.encode()).hexdigest()[:12]
