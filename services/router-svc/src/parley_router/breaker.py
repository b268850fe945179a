"""Circuit breakers per provider model.

A breaker opens when, over a rolling window of recent calls, the share of failures or of slow
calls (time to first token above a threshold) crosses a threshold. While open, the model is
skipped: turns go straight to the next model of the chain, with no added delay and no call to
the dead model.

Recovery is probed without re-sending anyone's request: after the open period the breaker goes
half-open and admits exactly one *real* turn as the probe (every other turn keeps skipping the
model). That turn is not duplicated: if the probe fails, the turn simply fails over to the next
model as any failed attempt would, and the breaker re-opens for longer. A synthetic probe (e.g.
count_tokens) was rejected: it costs a request per probe and tests an endpoint that stays up
while generation is overloaded (429/529 come from the messages endpoint).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum

__all__ = ["BreakerBoard", "BreakerOptions", "BreakerState", "CircuitBreaker"]


class BreakerState(IntEnum):
    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


@dataclass(frozen=True, slots=True)
class BreakerOptions:
    window: int = 20  # most recent calls considered
    window_s: float = 60.0  # calls older than this are forgotten
    min_calls: int = 5  # no verdict before this many calls in the window
    failure_rate: float = 0.5
    slow_call_s: float = 5.0  # a first token later than this counts as slow
    slow_rate: float = 0.8
    open_s: float = 10.0  # first open period; doubles on each failed probe
    max_open_s: float = 120.0


class CircuitBreaker:
    def __init__(
        self,
        key: str,
        options: BreakerOptions,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[str, BreakerState], None] | None = None,
    ) -> None:
        self.key = key
        self._o = options
        self._clock = clock
        self._on_change = on_change
        self._calls: deque[tuple[float, bool, bool]] = deque(maxlen=options.window)
        self.state = BreakerState.CLOSED
        self._opened_until = 0.0
        self._open_for = options.open_s
        self._probe_in_flight = False

    def _set(self, state: BreakerState) -> None:
        if state is not self.state:
            self.state = state
            if self._on_change is not None:
                self._on_change(self.key, state)

    def allow(self) -> bool:
        """May a call go to this model now? In half-open, True for exactly one caller."""
        if self.state is BreakerState.CLOSED:
            return True
        now = self._clock()
        if self.state is BreakerState.OPEN:
            if now < self._opened_until:
                return False
            self._set(BreakerState.HALF_OPEN)
            self._probe_in_flight = False
        if self._probe_in_flight:
            return False
        self._probe_in_flight = True
        return True

    @property
    def is_probing(self) -> bool:
        return self.state is BreakerState.HALF_OPEN and self._probe_in_flight

    def open_remaining(self) -> float:
        if self.state is not BreakerState.OPEN:
            return 0.0
        return max(0.0, self._opened_until - self._clock())

    def record_success(self, ttft_s: float) -> None:
        slow = ttft_s > self._o.slow_call_s
        if self.state is BreakerState.HALF_OPEN:
            if slow:
                self._trip(longer=True)
                return
            self._calls.clear()
            self._open_for = self._o.open_s
            self._probe_in_flight = False
            self._set(BreakerState.CLOSED)
            return
        self._add(ok=True, slow=slow)

    def record_failure(self) -> None:
        if self.state is BreakerState.HALF_OPEN:
            self._trip(longer=True)
            return
        if self.state is BreakerState.OPEN:
            return
        self._add(ok=False, slow=False)

    def release_probe(self) -> None:
        """The probe never reached the model (e.g. rate-limited locally): let another try."""
        if self.state is BreakerState.HALF_OPEN:
            self._probe_in_flight = False

    def _add(self, *, ok: bool, slow: bool) -> None:
        now = self._clock()
        self._calls.append((now, ok, slow))
        horizon = now - self._o.window_s
        while self._calls and self._calls[0][0] < horizon:
            self._calls.popleft()
        n = len(self._calls)
        if n < self._o.min_calls:
            return
        failures = sum(1 for _, good, _ in self._calls if not good)
        slows = sum(1 for _, _, s in self._calls if s)
        if failures / n >= self._o.failure_rate or slows / n >= self._o.slow_rate:
            self._trip(longer=False)

    def _trip(self, *, longer: bool) -> None:
        if longer:
            self._open_for = min(self._open_for * 2, self._o.max_open_s)
        self._opened_until = self._clock() + self._open_for
        self._probe_in_flight = False
        self._calls.clear()
        self._set(BreakerState.OPEN)


class BreakerBoard:
    """One breaker per `provider/model`, created on first use."""

    def __init__(
        self,
        options: BreakerOptions | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[str, BreakerState], None] | None = None,
    ) -> None:
        self.options = options or BreakerOptions()
        self._clock = clock
        self._on_change = on_change
        self._breakers: dict[str, CircuitBreaker] = {}

    def get(self, key: str) -> CircuitBreaker:
        b = self._breakers.get(key)
        if b is None:
            b = CircuitBreaker(key, self.options, self._clock, self._on_change)
            self._breakers[key] = b
        return b

    def states(self) -> dict[str, BreakerState]:
        return {k: b.state for k, b in self._breakers.items()}
