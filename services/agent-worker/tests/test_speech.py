"""Offline speech: espeak-ng as a livekit TTS, Whisper tiny.en (wheel-shipped) as a livekit STT."""

from __future__ import annotations

import difflib
import re

import pytest
from livekit import rtc
from livekit.agents import stt
from livekit.plugins import silero
from parley_agent.espeak_tts import EspeakTTS, parse_wav_header
from parley_agent.local_stt import LocalWhisperSTT, bundled_model_path

pytestmark = pytest.mark.unit


async def synth(text: str, **kw: object) -> list[rtc.AudioFrame]:
    tts = EspeakTTS(**kw)  # type: ignore[arg-type]
    frames = []
    async with tts.synthesize(text) as stream:
        async for ev in stream:
            frames.append(ev.frame)
    return frames


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


async def test_espeak_produces_audio_frames() -> None:
    frames = await synth("Hello, this is the Parley assistant speaking.")
    total = sum(f.duration for f in frames)
    assert 1.5 < total < 6.0
    assert all(f.sample_rate == 22050 and f.num_channels == 1 for f in frames)
    # not silence
    import numpy as np

    pcm = np.concatenate([np.frombuffer(f.data, dtype=np.int16) for f in frames])
    assert np.abs(pcm).max() > 1000


async def test_espeak_text_is_never_an_option() -> None:
    frames = await synth("--version -v xx")
    assert sum(f.duration for f in frames) > 0.5


def test_wav_header_validation() -> None:
    with pytest.raises(ValueError):
        parse_wav_header(b"not a wav header at all, definitely not 44 bytes long....")


def test_model_ships_in_a_wheel() -> None:
    path = bundled_model_path()
    assert (path / "model.bin").stat().st_size > 30_000_000
    assert "site-packages" in str(path)


async def test_offline_stt_recovers_espeak_words() -> None:
    frames = await synth(
        "What does the onboarding checklist say about security training for contractors?",
        rate_wpm=160,
    )
    event = await LocalWhisperSTT().recognize(frames)
    assert event.type == stt.SpeechEventType.FINAL_TRANSCRIPT
    heard = words(event.alternatives[0].text)
    assert {"onboarding", "checklist", "security", "training", "contractors"} <= heard


async def test_offline_stt_streams_through_vad_adapter() -> None:
    """The production wiring: Silero VAD cuts utterances, Whisper transcribes each."""
    vad = silero.VAD.load()
    adapter = stt.StreamAdapter(stt=LocalWhisperSTT(), vad=vad)
    frames = await synth("Please show me the quarterly revenue slide.", rate_wpm=160)
    silence = rtc.AudioFrame(b"\x00\x00" * 22050, 22050, 1, 22050)
    stream = adapter.stream()
    for f in frames:
        stream.push_frame(f)
    for _ in range(2):
        stream.push_frame(silence)
    stream.end_input()
    finals = []
    async for ev in stream:
        if ev.type == stt.SpeechEventType.FINAL_TRANSCRIPT:
            finals.append(ev.alternatives[0].text)
    await stream.aclose()
    heard = words(" ".join(finals))
    assert {"quarterly", "revenue"} <= heard


SENTENCES = [
    "What is the laptop policy for new hires?",
    "Can you look at this slide and summarise it?",
    "How many vacation days do contractors get?",
    "Who approves travel expenses for the Berlin office in March?",
    "Yes.",
    "Please read the second paragraph of the security policy out loud, slowly, and then tell "
    "me which parts changed since last quarter's version of the document.",
]


@pytest.mark.parametrize("sentence", SENTENCES)
async def test_short_window_decoding_matches_faster_whisper(sentence: str) -> None:
    """The fitted encoder window must hear what faster-whisper's 30 s window hears."""
    import numpy as np
    from parley_agent.local_stt import _transcribe_short, frames_to_pcm16k, load_whisper

    frames = await synth(sentence, rate_wpm=160)
    pcm = frames_to_pcm16k(frames)
    model = load_whisper(1)
    segments, _ = model.transcribe(
        pcm, language="en", beam_size=1, vad_filter=False, condition_on_previous_text=False,
        without_timestamps=True,
    )
    full = " ".join(s.text.strip() for s in segments)
    short, confidence = _transcribe_short(model, pcm, 1)

    def norm(text: str) -> list[str]:
        return re.findall(r"[a-z]+", text.lower().replace("'", ""))

    # Word for word, up to a word's spelling (quarters / quarter's).
    similarity = difflib.SequenceMatcher(None, norm(short), norm(full)).ratio()
    assert similarity >= 0.9, (short, full)
    assert 0.0 < confidence <= 1.0
    silence = np.zeros(16000 * 2, dtype=np.float32)
    quiet, _ = _transcribe_short(model, silence, 1)
    assert len(quiet.split()) <= 3  # no hallucinated paragraph on silence


async def test_an_unknown_espeak_voice_falls_back_to_the_default_voice() -> None:
    from livekit.plugins import silero as _silero
    from parley_agent.config import TenantAgentConfig, WorkerSettings
    from parley_agent.espeak_tts import voice_available
    from parley_agent.speech import build_speech

    assert voice_available("en-gb+f3") is True and voice_available("") is True
    assert voice_available("xx-no-such-voice") is False
    assert voice_available("en-us", "no-such-espeak-binary") is None
    settings = WorkerSettings()
    vad_model = _silero.VAD.load()
    for voice, expected in (("en-gb", "en-gb"), ("xx-no-such-voice", "en-us")):
        agent = TenantAgentConfig.model_validate({"tts": {"voice": voice}})
        stack = build_speech(agent, settings, vad_model=vad_model)
        assert isinstance(stack.tts, EspeakTTS) and stack.tts._voice == expected
    # and the fallback speaks
    frames = await synth("Still speaking.", voice="en-us")
    assert sum(f.duration for f in frames) > 0.3
