"""AdaptiveRateGate and StreamClock on capture timestamps."""

from __future__ import annotations

import pytest
from parley_vision.rate import AdaptiveRateGate, StreamClock

pytestmark = pytest.mark.unit

MS = 1000


def keeps(gate: AdaptiveRateGate, times_ms: list[int], speaking: bool = False) -> list[int]:
    out = []
    for t in times_ms:
        if gate.check(t * MS, speaking=speaking).open:
            gate.record_keep(t * MS)
            out.append(t)
    return out


def test_min_interval_follows_speaking_state() -> None:
    gate = AdaptiveRateGate(speaking_fps=30, idle_fps=5, sustained_fps=60, burst=100)
    frames = [round(i * 1000 / 30) for i in range(30)]  # one second at 30 fps
    assert len(keeps(gate, frames, speaking=False)) == 5
    gate = AdaptiveRateGate(speaking_fps=30, idle_fps=5, sustained_fps=60, burst=100)
    assert len(keeps(gate, frames, speaking=True)) == 30


def test_burst_then_sustained_rate() -> None:
    gate = AdaptiveRateGate(speaking_fps=30, idle_fps=5, sustained_fps=1.5, burst=2)
    frames = [round(i * 1000 / 30) for i in range(300)]  # 10 s of continuous change
    kept = keeps(gate, frames)
    assert kept[:2] == [0, 200]  # the burst at the idle rate
    gaps = [b - a for a, b in zip(kept[2:], kept[3:], strict=False)]
    assert all(633 <= g <= 700 for g in gaps), gaps  # then 1.5 fps
    # After a quiet spell the burst is back: the next change goes out at once.
    assert gate.check(20_000 * MS, speaking=False).open


def test_zero_idle_fps_keeps_nothing_while_idle() -> None:
    gate = AdaptiveRateGate(speaking_fps=2, idle_fps=0)
    assert not gate.check(0, speaking=False).open
    assert gate.check(0, speaking=True).open


def test_clock_clamps_jitter_and_continues_after_a_restart() -> None:
    clock = StreamClock()
    assert clock(1_000_000) == 1_000_000
    assert clock(990_000) == 1_000_000  # 10 ms back: jitter, clamped
    assert clock(1_033_000) == 1_033_000
    assert clock(5_000) == 1_033_000  # a new timeline: continues where the old one was
    assert clock.restarts == 1
    assert clock(38_000) == 1_066_000


def test_settle_keeps_borrow_at_most_the_debt_and_repay_it() -> None:
    gate = AdaptiveRateGate(speaking_fps=30, idle_fps=5, sustained_fps=1.0, burst=1, settle_debt=1)
    assert gate.check(0, speaking=False).open
    gate.record_keep(0)
    v = gate.check(300 * MS, speaking=False)  # spacing ok, bucket at 0.3: closed, may borrow
    assert not v.open and v.settle_open
    gate.record_keep(300 * MS)  # a settle keep: the bucket goes into debt (-0.7)
    v = gate.check(600 * MS, speaking=False)  # -0.4: no more borrowing
    assert not v.open and not v.settle_open
    # The debt is repaid before an ordinary keep: 1.7 tokens' worth of time after the keep.
    assert not gate.check(1900 * MS, speaking=False).open
    assert gate.check(2000 * MS, speaking=False).open


def test_no_settle_debt_means_the_bucket_decides_alone() -> None:
    gate = AdaptiveRateGate(speaking_fps=30, idle_fps=5, sustained_fps=1.0, burst=1, settle_debt=0)
    gate.record_keep(0)
    v = gate.check(300 * MS, speaking=False)
    assert not v.open and not v.settle_open
