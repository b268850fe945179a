"""Settings of vision-svc (env prefix PARLEY_)."""

from __future__ import annotations

from parley_runtime.settings import ServiceSettings
from pydantic import Field


class Settings(ServiceSettings):
    service_name: str = "vision-svc"
    grpc_port: int = 50052
    metrics_port: int = 9102
    # Raw 1080p RGBA is 8.3 MB and 4K I420 12.4 MB: one frame per message must fit.
    max_message_bytes: int = Field(default=16 * 1024 * 1024, gt=0)
    # Frames with more pixels are rejected (4K UHD by default).
    max_frame_pixels: int = Field(default=3840 * 2160, gt=0)
    # Usage is reported to billing every this many seconds of stream (capture) time.
    usage_period_s: float = Field(default=60.0, gt=0)
    # A stream with no message for this long is closed (with its final stats).
    stream_idle_timeout_s: float = Field(default=600.0, gt=0)
    # Streams this process serves at once; more get RESOURCE_EXHAUSTED (go to another replica).
    max_active_streams: int = Field(default=256, gt=0)
    # Threads that JPEG-encode kept frames (Pillow releases the GIL while encoding).
    encode_threads: int = Field(default=2, gt=0, le=64)
