"""Tenant budgets as router-svc sees them (the state billing-svc reports)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Protocol

__all__ = ["BudgetChecker", "BudgetState", "BudgetStatus"]


class BudgetState(Enum):
    OK = "ok"
    SOFT_EXCEEDED = "soft_exceeded"
    HARD_EXCEEDED = "hard_exceeded"
    NO_BUDGET = "no_budget"


@dataclass(frozen=True, slots=True)
class BudgetStatus:
    state: BudgetState
    spent_usd: float = 0.0
    limit_usd: float = 0.0


class BudgetChecker(Protocol):
    async def check(self, tenant_id: str) -> BudgetStatus | None:
        """The tenant's budget state, or None when unknown (billing unreachable)."""
        ...

    async def aclose(self) -> None: ...
