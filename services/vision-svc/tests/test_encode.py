"""Kept-frame encoding, token estimates and the interestingness score."""

from __future__ import annotations

import io

import numpy as np
import pytest
from parley_vision.encode import (
    KeptFrameEncoder,
    estimate_image_tokens,
    fit_size,
    interestingness,
)
from parley_vision.frames import FrameDecoder, PixelFormat, RawFrame
from PIL import Image
from vision_corpus import _slide, natural_image, rgb_to_i420

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    "size, tokens",
    [((384, 384), 258), ((200, 100), 258), ((768, 432), 258), ((768, 768), 258),
     ((1280, 720), 516), ((1920, 1080), 1548), ((385, 100), 258), ((1600, 100), 774)],
)
def test_gemini_image_token_estimate(size: tuple[int, int], tokens: int) -> None:
    assert estimate_image_tokens(*size) == tokens


def test_fit_size_never_upscales() -> None:
    assert fit_size(1920, 1080, 768) == (768, 432)
    assert fit_size(1080, 1920, 768) == (432, 768)
    assert fit_size(640, 480, 768) == (640, 480)


def test_kept_frames_are_jpegs_of_the_fitted_size_and_quality_matters() -> None:
    rgb = natural_image(3, 1280, 720)
    data, _ = rgb_to_i420(rgb)
    dec = FrameDecoder()
    layout = dec.inspect(RawFrame(PixelFormat.I420, 1280, 720, data))
    enc = KeptFrameEncoder(dec)
    hi = enc.encode(layout, quality=90, max_side=768)
    lo = enc.encode(layout, quality=40, max_side=768)
    assert (hi.width, hi.height) == (768, 432)
    assert hi.estimated_image_tokens == 258
    assert lo.byte_size < hi.byte_size
    img = Image.open(io.BytesIO(hi.data))
    assert img.format == "JPEG" and img.size == (768, 432)
    # The encoded picture is the frame (not a colour-shifted or range-squashed copy).
    back = np.asarray(img.convert("RGB").resize((1280, 720)), np.float32)
    assert np.abs(back - rgb.astype(np.float32)).mean() < 8


def test_interestingness_ranks_detail() -> None:
    blank = Image.new("L", (640, 360), 240)
    slide = _slide(1, "2 / 6", 11).convert("L")
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (360, 640), np.uint8))
    scores = [interestingness(im) for im in (blank, slide, noise)]
    assert scores[0] == 0.0
    assert 0.01 < scores[1] < scores[2] <= 1.0
