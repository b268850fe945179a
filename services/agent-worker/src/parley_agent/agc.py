"""Automatic gain control on the room's audio, not run on silence.

livekit's room input runs WebRTC's gain controller (`rtc.AudioProcessingModule`) on every frame
of the user's microphone, silent or not: a native call per frame that processes each 10 ms of
it, ~0.15 ms of CPU per 100 ms frame here (0.0015 cores per session), all of it spent on a
microphone that is silent most of the time. `SilenceGatedAGC` is the same gain controller,
given to livekit's room input as its frame processor (the `noise_cancellation` hook; livekit's
own AGC is then off), that leaves frames below the silence floor untouched. Gain cannot change
what silence carries; the controller adapts on speech, and frames above the floor reach it as
before. A frame whose every sample is below the floor (-60 dBFS peak by default, the floor of
the VAD's silence skip) stays that quiet instead of being lifted ~15 dB, so the VAD's silence
skip also holds on a faintly hissing line. `PARLEY_AGENT_AGC_SKIP_SILENCE=false` restores
livekit's controller on every frame.

livekit logs a warning when a participant whose track already has enhanced noise cancellation
is given a frame processor; this processor only controls gain.
"""

from __future__ import annotations

from livekit import rtc

from .vad import below_floor, peak_floor


class SilenceGatedAGC(rtc.FrameProcessor[rtc.AudioFrame]):
    def __init__(self, *, floor_dbfs: float = -60.0) -> None:
        self._apm = rtc.AudioProcessingModule(auto_gain_control=True)
        self.floor = peak_floor(floor_dbfs)
        self._enabled = True
        self.processed_frames = 0
        self.skipped_frames = 0

    @property
    def enabled(self) -> bool:
        return self._enabled

    @enabled.setter
    def enabled(self, value: bool) -> None:
        self._enabled = value

    def _process(self, frame: rtc.AudioFrame) -> rtc.AudioFrame:
        if below_floor(frame, self.floor):
            self.skipped_frames += 1
            return frame
        self._apm.process_stream(frame)  # in place, 10 ms at a time
        self.processed_frames += 1
        return frame

    def _close(self) -> None:
        pass  # the APM handle is released with the object
