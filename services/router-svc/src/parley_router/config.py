"""Settings of router-svc (env prefix PARLEY_, plus the shared unprefixed names)."""

from __future__ import annotations

from typing import Literal

from parley_runtime.settings import ServiceSettings
from pydantic import AliasChoices, Field
from pydantic_settings import SettingsConfigDict


class Settings(ServiceSettings):
    # populate_by_name: tests and tools may pass fields by name as well as by env alias.
    model_config = SettingsConfigDict(env_prefix="PARLEY_", extra="ignore", populate_by_name=True)

    service_name: str = "router-svc"
    grpc_port: int = 50051
    metrics_port: int = 9101

    # Peers and stores (unprefixed names shared across services).
    redis_url: str | None = Field(
        default=None, validation_alias=AliasChoices("REDIS_URL", "PARLEY_REDIS_URL")
    )
    billing_addr: str | None = Field(
        default=None, validation_alias=AliasChoices("BILLING_ADDR", "PARLEY_BILLING_ADDR")
    )
    anthropic_api_key: str | None = Field(
        default=None, validation_alias=AliasChoices("ANTHROPIC_API_KEY")
    )
    anthropic_base_url: str | None = Field(
        default=None, validation_alias=AliasChoices("ANTHROPIC_BASE_URL")
    )
    gemini_api_key: str | None = Field(
        default=None, validation_alias=AliasChoices("GEMINI_API_KEY", "GOOGLE_API_KEY")
    )
    gemini_base_url: str | None = Field(
        default=None, validation_alias=AliasChoices("GOOGLE_GEMINI_BASE_URL")
    )
    # Catalog file (default: the packaged parley_runtime catalog).
    catalog_file: str | None = None
    # Complexity model weights (default: the shipped complexity_model.json).
    complexity_model_file: str | None = None

    # Turns
    turn_timeout_s: float = Field(default=60.0, gt=0)
    default_max_output_tokens: int = Field(default=1024, gt=0)
    reserve_output_tokens: int = Field(default=512, ge=0)

    # Failover
    first_token_timeout_s: float = Field(default=10.0, gt=0)
    probe_first_token_timeout_s: float = Field(default=3.0, gt=0)
    stall_timeout_s: float = Field(default=15.0, gt=0)
    max_attempts: int = Field(default=4, ge=1)
    backoff_base_s: float = Field(default=0.1, ge=0)
    backoff_max_s: float = Field(default=2.0, ge=0)
    max_wait_s: float = Field(default=5.0, ge=0)
    max_cooldown_s: float = Field(default=300.0, ge=0)

    # Circuit breakers (per provider model)
    breaker_window: int = Field(default=20, ge=1)
    breaker_window_s: float = Field(default=60.0, gt=0)
    breaker_min_calls: int = Field(default=5, ge=1)
    breaker_failure_rate: float = Field(default=0.5, gt=0, le=1)
    breaker_slow_call_s: float = Field(default=5.0, gt=0)
    breaker_slow_rate: float = Field(default=0.8, gt=0, le=1)
    breaker_open_s: float = Field(default=10.0, gt=0)
    breaker_max_open_s: float = Field(default=120.0, gt=0)

    # Rate limits: what to do when Redis is unreachable.
    rate_limit_fail_mode: Literal["open", "closed"] = "open"
    # Fail-open local limiter: each replica allows limits / this (the expected replica count).
    rate_limit_local_divisor: float = Field(default=1.0, ge=1)
    redis_timeout_s: float = Field(default=0.25, gt=0)
    # Rate-limit scripts over one pipelined connection (redis_pipe.py) rather than redis-py's
    # pool (plain redis:// and rediss:// URLs; others always use redis-py).
    redis_pipelined_limiter: bool = True
    premium_window_minutes: int = Field(default=60, ge=1)

    # Budgets (billing-svc CheckBudget)
    budget_cache_s: float = Field(default=5.0, ge=0)
    budget_timeout_s: float = Field(default=0.25, gt=0)

    # Prompt caching
    anthropic_auto_history_cache: bool = True
    gemini_explicit_cache: bool = True
    gemini_explicit_cache_min_tokens: int = Field(default=4096, ge=0)
    gemini_explicit_cache_ttl_s: float = Field(default=600.0, gt=60)
    gemini_disable_thinking: bool = True

    # Provider HTTP timeouts (backstops; the failover enforces the turn's own deadlines).
    provider_connect_timeout_s: float = Field(default=3.0, gt=0)
    provider_read_timeout_s: float = Field(default=30.0, gt=0)
    # The provider SDKs' own OpenTelemetry spans (one per call). Unset: on when this process
    # exports traces (OTEL_TRACES_EXPORTER / OTEL_EXPORTER_OTLP_ENDPOINT), off otherwise.
    provider_sdk_spans: bool | None = None

    # Event loop of the process: uvloop (less CPU per turn) or the standard asyncio loop.
    event_loop: Literal["uvloop", "asyncio"] = "uvloop"
