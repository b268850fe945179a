"""Tenant configuration: one YAML file (PARLEY_TENANTS_FILE) read by every service.

The runtime validates the common part; each service validates its own section
(`router`, `vision`, `kb`, `billing`, `agent`) with its own model at start-up, so a bad tenant
config fails fast in the service that would use it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import InvalidArgument, NotFound

TENANT_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")

Plan = Literal["free", "pro", "enterprise"]


class TenantConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tenant_id: str
    display_name: str = ""
    plan: Plan = "free"
    router: dict[str, Any] = Field(default_factory=dict)
    vision: dict[str, Any] = Field(default_factory=dict)
    kb: dict[str, Any] = Field(default_factory=dict)
    billing: dict[str, Any] = Field(default_factory=dict)
    agent: dict[str, Any] = Field(default_factory=dict)


class TenantRegistry:
    """Known tenants. Unknown tenant ids are NOT_FOUND everywhere."""

    def __init__(self, tenants: dict[str, TenantConfig], plans: dict[str, dict[str, Any]]) -> None:
        self._tenants = tenants
        self.plans = plans

    @classmethod
    def from_file(cls, path: str | Path) -> TenantRegistry:
        with open(path, encoding="utf-8") as fh:
            return cls.from_dict(yaml.safe_load(fh) or {})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TenantRegistry:
        tenants: dict[str, TenantConfig] = {}
        for tenant_id, raw in (data.get("tenants") or {}).items():
            if not TENANT_ID_RE.match(str(tenant_id)):
                raise ValueError(
                    f"tenant id {tenant_id!r} must match {TENANT_ID_RE.pattern} "
                    "(lower-case letters, digits, dashes)"
                )
            try:
                tenants[tenant_id] = TenantConfig(tenant_id=tenant_id, **(raw or {}))
            except ValidationError as exc:
                raise ValueError(f"tenant {tenant_id!r}: {exc}") from None
        return cls(tenants, dict(data.get("plans") or {}))

    def get(self, tenant_id: str | None) -> TenantConfig:
        if not tenant_id:
            raise InvalidArgument("no tenant id")
        tenant = self._tenants.get(tenant_id)
        if tenant is None:
            raise NotFound(f"unknown tenant {tenant_id!r}")
        return tenant

    def __contains__(self, tenant_id: object) -> bool:
        return tenant_id in self._tenants

    def ids(self) -> list[str]:
        return sorted(self._tenants)

    def all(self) -> list[TenantConfig]:
        return [self._tenants[t] for t in self.ids()]
