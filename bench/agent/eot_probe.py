"""What the offline audio turn detector (eot-local) says at the end of an utterance.

    .venv/bin/python bench/agent/eot_probe.py SOURCE... [--silence-ms 200 300 400 500]

Each SOURCE is a 16-bit mono WAV file (a recording of your users, say) or a sentence, spoken
with espeak-ng. The utterance is streamed to livekit's turn-detector-v1-mini in 100 ms frames,
as the worker does, followed by silence; at each of the given silence lengths the model is
asked for its end-of-turn probability. Below the "unlikely" threshold the session waits for
`PARLEY_AGENT_MAX_ENDPOINTING_S` before answering; at or above it, for the minimum delay.
livekit-agents asks once the VAD has counted 200 ms of silence (the VAD reports the end of
speech at 550 ms), so the first silence lengths are the ones that decide.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Iterator

import numpy as np
from livekit import rtc
from livekit.agents import inference
from parley_agent.sim import espeak_pcm, resample_pcm, wav_speech

RATE = 16000
FRAME = RATE // 10  # 100 ms


def load(source: str) -> np.ndarray:
    """16 kHz int16 samples of a WAV file (trailing quiet cut off) or of espeak-ng speech."""
    pcm, rate = wav_speech(source) if source.lower().endswith(".wav") else espeak_pcm(source)
    return resample_pcm(pcm, rate, RATE)


def frames(pcm: np.ndarray) -> Iterator[rtc.AudioFrame]:
    for i in range(0, len(pcm), FRAME):
        chunk = pcm[i : i + FRAME]
        if len(chunk) < FRAME:
            chunk = np.pad(chunk, (0, FRAME - len(chunk)))
        yield rtc.AudioFrame(chunk.tobytes(), RATE, 1, FRAME)


async def probe(
    detector: inference.TurnDetector, pcm: np.ndarray, asks_ms: list[int]
) -> list[float]:
    stream = detector.stream()
    try:
        for frame in frames(np.concatenate([np.zeros(RATE // 2, np.int16), pcm])):
            stream.push_audio(frame)
            await asyncio.sleep(0.1)
        quiet = next(frames(np.zeros(FRAME, np.int16)))
        out: list[float] = []
        silence = 0
        for ask in sorted(asks_ms):
            while silence < ask:
                stream.push_audio(quiet)
                silence += 100
                await asyncio.sleep(0.1)
            event = await asyncio.wait_for(stream.predict(), 10)
            out.append(event.end_of_turn_probability)
        return out
    finally:
        await stream.aclose()


async def main(args: argparse.Namespace) -> None:
    detector = inference.TurnDetector(version="v1-mini")
    threshold = await detector.unlikely_threshold(None)
    print(f"unlikely threshold: {threshold}")
    for source in args.sources:
        probs = await probe(detector, load(source), args.silence_ms)
        cells = "  ".join(
            f"{ms} ms: {p:.2f}{'' if threshold is None or p >= threshold else ' (unlikely)'}"
            for ms, p in zip(sorted(args.silence_ms), probs, strict=True)
        )
        print(f"{source[:60]!r}  {cells}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sources", nargs="+")
    parser.add_argument("--silence-ms", type=int, nargs="+", default=[200, 300, 400, 500],
                        help="silence after the utterance at which to ask (multiples of 100)")
    asyncio.run(main(parser.parse_args()))
