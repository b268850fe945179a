"""Prometheus metrics of vision-svc (labels are bounded: decisions, never tenants or tracks)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

FRAMES = Counter(
    "parley_vision_frames_total",
    "Frames decided, by decision (keep, keep_stale_forced, drop_rate, drop_duplicate, rejected)",
    ["decision"],
)
ACTIVE_STREAMS = Gauge("parley_vision_active_streams", "ProcessFrames streams in progress")
DECIDE_SECONDS = Histogram(
    "parley_vision_decide_seconds",
    "Time to validate, hash and decide one frame (encoding of kept frames excluded)",
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05),
)
IMAGE_TOKENS = Counter(
    "parley_vision_image_tokens_total",
    "Estimated image tokens: sent (kept frames) and naive (every source frame)",
    ["kind"],
)
