"""VisionUsage events for billing-svc: one per period of a stream and one when it ends.

Idempotency keys name the session, the track, a stream id this service draws for each
ProcessFrames stream, and the period number. Billing counts a key once, so the key must differ
between streams yet stay the same for every delivery of one report: the stream id is random
(a client reconnecting with the same session, track and timestamps from 0 is a new stream, not
a repeat), and the key is built when the event is made, so the usage spool re-sends it unchanged.
"""

from __future__ import annotations

import hashlib
import time
import uuid

from google.protobuf.timestamp_pb2 import Timestamp
from parley.billing.v1 import billing_pb2
from parley_runtime.ids import MAX_IDEMPOTENCY_KEY_LEN, is_valid_id
from parley_runtime.usage import UsageRecorder

from .stats import FrameStats

SERVICE = "vision-svc"
# Room left in a key for the period number (a 20-digit period is never reached).
_PERIOD_DIGITS = 20


def key_prefix(session_id: str, track_id: str, stream_id: str) -> str:
    """`vision-svc/<session>/<track>/<stream>/`, the start of every key of one stream.

    Session and track ids of up to 128 characters each can make it longer than billing's 200
    characters; then they are replaced by a digest of the pair (the random stream id alone keeps
    keys of different streams apart; the readable ids are only there for people reading the
    ledger).
    """
    readable = f"{SERVICE}/{session_id}/{track_id}/{stream_id}/"
    if is_valid_id(readable + "9" * _PERIOD_DIGITS, MAX_IDEMPOTENCY_KEY_LEN):
        return readable
    digest = hashlib.sha256(f"{session_id}\0{track_id}".encode()).hexdigest()[:32]
    return f"{SERVICE}/h-{digest}/{stream_id}/"


class VisionUsageReporter:
    """Reports a stream's frame counts to billing in deltas: every `period_us` of stream
    (capture) time while it runs, and the remainder when it ends."""

    def __init__(
        self,
        *,
        recorder: UsageRecorder,
        tenant_id: str,
        session_id: str,
        track_id: str,
        source_fps: float,
        model_id: str,
        period_us: int,
    ) -> None:
        # One per stream, never reused: see the module docstring.
        self.stream_id = uuid.uuid4().hex
        self._key_prefix = key_prefix(session_id, track_id, self.stream_id)
        self._recorder = recorder
        self._tenant_id = tenant_id
        self._session_id = session_id
        self._track_id = track_id
        self._source_fps = source_fps
        self._model_id = model_id
        self._period_us = period_us
        self._reported = FrameStats()
        self._period = 0
        self._period_start_us: int | None = None
        self.events_sent = 0

    def maybe_report(self, stats: FrameStats, stream_time_us: int) -> None:
        """Report the delta if a period of stream time has passed since the last report."""
        if self._period_start_us is None:
            self._period_start_us = stream_time_us
            return
        if self._period_us > 0 and stream_time_us - self._period_start_us >= self._period_us:
            self._send(stats)
            self._period_start_us = stream_time_us

    def final(self, stats: FrameStats) -> None:
        """Report whatever was not reported yet (nothing if the stream saw no frame)."""
        self._send(stats)

    def _send(self, stats: FrameStats) -> None:
        delta = stats.minus(self._reported)
        if delta.frames_seen == 0:
            return
        key = f"{self._key_prefix}{self._period}"
        occurred = Timestamp()
        occurred.FromNanoseconds(time.time_ns())
        event = billing_pb2.UsageEvent(
            idempotency_key=key,
            occurred_at=occurred,
            session_id=self._session_id,
            service=SERVICE,
            vision=billing_pb2.VisionUsage(
                track_id=self._track_id,
                frames_seen=delta.frames_seen,
                dropped_rate=delta.dropped_rate,
                dropped_duplicate=delta.dropped_duplicate,
                frames_kept=delta.frames_kept,
                image_tokens_sent=delta.image_tokens_sent,
                naive_image_tokens=delta.naive_image_tokens,
                source_fps=self._source_fps,
                model_id=self._model_id,
            ),
        )
        self._recorder.record(self._tenant_id, event)
        self._reported = stats.copy()
        self._period += 1
        self.events_sent += 1
