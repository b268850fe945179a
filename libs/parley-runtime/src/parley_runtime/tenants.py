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

TENANT_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}\Z")

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
        """The registry in the YAML file at `path`.

        Raises:
            OSError: the file cannot be read.
            ValueError: it is not YAML, or not the shape `tenants: {<id>: {...}}`; the message
                says where.
        """
        with open(path, encoding="utf-8") as fh:
            try:
                data = yaml.safe_load(fh)
            except yaml.YAMLError as exc:
                raise ValueError(f"{path} is not valid YAML: {exc}") from None
        return cls.from_dict(data or {})

    @classmethod
    def from_dict(cls, data: Any) -> TenantRegistry:
        if not isinstance(data, dict):
            raise ValueError(
                "tenant configuration must be a mapping with a 'tenants:' key, "
                f"not a {type(data).__name__}"
            )
        entries = data.get("tenants") or {}
        if not isinstance(entries, dict):
            raise ValueError(
                f"'tenants' must map tenant ids to their settings, not a {type(entries).__name__}"
            )
        plans = data.get("plans") or {}
        if not isinstance(plans, dict):
            raise ValueError(f"'plans' must be a mapping, not a {type(plans).__name__}")
        tenants: dict[str, TenantConfig] = {}
        for tenant_id, raw in entries.items():
            if not isinstance(tenant_id, str):
                raise ValueError(
                    f"tenant id {tenant_id!r} must be a string (quote it in YAML: '{tenant_id}')"
                )
            if not TENANT_ID_RE.match(tenant_id):
                raise ValueError(
                    f"tenant id {tenant_id!r} must match {TENANT_ID_RE.pattern} "
                    "(lower-case letters, digits, dashes)"
                )
            if raw is not None and not isinstance(raw, dict):
                raise ValueError(
                    f"tenant {tenant_id!r}: its settings must be a mapping, "
                    f"not a {type(raw).__name__}"
                )
            try:
                tenants[tenant_id] = TenantConfig(tenant_id=tenant_id, **(raw or {}))
            except ValidationError as exc:
                raise ValueError(f"tenant {tenant_id!r}: {exc}") from None
            except TypeError as exc:  # e.g. a non-string key among its settings
                raise ValueError(f"tenant {tenant_id!r}: {exc}") from None
        return cls(tenants, dict(plans))

    def get(self, tenant_id: str | None) -> TenantConfig:
        if not tenant_id:
            raise InvalidArgument("no tenant id")
        tenant = self._tenants.get(tenant_id)
        if tenant is None:
            # A malformed id is unknown too (every service answers NOT_FOUND); a long one is not
            # echoed whole.
            shown = tenant_id if len(tenant_id) <= 64 else tenant_id[:64] + "..."
            raise NotFound(f"unknown tenant {shown!r}")
        return tenant

    def __contains__(self, tenant_id: object) -> bool:
        return tenant_id in self._tenants

    def ids(self) -> list[str]:
        return sorted(self._tenants)

    def all(self) -> list[TenantConfig]:
        return [self._tenants[t] for t in self.ids()]
