"""Per-tenant choice of STT and TTS: cloud plugins when their key is set, offline otherwise."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from livekit.agents import stt, tts, vad
from livekit.plugins import deepgram, elevenlabs  # registered at import, on the main thread

from . import espeak_tts, local_stt
from .config import TenantAgentConfig, WorkerSettings
from .log import logger
from .utterances import SessionVAD, UtteranceSTT


def voice_problem(voice: str, binary: str) -> bool:
    """True when espeak-ng is known to refuse `voice` (unknown when it is not installed)."""
    return espeak_tts.voice_available(voice, binary) is False


@dataclass(frozen=True, slots=True)
class SpeechStack:
    stt: stt.STT[Any]
    tts: tts.TTS[Any]
    # Billing catalog ids of what actually runs (a cloud choice without its key falls back).
    stt_model_id: str
    stt_provider: str
    tts_model_id: str
    tts_provider: str


def build_speech(
    agent: TenantAgentConfig, settings: WorkerSettings, *, vad_model: vad.VAD
) -> SpeechStack:
    stt_choice, tts_choice = agent.stt, agent.tts

    speech_to_text: stt.STT[Any]
    if stt_choice.provider == "deepgram" and settings.deepgram_api_key:
        model = stt_choice.model or "nova-3"
        speech_to_text = deepgram.STT(
            model=model, language=stt_choice.language, api_key=settings.deepgram_api_key
        )
        stt_ids = (f"deepgram-{model}", "deepgram")
    else:
        if stt_choice.provider == "deepgram":
            logger.warning(
                "tenant asks for Deepgram STT but DEEPGRAM_API_KEY is not set: using offline STT"
            )
        local = local_stt.LocalWhisperSTT(
            language=stt_choice.language, cpu_threads=settings.agent_stt_threads
        )
        # Utterances cut by the VAD, each recognised as a whole: by the session's own VAD
        # stream when the session shares it (one inference per window instead of two).
        speech_to_text = (
            UtteranceSTT(stt=local, vad=vad_model)
            if isinstance(vad_model, SessionVAD)
            else stt.StreamAdapter(stt=local, vad=vad_model)
        )
        stt_ids = (local_stt.MODEL_ID, "local")

    text_to_speech: tts.TTS[Any]
    if tts_choice.provider == "elevenlabs" and settings.elevenlabs_api_key:
        model = tts_choice.model or "eleven_flash_v2_5"
        text_to_speech = elevenlabs.TTS(
            voice_id=tts_choice.voice, model=model, api_key=settings.elevenlabs_api_key
        )
        tts_ids = ("elevenlabs-flash-v2.5" if "flash" in model else model, "elevenlabs")
    else:
        if tts_choice.provider == "elevenlabs":
            logger.warning(
                "tenant asks for ElevenLabs TTS but ELEVEN_API_KEY is not set: using espeak-ng"
            )
        voice = tts_choice.voice if tts_choice.provider == "espeak" else "en-us"
        if voice_problem(voice, settings.espeak_binary):
            logger.warning(
                "tenant's tts.voice is not an espeak-ng voice (`espeak-ng --voices` lists "
                "them): speaking with en-us",
                extra={"voice": voice[:64]},
            )
            voice = "en-us"
        text_to_speech = espeak_tts.EspeakTTS(
            voice=voice, rate_wpm=tts_choice.rate_wpm, binary=settings.espeak_binary
        )
        tts_ids = (espeak_tts.MODEL_ID, "local")

    return SpeechStack(
        stt=speech_to_text,
        tts=text_to_speech,
        stt_model_id=stt_ids[0],
        stt_provider=stt_ids[1],
        tts_model_id=tts_ids[0],
        tts_provider=tts_ids[1],
    )
