from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import numpy as np
import pytest
from livekit import rtc
from parley_agent.sim import espeak_pcm
from parley_agent.testing import FakeBackends
from parley_runtime.client import make_channel
from parley_runtime.testing import signed_as


@pytest.fixture
async def backends() -> AsyncIterator[FakeBackends]:
    fakes = await FakeBackends().start()
    try:
        yield fakes
    finally:
        await fakes.stop()


@pytest.fixture
async def router_channel(backends: FakeBackends) -> AsyncIterator[grpc.aio.Channel]:
    channel = make_channel(backends.addr("router"), signer=signed_as("agent-worker"))
    try:
        yield channel
    finally:
        await channel.close()


@pytest.fixture(scope="session")
def conversation(rate: int = 16000) -> list[rtc.AudioFrame]:
    """Two spoken questions between stretches of low noise, cut into 50 ms frames."""
    rng = np.random.default_rng(7)

    def noise(seconds: float) -> np.ndarray:
        return (rng.standard_normal(int(rate * seconds)) * 40).astype(np.int16)

    parts = []
    for text in ("What is the laptop policy for new hires?",
                 "Who approves travel expenses for the Berlin office?"):
        pcm, src_rate = espeak_pcm(text)
        resampler = rtc.AudioResampler(src_rate, rate, num_channels=1)
        speech = list(resampler.push(rtc.AudioFrame(pcm.tobytes(), src_rate, 1, len(pcm))))
        speech += resampler.flush()
        parts += [noise(0.8), *(np.frombuffer(f.data, dtype=np.int16) for f in speech)]
    parts.append(noise(1.5))
    audio = np.concatenate(parts)
    step = rate // 20
    return [rtc.AudioFrame(audio[i:i + step].tobytes(), rate, 1, step)
            for i in range(0, len(audio) - step + 1, step)]
