"""Tenant profiles for the agent: the `agent:` and `vision:` sections of PARLEY_TENANTS_FILE,
validated with this service's own models and reloaded when the file changes."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

from parley_runtime.tenants import TenantRegistry
from pydantic import ValidationError

from .config import TenantAgentConfig, VisionOverrides


class TenantRefused(Exception):
    """The tenant cannot be served; `reason` is a short code for logs and metrics."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True, slots=True)
class TenantProfile:
    tenant_id: str
    display_name: str
    plan: str
    agent: TenantAgentConfig
    vision: VisionOverrides


class TenantDirectory:
    """Reads the tenants file lazily and again whenever its modification time changes, so a
    config change applies to new sessions without restarting the worker."""

    def __init__(self, path: str | Path | None) -> None:
        self._path = Path(path) if path else None
        self._lock = threading.Lock()
        self._mtime: float | None = None
        self._registry: TenantRegistry | None = None

    def _current(self) -> TenantRegistry:
        if self._path is None:
            raise TenantRefused("no_tenants_file", "PARLEY_TENANTS_FILE is not set")
        try:
            mtime = os.stat(self._path).st_mtime
        except OSError as exc:
            raise TenantRefused(
                "tenants_file_unreadable", f"cannot read tenants file: {exc.strerror}"
            ) from None
        with self._lock:
            if self._registry is None or mtime != self._mtime:
                try:
                    self._registry = TenantRegistry.from_file(self._path)
                except (OSError, ValueError) as exc:
                    raise TenantRefused(
                        "tenants_file_invalid", f"tenants file is invalid: {exc}"
                    ) from None
                self._mtime = mtime
            return self._registry

    def profile(self, tenant_id: str) -> TenantProfile:
        """The validated profile of `tenant_id`.

        Raises:
            TenantRefused: unknown tenant, or its `agent:` section does not validate.
        """
        registry = self._current()
        if tenant_id not in registry:
            raise TenantRefused("unknown_tenant", f"unknown tenant {tenant_id!r}")
        tenant = registry.get(tenant_id)
        try:
            agent = TenantAgentConfig.model_validate(tenant.agent)
            vision = VisionOverrides.model_validate(tenant.vision)
        except ValidationError as exc:
            raise TenantRefused(
                "invalid_tenant_config",
                f"tenant {tenant_id!r} agent/vision config is invalid: "
                f"{exc.error_count()} error(s): {exc.errors()[0]['loc']} {exc.errors()[0]['msg']}",
            ) from None
        return TenantProfile(
            tenant_id=tenant_id,
            display_name=tenant.display_name or tenant_id,
            plan=tenant.plan,
            agent=agent,
            vision=vision,
        )
