"""The worker's default for livekit's event-loop monitor (fewer wake-ups per session)."""

from __future__ import annotations

import pytest
from livekit.agents.telemetry import loop_monitor
from parley_agent.__main__ import LOOP_BLOCK_WARN_MS, _loop_monitor

pytestmark = pytest.mark.unit


def test_default_threshold_ticks_every_50_ms(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(loop_monitor.ENV_WARN_THRESHOLD_MS, raising=False)
    _loop_monitor()
    thresholds = loop_monitor.LoopMonitorThresholds.from_env()
    assert thresholds is not None  # still monitoring
    assert thresholds.warn == int(LOOP_BLOCK_WARN_MS) / 1000 == 0.25
    assert thresholds.error >= thresholds.warn
    # livekit's default (100 ms) ticks every 20 ms
    assert loop_monitor._tick_interval_for(thresholds.warn) == pytest.approx(0.05)
    assert loop_monitor._tick_interval_for(loop_monitor.DEFAULT_WARN_THRESHOLD) == \
        pytest.approx(0.02)


@pytest.mark.parametrize("operator", ["100", "0"])
def test_the_operators_setting_wins(monkeypatch: pytest.MonkeyPatch, operator: str) -> None:
    monkeypatch.setenv(loop_monitor.ENV_WARN_THRESHOLD_MS, operator)
    _loop_monitor()
    thresholds = loop_monitor.LoopMonitorThresholds.from_env()
    if operator == "0":
        assert thresholds is None
    else:
        assert thresholds is not None and thresholds.warn == 0.1
