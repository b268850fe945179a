"""TurnRouter: decides each turn's tier and model chain, then streams the answer via failover.

Order of a turn: validate -> estimate complexity -> tenant policy and hints -> budget ->
premium-share cap -> chain filters (providers, images, tools, context, cost cap) -> failover
with per-attempt rate-limit admission -> usage records and limiter corrections in the
background (never on the caller's path).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
import uuid
from collections.abc import AsyncGenerator, Callable, Coroutine, Mapping
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any, Protocol

from parley_runtime.catalog import Catalog, ModelEntry
from parley_runtime.context import time_remaining
from parley_runtime.errors import FailedPrecondition, NotFound, ResourceExhausted

from .budget import BudgetChecker, BudgetState, BudgetStatus
from .chat import (
    ChatRequest,
    FinishReason,
    TextDelta,
    ToolCallEvent,
    TurnFinished,
    Usage,
    validate_request,
)
from .complexity import ComplexityEstimator, SeedHeuristic, Tier
from .failover import Admission, Answering, Attempting, AttemptReport, FailoverRunner
from .metrics import RouterMetrics
from .policy import (
    ChainCandidate,
    PlanLimits,
    RoutingHints,
    TenantPolicy,
    TurnFacts,
    build_chain,
    choose_tier,
    format_usd,
    resolve_pinned,
)
from .providers.base import CallContext

logger = logging.getLogger(__name__)

__all__ = [
    "Completed",
    "Decision",
    "PremiumGate",
    "RateLimiter",
    "Routed",
    "RouterOptions",
    "Turn",
    "TurnRouter",
    "UsageSink",
    "usage_cost_usd",
]


class RateLimiter(Protocol):
    async def acquire(
        self, tenant: str, provider: str, limits: PlanLimits, tokens: int
    ) -> Admission: ...

    def correct(
        self, tenant: str, provider: str, limits: PlanLimits, delta_tokens: int
    ) -> None: ...


class PremiumGate(Protocol):
    async def admit(
        self, tenant: str, cap: float, *, wants_premium: bool, dry_run: bool = False
    ) -> bool: ...


def _call_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True, slots=True)
class Turn:
    tenant_id: str
    session_id: str
    # The caller's id (attribution); callers may reuse it, so nothing unique derives from it.
    turn_id: str
    request: ChatRequest
    hints: RoutingHints = RoutingHints()
    # Ours, one per StreamChat call: what makes each provider call's usage key unique.
    call_id: str = field(default_factory=_call_id)


@dataclass(frozen=True, slots=True)
class Decision:
    tier: Tier
    chain: tuple[ModelEntry, ...]
    complexity: float
    estimator: str
    reasons: tuple[str, ...]
    # The seed heuristic's tier (computed for dry runs, i.e. ClassifyTurn, only).
    baseline_tier: Tier | None
    input_tokens: int

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)


@dataclass(frozen=True, slots=True)
class Routed:
    """The model a turn's request went to: sent while that model is thinking, and again (for
    the next model) each time failover moves on, so the last one before the output names the
    model that answers."""

    decision: Decision
    model: ModelEntry
    attempt: int
    fallback_used: bool
    reason: str


@dataclass(frozen=True, slots=True)
class Completed:
    finish_reason: FinishReason
    usage: Usage
    cost_usd: float
    model: ModelEntry
    tier: Tier
    fallback_used: bool
    attempts: int
    ttft_ms: float
    total_ms: float


RouterEvent = Routed | TextDelta | ToolCallEvent | Completed


class UsageSink(Protocol):
    def record_call(
        self, *, turn: Turn, report: AttemptReport, tier: Tier, fallback_used: bool
    ) -> None: ...


@dataclass(frozen=True, slots=True)
class RouterOptions:
    # Turn deadline when the caller sent none.
    default_turn_timeout_s: float = 60.0
    # Output tokens reserved in the tokens/min bucket before the real count is known.
    reserve_output_tokens: int = 512


def usage_cost_usd(model: ModelEntry, usage: Usage, today: dt.date) -> float:
    """Cost of one call at the catalog prices in force `today`."""
    p = model.price_at(today).usd_per_mtok
    uncached = max(0, usage.input_tokens - usage.cached_input_tokens - usage.cache_write_tokens)
    return (
        uncached * p.get("input", 0.0)
        + usage.cached_input_tokens * p.get("cache_read", p.get("input", 0.0))
        + usage.cache_write_tokens * p.get("cache_write", p.get("input", 0.0))
        + usage.output_tokens * p.get("output", 0.0)
    ) / 1_000_000


class TurnRouter:
    def __init__(
        self,
        *,
        catalog: Catalog,
        policies: Mapping[str, TenantPolicy],
        estimator: ComplexityEstimator,
        runner: FailoverRunner,
        limiter: RateLimiter,
        premium: PremiumGate,
        usage: UsageSink,
        budget: BudgetChecker | None = None,
        baseline: ComplexityEstimator | None = None,
        options: RouterOptions | None = None,
        metrics: RouterMetrics | None = None,
        today: Callable[[], dt.date] = dt.date.today,
    ) -> None:
        self.catalog = catalog
        self.policies = policies
        self.estimator = estimator
        self.baseline = baseline or SeedHeuristic()
        self.runner = runner
        self.limiter = limiter
        self.premium = premium
        self.usage = usage
        self.budget = budget
        self.options = options or RouterOptions()
        self.metrics = metrics or RouterMetrics()
        self._today = today
        self._tasks: set[asyncio.Task[Any]] = set()

    def today(self) -> dt.date:
        return self._today()

    # ------------------------------------------------------------------ background tasks

    def spawn(self, coro: Coroutine[Any, Any, Any], what: str) -> None:
        """Run `coro` off the caller's path; its failure is logged, never raised."""
        task = asyncio.create_task(coro)
        self._tasks.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                logger.warning("background %s failed", what,
                               extra={"error": repr(t.exception())})

        task.add_done_callback(done)

    async def drain(self, timeout: float = 2.0) -> None:
        """Let background work (corrections, counters) finish, then cancel the rest."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # ------------------------------------------------------------------ decisions

    def policy(self, tenant_id: str) -> TenantPolicy:
        policy = self.policies.get(tenant_id)
        if policy is None:
            raise NotFound(f"unknown tenant {tenant_id!r}")
        return policy

    async def _budget(self, tenant_id: str) -> BudgetStatus | None:
        if self.budget is None:
            return None
        try:
            return await self.budget.check(tenant_id)
        except Exception as exc:  # billing trouble never fails a turn
            logger.warning("budget check failed; proceeding", extra={"error": repr(exc)})
            return None

    async def decide(self, turn: Turn, *, dry_run: bool = False) -> Decision:
        policy = self.policy(turn.tenant_id)
        request = turn.request
        hints = turn.hints
        tokens = validate_request(request, max_input_tokens=policy.max_input_tokens)
        facts = TurnFacts(tokens, request.max_output_tokens, request.image_count,
                          bool(request.tools))
        text = request.last_user_text()
        today = self._today()
        baseline: Tier | None = None
        if text:
            estimate = self.estimator.estimate(text)
            if dry_run:  # the seed's verdict is only reported by ClassifyTurn
                baseline = self.baseline.estimate(text).tier
            tier, complexity, estimator = estimate.tier, estimate.score, estimate.estimator
        else:
            tier, complexity, estimator = Tier.STANDARD, 0.5, "none"
            baseline = Tier.STANDARD if dry_run else None
        reasons: list[str] = []
        if not text:
            reasons.append("no user text to estimate: standard")
        budget = await self._budget(turn.tenant_id)
        budget_downgrade = False
        if budget is not None and budget.state is BudgetState.HARD_EXCEEDED:
            if policy.on_budget_exceeded == "refuse":
                raise ResourceExhausted(
                    f"the tenant's monthly budget is exhausted ({format_usd(budget.spent_usd)} "
                    f"spent of {format_usd(budget.limit_usd)}); raise the budget in billing to "
                    "continue"
                )
            budget_downgrade = True
        if hints.model_id:
            cand = resolve_pinned(policy, self.catalog, hints.model_id, facts, hints, today)
            if budget_downgrade and cand.tier is not Tier.SIMPLE:
                cand = build_chain(policy, Tier.SIMPLE, facts, hints, today,
                                   ceiling=Tier.SIMPLE)
                reasons.append("monthly budget exhausted: cheapest tier, pinned model ignored")
                self.metrics.downgrade("budget")
            reasons.extend(cand.reasons)
        else:
            choice = choose_tier(policy, tier, hints)
            reasons.extend(choice.reasons)
            chosen = choice.tier
            if budget_downgrade and chosen is not Tier.SIMPLE:
                chosen = Tier.SIMPLE
                reasons.append("monthly budget exhausted: downgraded to the cheapest tier")
                self.metrics.downgrade("budget")
            cand = build_chain(policy, chosen, facts, hints, today,
                               ceiling=Tier.SIMPLE if budget_downgrade else None)
            reasons.extend(cand.reasons)
        cand = await self._premium_cap(policy, cand, facts, hints, today, reasons, dry_run)
        return Decision(cand.tier, cand.chain, complexity, estimator, tuple(reasons), baseline,
                        tokens)

    async def _premium_cap(
        self, policy: TenantPolicy, cand: ChainCandidate, facts: TurnFacts,
        hints: RoutingHints, today: dt.date, reasons: list[str], dry_run: bool,
    ) -> ChainCandidate:
        cap = policy.max_premium_share
        if cap is None:
            return cand
        if cand.tier is not Tier.PREMIUM:
            if not dry_run:
                # Only the denominator changes: count it off the caller's path.
                self.spawn(self.premium.admit(policy.tenant_id, cap, wants_premium=False),
                           "premium-share count")
            return cand
        if await self.premium.admit(policy.tenant_id, cap, wants_premium=True, dry_run=dry_run):
            return cand
        self.metrics.downgrade("premium_share")
        try:
            lower = build_chain(policy, Tier.STANDARD, facts, hints, today, ceiling=Tier.STANDARD)
        except FailedPrecondition as exc:
            raise FailedPrecondition(
                f"premium share cap of {cap:.0%} reached and no lower tier can take this turn "
                f"({exc.message})"
            ) from None
        reasons.append(f"premium share cap {cap:.0%} reached: downgraded to {lower.tier.label}")
        reasons.extend(lower.reasons)
        return lower

    # ------------------------------------------------------------------ streaming

    async def stream(self, turn: Turn) -> AsyncGenerator[RouterEvent, None]:
        started = time.monotonic()
        decision = await self.decide(turn)
        policy = self.policy(turn.tenant_id)
        remaining = time_remaining()
        deadline = started + (
            remaining if remaining is not None else self.options.default_turn_timeout_s
        )
        hooks = _TurnHooks(self, turn, decision, policy)
        ctx = CallContext(turn.tenant_id, turn.session_id, turn.turn_id, 0)
        routed: Routed | None = None  # the last route sent
        answering: Answering | None = None
        ttft_ms = 0.0
        outcome = "error"
        self.metrics.active_streams.inc()
        try:
            async with aclosing(self.runner.run(
                chain=decision.chain, request=turn.request, ctx=ctx, deadline=deadline,
                hooks=hooks,
            )) as events:
                async for event in events:
                    if isinstance(event, (Attempting, Answering)):
                        if isinstance(event, Answering):
                            answering = event
                            if event.fallback_used:
                                self.metrics.fallback(decision.tier.label)
                        # One route per model tried (a retry of the same model adds none): out
                        # while it thinks, or here, right before its output, when it answered
                        # before the runner could say it was attempting.
                        if routed is None or routed.model is not event.model:
                            reason = decision.reason
                            if event.notes:
                                reason += "; fallback: " + "; ".join(event.notes[-4:])
                            routed = Routed(decision, event.model, event.attempt,
                                            event.fallback_used, reason)
                            yield routed
                    elif isinstance(event, TurnFinished):
                        assert answering is not None
                        now = time.monotonic()
                        outcome = "ok"
                        yield Completed(
                            finish_reason=event.finish_reason,
                            usage=event.usage,
                            cost_usd=usage_cost_usd(answering.model, event.usage, self._today()),
                            model=answering.model,
                            tier=decision.tier,
                            fallback_used=answering.fallback_used,
                            attempts=answering.attempt,
                            ttft_ms=ttft_ms or (now - started) * 1000,
                            total_ms=(now - started) * 1000,
                        )
                    else:
                        if not ttft_ms:
                            ttft_ms = (time.monotonic() - started) * 1000
                        yield event
        finally:
            self.metrics.active_streams.dec()
            self.metrics.turn(decision.tier.label, outcome)


class _TurnHooks:
    """Per-turn admission and settlement (the runner calls these per attempt)."""

    def __init__(self, router: TurnRouter, turn: Turn, decision: Decision,
                 policy: TenantPolicy) -> None:
        self._r = router
        self._turn = turn
        self._decision = decision
        self._policy = policy
        out = min(turn.request.max_output_tokens, router.options.reserve_output_tokens)
        self.reserved = decision.input_tokens + out

    async def admit(self, model: ModelEntry) -> Admission:
        admission = await self._r.limiter.acquire(
            self._turn.tenant_id, model.provider, self._policy.limits, self.reserved
        )
        if not admission.allowed:
            self._r.metrics.denied(self._turn.tenant_id, model.provider)
        return admission

    def settle(self, report: AttemptReport) -> None:
        # Metrics, the usage record and the limiter correction run right after the current
        # step, i.e. once the turn's last message and status are on their way.
        asyncio.get_running_loop().call_soon(self._settle, report)

    def _settle(self, report: AttemptReport) -> None:
        r = self._r
        usage = report.usage
        m = report.model
        r.metrics.attempt(m.provider, m.model_id, report.outcome, report.ttft_s, report.total_s,
                          usage.cached_input_tokens if usage else 0)
        fallback = m is not self._decision.chain[0]
        if usage is not None and (usage.input_tokens or usage.output_tokens):
            try:
                r.usage.record_call(turn=self._turn, report=report, tier=self._decision.tier,
                                    fallback_used=fallback)
            except Exception:  # usage reporting never fails a turn
                logger.exception("usage record failed")
        # Tokens the provider counted; a failed call that processed nothing gives the whole
        # reservation back (the request itself stays counted).
        used = usage.input_tokens + usage.output_tokens if usage is not None else 0
        delta = used - self.reserved
        if delta:
            r.limiter.correct(self._turn.tenant_id, m.provider, self._policy.limits, delta)
