"""Tenant routing policy: the `router:` section of the tenants file, resolved against the catalog,
and the pure planning step that turns (policy, turn facts, hints, tier) into a model chain."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from parley_runtime.catalog import Catalog, CatalogError, ModelEntry
from parley_runtime.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from parley_runtime.tenants import TenantRegistry
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .chat import shown
from .complexity import TIERS, Tier

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_PLAN_LIMITS",
    "ChainCandidate",
    "PlanLimits",
    "PolicyError",
    "RouterTenantConfig",
    "RoutingHints",
    "TenantPolicy",
    "TierChoice",
    "TurnFacts",
    "build_chain",
    "choose_tier",
    "estimate_cost_usd",
    "format_usd",
    "load_policies",
    "validate_plans",
    "resolve_pinned",
]

TierName = Literal["simple", "standard", "premium"]
BudgetMode = Literal["refuse", "downgrade"]
KNOWN_PROVIDERS = frozenset({"google", "anthropic"})


class PolicyError(ValueError):
    """A tenant's router configuration cannot be used (raised at start-up)."""


class PlanLimits(BaseModel):
    """Per tenant *and provider* limits (each provider has its own buckets)."""

    model_config = ConfigDict(extra="forbid")

    requests_per_minute: float = Field(gt=0)
    tokens_per_minute: float = Field(gt=0)


DEFAULT_PLAN_LIMITS: dict[str, PlanLimits] = {
    "free": PlanLimits(requests_per_minute=20, tokens_per_minute=40_000),
    "pro": PlanLimits(requests_per_minute=300, tokens_per_minute=1_000_000),
    "enterprise": PlanLimits(requests_per_minute=3_000, tokens_per_minute=10_000_000),
}


class RouterTenantConfig(BaseModel):
    """The `router:` section of one tenant in PARLEY_TENANTS_FILE."""

    model_config = ConfigDict(extra="forbid")

    # Tier -> ordered model chain (first choice, then fallbacks); unset tiers use the catalog's.
    tiers: dict[TierName, list[str]] = Field(default_factory=dict)
    # At most this fraction of the tenant's turns (rolling window) may go to the premium tier.
    max_premium_share: float | None = Field(default=None, ge=0.0, le=1.0)
    force_tier: TierName | None = None
    max_tier: TierName | None = None
    # Providers the tenant may use; None = all known.
    allowed_providers: list[str] | None = None
    max_cost_usd_per_turn: float | None = Field(default=None, gt=0)
    # Overrides of the plan's rate limits.
    rate_limits: PlanLimits | None = None
    # What a hard-exceeded monthly budget does: refuse the turn or answer on the cheapest tier.
    on_budget_exceeded: BudgetMode = "refuse"
    # Extra catalog models the tenant may pin with hints.model_id (besides its chains).
    allowed_models: list[str] = Field(default_factory=list)
    # Largest prompt accepted (tokens, estimated); None = the largest context window available.
    max_input_tokens: int | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _consistent(self) -> RouterTenantConfig:
        if self.force_tier and self.max_tier:
            if Tier.from_label(self.force_tier) > Tier.from_label(self.max_tier):
                raise ValueError("force_tier is above max_tier")
        if self.force_tier == "premium" and self.max_premium_share is not None:
            if self.max_premium_share < 1.0:
                raise ValueError("force_tier premium contradicts max_premium_share < 1")
        for name, chain in self.tiers.items():
            if not chain:
                raise ValueError(f"tier {name!r} has an empty chain")
        if self.allowed_providers is not None:
            unknown = set(self.allowed_providers) - KNOWN_PROVIDERS
            if unknown:
                raise ValueError(
                    f"unknown providers {sorted(unknown)}; known: {sorted(KNOWN_PROVIDERS)}"
                )
        return self


@dataclass(frozen=True, slots=True)
class TenantPolicy:
    tenant_id: str
    plan: str
    chains: Mapping[Tier, tuple[ModelEntry, ...]]
    limits: PlanLimits
    max_premium_share: float | None
    force_tier: Tier | None
    max_tier: Tier
    allowed_providers: frozenset[str]
    max_cost_usd_per_turn: float | None
    on_budget_exceeded: BudgetMode
    pinnable: frozenset[str]
    max_input_tokens: int


def _resolve_chain(
    catalog: Catalog, tenant: str, tier: str, chain: Iterable[str], today: dt.date
) -> tuple[ModelEntry, ...]:
    out: list[ModelEntry] = []
    for model_id in chain:
        try:
            resolved = catalog.resolve(model_id, today)
        except CatalogError as exc:
            raise PolicyError(f"tenant {tenant!r}, tier {tier!r}: {exc}") from None
        if resolved != model_id:
            logger.warning(
                "tenant config names a retired model; using its successor",
                extra={"tenant": tenant, "tier": tier, "model": model_id, "successor": resolved},
            )
        entry = catalog.get(resolved)
        if entry.kind != "llm":
            raise PolicyError(f"tenant {tenant!r}, tier {tier!r}: {model_id!r} is not an LLM")
        if entry.provider not in KNOWN_PROVIDERS:
            raise PolicyError(
                f"tenant {tenant!r}, tier {tier!r}: provider {entry.provider!r} is not supported"
            )
        if entry not in out:
            out.append(entry)
    return tuple(out)


# A plan holds one section per service, like a tenant (parley_runtime.tenants.TenantConfig).
PLAN_SECTIONS = ("agent", "billing", "kb", "router", "vision")
_LIMIT_KEYS = tuple(PlanLimits.model_fields)


def validate_plans(plans: Mapping[str, Any]) -> None:
    """Check the tenants file's `plans:` as far as the router can: plan names, the per-service
    sections of each plan and all of its own (`plans.<plan>.router`).

    A key nobody reads would be ignored without a word (limits written at the wrong place
    silently left every tenant on the defaults), so unknown keys stop the service at start-up.
    Other services check the content of their own sections.
    """
    for plan, body in plans.items():
        if plan not in DEFAULT_PLAN_LIMITS:
            raise PolicyError(
                f"plans: unknown plan {shown(str(plan))}; the plans are "
                f"{', '.join(DEFAULT_PLAN_LIMITS)}"
            )
        if body is None:
            continue
        if not isinstance(body, Mapping):
            raise PolicyError(
                f"plans.{plan} must be a mapping of per-service sections "
                f"({', '.join(PLAN_SECTIONS)}), not a {type(body).__name__}"
            )
        for key in body:
            if key not in PLAN_SECTIONS:
                raise PolicyError(
                    f"plans.{plan}: unknown key {shown(str(key))}; a plan holds per-service "
                    f"sections ({', '.join(PLAN_SECTIONS)}); the router's rate limits go under "
                    f"plans.{plan}.router as {' and '.join(_LIMIT_KEYS)}"
                )
        plan_limits(plans, plan)


def plan_limits(plans: Mapping[str, Any], plan: str) -> PlanLimits:
    """Limits of `plan` from the tenants file's `plans:` section (`plans.<plan>.router`)."""
    body = plans.get(plan)
    section = body.get("router") if isinstance(body, Mapping) else None
    base = DEFAULT_PLAN_LIMITS.get(plan, DEFAULT_PLAN_LIMITS["free"])
    if section is None:
        return base
    if not isinstance(section, Mapping):
        raise PolicyError(
            f"plans.{plan}.router must be a mapping with {' and/or '.join(_LIMIT_KEYS)}, "
            f"not a {type(section).__name__}"
        )
    unknown = [k for k in section if k not in _LIMIT_KEYS]
    if unknown:
        raise PolicyError(
            f"plans.{plan}.router: unknown key {shown(str(unknown[0]))}; expected "
            f"{' and/or '.join(_LIMIT_KEYS)} (per tenant and provider)"
        )
    try:
        return PlanLimits(**{**base.model_dump(), **section})
    except (ValidationError, TypeError) as exc:
        raise PolicyError(f"plans.{plan}.router: {exc}") from None


def load_policies(
    registry: TenantRegistry, catalog: Catalog, today: dt.date | None = None
) -> dict[str, TenantPolicy]:
    """Validate every tenant's `router:` section; raises PolicyError on the first bad one."""
    today = today or dt.date.today()
    defaults = {
        Tier.from_label(name): _resolve_chain(catalog, "(catalog default)", name, chain, today)
        for name, chain in catalog.default_tiers.items()
    }
    missing = [t.label for t in TIERS if t not in defaults]
    if missing:
        raise PolicyError(f"catalog default_tiers lacks {missing}")
    validate_plans(registry.plans)
    policies: dict[str, TenantPolicy] = {}
    for tenant in registry.all():
        try:
            cfg = RouterTenantConfig(**tenant.router)
        except ValidationError as exc:
            raise PolicyError(f"tenant {tenant.tenant_id!r} router config: {exc}") from None
        chains = dict(defaults)
        for name, chain in cfg.tiers.items():
            chains[Tier.from_label(name)] = _resolve_chain(
                catalog, tenant.tenant_id, name, chain, today
            )
        providers = frozenset(cfg.allowed_providers) if cfg.allowed_providers is not None \
            else KNOWN_PROVIDERS
        pinnable = {m.model_id for chain in chains.values() for m in chain}
        for model_id in cfg.allowed_models:
            pinnable.update(
                m.model_id for m in _resolve_chain(catalog, tenant.tenant_id, "allowed_models",
                                                   [model_id], today)
            )
        windows = [m.context_window for chain in chains.values() for m in chain
                   if m.context_window]
        max_input = cfg.max_input_tokens or (max(windows) if windows else 200_000)
        policies[tenant.tenant_id] = TenantPolicy(
            tenant_id=tenant.tenant_id,
            plan=tenant.plan,
            chains=chains,
            limits=cfg.rate_limits or plan_limits(registry.plans, tenant.plan),
            max_premium_share=cfg.max_premium_share,
            force_tier=Tier.from_label(cfg.force_tier) if cfg.force_tier else None,
            max_tier=Tier.from_label(cfg.max_tier) if cfg.max_tier else Tier.PREMIUM,
            allowed_providers=providers,
            max_cost_usd_per_turn=cfg.max_cost_usd_per_turn,
            on_budget_exceeded=cfg.on_budget_exceeded,
            pinnable=frozenset(pinnable),
            max_input_tokens=max_input,
        )
        usable = [t for t in TIERS if any(m.provider in providers for m in chains[t])]
        if not usable:
            raise PolicyError(
                f"tenant {tenant.tenant_id!r}: no tier has a model from its allowed providers"
            )
    return policies


# ---------------------------------------------------------------------------------------------
# Planning


@dataclass(frozen=True, slots=True)
class RoutingHints:
    force_tier: Tier | None = None
    max_tier: Tier | None = None
    allowed_providers: frozenset[str] = frozenset()
    max_cost_usd: float = 0.0
    model_id: str = ""


@dataclass(frozen=True, slots=True)
class TurnFacts:
    input_tokens: int
    max_output_tokens: int
    images: int
    has_tools: bool


@dataclass(slots=True)
class TierChoice:
    tier: Tier
    reasons: list[str] = field(default_factory=list)


def choose_tier(policy: TenantPolicy, estimated: Tier, hints: RoutingHints) -> TierChoice:
    """The tier for a turn from the estimate, the tenant's policy and the caller's hints.

    Tenant policy always wins: a hint can only ask within what the tenant allows.
    """
    ceiling = policy.max_tier
    if hints.max_tier is not None and hints.max_tier < ceiling:
        ceiling = hints.max_tier
    if policy.force_tier is not None:
        return TierChoice(policy.force_tier, [f"tenant policy forces {policy.force_tier.label}"])
    if hints.force_tier is not None:
        if hints.force_tier > ceiling:
            return TierChoice(ceiling, [
                f"hint asked for {hints.force_tier.label}, capped at {ceiling.label}"])
        return TierChoice(hints.force_tier, [f"hint forces {hints.force_tier.label}"])
    choice = TierChoice(estimated, [f"complexity estimate {estimated.label}"])
    if estimated > ceiling:
        choice.tier = ceiling
        choice.reasons.append(f"capped at {ceiling.label} by policy")
    return choice


def format_usd(amount: float) -> str:
    """Dollars for messages: 6 significant digits (at least cents), so fractions of a cent do
    not read "$0.00", and no exponent: 0.000682 -> "$0.000682", 101.5 -> "$101.50"."""
    text = f"{float(f'{amount:.6g}'):.10f}".rstrip("0")
    whole, _, cents = text.partition(".")
    return f"${whole}.{cents.ljust(2, '0')}"


def estimate_cost_usd(model: ModelEntry, facts: TurnFacts, today: dt.date) -> float:
    price = model.price_at(today).usd_per_mtok
    return (
        facts.input_tokens * price.get("input", 0.0)
        + facts.max_output_tokens * price.get("output", 0.0)
    ) / 1_000_000


@dataclass(frozen=True, slots=True)
class ChainCandidate:
    tier: Tier
    chain: tuple[ModelEntry, ...]
    reasons: tuple[str, ...]


def _allowed_providers(policy: TenantPolicy, hints: RoutingHints) -> frozenset[str]:
    if hints.allowed_providers:
        return policy.allowed_providers & hints.allowed_providers
    return policy.allowed_providers


def _cost_cap(policy: TenantPolicy, hints: RoutingHints) -> float | None:
    caps = [c for c in (policy.max_cost_usd_per_turn, hints.max_cost_usd or None) if c]
    return min(caps) if caps else None


def build_chain(
    policy: TenantPolicy,
    tier: Tier,
    facts: TurnFacts,
    hints: RoutingHints,
    today: dt.date,
    *,
    ceiling: Tier | None = None,
) -> ChainCandidate:
    """The ordered models that may answer at `tier`, after every filter.

    When nothing at `tier` qualifies, capability problems (images, tools, context size) move
    up a tier (never above `ceiling`), cost problems move down. Raises when no tier works.
    """
    providers = _allowed_providers(policy, hints)
    if not providers:
        raise PermissionDenied(
            f"none of the requested providers "
            f"{shown(', '.join(sorted(hints.allowed_providers)), 100)} is allowed "
            f"for this tenant (allowed: {sorted(policy.allowed_providers)})"
        )
    cap = _cost_cap(policy, hints)
    top = ceiling or policy.max_tier
    if hints.max_tier is not None and hints.max_tier < top:
        top = hints.max_tier
    up = [t for t in TIERS if tier < t <= top]
    down = [t for t in reversed(TIERS) if t < tier]
    order = [tier, *up, *down]
    eliminated: dict[str, int] = {}
    for t in order:
        kept: list[ModelEntry] = []
        for m in policy.chains[t]:
            why = _reject(m, providers, facts, cap, today)
            if why:
                eliminated[why] = eliminated.get(why, 0) + 1
            else:
                kept.append(m)
        if kept:
            reasons: list[str] = []
            if t != tier:
                moved = "up" if t > tier else "down"
                causes = ", ".join(sorted(eliminated))
                reasons.append(
                    f"moved {moved} to {t.label}: {tier.label} models rejected ({causes})"
                )
            return ChainCandidate(t, tuple(kept), tuple(reasons))
    if "images" in eliminated:
        raise FailedPrecondition(
            "the turn has images and no allowed model accepts images"
        )
    if "tools" in eliminated:
        raise FailedPrecondition("the turn has tools and no allowed model supports tools")
    # Models that fit but cost too much make cost the real obstacle.
    if "cost" in eliminated and cap is not None:
        raise FailedPrecondition(
            f"estimated turn cost exceeds the cap of {format_usd(cap)} on every allowed "
            "model; shorten the prompt, lower max_output_tokens or raise the cap"
        )
    if "context" in eliminated:
        raise InvalidArgument(
            f"prompt of about {facts.input_tokens} tokens plus {facts.max_output_tokens} output "
            "tokens does not fit any allowed model's context window"
        )
    raise FailedPrecondition(
        f"no model of this tenant's tiers is from an allowed provider ({sorted(providers)})"
    )


def _reject(
    m: ModelEntry, providers: frozenset[str], facts: TurnFacts, cap: float | None, today: dt.date
) -> str | None:
    if m.provider not in providers:
        return "provider"
    if facts.images and not m.supports_images:
        return "images"
    if facts.has_tools and not m.supports_tools:
        return "tools"
    if m.context_window and facts.input_tokens + facts.max_output_tokens > m.context_window:
        return "context"
    if cap is not None and estimate_cost_usd(m, facts, today) > cap:
        return "cost"
    return None


def resolve_pinned(
    policy: TenantPolicy, catalog: Catalog, model_id: str, facts: TurnFacts,
    hints: RoutingHints, today: dt.date,
) -> ChainCandidate:
    """The chain for a turn that pins a model: the model, then the rest of its tier's chain."""
    try:
        resolved = catalog.resolve(model_id, today)
    except CatalogError as exc:
        if model_id not in catalog.models:
            raise NotFound(f"unknown model {shown(model_id)}") from None
        raise FailedPrecondition(str(exc)) from None
    entry = catalog.get(resolved)
    if entry.kind != "llm":
        raise InvalidArgument(f"model {shown(model_id)} is not a chat model")
    providers = _allowed_providers(policy, hints)
    if resolved not in policy.pinnable or entry.provider not in providers:
        raise PermissionDenied(f"model {shown(model_id)} is not allowed for this tenant")
    why = _reject(entry, providers, facts, _cost_cap(policy, hints), today)
    if why:
        raise FailedPrecondition(f"pinned model {resolved!r} cannot take this turn ({why})")
    tier = next((t for t in TIERS if entry in policy.chains[t]), Tier.STANDARD)
    rest = tuple(
        m for m in policy.chains[tier]
        if m is not entry and not _reject(m, providers, facts, _cost_cap(policy, hints), today)
    )
    reasons = [f"pinned model {resolved}"]
    if resolved != model_id:
        reasons.append(f"{model_id} retired; successor {resolved}")
    return ChainCandidate(tier, (entry, *rest), tuple(reasons))
