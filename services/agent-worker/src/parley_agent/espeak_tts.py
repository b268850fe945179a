"""Offline text-to-speech: espeak-ng as a livekit `tts.TTS`.

Each synthesis runs `espeak-ng --stdout` with the text on stdin (never on the command line, so
no text can be read as an option), parses the WAV header and streams the PCM to the emitter as
it arrives. Cancelling the stream kills the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import shutil
import struct
import subprocess
import uuid
from typing import Any

from livekit.agents import tts
from livekit.agents._exceptions import APIConnectionError, APIError
from livekit.agents.types import DEFAULT_API_CONNECT_OPTIONS, APIConnectOptions

MODEL_ID = "espeak-ng"  # billing catalog id
ESPEAK_SAMPLE_RATE = 22050
_CHUNK = 4096


def parse_wav_header(header: bytes) -> tuple[int, int, int]:
    """(sample_rate, channels, bits_per_sample) of espeak-ng's canonical 44-byte WAV header."""
    if len(header) < 44 or header[:4] != b"RIFF" or header[8:12] != b"WAVE":
        raise ValueError("espeak-ng did not produce a WAV stream")
    if header[12:16] != b"fmt ":
        raise ValueError("unexpected WAV layout from espeak-ng")
    audio_format, channels, sample_rate = struct.unpack_from("<HHI", header, 20)
    (bits,) = struct.unpack_from("<H", header, 34)
    if audio_format != 1 or bits != 16:
        raise ValueError("espeak-ng WAV is not 16-bit PCM")
    return sample_rate, channels, bits


@functools.lru_cache(maxsize=64)
def voice_available(voice: str, binary: str = "espeak-ng") -> bool | None:
    """Whether espeak-ng knows `voice` (a voice with an optional `+variant`): None when that
    cannot be told (no binary). espeak-ng refuses an unknown voice with no audio at all, so a
    misspelt tenant voice would otherwise fail every reply of the session."""
    path = shutil.which(binary)
    if path is None:
        return None
    if not voice:
        return True  # espeak-ng's default voice
    try:
        done = subprocess.run(
            [path, "-q", "-v", voice, "x"], capture_output=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.returncode == 0


class EspeakTTS(tts.TTS[Any]):
    def __init__(
        self, *, voice: str = "en-us", rate_wpm: int = 175, binary: str = "espeak-ng"
    ) -> None:
        super().__init__(
            capabilities=tts.TTSCapabilities(streaming=False),
            sample_rate=ESPEAK_SAMPLE_RATE,
            num_channels=1,
        )
        path = shutil.which(binary)
        if path is None:
            raise RuntimeError(f"{binary} not found: install espeak-ng (apt install espeak-ng)")
        self._binary = path
        self._voice = voice
        self._rate = rate_wpm

    @property
    def model(self) -> str:
        return MODEL_ID

    @property
    def provider(self) -> str:
        return "local"

    def synthesize(
        self, text: str, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS
    ) -> EspeakChunkedStream:
        return EspeakChunkedStream(tts=self, input_text=text, conn_options=conn_options)

    def command(self) -> list[str]:
        return [
            self._binary, "--stdout", "--stdin", "-b", "1", "-v", self._voice, "-s", str(self._rate)
        ]


class EspeakChunkedStream(tts.ChunkedStream):
    def __init__(self, *, tts: EspeakTTS, input_text: str, conn_options: APIConnectOptions) -> None:
        super().__init__(tts=tts, input_text=input_text, conn_options=conn_options)
        self._espeak = tts

    async def _run(self, output_emitter: tts.AudioEmitter) -> None:
        text = self.input_text.strip()
        proc = await asyncio.create_subprocess_exec(
            *self._espeak.command(),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        try:
            proc.stdin.write(text.encode("utf-8", errors="replace") + b"\n")
            await proc.stdin.drain()
            proc.stdin.close()
            try:
                header = await asyncio.wait_for(
                    proc.stdout.readexactly(44), timeout=self._conn_options.timeout or None
                )
            except asyncio.IncompleteReadError:
                err = (await proc.stderr.read()).decode(errors="replace")[:200]
                raise APIConnectionError(
                    f"espeak-ng produced no audio: {err}", retryable=False
                ) from None
            except TimeoutError:
                raise APIConnectionError("espeak-ng timed out", retryable=True) from None
            try:
                sample_rate, channels, _ = parse_wav_header(header)
            except ValueError as exc:
                raise APIConnectionError(str(exc), retryable=False) from None
            output_emitter.initialize(
                request_id=uuid.uuid4().hex[:12],
                sample_rate=sample_rate,
                num_channels=channels,
                mime_type="audio/pcm",
            )
            pending = b""
            while True:
                chunk = await proc.stdout.read(_CHUNK)
                if not chunk:
                    break
                chunk = pending + chunk
                # keep whole 16-bit samples per push
                cut = len(chunk) - (len(chunk) % (2 * channels))
                pending = chunk[cut:]
                if cut:
                    output_emitter.push(chunk[:cut])
            code = await proc.wait()
            if code != 0:
                raise APIConnectionError(f"espeak-ng exited with {code}", retryable=False)
            output_emitter.flush()
        except APIError:
            raise
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                with contextlib.suppress(Exception):
                    await proc.wait()
