"""VisionUsage events for billing-svc: one per period of a stream and one when it ends.

Idempotency keys are derived from the session, the track, the stream's first capture timestamp
and the period number, so a retried delivery of the same report counts once while a reconnected
stream of the same track (a new first timestamp) is billed separately.
"""

from __future__ import annotations

import time

from google.protobuf.timestamp_pb2 import Timestamp
from parley.billing.v1 import billing_pb2
from parley_runtime.usage import UsageRecorder

from .stats import FrameStats

SERVICE = "vision-svc"


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

    def maybe_report(self, stats: FrameStats, stream_time_us: int, first_timestamp_us: int) -> None:
        """Report the delta if a period of stream time has passed since the last report."""
        if self._period_start_us is None:
            self._period_start_us = stream_time_us
            return
        if self._period_us > 0 and stream_time_us - self._period_start_us >= self._period_us:
            self._send(stats, first_timestamp_us)
            self._period_start_us = stream_time_us

    def final(self, stats: FrameStats, first_timestamp_us: int | None) -> None:
        """Report whatever was not reported yet (nothing if the stream saw no frame)."""
        if first_timestamp_us is None:
            return
        self._send(stats, first_timestamp_us)

    def _send(self, stats: FrameStats, first_timestamp_us: int) -> None:
        delta = stats.minus(self._reported)
        if delta.frames_seen == 0:
            return
        key = (
            f"{SERVICE}/{self._session_id}/{self._track_id}/{first_timestamp_us}/{self._period}"
        )
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
