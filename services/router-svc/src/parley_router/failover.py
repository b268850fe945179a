"""Failover across an ordered model chain.

Rules:
- Models are tried in chain order. A model whose breaker is open, or that is cooling down
  after a Retry-After, is skipped at once (no call, no delay).
- A failure before the first token moves to the next model immediately; after a full pass
  the chain is tried again after a jittered exponential backoff. Retries happen only before
  anything was sent to the caller: once a token went out, a broken stream is an error to the
  caller (never a silent truncation, never a duplicated answer).
- Every wait is bounded by the turn's deadline: the first-token wait, the stall wait between
  chunks, backoffs and Retry-After waits. When the deadline cannot be met the turn fails with
  a clear status before the caller's own deadline fires.

Events: `Attempting` once an attempt's request is out (admitted, sent, the provider accepted
it and is thinking), so the caller can be told the route while it waits rather than in front
of the first token; `Answering` when that attempt's first output arrived (the model that answers);
then the output and one `TurnFinished`.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Mapping,
)
from contextlib import aclosing
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

from parley_runtime.catalog import ModelEntry
from parley_runtime.errors import (
    DeadlineExceeded,
    InvalidArgument,
    ParleyError,
    ResourceExhausted,
    Unavailable,
)

from .breaker import BreakerBoard, CircuitBreaker
from .chat import ChatRequest, TextDelta, ToolCallEvent, TurnFinished, Usage, billable_usage
from .providers.base import (
    CallContext,
    ChatProvider,
    NotAdmitted,
    ProviderError,
    ProviderErrorKind,
)

__all__ = [
    "Admission",
    "Answering",
    "Attempting",
    "AttemptOutcome",
    "AttemptReport",
    "FailoverOptions",
    "FailoverRunner",
    "TurnHooks",
]


@dataclass(frozen=True, slots=True)
class FailoverOptions:
    first_token_timeout_s: float = 10.0
    # A half-open breaker's probe gets less patience: its turn still has fallbacks to try.
    probe_first_token_timeout_s: float = 3.0
    stall_timeout_s: float = 15.0
    max_attempts: int = 4
    backoff_base_s: float = 0.1
    backoff_max_s: float = 2.0
    # Longest Retry-After honoured as a cool-down (longer ones are capped).
    max_cooldown_s: float = 300.0
    # Longest the turn itself waits for a cool-down or an open breaker to pass.
    max_wait_s: float = 5.0
    # Finish (with an error) this long before the caller's deadline so the status reaches it.
    deadline_margin_s: float = 0.05
    # Cool-down after a 429 that carried no Retry-After.
    default_rate_limit_cooldown_s: float = 1.0


@dataclass(frozen=True, slots=True)
class Admission:
    allowed: bool
    retry_after_s: float = 0.0
    reason: str = ""


class AttemptOutcome:
    OK = "ok"
    ERROR = "error"
    BROKEN = "broken"  # failed after output had gone to the caller
    CANCELLED = "cancelled"


@dataclass(slots=True)
class AttemptReport:
    model: ModelEntry
    attempt: int
    outcome: str
    usage: Usage | None
    ttft_s: float | None
    total_s: float
    error: ProviderError | None = None


class TurnHooks(Protocol):
    async def admit(self, model: ModelEntry) -> Admission:
        """Rate-limit admission of one attempt on `model` (reserves request + tokens)."""
        ...

    def settle(self, report: AttemptReport) -> None:
        """Called once per attempt that reached a provider (usage, limiter correction).

        An attempt that ended early after its request was accepted (cancelled, broken, timed
        out) comes with billable usage: the provider's counts so far, else an estimate
        (chat.billable_usage), since providers charge such calls.
        """
        ...


class _Reach:
    """What an attempt's provider has told so far: that its request was accepted (on_sent)
    and its usage counts (on_usage, the provider's own object, updated in place)."""

    __slots__ = ("sent", "usage")

    def __init__(self) -> None:
        self.sent = False
        self.usage: Usage | None = None

    @property
    def reached(self) -> bool:
        """The provider took the request: from here on it bills it, however the call ends."""
        return self.sent or self.usage is not None

    def on_sent(self, fut: asyncio.Future[None]) -> None:
        self.sent = True
        _resolve(fut)

    def on_usage(self, usage: Usage) -> None:
        self.usage = usage


@dataclass(slots=True)
class Attempting:
    """An attempt on `model` was admitted and its request is out: the provider said so
    (CallContext.on_sent) and its first output is awaited.

    Not sent for providers that do not say so, nor when the attempt resolved (output or error)
    before the runner looked again: `Answering` then comes first.
    """

    model: ModelEntry
    attempt: int
    fallback_used: bool
    notes: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Answering:
    """The model that answers; sent before its first output."""

    model: ModelEntry
    attempt: int
    fallback_used: bool
    notes: list[str] = field(default_factory=list)


RunEvent = Attempting | Answering | TextDelta | ToolCallEvent | TurnFinished


class FailoverRunner:
    def __init__(
        self,
        *,
        providers: Mapping[str, ChatProvider],
        breakers: BreakerBoard,
        options: FailoverOptions | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self._providers = providers
        self.breakers = breakers
        self.options = options or FailoverOptions()
        self._clock = clock
        self._sleep = sleep
        self._rng = rng
        # Retry-After cool-downs, shared by every turn of this replica: key -> monotonic time.
        self._cooldown: dict[str, float] = {}

    def cooldown_remaining(self, model: ModelEntry) -> float:
        until = self._cooldown.get(_key(model), 0.0)
        return max(0.0, until - self._clock())

    async def run(
        self,
        *,
        chain: tuple[ModelEntry, ...],
        request: ChatRequest,
        ctx: CallContext,
        deadline: float,
        hooks: TurnHooks,
    ) -> AsyncGenerator[RunEvent, None]:
        o = self.options
        notes: list[str] = []
        attempt = 0
        passes = 0
        errors: list[ProviderError] = []
        hard_deadline = deadline - o.deadline_margin_s
        while True:
            tried = False
            waits: list[float] = []
            limit_waits: list[float] = []
            for model in chain:
                if attempt >= o.max_attempts:
                    break
                key = _key(model)
                now = self._clock()
                if now >= hard_deadline:
                    raise self._deadline_error(notes)
                cool = self._cooldown.get(key, 0.0)
                if cool > now:
                    waits.append(cool - now)
                    _note(notes, f"{model.model_id} skipped: provider asked to retry in "
                                 f"{cool - now:.1f}s")
                    continue
                breaker = self.breakers.get(key)
                if not breaker.allow():
                    waits.append(breaker.open_remaining() or o.backoff_base_s)
                    _note(notes, f"{model.model_id} skipped: circuit open")
                    continue
                probing = breaker.is_probing
                first_wait = o.probe_first_token_timeout_s if probing else o.first_token_timeout_s
                provider = self._providers.get(model.provider)
                gate: _AdmissionGate | None = None
                if provider is not None and getattr(provider, "honours_send_gate", False):
                    # The admission round trip runs while the provider prepares its request;
                    # the request leaves only once admitted (_AdmissionGate). Both are tasks,
                    # started in this order: the admission's request goes out first, then the
                    # (longer) preparation of the call runs under its round trip.
                    gate = _AdmissionGate(hooks.admit(model))
                else:
                    try:
                        admission = await hooks.admit(model)
                    except BaseException:
                        breaker.release_probe()  # the caller left: the probe never went out
                        raise
                    if not admission.allowed:
                        _refused(model, admission, breaker, limit_waits, notes)
                        continue
                # The call runs as a task so that this generator can hand on `Attempting` once
                # the provider reports its request sent (or the call resolved, whichever first).
                sent: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                reach = _Reach()
                call = asyncio.ensure_future(self._first(
                    model, request, ctx, attempt + 1, now, first_wait, hard_deadline, gate,
                    partial(reach.on_sent, sent), reach.on_usage))
                call.add_done_callback(partial(_resolve, sent))
                try:
                    await sent
                    if not call.done():
                        # The request is out and the provider is thinking: the caller can
                        # hear the route now, while nothing on this turn's path is waiting.
                        yield Attempting(model, attempt + 1, model is not chain[0], list(notes))
                    result = await call
                except BaseException:
                    if gate is not None:
                        gate.cancel()
                    await _cancel(call)
                    # Not the model's fault: a half-open breaker's probe slot must be freed, or
                    # no later turn would ever be let through to probe the model again.
                    breaker.release_probe()
                    if reach.reached:
                        # The caller left while the model was thinking: the provider still
                        # bills the request it accepted.
                        hooks.settle(AttemptReport(
                            model, attempt + 1, AttemptOutcome.CANCELLED,
                            billable_usage(reach.usage, request, 0), None,
                            self._clock() - now))
                    raise
                if gate is not None:
                    admission = await gate.outcome()  # the admission's own error propagates
                    if not admission.allowed:
                        if not isinstance(result, ProviderError):
                            await _close(result[0])  # cannot happen: nothing is sent unadmitted
                        _refused(model, admission, breaker, limit_waits, notes)
                        continue
                attempt += 1
                tried = True
                if isinstance(result, ProviderError):
                    err = result
                    errors.append(err)
                    if err.counts_against_model:
                        breaker.record_failure()
                    else:
                        breaker.release_probe()
                    self._cool_down(key, err)
                    _note(notes, f"{model.model_id} failed: {err}")
                    usage = err.partial_usage
                    if reach.reached:  # accepted, then failed or timed out before any output
                        usage = billable_usage(usage or reach.usage, request, 0)
                    hooks.settle(AttemptReport(
                        model, attempt, AttemptOutcome.ERROR,
                        usage, None, self._clock() - now, err))
                    continue
                gen, first, ttft = result
                # aclosing: if our caller stops early, the attempt is settled right away.
                async with aclosing(self._rest(
                    gen, first, model, attempt, now, ttft, chain, notes, breaker, hooks,
                    hard_deadline, request, reach,
                )) as rest:
                    async for event in rest:
                        yield event
                return
            # A full pass failed or skipped everything.
            now = self._clock()
            if attempt >= o.max_attempts:
                raise self._final_error(errors, notes, waits)
            if tried:
                delay = min(o.backoff_max_s, o.backoff_base_s * (2 ** passes)) * self._rng()
                passes += 1
                if now + delay >= hard_deadline:
                    raise self._final_error(errors, notes, waits)
                await self._sleep(delay)
                continue
            if limit_waits and not waits:
                retry = min(limit_waits)
                raise ResourceExhausted(
                    f"tenant rate limit reached on every provider of the chain; retry in "
                    f"{retry:.1f}s", retry_after_s=retry,
                )
            soonest = min(waits + limit_waits) if (waits or limit_waits) else o.backoff_base_s
            if soonest > o.max_wait_s or now + soonest >= hard_deadline:
                raise self._final_error(errors, notes, waits + limit_waits)
            # Everything is cooling down briefly: wait for the first to come back (jittered).
            await self._sleep(soonest + o.backoff_base_s * self._rng())

    async def _first(
        self,
        model: ModelEntry,
        request: ChatRequest,
        ctx: CallContext,
        attempt: int,
        started: float,
        first_wait: float,
        hard_deadline: float,
        gate: _AdmissionGate | None = None,
        on_sent: Callable[[], None] | None = None,
        on_usage: Callable[[Usage], None] | None = None,
    ) -> ProviderError | tuple[AsyncIterator[object], object, float]:
        """Start a call and wait for its first event; errors come back as values.

        With a `gate`, the first-token wait starts when the gate opens (the admission itself is
        bounded by the limiter's own timeouts and by the turn's deadline). `on_sent` goes to
        the provider (CallContext.on_sent).
        """
        provider = self._providers.get(model.provider)
        if provider is None:
            return ProviderError(ProviderErrorKind.AUTH,
                                 f"provider {model.provider!r} is not configured")
        budget = max(0.0, min(first_wait, hard_deadline - started))
        call_ctx = CallContext(ctx.tenant_id, ctx.session_id, ctx.turn_id, attempt,
                               gate.wait if gate is not None else None, on_sent, on_usage)
        gen = provider.stream(model, request, call_ctx, timeout_s=max(0.1, hard_deadline - started))
        try:
            loop = asyncio.get_running_loop()
            if gate is None:
                first_by = loop.time() + budget
            else:
                first_by = loop.time() + max(0.0, hard_deadline - self._clock())
            async with asyncio.timeout_at(first_by) as timer:
                if gate is not None:
                    gate.on_open = lambda: timer.reschedule(min(first_by, loop.time() + budget))
                first = await anext(gen)
        except TimeoutError:
            await _close(gen)
            return ProviderError(ProviderErrorKind.TIMEOUT,
                                 f"no first token within {budget:.2f}s")
        except ProviderError as err:
            await _close(gen)
            return err
        except StopAsyncIteration:
            return ProviderError(ProviderErrorKind.STREAM, "the provider sent an empty stream")
        except asyncio.CancelledError:
            await _close(gen)
            raise
        except Exception as exc:  # an adapter bug must not kill the turn: fail over
            await _close(gen)
            return ProviderError(ProviderErrorKind.STREAM, f"{type(exc).__name__}: {exc}")
        return gen, first, self._clock() - started

    async def _rest(
        self,
        gen: AsyncIterator[object],
        first: object,
        model: ModelEntry,
        attempt: int,
        started: float,
        ttft: float,
        chain: tuple[ModelEntry, ...],
        notes: list[str],
        breaker: CircuitBreaker,
        hooks: TurnHooks,
        hard_deadline: float,
        request: ChatRequest,
        reach: _Reach,
    ) -> AsyncGenerator[RunEvent, None]:
        """Forward the rest of an answer that has started; never retried from here on."""
        o = self.options
        outcome = AttemptOutcome.CANCELLED
        usage: Usage | None = None
        error: ProviderError | None = None
        out_chars = 0  # output forwarded: the floor of what an unfinished call is billed
        pump = _Pump(gen)
        try:
            yield Answering(model, attempt, model is not chain[0], list(notes))
            event = first
            while True:
                if isinstance(event, TurnFinished):
                    usage = event.usage
                    outcome = AttemptOutcome.OK
                    breaker.record_success(ttft)
                    yield event
                    return
                if isinstance(event, TextDelta):
                    out_chars += len(event.text)
                    yield event
                elif isinstance(event, ToolCallEvent):
                    out_chars += len(event.name) + len(event.arguments_json)
                    yield event
                wait = min(o.stall_timeout_s, hard_deadline - self._clock())
                try:
                    event = await pump.next(max(0.0, wait))
                except TimeoutError:
                    past_deadline = self._clock() >= hard_deadline - 1e-3
                    error = ProviderError(
                        ProviderErrorKind.TIMEOUT,
                        f"stream stalled for {wait:.1f}s after output began",
                    )
                    outcome = AttemptOutcome.BROKEN
                    breaker.record_failure()
                    if past_deadline:
                        raise DeadlineExceeded(
                            f"deadline reached while {model.model_id} was still answering; "
                            "the answer is incomplete"
                        ) from None
                    raise Unavailable(
                        f"{model.model_id} stalled after the answer had started; the answer "
                        "is incomplete: retry the turn"
                    ) from None
                except StopAsyncIteration:
                    error = ProviderError(ProviderErrorKind.STREAM, "stream ended early")
                    outcome = AttemptOutcome.BROKEN
                    breaker.record_failure()
                    raise Unavailable(
                        f"{model.model_id} ended the stream without finishing; the answer is "
                        "incomplete: retry the turn"
                    ) from None
                except ProviderError as err:
                    error = err
                    usage = err.partial_usage
                    outcome = AttemptOutcome.BROKEN
                    breaker.record_failure()
                    raise Unavailable(
                        f"{model.model_id} broke the stream after the answer had started "
                        f"({err}); the answer is incomplete: retry the turn"
                    ) from None
        finally:
            if outcome == AttemptOutcome.CANCELLED:
                # The caller went away: not the model's fault; free a half-open probe slot.
                breaker.release_probe()
            await pump.aclose()
            if outcome != AttemptOutcome.OK:
                # Output had begun, so the provider took the request: bill what it counted so
                # far, else an estimate (never nothing).
                usage = billable_usage(usage or reach.usage, request, out_chars)
            hooks.settle(AttemptReport(
                model, attempt, outcome, usage, ttft,
                self._clock() - started, error,
            ))

    def _cool_down(self, key: str, err: ProviderError) -> None:
        o = self.options
        wait = err.retry_after_s
        if wait is None and err.kind is ProviderErrorKind.RATE_LIMITED:
            wait = o.default_rate_limit_cooldown_s
        if wait:
            self._cooldown[key] = self._clock() + min(wait, o.max_cooldown_s)

    def _deadline_error(self, notes: list[str]) -> ParleyError:
        detail = "; ".join(notes[-4:]) or "no model answered"
        return DeadlineExceeded(f"deadline reached before any model answered ({detail})")

    def _final_error(
        self, errors: list[ProviderError], notes: list[str], waits: list[float]
    ) -> ParleyError:
        detail = "; ".join(notes[-6:]) or "no model could be tried"
        if errors and all(e.kind is ProviderErrorKind.INVALID_REQUEST for e in errors):
            return InvalidArgument(f"the providers rejected the request: {errors[-1].message}")
        if errors and errors[-1].kind is ProviderErrorKind.TIMEOUT and not waits:
            return Unavailable(f"no model answered in time ({detail})")
        retry = [e.retry_after_s for e in errors if e.retry_after_s] + waits
        return Unavailable(
            f"every model of the chain failed or is unavailable ({detail})",
            retry_after_s=min(retry) if retry else None,
        )


def _key(model: ModelEntry) -> str:
    return f"{model.provider}/{model.model_id}"


def _note(notes: list[str], text: str) -> None:
    if len(notes) < 16:
        notes.append(text)


def _refused(model: ModelEntry, admission: Admission, breaker: CircuitBreaker,
             limit_waits: list[float], notes: list[str]) -> None:
    """An attempt the rate limiter refused: not tried, its wait noted for the caller."""
    breaker.release_probe()
    limit_waits.append(admission.retry_after_s)
    _note(notes, f"{model.model_id} skipped: {admission.reason or 'rate limited'}")


def _resolve(fut: asyncio.Future[None], *_: object) -> None:
    if not fut.done():
        fut.set_result(None)


async def _cancel(task: asyncio.Future[Any]) -> None:
    """Cancel an attempt's task and let it close its stream (its outcome no longer matters)."""
    if task.done():
        if not task.cancelled():
            result = task.exception() or task.result()
            if isinstance(result, tuple):
                await _close(result[0])
        return
    task.cancel()
    try:
        await task
    except BaseException:  # cancelled, or a late result: the turn is going away anyway
        pass


class _AdmissionGate:
    """An attempt's admission, decided concurrently with the preparation of its call.

    The provider awaits `wait` right before its request leaves the process: it returns once
    the admission allowed the call and raises NotAdmitted when it was refused, so a refused
    call sends nothing. The runner reads the verdict with `outcome` (which re-raises the
    admission's own error, e.g. a fail-closed limiter's UNAVAILABLE).
    """

    __slots__ = ("_task", "on_open")

    def __init__(self, admit: Coroutine[Any, Any, Admission]) -> None:
        self._task: asyncio.Task[Admission] = asyncio.ensure_future(admit)
        self.on_open: Callable[[], None] | None = None

    async def wait(self) -> None:
        # Shielded: a first-token timeout or a cancelled turn must not cut the admission's
        # round trip in half (its verdict is still read by the runner).
        task = self._task
        admission = task.result() if task.done() else await asyncio.shield(task)
        if not admission.allowed:
            raise NotAdmitted(admission.reason or "rate limited")
        if self.on_open is not None:
            self.on_open()

    async def outcome(self) -> Admission:
        return await self._task

    def cancel(self) -> None:
        self._task.cancel()


class _Pump:
    """Reads a provider stream in its own task so the consumer can see what is already there.

    Text deltas that arrived while the previous one was being sent are merged into one
    message: nothing waits for them (a delta is never held back), the caller just gets fewer,
    larger messages when the provider bursts.
    """

    _END = object()

    def __init__(self, gen: AsyncIterator[object]) -> None:
        self._gen = gen
        self._items: deque[object] = deque()
        self._ready = asyncio.Event()
        # Started on the first next(), i.e. once the first output has been handed on: started
        # earlier, it would parse the rest of a buffered burst before the first token is sent.
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        try:
            async for item in self._gen:
                self._items.append(item)
                self._ready.set()
            self._items.append(self._END)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # delivered to the consumer in order
            self._items.append(exc)
        finally:
            self._ready.set()
            await _close(self._gen)

    async def next(self, timeout: float) -> object:
        if self._task is None:
            self._task = asyncio.create_task(self._run())
        if not self._items:
            self._ready.clear()
            async with asyncio.timeout(timeout):
                await self._ready.wait()
        item = self._items.popleft()
        if item is self._END:
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            raise item
        if isinstance(item, TextDelta) and self._items and isinstance(self._items[0], TextDelta):
            parts = [item.text]
            while self._items and isinstance(self._items[0], TextDelta):
                parts.append(self._items.popleft().text)  # type: ignore[attr-defined]
            item = TextDelta("".join(parts))
        return item

    async def aclose(self) -> None:
        if self._task is None:
            await _close(self._gen)
            return
        if not self._task.done():
            self._task.cancel()
        try:
            await self._task
        except BaseException:  # the outcome was already handled (or it was cancelled)
            pass


async def _close(gen: AsyncIterator[object]) -> None:
    aclose = getattr(gen, "aclose", None)
    if aclose is not None:
        try:
            await aclose()
        except Exception:  # closing a broken stream must not mask the real outcome
            pass
