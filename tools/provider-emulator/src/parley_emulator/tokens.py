"""Deterministic token accounting shared by every emulated API.

Rule: a piece of text costs ``ceil(len(text) / 4)`` tokens (characters, not bytes); an empty
string costs 0. Images follow each provider's published rule of thumb:

* Anthropic: the image is scaled down so its long edge is at most 1568 px and its area at most
  1.15 megapixels, then costs ``ceil(w * h / 750)`` tokens.
* Gemini: 258 tokens when both sides are at most 384 px, else 258 per 768x768 tile
  (``ceil(w / 768) * ceil(h / 768) * 258``).
"""

from __future__ import annotations

import base64
import binascii
import io
import math

from PIL import Image, UnidentifiedImageError

ANTHROPIC_MAX_EDGE = 1568
ANTHROPIC_MAX_PIXELS = 1_150_000
GEMINI_SMALL_IMAGE_EDGE = 384
GEMINI_TILE = 768
GEMINI_TOKENS_PER_TILE = 258
UNKNOWN_IMAGE_SIZE = (1092, 1092)  # used for images given by URL (never fetched)


def count_text_tokens(text: str) -> int:
    """1 token per 4 characters, rounded up."""
    return (len(text) + 3) // 4


def anthropic_image_tokens(width: int, height: int) -> int:
    w, h = float(max(width, 1)), float(max(height, 1))
    edge = max(w, h)
    if edge > ANTHROPIC_MAX_EDGE:
        scale = ANTHROPIC_MAX_EDGE / edge
        w, h = w * scale, h * scale
    if w * h > ANTHROPIC_MAX_PIXELS:
        scale = math.sqrt(ANTHROPIC_MAX_PIXELS / (w * h))
        w, h = w * scale, h * scale
    return max(1, math.ceil(round(w) * round(h) / 750))


def gemini_image_tokens(width: int, height: int) -> int:
    if width <= GEMINI_SMALL_IMAGE_EDGE and height <= GEMINI_SMALL_IMAGE_EDGE:
        return GEMINI_TOKENS_PER_TILE
    return math.ceil(width / GEMINI_TILE) * math.ceil(height / GEMINI_TILE) * GEMINI_TOKENS_PER_TILE


class ImageError(ValueError):
    """The image payload could not be decoded."""


def decode_image_size(data_b64: str) -> tuple[int, int]:
    """Width and height of a base64-encoded image (Pillow reads only the header)."""
    if not isinstance(data_b64, str) or not data_b64:
        raise ImageError("image data is empty")
    # JSON bytes fields may be standard or URL-safe base64, with or without padding
    # (google-genai sends URL-safe without padding).
    if "-" in data_b64 or "_" in data_b64:
        data_b64 = data_b64.replace("-", "+").replace("_", "/")
    if len(data_b64) % 4:
        data_b64 += "=" * (-len(data_b64) % 4)
    try:
        raw = base64.b64decode(data_b64, validate=False)
    except (binascii.Error, ValueError) as exc:
        raise ImageError(f"image data is not valid base64: {exc}") from exc
    try:
        with Image.open(io.BytesIO(raw)) as img:
            width, height = img.size
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ImageError("Could not process image") from exc
    return int(width), int(height)
