"""Per-model fault injection and per-model counters."""

from __future__ import annotations

import fnmatch
import random
from dataclasses import asdict, dataclass, field, fields
from typing import Any

ALLOWED_ERROR_STATUS = frozenset({400, 401, 403, 404, 408, 409, 413, 429, 500, 502, 503, 504, 529})


class FaultSpecError(ValueError):
    pass


@dataclass
class FaultSpec:
    """One fault rule. ``None`` timing fields fall back to the server-wide defaults."""

    model: str = "*"
    error_rate: float = 0.0
    error_status: int = 529
    retry_after_s: float | None = None
    max_errors: int | None = None  # stop injecting errors after this many (None: unlimited)
    latency_ms: float | None = None  # before the response starts (every request)
    ttft_ms: float | None = None  # before the first content delta
    inter_token_ms: float | None = None  # per output token between deltas
    stall_after_tokens: int | None = None
    stall_s: float = 30.0
    cut_after_tokens: int | None = None
    stream_error_after_tokens: int | None = None  # send an in-stream error event, then end
    seed: int = 1

    @classmethod
    def from_json(cls, data: Any) -> FaultSpec:
        if not isinstance(data, dict):
            raise FaultSpecError("fault must be a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise FaultSpecError(f"unknown fault fields: {', '.join(unknown)}")
        required = ("model", "error_rate", "error_status", "stall_s", "seed")
        spec = cls(**{k: v for k, v in data.items() if v is not None or k not in required})
        spec.validate()
        return spec

    def validate(self) -> None:
        if not isinstance(self.model, str) or not self.model:
            raise FaultSpecError("model must be a non-empty string (an id, a glob or '*')")
        if not isinstance(self.error_rate, (int, float)) or not 0.0 <= self.error_rate <= 1.0:
            raise FaultSpecError("error_rate must be between 0 and 1")
        if self.error_status not in ALLOWED_ERROR_STATUS:
            raise FaultSpecError(f"error_status must be one of {sorted(ALLOWED_ERROR_STATUS)}")
        for name in ("retry_after_s", "latency_ms", "ttft_ms", "inter_token_ms", "stall_s"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, (int, float)) or value < 0):
                raise FaultSpecError(f"{name} must be a non-negative number")
        for name in ("max_errors", "stall_after_tokens", "cut_after_tokens",
                     "stream_error_after_tokens"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 0):
                raise FaultSpecError(f"{name} must be a non-negative integer or null")
        if not isinstance(self.seed, int):
            raise FaultSpecError("seed must be an integer")


@dataclass
class Timing:
    latency_ms: float = 0.0
    ttft_ms: float = 0.0
    inter_token_ms: float = 0.0


@dataclass
class Decision:
    """What to do with one request."""

    error_status: int | None = None
    retry_after_s: float | None = None
    timing: Timing = field(default_factory=Timing)
    stall_after_tokens: int | None = None
    stall_s: float = 0.0
    cut_after_tokens: int | None = None
    stream_error_after_tokens: int | None = None
    stream_error_status: int = 529


class _Rule:
    def __init__(self, spec: FaultSpec) -> None:
        self.spec = spec
        self.rng = random.Random(spec.seed)
        self.errors = 0

    def draw_error(self) -> bool:
        spec = self.spec
        if spec.error_rate <= 0.0:
            return False
        if spec.max_errors is not None and self.errors >= spec.max_errors:
            return False
        hit = self.rng.random() < spec.error_rate
        if hit:
            self.errors += 1
        return hit


class FaultTable:
    """Rules keyed by model. Lookup: exact id, then the longest matching glob, then '*'."""

    def __init__(self, defaults: Timing) -> None:
        self.defaults = defaults
        self._exact: dict[str, _Rule] = {}
        self._globs: dict[str, _Rule] = {}

    def set(self, spec: FaultSpec) -> None:
        rule = _Rule(spec)
        self._exact.pop(spec.model, None)
        self._globs.pop(spec.model, None)
        if any(ch in spec.model for ch in "*?["):
            self._globs[spec.model] = rule
        else:
            self._exact[spec.model] = rule

    def clear(self, model: str | None = None) -> None:
        if model is None:
            self._exact.clear()
            self._globs.clear()
        else:
            self._exact.pop(model, None)
            self._globs.pop(model, None)

    def list(self) -> list[dict[str, Any]]:
        out = []
        for rule in [*self._exact.values(), *self._globs.values()]:
            item = asdict(rule.spec)
            item["errors_injected"] = rule.errors
            out.append(item)
        return out

    def _rule_for(self, model: str) -> _Rule | None:
        rule = self._exact.get(model)
        if rule is not None:
            return rule
        if not self._globs:
            return None
        best: _Rule | None = None
        for pattern, candidate in self._globs.items():
            if fnmatch.fnmatchcase(model, pattern) and (
                best is None or len(pattern) > len(best.spec.model)
            ):
                best = candidate
        return best

    def decide(self, model: str, streaming: bool) -> Decision:
        rule = self._rule_for(model)
        d = self.defaults
        if rule is None:
            return Decision(timing=Timing(d.latency_ms, d.ttft_ms, d.inter_token_ms))
        spec = rule.spec
        decision = Decision(
            timing=Timing(
                d.latency_ms if spec.latency_ms is None else float(spec.latency_ms),
                d.ttft_ms if spec.ttft_ms is None else float(spec.ttft_ms),
                d.inter_token_ms if spec.inter_token_ms is None else float(spec.inter_token_ms),
            ),
            stall_after_tokens=spec.stall_after_tokens,
            stall_s=float(spec.stall_s),
            cut_after_tokens=spec.cut_after_tokens,
            stream_error_after_tokens=spec.stream_error_after_tokens,
            stream_error_status=spec.error_status if spec.error_status >= 500 else 529,
        )
        if rule.draw_error():
            decision.error_status = spec.error_status
            decision.retry_after_s = spec.retry_after_s
        return decision


STAT_FIELDS = (
    "requests",
    "stream_requests",
    "count_tokens_requests",
    "errors_injected",
    "invalid_requests",
    "streams_completed",
    "streams_cut",
    "streams_stalled",
    "stream_errors_injected",
    "input_tokens",
    "output_tokens",
    "cached_tokens",
    "cache_creation_tokens",
    "embedding_inputs",
)


class Stats:
    def __init__(self) -> None:
        self._by_model: dict[str, dict[str, int]] = {}

    def add(self, model: str, **counts: int) -> None:
        row = self._by_model.get(model)
        if row is None:
            row = dict.fromkeys(STAT_FIELDS, 0)
            self._by_model[model] = row
        for key, value in counts.items():
            row[key] += value

    def snapshot(self) -> dict[str, Any]:
        totals = dict.fromkeys(STAT_FIELDS, 0)
        for row in self._by_model.values():
            for key, value in row.items():
                totals[key] += value
        return {"models": {m: dict(r) for m, r in self._by_model.items()}, "totals": totals}

    def clear(self) -> None:
        self._by_model.clear()
