"""Prometheus metrics of the agent worker.

Job processes record them; with PROMETHEUS_MULTIPROC_DIR set (the worker sets it before any job
process starts) livekit's /metrics endpoint aggregates every process's samples.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2, 5, 10,
)

ACTIVE_SESSIONS = Gauge(
    "parley_agent_active_sessions",
    "Agent sessions running in this worker",
    ["role"],
    multiprocess_mode="livesum",
)
JOBS = Counter(
    "parley_agent_jobs_total",
    "Jobs by outcome (accepted, refused, failed) and reason",
    ["outcome", "reason"],
)
TURN_FIRST_TOKEN = Histogram(
    "parley_agent_turn_first_token_seconds",
    "End of the user's turn to the first LLM token at the worker",
    buckets=_LATENCY_BUCKETS,
)
TURN_PLATFORM = Histogram(
    "parley_agent_turn_platform_seconds",
    "Platform share of turn latency: end of turn to first token minus the model's own TTFT",
    buckets=_LATENCY_BUCKETS,
)
LLM_TTFT = Histogram(
    "parley_agent_llm_ttft_seconds",
    "Model time to first token as reported by router-svc",
    buckets=_LATENCY_BUCKETS,
)
TOOL_CALLS = Counter(
    "parley_agent_tool_calls_total", "Tool calls by tool and outcome", ["tool", "outcome"]
)
VISION_FRAMES = Counter(
    "parley_agent_vision_frames_total",
    "Video frames sent to vision-svc, by decision",
    ["decision"],
)
VISION_FRAMES_UNCHANGED = Counter(
    "parley_agent_vision_frames_unchanged_total",
    "Video frames left out because they showed nothing new since the last frame sent "
    "(vision-svc counts them as seen duplicates)",
)
VISION_STREAM_ERRORS = Counter(
    "parley_agent_vision_stream_errors_total", "Frame streams that failed and were retried"
)
IMAGES_ATTACHED = Counter(
    "parley_agent_images_attached_total", "Kept frames attached to user turns", ["reason"]
)
VAD_SKIPPED_SECONDS = Counter(
    "parley_agent_vad_skipped_seconds_total",
    "Seconds of room audio the VAD skipped as settled silence (no model inference)",
)
