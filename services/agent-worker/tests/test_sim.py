"""The simulated participant: its room noise (bench-agent --mic-noise-dbfs) and when it hears
the agent start speaking (bench-agent's voice-to-voice figure)."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest
from livekit import rtc
from parley_agent.sim import VOICE_GAP_S, SimulatedUser, first_onset_after, wav_speech
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


def test_first_onset_after() -> None:
    onsets = [1.0, 5.0, 9.5]
    assert first_onset_after(onsets, 0.0) == 1.0
    assert first_onset_after(onsets, 1.0) == 0.0
    assert first_onset_after(onsets, 1.5) == 3.5
    assert first_onset_after(onsets, 9.0) == 0.5
    assert first_onset_after(onsets, 9.6) is None
    assert first_onset_after([], 0.0) is None


async def test_a_pause_shorter_than_the_gap_does_not_start_an_utterance() -> None:
    user = SimulatedUser(room=rtc.Room(), identity="u")
    frame = 0.01
    t = 100.0
    for _ in range(50):  # half a second of speech
        user._note_voiced(t)
        t += frame
    t += VOICE_GAP_S / 2  # a pause between two sentences of one reply
    for _ in range(50):
        user._note_voiced(t)
        t += frame
    said_at = t + 0.2
    t = said_at + 1.3  # the next reply, after the user spoke
    user._note_voiced(t)
    assert user.agent_voice_onsets == [100.0, t]
    assert user.agent_voice_after(said_at) == pytest.approx(1.3)
    assert user.agent_voice_after(t + 0.01) is None


def _write_wav(path: Path, pcm: np.ndarray, *, rate: int = 16000, channels: int = 1) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.astype(np.int16).tobytes())


def test_a_recorded_utterance_loses_its_trailing_quiet(tmp_path: Path) -> None:
    speech = (3000 * np.sin(np.arange(8000) / 5)).astype(np.int16)
    quiet = np.full(4000, 30, dtype=np.int16)
    _write_wav(tmp_path / "q.wav", np.concatenate([quiet, speech, quiet]), rate=22050)
    pcm, rate = wav_speech(tmp_path / "q.wav")
    assert rate == 22050
    # leading quiet kept (it is part of the recording), everything after the last loud
    # sample cut
    assert len(pcm) <= 4000 + 8000 and len(pcm) > 4000 + 8000 - 20
    assert np.abs(pcm[-20:]).max() > 500


def test_a_recording_that_cannot_be_said_is_refused(tmp_path: Path) -> None:
    _write_wav(tmp_path / "silent.wav", np.zeros(16000, dtype=np.int16))
    with pytest.raises(ValueError, match="no sample above"):
        wav_speech(tmp_path / "silent.wav")
    _write_wav(tmp_path / "stereo.wav", np.zeros(3200, dtype=np.int16), channels=2)
    with pytest.raises(ValueError, match="16-bit mono"):
        wav_speech(tmp_path / "stereo.wav")
