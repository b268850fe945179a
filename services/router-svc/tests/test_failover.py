"""Failover with scripted providers: retries only before the first token, breakers, Retry-After,
deadlines and clear errors after output began."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from parley_router.breaker import BreakerBoard, BreakerOptions
from parley_router.chat import (
    ChatRequest,
    FinishReason,
    Message,
    ProviderEvent,
    Role,
    TextDelta,
    TextPart,
    ToolCallEvent,
    TurnFinished,
    Usage,
    estimate_tokens,
)
from parley_router.failover import (
    Admission,
    Answering,
    Attempting,
    AttemptReport,
    FailoverOptions,
    FailoverRunner,
)
from parley_router.providers.base import CallContext, ProviderError, ProviderErrorKind
from parley_runtime.catalog import load_catalog
from parley_runtime.errors import DeadlineExceeded, InvalidArgument, ResourceExhausted, Unavailable

pytestmark = pytest.mark.unit

CATALOG = load_catalog()
A = CATALOG.get("gemini-2.5-flash")
B = CATALOG.get("claude-haiku-4-5")
REQ = ChatRequest((Message(Role.USER, (TextPart("hello"),)),))
CTX = CallContext("acme", "s", "t", 0)

Script = Callable[[int], Any]  # call number -> behaviour


# Every test runs twice: with providers called once admitted, and with providers that prepare
# their call while the admission is decided and wait at the send gate (like AnthropicProvider).
GATED = [False]


@pytest.fixture(autouse=True, params=[False, True], ids=["admit-first", "send-gate"])
def gated(request: pytest.FixtureRequest) -> Iterator[bool]:
    GATED[0] = request.param
    yield request.param
    GATED[0] = False


@dataclass
class FakeProvider:
    """A ChatProvider whose calls follow a script per model; `calls` counts requests sent."""

    name: str
    scripts: dict[str, Script]
    calls: dict[str, int] = field(default_factory=dict)
    honours_send_gate: bool = field(default_factory=lambda: GATED[0])
    prepared: list[str] = field(default_factory=list)

    async def aclose(self) -> None:
        return None

    async def stream(
        self, model: Any, request: ChatRequest, ctx: CallContext, *, timeout_s: float
    ) -> AsyncIterator[ProviderEvent]:
        self.prepared.append(model.model_id)
        if ctx.send_gate is not None:
            assert self.honours_send_gate
            await ctx.send_gate()
        n = self.calls.get(model.model_id, 0) + 1
        self.calls[model.model_id] = n
        behaviour = self.scripts.get(model.model_id, lambda _n: "ok")(n)
        if isinstance(behaviour, ProviderError):
            raise behaviour
        if ctx.on_sent is not None:  # accepted: the model thinks (or answers at once)
            ctx.on_sent()
        if behaviour.startswith("counted_"):  # reports its input count up front (Anthropic)
            behaviour = behaviour.removeprefix("counted_")
            assert ctx.on_usage is not None
            ctx.on_usage(Usage(input_tokens=50, output_tokens=1))
        if behaviour == "stall":
            await asyncio.sleep(60)
        yield TextDelta(f"{model.model_id} says hi")
        if behaviour == "break":
            raise ProviderError(ProviderErrorKind.STREAM, "connection reset")
        if behaviour == "stall_after":
            await asyncio.sleep(60)
        if behaviour == "cut":
            return
        yield TextDelta(" there")
        yield TurnFinished(FinishReason.STOP, Usage(input_tokens=5, output_tokens=3))


class Hooks:
    def __init__(self, deny: set[str] | None = None, *, delay_s: float = 0.0,
                 error: Exception | None = None) -> None:
        self.deny = deny or set()
        self.delay_s = delay_s
        self.error = error
        self.reports: list[AttemptReport] = []
        self.admitted_at: list[float] = []
        self.attempting: list[Attempting] = []  # kept apart by run()

    async def admit(self, model: Any) -> Admission:
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.error is not None:
            raise self.error
        self.admitted_at.append(time.perf_counter())
        if model.model_id in self.deny:
            return Admission(False, 2.5, "tenant rate limit")
        return Admission(True)

    def settle(self, report: AttemptReport) -> None:
        self.reports.append(report)


def runner(
    scripts: dict[str, Script], **opts: Any
) -> tuple[FailoverRunner, dict[str, FakeProvider]]:
    providers = {
        "google": FakeProvider("google", scripts),
        "anthropic": FakeProvider("anthropic", scripts),
    }
    options = FailoverOptions(**{"first_token_timeout_s": 0.3, "stall_timeout_s": 0.3,
                                 "backoff_base_s": 0.01, "backoff_max_s": 0.02, **opts})
    r = FailoverRunner(providers=providers,  # type: ignore[arg-type]
                       breakers=BreakerBoard(BreakerOptions(min_calls=3, open_s=60)),
                       options=options)
    return r, providers


async def run(r: FailoverRunner, hooks: Hooks | None = None, deadline_s: float = 5.0,
              chain: tuple[Any, ...] = (A, B)) -> tuple[list[Any], Hooks]:
    hooks = hooks or Hooks()
    events = []
    async for ev in r.run(chain=chain, request=REQ, ctx=CTX,
                          deadline=time.monotonic() + deadline_s, hooks=hooks):
        if isinstance(ev, Attempting):
            hooks.attempting.append(ev)
        else:
            events.append(ev)
    return events, hooks


def overloaded(retry_after: float | None = None) -> ProviderError:
    return ProviderError(ProviderErrorKind.OVERLOADED, "overloaded", status=529,
                         retry_after_s=retry_after)


async def test_failure_before_first_token_fails_over_immediately() -> None:
    r, p = runner({A.model_id: lambda n: overloaded()})
    events, hooks = await run(r)
    answering = events[0]
    assert isinstance(answering, Answering) and answering.model is B and answering.fallback_used
    assert "overloaded" in " ".join(answering.notes)
    assert isinstance(events[-1], TurnFinished)
    assert [rep.outcome for rep in hooks.reports] == ["error", "ok"]


async def test_breaker_opens_and_turns_skip_the_dead_model() -> None:
    r, p = runner({A.model_id: lambda n: overloaded()})
    for _ in range(3):
        await run(r)
    assert p["google"].calls[A.model_id] == 3
    start = time.perf_counter()
    for _ in range(10):
        events, _ = await run(r)
        assert events[0].model is B and events[0].attempt == 1
    assert p["google"].calls[A.model_id] == 3  # never re-called while open
    assert time.perf_counter() - start < 2.0


async def test_retry_same_chain_after_backoff_when_everything_failed_once() -> None:
    r, p = runner({A.model_id: lambda n: overloaded() if n == 1 else "ok",
                   B.model_id: lambda n: overloaded()})
    events, hooks = await run(r)
    assert events[0].model is A and events[0].attempt == 3
    assert p["google"].calls[A.model_id] == 2


async def test_no_retry_after_the_first_token_clear_error_instead() -> None:
    r, p = runner({A.model_id: lambda n: "break"})
    got: list[Any] = []
    with pytest.raises(Unavailable, match="incomplete"):
        async for ev in r.run(chain=(A, B), request=REQ, ctx=CTX,
                              deadline=time.monotonic() + 5, hooks=Hooks()):
            got.append(ev)
    assert any(isinstance(e, TextDelta) for e in got)
    assert p["anthropic"].calls.get(B.model_id, 0) == 0  # never re-sent elsewhere


async def test_stall_before_first_token_fails_over_within_the_wait() -> None:
    r, _ = runner({A.model_id: lambda n: "stall"})
    start = time.perf_counter()
    events, _ = await run(r)
    assert events[0].model is B
    assert time.perf_counter() - start < 2.0


async def test_stall_after_first_token_is_an_error_within_the_stall_timeout() -> None:
    r, _ = runner({A.model_id: lambda n: "stall_after"})
    start = time.perf_counter()
    with pytest.raises(Unavailable, match="stalled"):
        await run(r)
    assert time.perf_counter() - start < 2.0


async def test_deadline_is_honoured_when_everything_stalls() -> None:
    r, _ = runner({A.model_id: lambda n: "stall", B.model_id: lambda n: "stall"},
                  first_token_timeout_s=10)
    start = time.perf_counter()
    with pytest.raises((DeadlineExceeded, Unavailable)):
        await run(r, deadline_s=0.5)
    assert time.perf_counter() - start < 1.0


async def test_retry_after_cools_a_model_down_for_later_turns() -> None:
    r, p = runner({A.model_id: lambda n: overloaded(30.0) if n == 1 else "ok"})
    await run(r)
    assert r.cooldown_remaining(A) > 25
    events, _ = await run(r)
    assert events[0].model is B and "retry in" in " ".join(events[0].notes)
    assert p["google"].calls[A.model_id] == 1


async def test_429_storm_ends_within_the_deadline_with_retry_time() -> None:
    storm = lambda n: ProviderError(ProviderErrorKind.RATE_LIMITED, "slow down",  # noqa: E731
                                    status=429, retry_after_s=20.0)
    r, _ = runner({A.model_id: storm, B.model_id: storm})
    start = time.perf_counter()
    with pytest.raises(Unavailable) as err:
        await run(r, deadline_s=3.0)
    assert time.perf_counter() - start < 3.0
    assert err.value.retry_after_s is not None and err.value.retry_after_s > 10


async def test_short_retry_after_is_waited_out_inside_the_deadline() -> None:
    limited = lambda n: ProviderError(ProviderErrorKind.RATE_LIMITED, "x",  # noqa: E731
                                      status=429, retry_after_s=0.2) if n == 1 else "ok"
    r, _ = runner({A.model_id: limited, B.model_id: limited})
    events, _ = await run(r, deadline_s=3.0)
    assert isinstance(events[-1], TurnFinished)


async def test_tenant_rate_limit_on_every_model_is_resource_exhausted() -> None:
    r, p = runner({})
    with pytest.raises(ResourceExhausted) as err:
        await run(r, Hooks(deny={A.model_id, B.model_id}))
    assert err.value.retry_after_s == pytest.approx(2.5)
    assert not p["google"].calls and not p["anthropic"].calls


async def test_invalid_request_everywhere_is_invalid_argument_and_spares_the_breaker() -> None:
    bad = lambda n: ProviderError(ProviderErrorKind.INVALID_REQUEST, "bad image")  # noqa: E731
    r, _ = runner({A.model_id: bad, B.model_id: bad}, max_attempts=2)
    with pytest.raises(InvalidArgument, match="bad image"):
        await run(r)
    assert r.breakers.get("google/" + A.model_id).state.name == "CLOSED"


async def test_caller_cancelling_settles_the_attempt_and_frees_nothing_else() -> None:
    r, _ = runner({A.model_id: lambda n: "stall_after"})
    hooks = Hooks()
    gen = r.run(chain=(A, B), request=REQ, ctx=CTX, deadline=time.monotonic() + 5, hooks=hooks)
    first = await anext(gen)
    assert isinstance(first, Answering)
    await anext(gen)
    await gen.aclose()
    assert [rep.outcome for rep in hooks.reports] == ["cancelled"]


# ---------------------------------------------------------------------------------------------
# The send gate: the admission round trip overlaps the call's preparation, never its sending.


async def test_a_refused_admission_sends_nothing_and_costs_no_attempt(gated: bool) -> None:
    r, p = runner({})
    events, hooks = await run(r, Hooks(deny={A.model_id}))
    assert isinstance(events[0], Answering) and events[0].model is B
    assert events[0].attempt == 1  # the refused model used no attempt number
    assert "rate limit" in " ".join(events[0].notes)
    assert A.model_id not in p["google"].calls  # nothing was sent to the refused model
    assert p["google"].prepared == ([A.model_id] if gated else [])
    assert [rep.model for rep in hooks.reports] == [B]  # nothing to settle for A


async def test_the_admissions_own_error_propagates_and_nothing_is_sent(gated: bool) -> None:
    r, p = runner({})
    with pytest.raises(Unavailable, match="fail closed"):
        await run(r, Hooks(error=Unavailable("limiter down, fail closed")))
    assert not p["google"].calls and not p["anthropic"].calls


async def test_admission_overlaps_the_preparation_and_gates_the_send(gated: bool) -> None:
    r, p = runner({})
    sent_at: list[float] = []
    orig = p["google"].stream

    async def stream(model: Any, request: ChatRequest, ctx: CallContext, *,
                     timeout_s: float) -> AsyncIterator[ProviderEvent]:
        prepared_at = time.perf_counter()
        async for ev in orig(model, request, ctx, timeout_s=timeout_s):
            if not sent_at:
                sent_at.append(time.perf_counter())
                assert (prepared_at < hooks.admitted_at[0]) is gated
            yield ev

    p["google"].stream = stream  # type: ignore[method-assign]
    hooks = Hooks(delay_s=0.05)
    events, _ = await run(r, hooks)
    assert isinstance(events[-1], TurnFinished)
    assert sent_at[0] >= hooks.admitted_at[0]


async def test_first_token_wait_starts_once_the_call_is_admitted() -> None:
    # Admission slower than the first-token timeout: the call must not time out for it.
    r, _ = runner({}, first_token_timeout_s=0.1)
    events, hooks = await run(r, Hooks(delay_s=0.25))
    assert events[0].model is A and events[0].attempt == 1
    assert [rep.outcome for rep in hooks.reports] == ["ok"]


# ---------------------------------------------------------------------------------------------
# Attempting: the route can go out while the model thinks, not in front of its first token.


async def test_attempting_comes_once_the_request_is_accepted_and_before_the_first_token(
    gated: bool,
) -> None:
    r, p = runner({})
    orig = p["google"].stream
    seen: list[Any] = []

    async def thinking(model: Any, request: ChatRequest, ctx: CallContext, *,
                       timeout_s: float) -> AsyncIterator[ProviderEvent]:
        first = True
        async for ev in orig(model, request, ctx, timeout_s=timeout_s):
            if first:  # the request is out (counted in `calls`); the model thinks a while
                first = False
                await asyncio.sleep(0.05)
            yield ev

    p["google"].stream = thinking  # type: ignore[method-assign]
    async for ev in r.run(chain=(A, B), request=REQ, ctx=CTX, deadline=time.monotonic() + 5,
                          hooks=Hooks(delay_s=0.01)):
        if isinstance(ev, Attempting):
            assert p["google"].calls == {A.model_id: 1}  # admitted and sent, nothing more
        seen.append(ev)
    assert [type(e).__name__ for e in seen[:3]] == ["Attempting", "Answering", "TextDelta"]
    assert seen[0].model is A and seen[0].attempt == 1 and not seen[0].fallback_used


async def test_each_model_tried_is_announced_and_the_answering_one_last(gated: bool) -> None:
    r, _ = runner({A.model_id: lambda n: "stall"})
    events, hooks = await run(r)
    assert [(e.model, e.attempt, e.fallback_used) for e in hooks.attempting][:1] == [(A, 1, False)]
    assert isinstance(events[0], Answering) and events[0].model is B
    assert all(e.model is B for e in hooks.attempting[1:])
    assert "no first token" in " ".join(events[0].notes)


async def test_an_answer_ready_before_the_runner_looks_is_not_announced_twice() -> None:
    # The scripted provider answers without waiting: nothing to announce before Answering.
    r, _ = runner({})
    events, hooks = await run(r)
    assert not hooks.attempting and isinstance(events[0], Answering)


async def test_a_provider_that_does_not_say_it_sent_gets_no_attempting() -> None:
    provider = BurstProvider(list(SCRIPT), gap_s=0.02)  # thinks, but never calls on_sent
    events, hooks = await run(burst_runner(provider), chain=(A,))
    assert not hooks.attempting and isinstance(events[0], Answering)


async def test_closing_while_the_model_thinks_cancels_the_call_and_bills_its_input() -> None:
    r, p = runner({A.model_id: lambda n: "stall"})
    hooks = Hooks()
    gen = r.run(chain=(A, B), request=REQ, ctx=CTX, deadline=time.monotonic() + 5, hooks=hooks)
    first = await anext(gen)
    assert isinstance(first, Attempting) and first.model is A
    await gen.aclose()
    assert p["google"].calls == {A.model_id: 1} and not p["anthropic"].calls
    # The provider accepted the request before the caller left: its input is billed.
    [rep] = hooks.reports
    assert rep.model is A and rep.outcome == "cancelled"
    assert rep.usage == Usage(input_tokens=estimate_tokens(REQ), estimated=True)


# ---------------------------------------------------------------------------------------------
# Calls that end early after the provider took them are billed: its counts, else an estimate.

SAID = f"{A.model_id} says hi"  # FakeProvider's first output


async def test_a_call_cancelled_mid_answer_is_billed_at_an_estimate() -> None:
    r, _ = runner({A.model_id: lambda n: "stall_after"})
    hooks = Hooks()
    gen = r.run(chain=(A,), request=REQ, ctx=CTX, deadline=time.monotonic() + 5, hooks=hooks)
    assert isinstance(await anext(gen), Answering)
    assert await anext(gen) == TextDelta(SAID)
    await gen.aclose()
    [rep] = hooks.reports
    assert rep.outcome == "cancelled"
    assert rep.usage == Usage(input_tokens=estimate_tokens(REQ),
                              output_tokens=-(-len(SAID) // 4), estimated=True)


async def test_a_cancelled_call_keeps_the_counts_the_provider_gave() -> None:
    r, _ = runner({A.model_id: lambda n: "counted_stall_after"})
    hooks = Hooks()
    gen = r.run(chain=(A,), request=REQ, ctx=CTX, deadline=time.monotonic() + 5, hooks=hooks)
    await anext(gen)
    await anext(gen)
    await gen.aclose()
    [rep] = hooks.reports
    # Input as counted; output: its early placeholder (1) is below what was already streamed.
    assert rep.usage == Usage(input_tokens=50, output_tokens=-(-len(SAID) // 4),
                              estimated=True)


@pytest.mark.parametrize("behaviour", ["cut", "stall_after", "break"])
async def test_a_call_broken_mid_answer_is_billed(behaviour: str) -> None:
    r, _ = runner({A.model_id: lambda n: behaviour})
    hooks = Hooks()
    with pytest.raises(Unavailable, match="incomplete"):
        await run(r, hooks, chain=(A,))
    [rep] = hooks.reports
    assert rep.outcome == "broken"
    assert rep.usage == Usage(input_tokens=estimate_tokens(REQ),
                              output_tokens=-(-len(SAID) // 4), estimated=True)


async def test_a_call_timed_out_after_it_was_accepted_bills_its_input() -> None:
    r, _ = runner({A.model_id: lambda n: "stall"}, max_attempts=1)
    hooks = Hooks()
    with pytest.raises(Unavailable):
        await run(r, hooks, chain=(A,))
    [rep] = hooks.reports
    assert rep.outcome == "error"
    assert rep.usage == Usage(input_tokens=estimate_tokens(REQ), estimated=True)


async def test_a_call_refused_before_it_was_accepted_bills_nothing() -> None:
    r, _ = runner({A.model_id: lambda n: overloaded()}, max_attempts=1)
    hooks = Hooks()
    with pytest.raises(Unavailable):
        await run(r, hooks, chain=(A,))
    [rep] = hooks.reports
    assert rep.outcome == "error" and rep.usage is None


async def test_a_finished_call_is_billed_as_the_provider_counted() -> None:
    r, _ = runner({})
    _, hooks = await run(r, chain=(A,))
    [rep] = hooks.reports
    assert rep.usage == Usage(input_tokens=5, output_tokens=3)  # no estimate involved


# ---------------------------------------------------------------------------------------------
# Coalescing: deltas already buffered when the previous message was handed on travel as one.


@dataclass
class BurstProvider:
    """Streams a fixed script; `gap_s` > 0 sleeps between events (nothing to coalesce)."""

    events: list[ProviderEvent]
    gap_s: float = 0.0
    name: str = "google"
    honours_send_gate: bool = False

    async def aclose(self) -> None:
        return None

    async def stream(
        self, model: Any, request: ChatRequest, ctx: CallContext, *, timeout_s: float
    ) -> AsyncIterator[ProviderEvent]:
        for ev in self.events:
            if self.gap_s:
                await asyncio.sleep(self.gap_s)
            yield ev


def burst_runner(provider: BurstProvider) -> FailoverRunner:
    return FailoverRunner(providers={"google": provider},  # type: ignore[dict-item]
                          breakers=BreakerBoard(BreakerOptions()),
                          options=FailoverOptions(first_token_timeout_s=1, stall_timeout_s=1))


SCRIPT: list[ProviderEvent] = [
    TextDelta("Based "), TextDelta("on "), TextDelta("the "), TextDelta("notes: "),
    ToolCallEvent("call_1", "search_kb", '{"query": "opening hours"}'),
    TextDelta("it "), TextDelta("opens "), TextDelta("at 9."),
    ToolCallEvent("call_2", "book", "{}"),
    TurnFinished(FinishReason.TOOL_CALLS, Usage(input_tokens=7, output_tokens=9)),
]


async def test_buffered_deltas_are_coalesced_in_order_with_tool_calls_intact() -> None:
    provider = BurstProvider(list(SCRIPT))
    events, _ = await run(burst_runner(provider), chain=(A,))
    out = [e for e in events if not isinstance(e, Answering)]
    # The first token is never held back or merged: it goes out as the provider sent it.
    assert out[0] == TextDelta("Based ")
    # Every token, in order; tool calls stay whole, between the same texts as in the stream.
    kinds = [type(e).__name__ for e in out]
    assert kinds.count("ToolCallEvent") == 2 and kinds[-1] == "TurnFinished"
    calls = [e for e in out if isinstance(e, ToolCallEvent)]
    assert calls == [SCRIPT[4], SCRIPT[8]]
    i1, i2 = out.index(calls[0]), out.index(calls[1])
    assert "".join(e.text for e in out[:i1] if isinstance(e, TextDelta)) == "Based on the notes: "
    assert "".join(e.text for e in out[i1:i2] if isinstance(e, TextDelta)) == "it opens at 9."
    assert out[-1] == SCRIPT[-1]
    # The burst after the first token left as fewer, larger messages.
    assert len(out) < len(SCRIPT)


async def test_deltas_arriving_one_by_one_are_sent_one_by_one() -> None:
    provider = BurstProvider(list(SCRIPT), gap_s=0.005)
    events, _ = await run(burst_runner(provider), chain=(A,))
    out = [e for e in events if not isinstance(e, Answering)]
    assert out == SCRIPT  # nothing waited for, so nothing merged


async def test_a_probe_the_caller_abandons_while_the_model_thinks_frees_its_slot() -> None:
    """A half-open breaker admits one turn as its probe; if that turn's caller leaves before
    the first token, the next turn must be let through to probe (not skip the model forever)."""
    r, p = runner({A.model_id: lambda n: "stall"})
    breaker = r.breakers.get("google/" + A.model_id)
    for _ in range(3):
        breaker.record_failure()
    assert breaker.state.name == "OPEN"
    breaker._opened_until = 0.0  # the open period is over: the next turn is the probe
    gen = r.run(chain=(A, B), request=REQ, ctx=CTX, deadline=time.monotonic() + 5,
                hooks=Hooks())
    first = await anext(gen)
    assert isinstance(first, Attempting) and first.model is A and breaker.is_probing
    await gen.aclose()
    assert breaker.state.name == "HALF_OPEN" and not breaker.is_probing
    assert breaker.allow(), "the next turn probes the model"
