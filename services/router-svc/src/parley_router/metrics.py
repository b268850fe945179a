"""Prometheus metrics of router-svc (bounded label sets).

Model labels come from the catalog (a few dozen at most); the tenant label is capped: the
first `TENANT_LABEL_CAP` tenants seen get their own series, later ones share "other".
"""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from .breaker import BreakerState

__all__ = ["RouterMetrics", "TENANT_LABEL_CAP"]

TENANT_LABEL_CAP = 100

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60)

ACTIVE_STREAMS = Gauge("parley_router_active_streams", "StreamChat calls in progress")
TTFT = Histogram(
    "parley_router_ttft_seconds",
    "Time from the start of an attempt to its first event, per model",
    ["provider", "model"],
    buckets=_LATENCY_BUCKETS,
)
LATENCY = Histogram(
    "parley_router_model_latency_seconds",
    "Duration of a model call (attempt), per model",
    ["provider", "model"],
    buckets=_LATENCY_BUCKETS,
)
ATTEMPTS = Counter(
    "parley_router_attempts_total", "Provider calls by outcome", ["provider", "model", "outcome"]
)
BREAKER_STATE = Gauge(
    "parley_router_breaker_state",
    "Circuit breaker state per model (0 closed, 1 half-open, 2 open)",
    ["provider", "model"],
)
RATE_LIMIT_DENIALS = Counter(
    "parley_router_rate_limit_denials_total",
    "Attempts refused by the tenant rate limiter",
    ["tenant", "provider"],
)
RATE_LIMIT_FALLBACK = Counter(
    "parley_router_rate_limit_redis_fallback_total",
    "Limiter decisions taken without Redis, by configured fail mode",
    ["mode"],
)
TURNS = Counter("parley_router_turns_total", "Turns routed, by tier and outcome",
                ["tier", "outcome"])
FALLBACKS = Counter("parley_router_fallbacks_total", "Turns answered by a fallback model",
                    ["tier"])
DOWNGRADES = Counter("parley_router_downgrades_total", "Tier downgrades by cause", ["cause"])
GEMINI_EXPLICIT_CACHE = Counter(
    "parley_router_gemini_explicit_cache_total",
    "Explicit Gemini cachedContents events (created, used, expired)",
    ["model", "event"],
)
CACHED_TOKENS = Counter("parley_router_cached_input_tokens_total",
                        "Prompt tokens served from provider caches", ["provider", "model"])


class RouterMetrics:
    """Small facade that keeps label cardinality bounded."""

    def __init__(self, tenant_cap: int = TENANT_LABEL_CAP) -> None:
        self._tenant_cap = tenant_cap
        self._tenants: set[str] = set()
        self.active_streams = ACTIVE_STREAMS
        # Labelled children per label tuple (labels() costs a lock and a lookup per call).
        self._per_model: dict[tuple[str, str], tuple[Any, Any, Any]] = {}
        self._attempts: dict[tuple[str, str, str], Any] = {}
        self._turns: dict[tuple[str, str], Any] = {}

    def tenant_label(self, tenant: str) -> str:
        if tenant in self._tenants:
            return tenant
        if len(self._tenants) < self._tenant_cap:
            self._tenants.add(tenant)
            return tenant
        return "other"

    def breaker_changed(self, key: str, state: BreakerState) -> None:
        provider, _, model = key.partition("/")
        BREAKER_STATE.labels(provider, model).set(int(state))

    def attempt(self, provider: str, model: str, outcome: str, ttft_s: float | None,
                total_s: float, cached_tokens: int) -> None:
        key = (provider, model, outcome)
        attempts = self._attempts.get(key)
        if attempts is None:
            attempts = self._attempts[key] = ATTEMPTS.labels(provider, model, outcome)
        attempts.inc()
        per_model = self._per_model.get(key[:2])
        if per_model is None:
            per_model = self._per_model[key[:2]] = (
                LATENCY.labels(provider, model), TTFT.labels(provider, model),
                CACHED_TOKENS.labels(provider, model),
            )
        latency, ttft, cached = per_model
        latency.observe(total_s)
        if ttft_s is not None:
            ttft.observe(ttft_s)
        if cached_tokens:
            cached.inc(cached_tokens)

    def denied(self, tenant: str, provider: str) -> None:
        RATE_LIMIT_DENIALS.labels(self.tenant_label(tenant), provider).inc()

    def limiter_fallback(self, mode: str) -> None:
        RATE_LIMIT_FALLBACK.labels(mode).inc()

    def turn(self, tier: str, outcome: str) -> None:
        child = self._turns.get((tier, outcome))
        if child is None:
            child = self._turns[(tier, outcome)] = TURNS.labels(tier, outcome)
        child.inc()

    def fallback(self, tier: str) -> None:
        FALLBACKS.labels(tier).inc()

    def downgrade(self, cause: str) -> None:
        DOWNGRADES.labels(cause).inc()
