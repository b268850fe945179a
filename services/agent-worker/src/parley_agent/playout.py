"""The agent's voice on its way to the room: the frame size it is handed to LiveKit in.

livekit-agents' room output re-chunks the TTS audio into 50 ms frames and hands each to its
``rtc.AudioSource`` with one FFI round trip, ~0.8 ms of CPU each (micro-benchmark, one
process: 21 ms of CPU per second of speech at 50 ms frames, 12-14 at 100 ms, ~5 of either
being the source's own 10 ms pump); a reply is several seconds of speech. Frames of 100 ms
halve the round trips. The source's 200 ms queue, the playout clock, interruption (the queue
is cleared) and the first-audio latency do not change: a reply's first frame still goes out as
soon as it is complete, and a shorter tail is flushed before the source runs dry, as before.

The frame size is an attribute of livekit-agents' private room output (``_audio_bstream``, an
``AudioByteStream`` built with ``sample_rate // 20``), with no option for it. It is replaced
only when it is exactly that type and holds no audio; on any other version or shape the output
is left as it is, with a warning, and the session runs at 50 ms frames. A test pins the
behaviour on the locked livekit-agents.
"""

from __future__ import annotations

from livekit.agents import utils
from livekit.agents.voice import io

from .log import logger

LIVEKIT_FRAME_MS = 50


def set_output_frame_ms(output: io.AudioOutput | None, frame_ms: int) -> bool:
    """Make the room output hand the agent's audio to LiveKit in `frame_ms` frames.

    Call it after the session has started (the output exists) and before the agent speaks.
    Returns whether the frame size is now `frame_ms`.
    """
    if output is None:
        return False
    current = getattr(output, "_audio_bstream", None)
    sample_rate = output.sample_rate
    if (
        type(current) is not utils.audio.AudioByteStream
        or sample_rate is None
        or current.buffered_duration > 0
    ):
        logger.warning(
            "the room output's frame size cannot be set on this livekit-agents: "
            "the agent's audio goes out in livekit's own frames",
            extra={"frame_ms": frame_ms, "output": type(output).__name__},
        )
        return False
    if frame_ms == LIVEKIT_FRAME_MS:
        return True
    num_channels = current._num_channels
    output._audio_bstream = utils.audio.AudioByteStream(  # type: ignore[attr-defined]
        sample_rate, num_channels, samples_per_channel=sample_rate * frame_ms // 1000
    )
    return True
