"""Assembles router-svc from settings (used by `__main__` and by tests)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from parley_runtime.catalog import Catalog, load_catalog
from parley_runtime.client import make_channel
from parley_runtime.server import make_signer
from parley_runtime.telemetry import exporting_traces
from parley_runtime.tenants import TenantRegistry
from parley_runtime.usage import NullUsageRecorder, UsageRecorder, make_usage_recorder

from .billing import BillingBudgetClient
from .breaker import BreakerBoard, BreakerOptions
from .complexity import LinearComplexityModel
from .config import Settings
from .failover import FailoverOptions, FailoverRunner
from .metrics import RouterMetrics
from .policy import load_policies
from .providers.anthropic import AnthropicProvider
from .providers.base import ChatProvider
from .providers.gemini import ExplicitCacheOptions, GeminiProvider
from .ratelimit import LocalTokenBuckets, RedisTokenBuckets, TenantRateLimiter, make_redis
from .redis_pipe import PipelinedRedis
from .router import RouterOptions, TurnRouter
from .server import RouterServicer
from .store import PremiumShareGate, RedisCachedContentRegistry
from .usage import DiscardingUsageRecorder, RecorderUsageSink

logger = logging.getLogger(__name__)

__all__ = ["RouterApp", "build_router_app"]


@dataclass
class RouterApp:
    router: TurnRouter
    servicer: RouterServicer
    catalog: Catalog
    recorder: UsageRecorder
    providers: dict[str, ChatProvider]
    redis: aioredis.Redis | None = None
    budget: BillingBudgetClient | None = None
    limiter: TenantRateLimiter | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    async def aclose(self) -> None:
        await self.router.drain()
        if self.limiter is not None:
            await self.limiter.aclose()
        for provider in self.providers.values():
            await provider.aclose()
        if self.budget is not None:
            await self.budget.aclose()
        await self.recorder.flush(timeout=2.0)
        await self.recorder.close()
        if self.redis is not None:
            await self.redis.aclose()


def build_router_app(
    settings: Settings,
    *,
    registry: TenantRegistry | None = None,
    recorder: UsageRecorder | None = None,
) -> RouterApp:
    """Everything router-svc needs, validated (bad tenant config fails here, at start-up)."""
    catalog = load_catalog(settings.catalog_file)
    if registry is None:
        if not settings.tenants_file:
            raise SystemExit("PARLEY_TENANTS_FILE is not set: router-svc needs tenant configs")
        registry = TenantRegistry.from_file(settings.tenants_file)
    policies = load_policies(registry, catalog)
    estimator = LinearComplexityModel.load(settings.complexity_model_file)
    metrics = RouterMetrics()

    client = make_redis(settings.redis_url, timeout_s=settings.redis_timeout_s) \
        if settings.redis_url else None
    if client is None:
        logger.warning("REDIS_URL is not set: rate limits and the premium cap are per replica")
    if recorder is None:
        recorder = make_usage_recorder(settings.service_name, make_signer(settings))
        if isinstance(recorder, NullUsageRecorder):
            recorder = DiscardingUsageRecorder()
    sink = RecorderUsageSink(recorder)

    providers: dict[str, ChatProvider] = {}
    if settings.anthropic_api_key:
        providers["anthropic"] = AnthropicProvider(
            api_key=settings.anthropic_api_key,
            base_url=settings.anthropic_base_url,
            connect_timeout_s=settings.provider_connect_timeout_s,
            read_timeout_s=settings.provider_read_timeout_s,
            auto_history_cache=settings.anthropic_auto_history_cache,
            sdk_spans=exporting_traces() if settings.provider_sdk_spans is None
            else settings.provider_sdk_spans,
        )
    if settings.gemini_api_key:
        providers["google"] = GeminiProvider(
            api_key=settings.gemini_api_key,
            base_url=settings.gemini_base_url,
            timeout_s=settings.provider_read_timeout_s,
            registry=RedisCachedContentRegistry(client, op_timeout_s=settings.redis_timeout_s),
            explicit_cache=ExplicitCacheOptions(
                enabled=settings.gemini_explicit_cache,
                min_tokens=settings.gemini_explicit_cache_min_tokens,
                ttl_s=settings.gemini_explicit_cache_ttl_s,
            ),
            on_cache_created=sink.record_cache_creation,
            disable_thinking=settings.gemini_disable_thinking,
        )
    if not providers:
        raise SystemExit(
            "no provider configured: set ANTHROPIC_API_KEY and/or GEMINI_API_KEY "
            "(with ANTHROPIC_BASE_URL / GOOGLE_GEMINI_BASE_URL for the emulator)"
        )
    missing = sorted({m.provider for p in policies.values() for c in p.chains.values()
                      for m in c} - set(providers))
    if missing:
        logger.warning("tenant chains name providers without credentials; they will be "
                       "skipped as failed", extra={"providers": missing})

    breakers = BreakerBoard(
        BreakerOptions(
            window=settings.breaker_window,
            window_s=settings.breaker_window_s,
            min_calls=settings.breaker_min_calls,
            failure_rate=settings.breaker_failure_rate,
            slow_call_s=settings.breaker_slow_call_s,
            slow_rate=settings.breaker_slow_rate,
            open_s=settings.breaker_open_s,
            max_open_s=settings.breaker_max_open_s,
        ),
        on_change=metrics.breaker_changed,
    )
    runner = FailoverRunner(
        providers=providers,
        breakers=breakers,
        options=FailoverOptions(
            first_token_timeout_s=settings.first_token_timeout_s,
            probe_first_token_timeout_s=settings.probe_first_token_timeout_s,
            stall_timeout_s=settings.stall_timeout_s,
            max_attempts=settings.max_attempts,
            backoff_base_s=settings.backoff_base_s,
            backoff_max_s=settings.backoff_max_s,
            max_wait_s=settings.max_wait_s,
            max_cooldown_s=settings.max_cooldown_s,
        ),
    )
    pipe = None
    if client is not None and settings.redis_pipelined_limiter and settings.redis_url \
            and PipelinedRedis.supports(settings.redis_url):
        pipe = PipelinedRedis(settings.redis_url, connect_timeout_s=settings.redis_timeout_s)
    limiter = TenantRateLimiter(
        RedisTokenBuckets(client, op_timeout_s=settings.redis_timeout_s, pipe=pipe)
        if client else None,
        fail_mode=settings.rate_limit_fail_mode,
        local=LocalTokenBuckets(divisor=settings.rate_limit_local_divisor),
        on_fallback=metrics.limiter_fallback,
    )
    budget = None
    if settings.billing_addr:
        budget = BillingBudgetClient(
            make_channel(settings.billing_addr, signer=make_signer(settings),
                         audience="billing-svc"),
            ttl_s=settings.budget_cache_s,
            timeout_s=settings.budget_timeout_s,
        )
    router = TurnRouter(
        catalog=catalog,
        policies=policies,
        estimator=estimator,
        runner=runner,
        limiter=limiter,
        premium=PremiumShareGate(client, window_minutes=settings.premium_window_minutes,
                                 op_timeout_s=settings.redis_timeout_s),
        usage=sink,
        budget=budget,
        options=RouterOptions(
            default_turn_timeout_s=settings.turn_timeout_s,
            reserve_output_tokens=settings.reserve_output_tokens,
        ),
        metrics=metrics,
    )
    servicer = RouterServicer(router, catalog,
                              default_max_output_tokens=settings.default_max_output_tokens)
    return RouterApp(router, servicer, catalog, recorder, providers, client, budget, limiter)
