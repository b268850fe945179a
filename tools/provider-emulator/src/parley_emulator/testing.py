"""Helpers for tests that drive the emulator (images, long prompts)."""

from __future__ import annotations

import base64
import io

from PIL import Image


def png_b64(width: int, height: int, color: tuple[int, int, int] = (200, 30, 30)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def png_bytes(width: int, height: int) -> bytes:
    return base64.b64decode(png_b64(width, height))


# A knowledge text well over 1024 (and 2048) emulated tokens (~4 chars per token).
FACTS = [
    "The Parley headquarters is located in Lisbon near the river.",
    "Support is available every weekday from 8am to 6pm.",
    "The premium plan costs 49 euros per month and includes priority routing.",
    "Refunds are processed within 14 days of the request.",
    "The mobile app supports offline transcripts since version 3.2.",
]


def long_knowledge(min_tokens: int) -> str:
    lines = list(FACTS)
    i = 0
    while sum(len(line) + 1 for line in lines) < min_tokens * 4 + 400:
        lines.append(
            f"Archive note {i}: the quarterly maintenance window number {i} was completed "
            f"without incident and logged by the operations team."
        )
        i += 1
    return "\n".join(lines)
