"""Kept frames: resize to fit the model, JPEG-encode, estimate image tokens, score detail."""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .frames import FrameDecoder, FrameLayout

GEMINI_TOKENS_PER_TILE = 258
GEMINI_SMALL_SIDE = 384
GEMINI_TILE = 768
# Laplacian magnitude (luma levels) above which a pixel counts as an edge.
_EDGE_LEVEL = 24.0
# Interestingness is computed on the luma fitted into this many pixels per side, so the score
# does not depend on the source or model resolution.
_SCORE_SIDE = 384


def estimate_image_tokens(width: int, height: int) -> int:
    """Image tokens a Gemini 2.x model bills for one image of this size.

    Gemini's documented rule: an image with both sides <= 384 px costs 258 tokens; a larger one
    is cropped and scaled into 768x768 tiles, 258 tokens each (Gemini API docs, "Understand
    and count tokens", https://ai.google.dev/gemini-api/docs/tokens). Other models count
    differently; this is an estimate for stats and the naive baseline, while what is billed is
    the provider's own usage report.
    """
    if width <= 0 or height <= 0:
        return 0
    if width <= GEMINI_SMALL_SIDE and height <= GEMINI_SMALL_SIDE:
        return GEMINI_TOKENS_PER_TILE
    return math.ceil(width / GEMINI_TILE) * math.ceil(height / GEMINI_TILE) * GEMINI_TOKENS_PER_TILE


def fit_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """(w, h) scaled down (never up) so that the longer side is at most `max_side`."""
    scale = min(1.0, max_side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def interestingness(luma: Image.Image) -> float:
    """Edge density of the luma: the fraction of pixels on an edge, 0..1.

    An edge pixel is one whose 4-neighbour Laplacian exceeds 24 levels, measured with the image
    fitted into 384 px. A blank slide or a wall scores near 0, a page of text or a detailed
    scene 0.1-0.4: higher means more detail worth a look.
    """
    w, h = luma.size
    if max(w, h) > _SCORE_SIDE:
        luma = luma.resize(fit_size(w, h, _SCORE_SIDE), Image.Resampling.BILINEAR)
    a = np.asarray(luma, dtype=np.float32)
    if a.shape[0] < 3 or a.shape[1] < 3:
        return 0.0
    lap = a[1:-1, :-2] + a[1:-1, 2:] + a[:-2, 1:-1] + a[2:, 1:-1] - 4.0 * a[1:-1, 1:-1]
    return float(np.count_nonzero(np.abs(lap) > _EDGE_LEVEL) / lap.size)


@dataclass(frozen=True, slots=True)
class EncodedFrame:
    data: bytes
    width: int
    height: int
    estimated_image_tokens: int
    interestingness: float

    @property
    def byte_size(self) -> int:
        return len(self.data)


class KeptFrameEncoder:
    """JPEG-encodes kept frames, resized to fit `max_side`, at `quality`."""

    def __init__(self, decoder: FrameDecoder) -> None:
        self._decoder = decoder

    def encode(self, layout: FrameLayout, *, quality: int, max_side: int) -> EncodedFrame:
        size = fit_size(layout.width, layout.height, max_side)
        image, luma = self._decoder.to_image(layout, size)
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=quality, optimize=False)
        return EncodedFrame(
            data=buf.getvalue(),
            width=size[0],
            height=size[1],
            estimated_image_tokens=estimate_image_tokens(*size),
            interestingness=interestingness(luma),
        )
