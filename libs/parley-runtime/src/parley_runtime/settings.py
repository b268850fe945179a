"""Typed settings read from the environment (pydantic-settings)."""

from __future__ import annotations

import json

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServiceSettings(BaseSettings):
    """Settings every gRPC service shares. Services subclass this and add their own."""

    model_config = SettingsConfigDict(env_prefix="PARLEY_", extra="ignore")

    service_name: str = "parley"
    host: str = "127.0.0.1"
    grpc_port: int = Field(default=50050, ge=0, le=65535)
    metrics_port: int = Field(default=0, ge=0, le=65535, description="0 disables /metrics")
    log_level: str = "INFO"
    log_format: str = "json"
    # Seconds in-flight RPCs get to finish after SIGTERM (health reports NOT_SERVING at once).
    drain_seconds: float = Field(default=10.0, ge=0)
    # Seconds between reporting NOT_SERVING and refusing new calls, so load balancers and
    # Kubernetes endpoints stop sending traffic before the listener closes.
    drain_delay_seconds: float = Field(default=1.0, ge=0)
    # Maximum inbound/outbound message size in bytes.
    max_message_bytes: int = Field(default=4 * 1024 * 1024, gt=0)
    # Deadline applied to unary calls that arrive without one (seconds; 0 = none).
    default_deadline_s: float = Field(default=30.0, ge=0)
    max_concurrent_rpcs: int | None = None
    # HS256 keys this process trusts, {kid: secret}; and the kid it signs its own calls with.
    auth_keys: dict[str, str] = Field(default_factory=dict)
    auth_kid: str | None = None
    auth_disabled: bool = False
    # Token lifetime for outbound calls.
    auth_token_ttl_s: int = Field(default=300, gt=0)
    # Calling services allowed (by token `iss`); empty allows any service with a trusted key.
    auth_allowed_callers: list[str] = Field(default_factory=list)
    tenants_file: str | None = None

    @field_validator("auth_keys", mode="before")
    @classmethod
    def _parse_keys(cls, value: object) -> object:
        if isinstance(value, str):
            value = value.strip()
            if not value:
                return {}
            parsed = json.loads(value)
            if not isinstance(parsed, dict):
                raise ValueError("PARLEY_AUTH_KEYS must be a JSON object {kid: secret}")
            return parsed
        return value

    @property
    def signing_kid(self) -> str:
        return self.auth_kid or self.service_name
