"""The input's gain control skips silence and is livekit's WebRTC AGC on everything else."""

from __future__ import annotations

import numpy as np
import pytest
from livekit import rtc
from parley_agent.agc import SilenceGatedAGC

pytestmark = pytest.mark.unit

RATE = 16000
N = RATE // 10  # 100 ms frames, as the session receives them


def frame(samples: np.ndarray) -> rtc.AudioFrame:
    return rtc.AudioFrame(samples.astype(np.int16).tobytes(), RATE, 1, N)


def quiet_speech(i: int) -> np.ndarray:
    """Speech-like bursts around -40 dBFS: what a distant microphone sends."""
    rng = np.random.default_rng(i)
    t = np.arange(N) / RATE + i * 0.1
    return 300 * rng.standard_normal(N) * (1 + np.sin(2 * np.pi * 3 * t))


def samples(f: rtc.AudioFrame) -> np.ndarray:
    return np.frombuffer(f.data, dtype=np.int16).copy()


def test_silence_is_untouched_and_the_rest_is_livekits_agc() -> None:
    gated = SilenceGatedAGC(floor_dbfs=-60.0)
    reference = rtc.AudioProcessingModule(auto_gain_control=True)
    hiss = np.random.default_rng(7).integers(-20, 21, N)  # below the -60 dBFS floor (33)
    script = ["speech"] * 20 + ["zeros"] * 10 + ["hiss"] * 10 + ["speech"] * 20
    k = 0
    for kind in script:
        if kind == "speech":
            x = quiet_speech(k)
            k += 1
            out = samples(gated._process(frame(x)))
            ref = frame(x)
            reference.process_stream(ref)  # the reference sees the speech only
            assert np.array_equal(out, samples(ref))
        else:
            x = np.zeros(N) if kind == "zeros" else hiss
            out = samples(gated._process(frame(x)))
            assert np.array_equal(out, x.astype(np.int16))  # not lifted, not touched
    assert gated.processed_frames == 40 and gated.skipped_frames == 20
    # the controller did act on the speech: a distant talker comes out louder
    assert np.abs(out).max() > 2 * np.abs(quiet_speech(k - 1)).max()


def test_a_frame_with_one_sample_above_the_floor_is_processed() -> None:
    gated = SilenceGatedAGC(floor_dbfs=-60.0)
    x = np.zeros(N)
    x[N // 2] = gated.floor + 1
    gated._process(frame(x))
    x[N // 2] = -(gated.floor + 1)
    gated._process(frame(x))
    assert gated.processed_frames == 2 and gated.skipped_frames == 0
    assert gated.floor == 33
