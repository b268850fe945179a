"""Failover with scripted providers: retries only before the first token, breakers, Retry-After,
deadlines and clear errors after output began."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
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
    TurnFinished,
    Usage,
)
from parley_router.failover import (
    Admission,
    Answering,
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


@dataclass
class FakeProvider:
    """A ChatProvider whose calls follow a script per model."""

    name: str
    scripts: dict[str, Script]
    calls: dict[str, int] = field(default_factory=dict)

    async def aclose(self) -> None:
        return None

    async def stream(
        self, model: Any, request: ChatRequest, ctx: CallContext, *, timeout_s: float
    ) -> AsyncIterator[ProviderEvent]:
        n = self.calls.get(model.model_id, 0) + 1
        self.calls[model.model_id] = n
        behaviour = self.scripts.get(model.model_id, lambda _n: "ok")(n)
        if isinstance(behaviour, ProviderError):
            raise behaviour
        if behaviour == "stall":
            await asyncio.sleep(60)
        yield TextDelta(f"{model.model_id} says hi")
        if behaviour == "break":
            raise ProviderError(ProviderErrorKind.STREAM, "connection reset")
        if behaviour == "stall_after":
            await asyncio.sleep(60)
        yield TextDelta(" there")
        yield TurnFinished(FinishReason.STOP, Usage(input_tokens=5, output_tokens=3))


class Hooks:
    def __init__(self, deny: set[str] | None = None) -> None:
        self.deny = deny or set()
        self.reports: list[AttemptReport] = []

    async def admit(self, model: Any) -> Admission:
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
