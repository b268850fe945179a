"""The simulated participant's room noise (bench-agent --mic-noise-dbfs)."""

from __future__ import annotations

import numpy as np
import pytest
from livekit import rtc
from parley_agent.sim import SimulatedUser
from parley_agent.vad import peak_floor

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("dbfs", [-60.0, -50.0, -40.0])
async def test_room_noise_has_the_asked_level(dbfs: float) -> None:
    user = SimulatedUser(room=rtc.Room(), identity="u", mic_noise_dbfs=dbfs)  # needs a loop
    noise = user._noise(48000)
    rms_dbfs = 20 * np.log10(np.sqrt(np.mean(noise**2)) / 32768)
    assert abs(rms_dbfs - dbfs) < 0.2
    # even the quietest noise asked for peaks above the VAD's silence floor: never skipped
    assert np.abs(noise).max() > peak_floor(-60.0)
