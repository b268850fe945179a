"""Tenant routing policy: config validation against the catalog, tiers, hints and filters."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import pytest
from parley_router.complexity import Tier
from parley_router.policy import (
    PolicyError,
    RoutingHints,
    TurnFacts,
    build_chain,
    choose_tier,
    format_usd,
    load_policies,
    resolve_pinned,
)
from parley_runtime.catalog import load_catalog
from parley_runtime.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from parley_runtime.tenants import TenantRegistry

pytestmark = pytest.mark.unit

CATALOG = load_catalog()
TODAY = dt.date(2026, 11, 24)
AFTER_SONNET_45 = dt.date(2026, 12, 1)
FACTS = TurnFacts(input_tokens=200, max_output_tokens=300, images=0, has_tools=False)


def policies(tenants: dict[str, Any], plans: dict[str, Any] | None = None,
             today: dt.date = TODAY) -> Any:
    return load_policies(TenantRegistry.from_dict({"tenants": tenants, "plans": plans or {}}),
                         CATALOG, today)


def test_defaults_follow_the_catalog_and_plan_limits() -> None:
    p = policies({"a": {"plan": "free"}, "b": {"plan": "enterprise"}},
                 {"free": {"router": {"requests_per_minute": 7}}})
    a = p["a"]
    assert [m.model_id for m in a.chains[Tier.SIMPLE]][0] == "gemini-2.5-flash-lite"
    assert [m.model_id for m in a.chains[Tier.PREMIUM]][0] == "claude-sonnet-4-6"
    assert a.limits.requests_per_minute == 7
    assert a.limits.tokens_per_minute == 40_000  # default for free, not overridden
    assert p["b"].limits.requests_per_minute == 3_000


@pytest.mark.parametrize("plans, fragment", [
    # The dev file's old shape: limits straight under the plan, under names nobody reads.
    ({"free": {"requests_per_min": 30}},
     "plans.free: unknown key 'requests_per_min'; a plan holds per-service sections"),
    ({"free": {"router": {"requests_per_min": 30}}},
     "plans.free.router: unknown key 'requests_per_min'; expected requests_per_minute and/or "
     "tokens_per_minute"),
    ({"gold": {"router": {"requests_per_minute": 30}}}, "plans: unknown plan 'gold'"),
    ({"free": {"router": [30]}}, "plans.free.router must be a mapping"),
    ({"free": {"router": {"requests_per_minute": 0}}}, "plans.free.router"),
])
def test_plans_with_keys_the_router_would_ignore_stop_the_start(
    plans: dict[str, Any], fragment: str,
) -> None:
    # Checked for every plan, used by a tenant or not: a typo must not wait for its first user.
    with pytest.raises(PolicyError) as err:
        policies({"a": {"plan": "pro"}}, plans)
    assert fragment in str(err.value)


def test_other_services_plan_sections_are_left_to_them() -> None:
    p = policies({"a": {"plan": "free"}},
                 {"free": {"vision": {"idle_fps": 1.0}, "router": {"tokens_per_minute": 9}}})
    assert p["a"].limits.tokens_per_minute == 9


def test_the_dev_tenants_file_sets_the_limits_it_means() -> None:
    from pathlib import Path

    path = Path(__file__).resolve().parents[3] / "config" / "tenants.dev.yaml"
    p = load_policies(TenantRegistry.from_file(path), CATALOG, TODAY)
    assert (p["globex"].limits.requests_per_minute, p["globex"].limits.tokens_per_minute) == (
        30, 30_000)
    assert (p["acme"].limits.requests_per_minute, p["acme"].limits.tokens_per_minute) == (
        300, 400_000)


@pytest.mark.parametrize("amount, text", [
    (0.000682, "$0.000682"), (0.0001, "$0.0001"), (101.5, "$101.50"), (0.0, "$0.00"),
    (12.3456789, "$12.3457"), (1234567.0, "$1234570.00"),
])
def test_amounts_in_messages_keep_their_significant_digits(amount: float, text: str) -> None:
    assert format_usd(amount) == text


def test_retired_model_is_replaced_by_its_successor_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    p = policies({"a": {"router": {"tiers": {"premium": ["claude-sonnet-4-5"]}}}},
                 today=AFTER_SONNET_45)
    assert [m.model_id for m in p["a"].chains[Tier.PREMIUM]] == ["claude-sonnet-4-6"]
    assert any("successor" in r.getMessage() for r in caplog.records)
    # Before its retirement date the deprecated model is still used as configured.
    p = policies({"a": {"router": {"tiers": {"premium": ["claude-sonnet-4-5"]}}}})
    assert [m.model_id for m in p["a"].chains[Tier.PREMIUM]] == ["claude-sonnet-4-5"]


@pytest.mark.parametrize(
    "router, fragment",
    [
        ({"tiers": {"simple": ["no-such-model"]}}, "unknown model"),
        ({"tiers": {"simple": ["voyage-3.5"]}}, "not an LLM"),
        ({"tiers": {"simple": []}}, "empty chain"),
        ({"force_tier": "premium", "max_tier": "standard"}, "above max_tier"),
        ({"force_tier": "premium", "max_premium_share": 0.1}, "contradicts"),
        ({"allowed_providers": ["openai"]}, "unknown providers"),
        ({"max_premium_share": 1.5}, "less than or equal"),
        ({"surprise": 1}, "Extra inputs"),
        ({"allowed_providers": []}, "no tier has a model"),
    ],
)
def test_bad_tenant_router_config_fails_at_start_up(router: dict[str, Any], fragment: str) -> None:
    with pytest.raises(PolicyError, match=fragment):
        policies({"t": {"router": router}})


def test_tenant_policy_wins_over_hints() -> None:
    p = policies({"forced": {"router": {"force_tier": "standard"}},
                  "capped": {"router": {"max_tier": "standard"}}})
    assert choose_tier(p["forced"], Tier.PREMIUM, RoutingHints()).tier is Tier.STANDARD
    assert choose_tier(p["forced"], Tier.SIMPLE,
                       RoutingHints(force_tier=Tier.PREMIUM)).tier is Tier.STANDARD
    c = choose_tier(p["capped"], Tier.PREMIUM, RoutingHints())
    assert c.tier is Tier.STANDARD and "capped" in " ".join(c.reasons)
    c = choose_tier(p["capped"], Tier.SIMPLE, RoutingHints(force_tier=Tier.PREMIUM))
    assert c.tier is Tier.STANDARD
    c = choose_tier(p["capped"], Tier.STANDARD, RoutingHints(max_tier=Tier.SIMPLE))
    assert c.tier is Tier.SIMPLE


def test_images_go_to_a_tier_whose_models_accept_images() -> None:
    # A tenant whose simple tier has a text-only model (built by hand: catalog models all
    # accept images, so mark one as not supporting them).
    from dataclasses import replace

    p = policies({"a": {}})["a"]
    text_only = replace(p.chains[Tier.SIMPLE][0], supports_images=False)
    chains = dict(p.chains)
    chains[Tier.SIMPLE] = (text_only,)
    p = replace(p, chains=chains)
    facts = TurnFacts(500, 300, images=1, has_tools=False)
    cand = build_chain(p, Tier.SIMPLE, facts, RoutingHints(), TODAY)
    assert cand.tier is Tier.STANDARD
    assert all(m.supports_images for m in cand.chain)
    assert "images" in cand.reasons[0]
    with pytest.raises(FailedPrecondition, match="images"):
        build_chain(p, Tier.SIMPLE, facts, RoutingHints(), TODAY, ceiling=Tier.SIMPLE)


def test_allowed_providers_filter_and_intersect_with_hints() -> None:
    p = policies({"a": {"router": {"allowed_providers": ["anthropic"]}}})["a"]
    cand = build_chain(p, Tier.SIMPLE, FACTS, RoutingHints(), TODAY)
    assert [m.provider for m in cand.chain] == ["anthropic"]
    with pytest.raises(PermissionDenied):
        build_chain(p, Tier.SIMPLE, FACTS, RoutingHints(allowed_providers=frozenset({"google"})),
                    TODAY)


def test_cost_cap_moves_down_then_refuses() -> None:
    p = policies({"a": {"router": {"max_cost_usd_per_turn": 0.002}}})["a"]
    facts = TurnFacts(input_tokens=3000, max_output_tokens=500, images=0, has_tools=False)
    cand = build_chain(p, Tier.PREMIUM, facts, RoutingHints(), TODAY)
    assert cand.tier < Tier.PREMIUM and "cost" in cand.reasons[0]
    with pytest.raises(FailedPrecondition, match="cost"):
        build_chain(p, Tier.PREMIUM, TurnFacts(900_000, 8000, 0, False),
                    RoutingHints(max_cost_usd=0.0001), TODAY)


def test_oversized_prompt_is_invalid_argument() -> None:
    p = policies({"a": {}})["a"]
    with pytest.raises(InvalidArgument, match="context window"):
        build_chain(p, Tier.SIMPLE, TurnFacts(5_000_000, 100, 0, False), RoutingHints(), TODAY)


def test_pinned_models() -> None:
    p = policies({"a": {"router": {"allowed_models": ["claude-haiku-4-5"]}},
                  "b": {"router": {"tiers": {"simple": ["gemini-2.5-flash-lite"],
                                             "standard": ["gemini-2.5-flash"],
                                             "premium": ["gemini-2.5-pro"]}}}})
    cand = resolve_pinned(p["a"], CATALOG, "claude-sonnet-4-6", FACTS, RoutingHints(), TODAY)
    assert cand.chain[0].model_id == "claude-sonnet-4-6" and cand.tier is Tier.PREMIUM
    with pytest.raises(NotFound, match="unknown model"):
        resolve_pinned(p["a"], CATALOG, "gpt-4o", FACTS, RoutingHints(), TODAY)
    with pytest.raises(PermissionDenied):
        resolve_pinned(p["b"], CATALOG, "claude-sonnet-4-6", FACTS, RoutingHints(), TODAY)
    with pytest.raises(InvalidArgument, match="not a chat model"):
        resolve_pinned(p["a"], CATALOG, "voyage-3.5", FACTS, RoutingHints(), TODAY)


def test_the_shipped_example_tenants_file_is_valid() -> None:
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "tenants.example.yaml"
    p = load_policies(TenantRegistry.from_file(path), CATALOG, TODAY)
    assert p["acme"].max_premium_share == 0.15
    assert p["acme"].limits.requests_per_minute == 300
    assert p["globex"].allowed_providers == frozenset({"google"})
