"""One VAD per voice session: the session's own stream also cuts the batch STT's utterances.

A batch STT (the offline Whisper) needs the audio cut into utterances. livekit's
`stt.StreamAdapter` does that with a VAD stream of its own, so a session ran two Silero
streams over the same audio: the session's (speaking state, end of turn, interruptions) and
the adapter's, each an ONNX inference every 32 ms. Their speech segments are the same audio
cut by the same model; only their start differs by a few frames.

`SessionVAD` wraps the process's VAD for one session. The stream the session opens works as
before, and its speech events (start and end of speech, the end carrying the utterance's
frames) are also handed to the session's `UtteranceSTT` streams, which recognise each
utterance with the batch STT exactly as the adapter did. The STT stream still receives the
session's audio (livekit pushes it) and discards it: its utterances come from the VAD.

Only the newest open VAD stream of the session feeds the STT, so an agent handoff, which
opens a new stream before the old one has closed, never transcribes an utterance twice.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, cast

from livekit.agents import stt, utils
from livekit.agents import vad as agents_vad
from livekit.agents.types import (
    DEFAULT_API_CONNECT_OPTIONS,
    NOT_GIVEN,
    APIConnectOptions,
    NotGivenOr,
)

from .vad import VADStreamProxy, VADWrapper

_SPEECH_EVENTS = (agents_vad.VADEventType.START_OF_SPEECH, agents_vad.VADEventType.END_OF_SPEECH)


class _TappedVADStream(VADStreamProxy):
    """The base VAD's stream, unchanged for the session that reads it, whose speech events are
    also published to the session's utterance STT streams (when it is the session's newest)."""

    def __init__(self, owner: SessionVAD, inner: agents_vad.VADStream) -> None:
        super().__init__(inner)
        self._owner = owner

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            self._owner._stream_closed(self)

    async def __anext__(self) -> agents_vad.VADEvent:
        ev = await self._inner.__anext__()
        if ev.type in _SPEECH_EVENTS:
            self._owner._publish(self, ev)
        return ev


class SessionVAD(VADWrapper):
    """The process's VAD, for one session, sharing its speech segments with `UtteranceSTT`."""

    def __init__(self, base: agents_vad.VAD) -> None:
        super().__init__(base)
        self._current: _TappedVADStream | None = None
        self._subscribers: set[utils.aio.Chan[agents_vad.VADEvent]] = set()
        # the inner streams report their metrics on the base VAD; the session listens here
        self._forwarding_metrics = False

    def stream(self) -> agents_vad.VADStream:
        if not self._forwarding_metrics:
            self._base.on("metrics_collected", self._forward_metrics)
            self._forwarding_metrics = True
        tapped = _TappedVADStream(self, self._base.stream())
        self._current = tapped
        return cast(agents_vad.VADStream, tapped)

    def subscribe(self) -> utils.aio.Chan[agents_vad.VADEvent]:
        ch = utils.aio.Chan[agents_vad.VADEvent]()
        self._subscribers.add(ch)
        return ch

    def unsubscribe(self, ch: utils.aio.Chan[agents_vad.VADEvent]) -> None:
        self._subscribers.discard(ch)
        ch.close()

    def close(self) -> None:
        """Stop forwarding the base VAD's metrics (the base outlives the session)."""
        if self._forwarding_metrics:
            self._base.off("metrics_collected", self._forward_metrics)
            self._forwarding_metrics = False
        for ch in list(self._subscribers):
            self.unsubscribe(ch)

    def _publish(self, stream: _TappedVADStream, ev: agents_vad.VADEvent) -> None:
        if stream is not self._current:
            return
        for ch in self._subscribers:
            ch.send_nowait(ev)

    def _stream_closed(self, stream: _TappedVADStream) -> None:
        if self._current is stream:
            self._current = None


class UtteranceSTT(stt.StreamAdapter):
    """livekit's `stt.StreamAdapter` whose streams take their utterances from the session's
    VAD segments instead of a VAD stream of their own (see the module doc).

    Everything else is the adapter's: capabilities, metrics, keyterms and conversation items
    forwarded to the batch STT, and the events its streams emit (start of speech, end of
    speech, then the utterance's final transcript when it has words)."""

    def __init__(self, *, stt: stt.STT[Any], vad: SessionVAD) -> None:
        super().__init__(stt=stt, vad=vad)
        self._session_vad = vad

    def stream(
        self,
        *,
        language: NotGivenOr[str] = NOT_GIVEN,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
    ) -> stt.RecognizeStream:
        return _UtteranceStream(self, self._session_vad, wrapped_stt=self.wrapped_stt,
                                language=language, conn_options=conn_options)


class _UtteranceStream(stt.StreamAdapterWrapper):
    def __init__(
        self, owner: UtteranceSTT, session_vad: SessionVAD, *, wrapped_stt: stt.STT[Any],
        language: NotGivenOr[str], conn_options: APIConnectOptions,
    ) -> None:
        super().__init__(owner, vad=session_vad, wrapped_stt=wrapped_stt, language=language,
                         conn_options=conn_options)
        self._session_vad = session_vad
        # subscribed now, so no segment ending after the stream opens is missed
        self._segments = session_vad.subscribe()

    async def _run(self) -> None:
        async def discard_audio() -> None:
            # livekit pushes the session's audio here too; the utterances come from the VAD
            async for _ in self._input_ch:
                pass
            self._session_vad.unsubscribe(self._segments)

        async def recognize() -> None:
            async for ev in self._segments:
                if ev.type == agents_vad.VADEventType.START_OF_SPEECH:
                    self._event_ch.send_nowait(stt.SpeechEvent(stt.SpeechEventType.START_OF_SPEECH))
                    continue
                speech_end_time = time.time() - ev.silence_duration - ev.inference_duration
                self._event_ch.send_nowait(stt.SpeechEvent(
                    type=stt.SpeechEventType.END_OF_SPEECH, speech_end_time=speech_end_time,
                ))
                if not ev.frames:
                    continue
                result = await self._wrapped_stt.recognize(
                    buffer=utils.merge_frames(ev.frames), language=self._language,
                    conn_options=self._wrapped_stt_conn_options,
                )
                if not result.alternatives or not result.alternatives[0].text:
                    continue
                self._event_ch.send_nowait(stt.SpeechEvent(
                    type=stt.SpeechEventType.FINAL_TRANSCRIPT,
                    alternatives=[result.alternatives[0]],
                    speech_end_time=result.speech_end_time
                    if result.speech_end_time is not None else speech_end_time,
                ))

        tasks = [asyncio.create_task(discard_audio(), name="utterance_stt_discard_audio"),
                 asyncio.create_task(recognize(), name="utterance_stt_recognize")]
        try:
            await asyncio.gather(*tasks)
        finally:
            self._session_vad.unsubscribe(self._segments)
            await utils.aio.cancel_and_wait(*tasks)

    async def aclose(self) -> None:
        self._session_vad.unsubscribe(self._segments)
        await super().aclose()


__all__ = ["SessionVAD", "UtteranceSTT"]
