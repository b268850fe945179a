"""Circuit breaker: opens on errors or slowness, one real probe at a time, backs off."""

from __future__ import annotations

import pytest
from parley_router.breaker import BreakerBoard, BreakerOptions, BreakerState, CircuitBreaker

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def make(clock: Clock, **kw: float) -> CircuitBreaker:
    opts = BreakerOptions(**{"min_calls": 4, "open_s": 10.0, **kw})  # type: ignore[arg-type]
    return CircuitBreaker("google/m", opts, clock)


def test_opens_on_error_rate_and_skips_while_open() -> None:
    clock = Clock()
    b = make(clock)
    for _ in range(2):
        assert b.allow()
        b.record_success(0.1)
    for _ in range(2):
        assert b.allow()
        b.record_failure()
    assert b.state is BreakerState.OPEN
    assert not b.allow()
    assert b.open_remaining() == pytest.approx(10.0)


def test_no_verdict_before_min_calls() -> None:
    clock = Clock()
    b = make(clock)
    for _ in range(3):
        b.record_failure()
    assert b.state is BreakerState.CLOSED


def test_half_open_lets_exactly_one_probe_through_and_closes_on_success() -> None:
    clock = Clock()
    b = make(clock)
    for _ in range(4):
        b.record_failure()
    clock.t += 10.0
    assert b.allow()  # the probe
    assert b.state is BreakerState.HALF_OPEN and b.is_probing
    assert not b.allow() and not b.allow()  # everyone else keeps skipping
    b.record_success(0.2)
    assert b.state is BreakerState.CLOSED
    assert b.allow()


def test_failed_probe_reopens_for_longer() -> None:
    clock = Clock()
    b = make(clock)
    for _ in range(4):
        b.record_failure()
    clock.t += 10.0
    assert b.allow()
    b.record_failure()
    assert b.state is BreakerState.OPEN
    assert b.open_remaining() == pytest.approx(20.0)
    clock.t += 19.0
    assert not b.allow()
    clock.t += 1.0
    assert b.allow()


def test_released_probe_lets_another_caller_probe() -> None:
    clock = Clock()
    b = make(clock)
    for _ in range(4):
        b.record_failure()
    clock.t += 10.0
    assert b.allow()
    b.release_probe()
    assert b.allow()


def test_opens_on_slow_calls() -> None:
    clock = Clock()
    b = make(clock, slow_call_s=1.0, slow_rate=0.75)
    for _ in range(4):
        b.record_success(2.5)
    assert b.state is BreakerState.OPEN


def test_old_outcomes_leave_the_window() -> None:
    clock = Clock()
    b = make(clock, window_s=30.0)
    for _ in range(3):
        b.record_failure()
    clock.t += 31.0
    b.record_failure()
    assert b.state is BreakerState.CLOSED


def test_board_reports_state_changes() -> None:
    seen: list[tuple[str, BreakerState]] = []
    board = BreakerBoard(BreakerOptions(min_calls=1), on_change=lambda k, s: seen.append((k, s)))
    board.get("anthropic/x").record_failure()
    assert seen == [("anthropic/x", BreakerState.OPEN)]
    assert board.states() == {"anthropic/x": BreakerState.OPEN}
