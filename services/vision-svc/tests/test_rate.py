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
