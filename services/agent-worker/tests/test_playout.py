"""The agent's voice reaches LiveKit's audio source in 100 ms frames, through livekit-agents' own
room output (the locked version), with nothing lost, and interruption still works."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import numpy as np
import pytest
from livekit import rtc
from livekit.agents.voice import io
from livekit.agents.voice.room_io._output import _ParticipantAudioOutput
from parley_agent.config import WorkerSettings
from parley_agent.playout import set_output_frame_ms

pytestmark = pytest.mark.unit

RATE = 24000


class Capturing:
    """The room output's real AudioSource, recording the size of each frame it is handed."""

    def __init__(self, output: _ParticipantAudioOutput) -> None:
        self.source = output._audio_source
        self.sizes: list[int] = []
        output._audio_source = self  # type: ignore[assignment]

    async def capture_frame(self, frame: rtc.AudioFrame) -> None:
        self.sizes.append(frame.samples_per_channel)
        await self.source.capture_frame(frame)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.source, name)


async def running_output(frame_ms: int | None) -> tuple[_ParticipantAudioOutput, Capturing]:
    """livekit's room output with its forwarding running, as if its track were subscribed (no
    room is needed to feed the source)."""
    output = _ParticipantAudioOutput(
        rtc.Room(), sample_rate=RATE, num_channels=1,
        track_publish_options=rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE),
    )
    if frame_ms is not None:
        assert set_output_frame_ms(output, frame_ms)
    capturing = Capturing(output)
    output._subscribed_fut.set_result(None)
    output._forwarding_task = asyncio.create_task(output._forward_audio())
    return output, capturing


def speech(seconds: float) -> rtc.AudioFrame:
    n = int(RATE * seconds)
    pcm = (3000 * np.sin(np.arange(n) * 2 * np.pi * 220 / RATE)).astype(np.int16)
    return rtc.AudioFrame(pcm.tobytes(), RATE, 1, n)


async def play(output: io.AudioOutput, frames: list[rtc.AudioFrame]) -> io.PlaybackFinishedEvent:
    finished: asyncio.Future[io.PlaybackFinishedEvent] = asyncio.Future()
    output.on("playback_finished", lambda ev: finished.done() or finished.set_result(ev))
    for f in frames:
        await output.capture_frame(f)
    output.flush()
    return await asyncio.wait_for(finished, 10)


@pytest.mark.parametrize("frame_ms", [100, 50, 20])
async def test_the_reply_is_handed_over_in_frames_of_the_setting(frame_ms: int) -> None:
    output, capturing = await running_output(frame_ms)
    try:
        # TTS chunks of odd sizes, 0.73 s in all
        ev = await play(output, [speech(0.31), speech(0.27), speech(0.15)])
        step = RATE * frame_ms // 1000
        total = int(RATE * 0.31) + int(RATE * 0.27) + int(RATE * 0.15)
        assert sum(capturing.sizes) == total  # nothing lost, nothing added
        assert capturing.sizes[:-1] == [step] * (len(capturing.sizes) - 1)
        assert 0 < capturing.sizes[-1] <= step  # the tail flushed at the end
        assert not ev.interrupted
        assert ev.playback_position == pytest.approx(total / RATE, abs=0.01)
    finally:
        await output.aclose()


async def test_livekits_own_output_uses_50_ms_frames() -> None:
    """What the setting replaces: if livekit-agents changes its frame size or the attribute,
    this fails and the playout module needs a look."""
    output, capturing = await running_output(None)
    try:
        await play(output, [speech(0.3)])
        assert capturing.sizes == [RATE // 20] * 6
    finally:
        await output.aclose()


async def test_an_interrupted_reply_stops_and_reports_where() -> None:
    output, capturing = await running_output(100)
    try:
        finished: asyncio.Future[io.PlaybackFinishedEvent] = asyncio.Future()
        output.on("playback_finished", lambda ev: finished.done() or finished.set_result(ev))
        await output.capture_frame(speech(2.0))
        output.flush()
        await asyncio.sleep(0.35)
        output.clear_buffer()
        ev = await asyncio.wait_for(finished, 5)
        assert ev.interrupted
        # the playhead was about 0.35 s in: far from the 2 s that were captured
        assert 0.1 < ev.playback_position < 1.0
        assert sum(capturing.sizes) < int(RATE * 2.0)
    finally:
        await output.aclose()


async def test_an_output_of_another_shape_is_left_alone(caplog: pytest.LogCaptureFixture) -> None:
    class OtherOutput(io.AudioOutput):
        def __init__(self) -> None:
            super().__init__(label="other", capabilities=io.AudioOutputCapabilities(pause=False),
                             sample_rate=RATE)

        async def capture_frame(self, frame: rtc.AudioFrame) -> None:
            await super().capture_frame(frame)

        def flush(self) -> None:
            super().flush()

        def clear_buffer(self) -> None:
            pass

    with caplog.at_level(logging.WARNING):
        assert not set_output_frame_ms(OtherOutput(), 100)
    assert "frame size cannot be set" in caplog.text
    assert not set_output_frame_ms(None, 100)


async def test_audio_already_buffered_is_not_dropped() -> None:
    output = _ParticipantAudioOutput(
        rtc.Room(), sample_rate=RATE, num_channels=1,
        track_publish_options=rtc.TrackPublishOptions(),
    )
    try:
        output._audio_bstream.push(speech(0.01).data)  # 10 ms waiting for a 50 ms frame
        before = output._audio_bstream
        assert not set_output_frame_ms(output, 100)
        assert output._audio_bstream is before
    finally:
        await output.aclose()


def test_the_setting() -> None:
    assert WorkerSettings().agent_output_frame_ms == 100
    with pytest.raises(ValueError):
        WorkerSettings(agent_output_frame_ms=200)  # the source's queue holds 200 ms
