"""Monthly budgets per tenant: defaults from the tenant file, states, and a short-lived cache.

A budget is `monthly_limit_usd` with a soft alert at `soft_limit_ratio` of it and, when
`hard_limit` is set, a hard stop at the limit (router-svc downgrades or refuses turns). The
month is the calendar month in UTC; spend counts events by when they happened, so a late event
for last month does not eat this month's budget.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum

from parley_runtime.tenants import TenantRegistry
from pydantic import BaseModel, ConfigDict, Field, ValidationError

DEFAULT_SOFT_RATIO = 0.8
MAX_LIMIT_USD = 1_000_000_000.0


class BillingTenantConfig(BaseModel):
    """The `billing:` section of a tenant in PARLEY_TENANTS_FILE."""

    model_config = ConfigDict(extra="forbid")

    monthly_budget_usd: float | None = Field(default=None, ge=0, le=MAX_LIMIT_USD)
    soft_limit_ratio: float = Field(default=DEFAULT_SOFT_RATIO, gt=0, le=1)
    hard_limit: bool = False


class BudgetState(StrEnum):
    OK = "ok"
    SOFT_EXCEEDED = "soft_exceeded"
    HARD_EXCEEDED = "hard_exceeded"
    NO_BUDGET = "no_budget"


@dataclass(frozen=True, slots=True)
class Budget:
    monthly_limit_usd: Decimal
    soft_limit_ratio: float
    hard_limit: bool
    # "api" (SetBudget) or "tenant-config".
    source: str = "api"

    @classmethod
    def checked(cls, limit: float, soft_ratio: float, hard: bool, source: str = "api") -> Budget:
        """Validate values from a caller (0 as the ratio means the default 0.8)."""
        if not math.isfinite(limit) or limit < 0 or limit > MAX_LIMIT_USD:
            raise ValueError(f"monthly_limit_usd must be between 0 and {MAX_LIMIT_USD:.0f}")
        if soft_ratio == 0:
            soft_ratio = DEFAULT_SOFT_RATIO
        if not math.isfinite(soft_ratio) or not 0 < soft_ratio <= 1:
            raise ValueError("soft_limit_ratio must be in (0, 1]")
        return cls(Decimal(repr(limit)).quantize(Decimal("0.000001")), soft_ratio, hard, source)


@dataclass(frozen=True, slots=True)
class BudgetStatus:
    budget: Budget | None
    spent_usd: Decimal
    state: BudgetState
    month: dt.date


def evaluate(budget: Budget | None, spent: Decimal) -> BudgetState:
    if budget is None:
        return BudgetState.NO_BUDGET
    limit = budget.monthly_limit_usd
    if spent >= limit and budget.hard_limit:
        return BudgetState.HARD_EXCEEDED
    if spent >= limit * Decimal(repr(budget.soft_limit_ratio)):
        return BudgetState.SOFT_EXCEEDED
    return BudgetState.OK


def month_bounds(now: dt.datetime) -> tuple[dt.date, dt.date]:
    """First day of `now`'s UTC month and of the next one."""
    day = now.astimezone(dt.UTC).date().replace(day=1)
    following = (day + dt.timedelta(days=32)).replace(day=1)
    return day, following


def defaults_from_tenants(registry: TenantRegistry | None) -> dict[str, Budget]:
    """Budgets declared in the tenant file; raises ValueError naming a bad tenant section."""
    out: dict[str, Budget] = {}
    if registry is None:
        return out
    for tenant in registry.all():
        try:
            cfg = BillingTenantConfig.model_validate(tenant.billing)
        except ValidationError as exc:
            raise ValueError(f"tenant {tenant.tenant_id!r}: billing section: {exc}") from None
        if cfg.monthly_budget_usd is not None:
            out[tenant.tenant_id] = Budget.checked(
                cfg.monthly_budget_usd, cfg.soft_limit_ratio, cfg.hard_limit, "tenant-config"
            )
    return out


class StatusCache:
    """Per-tenant BudgetStatus for `ttl_s` seconds, so CheckBudget costs no query per turn."""

    def __init__(self, ttl_s: float, *, max_entries: int = 100_000) -> None:
        self._ttl = ttl_s
        self._max = max_entries
        self._entries: dict[str, tuple[float, BudgetStatus]] = {}

    def get(self, tenant: str) -> BudgetStatus | None:
        hit = self._entries.get(tenant)
        if hit is None or hit[0] <= time.monotonic():
            return None
        return hit[1]

    def put(self, tenant: str, status: BudgetStatus) -> None:
        if len(self._entries) >= self._max:
            self._entries.clear()
        self._entries[tenant] = (time.monotonic() + self._ttl, status)

    def invalidate(self, tenant: str) -> None:
        self._entries.pop(tenant, None)
