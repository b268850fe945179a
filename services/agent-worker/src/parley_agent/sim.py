"""A simulated room participant (livekit rtc SDK) for tests, the benchmark and the demo.

It joins a room with a token it mints, speaks (espeak-ng audio on a microphone track, paced in
real time, followed by silence so the agent's VAD ends the turn), shares a screen (generated
slides that change on `show_slide`), types chat questions (the `lk.chat` text stream), and
records what the agents send back: their audio track, `lk.transcription` text, and Parley's
`parley.turns` / `parley.notes` data events.

    async with SimulatedUser.join(url, key, secret, room="r1", identity="alice") as user:
        await user.wait_for_agent(timeout=20)
        await user.start_screen_share(["Q3 revenue: 4.2M", "Churn fell to 2%"])
        await user.say("What does the onboarding policy say about laptops?")
        event = await user.wait_for_turn(role="assistant", timeout=30)
        await user.type_chat("And what about phones?")
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import os
import shutil
import subprocess
import time
import wave
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from livekit import api, rtc
from PIL import Image, ImageDraw, ImageFont

from .coordination import TOPIC_NOTES, TOPIC_TURNS, decode_event
from .espeak_tts import parse_wav_header

TOPIC_CHAT = "lk.chat"
TOPIC_TRANSCRIPTION = "lk.transcription"


def http_url(ws_url: str) -> str:
    return ws_url.replace("wss://", "https://").replace("ws://", "http://")


def user_token(
    api_key: str, api_secret: str, *, room: str, identity: str, name: str | None = None
) -> str:
    return (
        api.AccessToken(api_key, api_secret)
        .with_identity(identity)
        .with_name(name or identity)
        .with_grants(api.VideoGrants(room_join=True, room=room, can_publish=True,
                                     can_subscribe=True, can_publish_data=True))
        .to_jwt()
    )


async def create_room(
    url: str,
    api_key: str,
    api_secret: str,
    *,
    room: str,
    metadata: dict[str, Any] | None = None,
    dispatches: Sequence[tuple[str, dict[str, Any]]] = (),
) -> None:
    """Create a room with JSON metadata and agent dispatches [(agent_name, metadata)]."""
    lk = api.LiveKitAPI(http_url(url), api_key, api_secret)
    try:
        await lk.room.create_room(
            api.CreateRoomRequest(
                name=room,
                metadata=json.dumps(metadata) if metadata is not None else "",
                empty_timeout=30,
                agents=[
                    api.RoomAgentDispatch(agent_name=name, metadata=json.dumps(md))
                    for name, md in dispatches
                ],
            )
        )
    finally:
        await lk.aclose()


async def dispatch_agent(
    url: str, api_key: str, api_secret: str, *, room: str, agent_name: str,
    metadata: dict[str, Any],
) -> None:
    lk = api.LiveKitAPI(http_url(url), api_key, api_secret)
    try:
        await lk.agent_dispatch.create_dispatch(
            api.CreateAgentDispatchRequest(
                agent_name=agent_name, room=room, metadata=json.dumps(metadata)
            )
        )
    finally:
        await lk.aclose()


# ---------------------------------------------------------------------------------------------
# Media generation


def espeak_pcm(text: str, *, voice: str = "en-us", rate_wpm: int = 160) -> tuple[np.ndarray, int]:
    """Speech for `text` as int16 mono PCM and its sample rate (espeak-ng, 22.05 kHz)."""
    binary = shutil.which("espeak-ng")
    if binary is None:
        raise RuntimeError("espeak-ng is not installed")
    out = subprocess.run(
        [binary, "--stdout", "--stdin", "-b", "1", "-v", voice, "-s", str(rate_wpm)],
        input=text.encode(), capture_output=True, check=True, timeout=30,
    ).stdout
    sample_rate, channels, _ = parse_wav_header(out[:44])
    pcm = np.frombuffer(out[44 : 44 + (len(out) - 44) // 2 * 2], dtype=np.int16)
    if channels > 1:
        pcm = pcm.reshape(-1, channels)[:, 0].copy()
    return pcm, sample_rate


def wav_speech(path: str | os.PathLike[str], *, floor: int = 500) -> tuple[np.ndarray, int]:
    """A recorded utterance (16-bit mono WAV) as int16 PCM and its sample rate, with the quiet
    after its last sample above `floor` cut off: the caller adds the silence it wants."""
    with wave.open(os.fspath(path)) as w:
        if w.getnchannels() != 1 or w.getsampwidth() != 2:
            raise ValueError(f"{path}: a 16-bit mono WAV is needed")
        rate = w.getframerate()
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
    loud = np.nonzero(np.abs(pcm.astype(np.int32)) > floor)[0]
    if len(loud) == 0:
        raise ValueError(f"{path}: no sample above {floor} (is it silent?)")
    return pcm[: loud[-1] + 1].copy(), rate


def resample_pcm(pcm: np.ndarray, rate: int, to_rate: int) -> np.ndarray:
    """int16 `pcm` at `rate` linearly interpolated to `to_rate` (test speech, not hi-fi)."""
    n = int(len(pcm) * to_rate / rate)
    out: np.ndarray = np.interp(np.linspace(0, len(pcm) - 1, n), np.arange(len(pcm)), pcm)
    return out.astype(np.int16)


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    for path in (
        "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf",
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    ):
        with contextlib.suppress(OSError):
            return ImageFont.truetype(path, size)
    return ImageFont.load_default()


def render_slide(text: str, *, width: int = 1280, height: int = 720, index: int = 0) -> bytes:
    """An RGBA slide: a coloured band and the text, different enough per index to be 'new'."""
    palette = [(24, 60, 120), (120, 40, 40), (30, 110, 60), (90, 60, 130), (140, 100, 20)]
    img = Image.new("RGBA", (width, height), (245, 245, 245, 255))
    draw = ImageDraw.Draw(img)
    draw.rectangle((0, 0, width, height // 5), fill=(*palette[index % len(palette)], 255))
    draw.text((width // 20, height // 15), f"Slide {index + 1}", fill=(255, 255, 255, 255),
              font=_font(max(12, height // 14)))
    y = height // 4
    font = _font(max(10, height // 18))
    for line in _wrap(text, 38):
        draw.text((width // 20, y), line, fill=(20, 20, 20, 255), font=font)
        y += height // 12
    return img.tobytes()


def _wrap(text: str, width: int) -> list[str]:
    words, lines, line = text.split(), [], ""
    for w in words:
        if len(line) + len(w) + 1 > width:
            lines.append(line)
            line = w
        else:
            line = f"{line} {w}".strip()
    if line:
        lines.append(line)
    return lines


# ---------------------------------------------------------------------------------------------


@dataclass
class AgentReply:
    identity: str
    text: str


# A voiced frame this long after the previous one starts a new utterance of the agent.
VOICE_GAP_S = 0.7


def first_onset_after(onsets: list[float], t: float) -> float | None:
    """Seconds from `t` to the first of the (sorted) `onsets` at or after it."""
    i = bisect.bisect_left(onsets, t)
    return onsets[i] - t if i < len(onsets) else None


@dataclass
class SimulatedUser:
    room: rtc.Room
    identity: str
    turn_events: list[dict[str, Any]] = field(default_factory=list)
    notes: list[dict[str, Any]] = field(default_factory=list)
    transcripts: list[AgentReply] = field(default_factory=list)
    agent_audio_tracks: list[rtc.RemoteAudioTrack] = field(default_factory=list)
    # Seconds of agent audio received with speech-level energy (RMS > 100), all agents.
    agent_voiced_s: float = 0.0
    # Monotonic times at which agent speech began to arrive: a voiced frame after at least
    # VOICE_GAP_S without one (the pauses between a reply's sentences are shorter).
    agent_voice_onsets: list[float] = field(default_factory=list)
    _last_voiced_at: float | None = None
    # livekit remote-session (`lk.agent.session`) byte streams received
    session_streams: int = 0
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    _mic: rtc.AudioSource | None = None
    _screen: rtc.VideoSource | None = None
    _screen_task: asyncio.Task[None] | None = None
    _slides: list[bytes] = field(default_factory=list)
    _slide_index: int = 0
    _screen_size: tuple[int, int] = (1280, 720)
    # Room noise on the microphone (RMS dBFS) between and under the speech; None: digital
    # silence between utterances, as a client with noise suppression and DTX sends.
    mic_noise_dbfs: float | None = None
    _noise_task: asyncio.Task[None] | None = None
    _playing: bool = False

    # -- lifecycle --------------------------------------------------------------------------

    @classmethod
    @contextlib.asynccontextmanager
    async def join(
        cls, url: str, api_key: str, api_secret: str, *, room: str, identity: str,
        mic_noise_dbfs: float | None = None,
    ) -> AsyncIterator[SimulatedUser]:
        lk_room = rtc.Room()
        user = cls(room=lk_room, identity=identity, mic_noise_dbfs=mic_noise_dbfs)
        user._install_handlers()
        await lk_room.connect(url, user_token(api_key, api_secret, room=room, identity=identity))
        try:
            yield user
        finally:
            await user.aclose()

    def _install_handlers(self) -> None:
        self.room.on("data_received", self._on_data)
        self.room.on("track_subscribed", self._on_track)
        self.room.register_text_stream_handler(TOPIC_TRANSCRIPTION, self._on_transcription)
        # livekit's remote-session stream (its console's view of the session): counted, so
        # tests can check the worker does not stream it unless configured to
        self.room.register_byte_stream_handler("lk.agent.session", self._on_session_stream)

    def _on_session_stream(self, reader: rtc.ByteStreamReader, participant: str) -> None:
        self.session_streams += 1

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def _on_data(self, packet: rtc.DataPacket) -> None:
        event = decode_event(packet.data)
        if event is None:
            return
        if packet.topic == TOPIC_TURNS:
            self.turn_events.append(event)
        elif packet.topic == TOPIC_NOTES:
            self.notes.append(event)
        else:
            return
        self._spawn(self._notify())

    def _on_track(
        self, track: rtc.Track, pub: rtc.RemoteTrackPublication, p: rtc.RemoteParticipant
    ) -> None:
        if isinstance(track, rtc.RemoteAudioTrack) and p.kind == (
            rtc.ParticipantKind.PARTICIPANT_KIND_AGENT
        ):
            self.agent_audio_tracks.append(track)
            self._spawn(self._monitor_audio(track))
            self._spawn(self._notify())

    def _on_transcription(self, reader: rtc.TextStreamReader, identity: str) -> None:
        async def read() -> None:
            text = await reader.read_all()
            if identity != self.identity and text.strip():
                self.transcripts.append(AgentReply(identity, text))
                await self._notify()

        self._spawn(read())

    async def aclose(self) -> None:
        if self._noise_task is not None:
            self._noise_task.cancel()
            await asyncio.gather(self._noise_task, return_exceptions=True)
        if self._screen_task is not None:
            self._screen_task.cancel()
            await asyncio.gather(self._screen_task, return_exceptions=True)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.room.disconnect()

    # -- waiting ------------------------------------------------------------------------------

    async def wait_until(self, predicate: Callable[[], Any], timeout: float) -> Any:
        """Poll-free wait for `predicate()` to become truthy; returns its value."""
        async def loop() -> Any:
            async with self._changed:
                while True:
                    value = predicate()
                    if value:
                        return value
                    await self._changed.wait()

        return await asyncio.wait_for(loop(), timeout)

    def agents(self) -> list[rtc.RemoteParticipant]:
        return [
            p for p in self.room.remote_participants.values()
            if p.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT
        ]

    async def wait_for_agent(
        self, *, role: str | None = None, timeout: float = 30
    ) -> rtc.RemoteParticipant:
        async def loop() -> rtc.RemoteParticipant:
            while True:
                for p in self.agents():
                    if role is None or p.attributes.get("parley.role") == role:
                        return p
                await asyncio.sleep(0.05)

        return await asyncio.wait_for(loop(), timeout)

    async def wait_for_agent_audio(self, timeout: float = 30) -> rtc.RemoteAudioTrack:
        tracks: list[rtc.RemoteAudioTrack] = await self.wait_until(
            lambda: self.agent_audio_tracks, timeout
        )
        return tracks[0]

    async def wait_for_turn(
        self, *, role: str = "assistant", after: int = 0, timeout: float = 30,
        predicate: Callable[[dict[str, Any]], bool] | None = None,
    ) -> dict[str, Any]:
        """The first `parley.turns` event at index >= `after` with this role (and predicate)."""
        def find() -> dict[str, Any] | None:
            for ev in self.turn_events[after:]:
                if ev.get("role") == role and (predicate is None or predicate(ev)):
                    return ev
            return None

        result: dict[str, Any] = await self.wait_until(find, timeout)
        return result

    async def wait_for_note(self, timeout: float = 60) -> dict[str, Any]:
        notes: list[dict[str, Any]] = await self.wait_until(lambda: self.notes, timeout)
        return notes[-1]

    async def _monitor_audio(self, track: rtc.RemoteAudioTrack) -> None:
        stream = rtc.AudioStream(track)
        try:
            async for ev in stream:
                pcm = np.frombuffer(ev.frame.data, dtype=np.int16).astype(np.float64)
                if len(pcm) and float(np.sqrt((pcm**2).mean())) > 100:
                    self.agent_voiced_s += ev.frame.duration
                    self._note_voiced(time.monotonic())
        finally:
            await stream.aclose()

    def _note_voiced(self, now: float) -> None:
        last = self._last_voiced_at
        if last is None or now - last >= VOICE_GAP_S:
            self.agent_voice_onsets.append(now)
        self._last_voiced_at = now

    def agent_voice_after(self, t: float) -> float | None:
        """Seconds from `t` (monotonic, e.g. what `say` returned) to the first onset of agent
        speech after it, or None if none has arrived."""
        return first_onset_after(self.agent_voice_onsets, t)

    async def agent_audio_energy(self, track: rtc.RemoteAudioTrack, seconds: float) -> float:
        """RMS of the agent's audio over `seconds` (0 means silence)."""
        stream = rtc.AudioStream(track)
        total, count = 0.0, 0
        deadline = time.monotonic() + seconds
        try:
            async for ev in stream:
                pcm = np.frombuffer(ev.frame.data, dtype=np.int16).astype(np.float64)
                total += float((pcm**2).sum())
                count += len(pcm)
                if time.monotonic() > deadline:
                    break
        finally:
            await stream.aclose()
        return (total / count) ** 0.5 if count else 0.0

    # -- speaking and typing ------------------------------------------------------------------

    async def publish_microphone(self, sample_rate: int = 48000, *, settle_s: float = 0.6) -> None:
        """Publish the microphone track and send silence while the agent subscribes (speech
        sent before the subscription is up would be lost)."""
        if self._mic is not None:
            return
        self._mic = rtc.AudioSource(sample_rate, 1)
        track = rtc.LocalAudioTrack.create_audio_track("mic", self._mic)
        await self.room.local_participant.publish_track(
            track, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
        )
        step = sample_rate // 100
        silence = rtc.AudioFrame(b"\x00\x00" * step, sample_rate, 1, step)
        started = time.monotonic()
        for i in range(int(settle_s * 100)):
            await self._mic.capture_frame(silence)
            ahead = (i + 1) / 100 - (time.monotonic() - started)
            if ahead > 0:
                await asyncio.sleep(ahead)
        if self.mic_noise_dbfs is not None:
            self._noise_task = asyncio.create_task(self._room_noise(self._mic, sample_rate))

    def _noise(self, samples: int) -> np.ndarray:
        """Gaussian room noise at `mic_noise_dbfs` RMS (float samples)."""
        assert self.mic_noise_dbfs is not None
        rms = 32768 * 10 ** (self.mic_noise_dbfs / 20)
        return np.random.default_rng().standard_normal(samples) * rms

    async def _room_noise(self, source: rtc.AudioSource, rate: int) -> None:
        """Keep the microphone fed with room noise in real time while nothing is spoken."""
        step = rate // 10  # 100 ms frames
        started, sent = time.monotonic(), 0
        while True:
            if self._playing:
                await asyncio.sleep(0.05)
                started, sent = time.monotonic(), 0
                continue
            pcm = np.clip(self._noise(step), -32768, 32767).astype(np.int16)
            await source.capture_frame(rtc.AudioFrame(pcm.tobytes(), rate, 1, step))
            sent += step
            ahead = sent / rate - (time.monotonic() - started)
            if ahead > 0.05:
                await asyncio.sleep(ahead - 0.05)

    async def _ensure_mic(self, sample_rate: int) -> rtc.AudioSource:
        await self.publish_microphone(sample_rate)
        assert self._mic is not None
        return self._mic

    async def say(
        self, text: str, *, trailing_silence_s: float = 1.2, voice: str = "en-us"
    ) -> float:
        """Speak `text` in real time on the microphone track; returns when the end of speech
        (before the trailing silence) was sent, as a monotonic timestamp."""
        pcm, rate = espeak_pcm(text, voice=voice)
        return await self.play_pcm(pcm, rate, trailing_silence_s=trailing_silence_s)

    async def play_pcm(
        self, pcm: np.ndarray, rate: int, *, trailing_silence_s: float = 1.2
    ) -> float:
        if rate != 48000:
            pcm, rate = resample_pcm(pcm, rate, 48000), 48000
        source = await self._ensure_mic(rate)
        step = rate // 100  # 10 ms frames
        audio = np.concatenate([pcm, np.zeros(int(rate * trailing_silence_s), dtype=np.int16)])
        if self.mic_noise_dbfs is not None:
            audio = np.clip(audio + self._noise(len(audio)), -32768, 32767).astype(np.int16)
        speech_end = len(pcm)
        end_sent_at = time.monotonic()
        started = time.monotonic()
        self._playing = True
        try:
            for i in range(0, len(audio), step):
                chunk = audio[i : i + step]
                if len(chunk) < step:
                    chunk = np.pad(chunk, (0, step - len(chunk)))
                await source.capture_frame(
                    rtc.AudioFrame(chunk.tobytes(), rate, 1, step)
                )
                # pace in real time (capture_frame only blocks once its queue is full)
                ahead = (i + step) / rate - (time.monotonic() - started)
                if ahead > 0.05:
                    await asyncio.sleep(ahead - 0.05)
                if i < speech_end <= i + step:
                    end_sent_at = time.monotonic()
        finally:
            self._playing = False
        return end_sent_at

    async def type_chat(self, text: str) -> None:
        """Send a chat message on the room's chat text stream (what a chat box does)."""
        await self.room.local_participant.send_text(text, topic=TOPIC_CHAT)

    # -- screen share -------------------------------------------------------------------------

    async def start_screen_share(
        self, slides: Sequence[str], *, fps: float = 5.0, width: int = 1280, height: int = 720,
    ) -> None:
        """Publish a screen-share track showing the first slide; `show_slide(i)` changes it."""
        self._screen_size = (width, height)
        self._slides = [render_slide(t, width=width, height=height, index=i)
                        for i, t in enumerate(slides)]
        self._slide_index = 0
        self._screen = rtc.VideoSource(width, height)
        track = rtc.LocalVideoTrack.create_video_track("screen", self._screen)
        await self.room.local_participant.publish_track(
            track, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_SCREENSHARE)
        )
        self._screen_task = asyncio.create_task(self._screen_loop(fps), name="screen-share")

    def show_slide(self, index: int) -> None:
        self._slide_index = index % max(1, len(self._slides))

    async def _screen_loop(self, fps: float) -> None:
        assert self._screen is not None
        width, height = self._screen_size
        interval = 1.0 / fps
        next_at = time.monotonic()
        while True:
            frame = rtc.VideoFrame(
                width, height, rtc.VideoBufferType.RGBA, self._slides[self._slide_index]
            )
            self._screen.capture_frame(frame)
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    async def publish_garbage_video(self, *, seconds: float = 2.0, fps: float = 10.0) -> None:
        """A camera track of random noise whose resolution changes every frame (sizes the SDK
        accepts: its encoder aborts the process on odd or tiny frames)."""
        rng = np.random.default_rng(7)
        source = rtc.VideoSource(64, 48)
        track = rtc.LocalVideoTrack.create_video_track("garbage", source)
        await self.room.local_participant.publish_track(
            track, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_CAMERA)
        )
        deadline = time.monotonic() + seconds
        sizes = [(64, 48), (320, 180), (128, 128), (640, 360), (96, 540)]
        i = 0
        while time.monotonic() < deadline:
            w, h = sizes[i % len(sizes)]
            data = rng.integers(0, 255, size=w * h * 4, dtype=np.uint8).tobytes()
            source.capture_frame(rtc.VideoFrame(w, h, rtc.VideoBufferType.RGBA, data))
            i += 1
            await asyncio.sleep(1.0 / fps)
