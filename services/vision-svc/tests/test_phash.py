"""The numpy pHash agrees with imagehash.phash on natural images and separates distinct ones."""

from __future__ import annotations

import io

import imagehash
import numpy as np
import pytest
from parley_vision.phash import GRID, compute_signature, hamming, phash_luma
from PIL import Image
from vision_corpus import natural_image

pytestmark = pytest.mark.unit


def _imagehash_int(img: Image.Image) -> int:
    return int(str(imagehash.phash(img)), 16)


def test_agrees_with_imagehash_on_natural_images() -> None:
    distances = []
    for seed in range(24):
        w, h = [(1280, 720), (640, 480), (800, 600)][seed % 3] if seed else (1920, 1080)
        rgb = natural_image(1000 + seed, w, h)
        img = Image.fromarray(rgb)
        ours = phash_luma(np.asarray(img.convert("L")))
        distances.append(bin(ours ^ _imagehash_int(img)).count("1"))
    print("distance to imagehash.phash:", distances)
    assert float(np.median(distances)) <= 1
    assert float(np.mean(distances)) <= 2.0
    assert max(distances) <= 8


def test_distinct_images_are_far_and_recompressed_ones_are_near() -> None:
    hashes = [phash_luma(np.asarray(Image.fromarray(natural_image(s, 640, 480)).convert("L")))
              for s in range(30)]
    apart = [bin(a ^ b).count("1") for i, a in enumerate(hashes) for b in hashes[i + 1 :]]
    assert float(np.median(apart)) >= 24
    assert float(np.percentile(apart, 5)) > 10  # above the seed's threshold

    rng = np.random.default_rng(0)
    near = []
    for s in range(10):
        img = Image.fromarray(natural_image(s, 640, 480))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=60)
        noisy = np.asarray(Image.open(buf).convert("L"), np.float32) + rng.normal(0, 3, (480, 640))
        a = phash_luma(np.asarray(img.convert("L")))
        b = phash_luma(np.clip(noisy, 0, 255).astype(np.uint8))
        near.append(bin(a ^ b).count("1"))
    assert max(near) <= 6


def test_tile_hashes_move_only_where_the_picture_changed() -> None:
    rgb = natural_image(9, 1280, 720)
    luma = np.asarray(Image.fromarray(rgb).convert("L")).astype(np.float32)
    changed = luma.copy()
    changed[200:330, 700:940] = 255 - changed[200:330, 700:940]  # inside tile (col 2, row 1)

    def sig(a: np.ndarray):  # type: ignore[no-untyped-def]
        cells = a.reshape(90, 8, 160, 8).mean(axis=(1, 3)).astype(np.float32)
        return compute_signature(cells, 1280, 720)

    d = hamming(sig(luma).hashes, sig(changed).hashes)
    tiles = d[1:].reshape(GRID, GRID)
    assert tiles[1, 2] > 14
    others = np.delete(tiles.ravel(), 1 * GRID + 2)
    assert others.max() <= 6
