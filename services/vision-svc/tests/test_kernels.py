"""The compiled kernels against plain-numpy twins of the same arithmetic.

The twins are written for clarity, not speed (they were the production code before the
kernels); every kernel must agree with its twin on random input, odd sizes, padded strides and
sub-windows.
"""

from __future__ import annotations

import numpy as np
import pytest
from parley_vision import kernels
from parley_vision.dedup import (
    CAMERA_DELTA,
    CELL_DELTA,
    GAIN_BOUNDS,
    MIN_MEAN_FOR_GAIN,
    OFFSET_BOUND,
    WINDOW_DELTA,
)
from parley_vision.frames import CELL, FrameDecoder, FrameLayout, PixelFormat, RawFrame
from parley_vision.phash import GRID, _dct_matrix, compute_signature, geometry
from vision_corpus import natural_image, rgb_to_i420

pytestmark = pytest.mark.unit

# ------------------------------------------------------------------------------------------
# numpy twins


def tile_labels(h: int, w: int) -> np.ndarray:
    """Tile index (row-major) of every cell, by the cell's centre: the twin of the kernels'
    row/column band edges."""
    hc, wc = -(-h // CELL), -(-w // CELL)
    ty = np.clip((np.arange(hc) * CELL + CELL / 2) * GRID // h, 0, GRID - 1).astype(np.intp)
    tx = np.clip((np.arange(wc) * CELL + CELL / 2) * GRID // w, 0, GRID - 1).astype(np.intp)
    return ty[:, None] * GRID + tx[None, :]


def np_cell_means(plane: np.ndarray) -> np.ndarray:
    h, w = plane.shape
    hc, wc = -(-h // CELL), -(-w // CELL)
    padded = np.zeros((hc * CELL, wc * CELL), dtype=np.float64)
    counts = np.zeros_like(padded)
    padded[:h, :w] = plane
    counts[:h, :w] = 1
    sums = padded.reshape(hc, CELL, wc, CELL).sum(axis=(1, 3))
    n = counts.reshape(hc, CELL, wc, CELL).sum(axis=(1, 3))
    return sums / n


def np_gains(old: np.ndarray, cur: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, ...]:
    flat = labels.ravel()
    n = np.maximum(np.bincount(flat, minlength=GRID * GRID), 1)
    m_old = np.bincount(flat, old.ravel(), minlength=GRID * GRID) / n
    m_cur = np.bincount(flat, cur.ravel(), minlength=GRID * GRID) / n
    lit = (m_old >= MIN_MEAN_FOR_GAIN) & (m_cur >= MIN_MEAN_FOR_GAIN)
    ratio = m_old / np.maximum(m_cur, 1.0)
    gain = np.where(lit, np.clip(ratio, *GAIN_BOUNDS), 1.0)
    offset = np.where(lit, 0.0, np.clip(m_old - m_cur, -OFFSET_BOUND, OFFSET_BOUND))
    return gain.astype(np.float32), offset.astype(np.float32)


def np_screen_mask(old: np.ndarray, cur: np.ndarray, labels: np.ndarray) -> np.ndarray:
    gain, offset = np_gains(old, cur, labels)
    r = cur * gain[labels] + offset[labels] - old
    mask = np.abs(r) > CELL_DELTA
    window = r[:-1, :-1] + r[1:, :-1] + r[:-1, 1:] + r[1:, 1:]
    mask[:-1, :-1] |= np.abs(window) > WINDOW_DELTA
    return mask


def np_envelope(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = np.pad(a, 1, mode="edge")
    win = np.lib.stride_tricks.sliding_window_view(p, (3, 3))
    return win.min(axis=(2, 3)), win.max(axis=(2, 3))


def np_unexplained(old: np.ndarray, cur: np.ndarray, labels: np.ndarray) -> np.ndarray:
    gain, offset = np_gains(old, cur, labels)
    aligned = cur * gain[labels] + offset[labels]
    lo, hi = np_envelope(old)
    lo2, hi2 = np_envelope(aligned)
    excess = np.maximum(np.maximum(aligned - hi, lo - aligned), np.maximum(old - hi2, lo2 - old))
    return excess > CAMERA_DELTA


def np_signature(cells: np.ndarray, w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    """pHash by dense matrices: area resample, DCT, median threshold."""
    geo = geometry(h, w)
    s64 = geo.rows.astype(np.float64) @ cells @ geo.cols.astype(np.float64)
    s32 = s64.reshape(32, 2, 32, 2).mean(axis=(1, 3))
    d32, d16 = _dct_matrix(32).astype(np.float64), _dct_matrix(16).astype(np.float64)
    blocks = [(s32, d32)] + [
        (s64[ty * 16 : ty * 16 + 16, tx * 16 : tx * 16 + 16], d16)
        for ty in range(GRID)
        for tx in range(GRID)
    ]
    hashes, margins = [], []
    for block, d in blocks:
        c = (d @ block @ d.T).ravel()
        med = np.median(c)
        bits = "".join("1" if v > med else "0" for v in c)
        hashes.append(int(bits, 2))
        margins.append(np.median(np.abs(c - med)) / (2 * block.shape[0]))
    return np.asarray(hashes, dtype=np.uint64), np.asarray(margins)


# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("w", "h"), [(1280, 720), (641, 359), (16, 16), (23, 17), (1920, 1080)])
def test_cell_means_match_numpy_for_any_size(w: int, h: int) -> None:
    rng = np.random.default_rng(w * h)
    plane = rng.integers(0, 256, (h, w), dtype=np.uint8)
    out = np.empty((-(-h // CELL), -(-w // CELL)), dtype=np.float32)
    kernels.cell_means(plane, w, 2.0, -3.0, out)
    np.testing.assert_allclose(out, 2.0 * np_cell_means(plane) - 3.0, rtol=1e-6, atol=1e-3)


@pytest.mark.parametrize("pad", [0, 32, 3])
def test_luma_cells_of_padded_i420_rows_ignore_the_padding(pad: int) -> None:
    w, h = 330, 190
    rng = np.random.default_rng(pad)
    luma = rng.integers(16, 236, (h, w), dtype=np.uint8)
    stride = w + pad
    cw, ch = (w + 1) // 2, (h + 1) // 2
    y = np.full((h, stride), 255, dtype=np.uint8)  # padding bytes that must not count
    y[:, :w] = luma
    data = y.tobytes() + bytes(2 * cw * ch)
    frame = RawFrame(PixelFormat.I420, w, h, data, (stride, cw, cw))
    dec = FrameDecoder()
    cells = dec.luma_cells(dec.inspect(frame))
    expected = (np_cell_means(luma) - 16.0) * 255.0 / 219.0
    np.testing.assert_allclose(cells, expected, atol=1e-3)


def test_luma_cells_when_the_last_row_is_shorter_than_the_stride() -> None:
    # A single-plane layout whose last row ends the buffer: no whole stride to view.
    w, h, stride = 40, 24, 48
    rng = np.random.default_rng(7)
    rows = rng.integers(0, 256, (h, stride), dtype=np.uint8)
    data = rows.tobytes()[: stride * (h - 1) + w]
    layout = FrameLayout(PixelFormat.I420, w, h, data, (stride,), (0,))
    pitched = layout.pitched(0, h, w)
    assert pitched.flags.c_contiguous
    np.testing.assert_array_equal(pitched[:, :w], rows[:, :w])


def _pair(seed: int, hc: int = 45, wc: int = 80) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    old = (rng.random((hc, wc), dtype=np.float32) * 255).astype(np.float32)
    cur = old * np.float32(rng.uniform(0.85, 1.2)) + rng.normal(0, 3, (hc, wc)).astype(np.float32)
    # A few real changes and a dark tile.
    cur[rng.integers(0, hc, 6), rng.integers(0, wc, 6)] += 40
    old[: hc // 4, : wc // 4] *= 0.03
    return old, cur.astype(np.float32)


@pytest.mark.parametrize("seed", range(6))
def test_screen_changes_match_numpy(seed: int) -> None:
    old, cur = _pair(seed)
    hc, wc = old.shape
    geo = geometry(hc * CELL, wc * CELL)
    labels = tile_labels(hc * CELL, wc * CELL)
    gain, offset = kernels.tile_gains(
        old, cur, geo.row_edges, geo.col_edges, MIN_MEAN_FOR_GAIN, *GAIN_BOUNDS, OFFSET_BOUND
    )
    ref_gain, ref_offset = np_gains(old, cur, labels)
    np.testing.assert_allclose(gain, ref_gain, rtol=1e-5)
    np.testing.assert_allclose(offset, ref_offset, atol=1e-3)
    mask = np.empty(old.shape, dtype=np.bool_)
    per_tile = np.empty(GRID * GRID, dtype=np.int64)
    n = kernels.screen_changes(
        old, cur, geo.row_edges, geo.col_edges, gain, offset, CELL_DELTA, WINDOW_DELTA, mask,
        per_tile,
    )
    expected = np_screen_mask(old, cur, labels)
    np.testing.assert_array_equal(mask, expected)
    assert n == expected.sum() > 0
    np.testing.assert_array_equal(
        per_tile, np.bincount(labels[expected], minlength=GRID * GRID)
    )


@pytest.mark.parametrize("seed", range(4))
def test_envelope_and_unexplained_match_numpy_also_on_sub_windows(seed: int) -> None:
    old, cur = _pair(100 + seed)
    hc, wc = old.shape
    geo = geometry(hc * CELL, wc * CELL)
    all_labels = tile_labels(hc * CELL, wc * CELL)
    for dy, dx in [(0, 0), (2, -3), (-1, 4)]:
        r0, c0 = max(dy, 0), max(dx, 0)
        r1, c1 = hc + min(dy, 0), wc + min(dx, 0)
        o = old[max(-dy, 0) : hc + min(-dy, 0), max(-dx, 0) : wc + min(-dx, 0)]
        c = cur[r0:r1, c0:c1]
        labels = all_labels[r0:r1, c0:c1]
        rows = np.clip(geo.row_edges - r0, 0, r1 - r0)
        cols = np.clip(geo.col_edges - c0, 0, c1 - c0)
        lo, hi = kernels.envelope(o)
        ref_lo, ref_hi = np_envelope(o)
        np.testing.assert_array_equal(lo, ref_lo)
        np.testing.assert_array_equal(hi, ref_hi)
        gain, offset = kernels.tile_gains(
            o, c, rows, cols, MIN_MEAN_FOR_GAIN, *GAIN_BOUNDS, OFFSET_BOUND
        )
        mask = np.empty(c.shape, dtype=np.bool_)
        per_tile = np.empty(GRID * GRID, dtype=np.int64)
        n = kernels.unexplained(
            o, c, rows, cols, lo, hi, gain, offset, CAMERA_DELTA, mask, per_tile
        )
        expected = np_unexplained(o, c, labels)
        np.testing.assert_array_equal(mask, expected)
        assert n == expected.sum()
        np.testing.assert_array_equal(
            per_tile, np.bincount(labels[expected], minlength=GRID * GRID)
        )


@pytest.mark.parametrize(("w", "h"), [(1280, 720), (640, 360), (1920, 1080), (200, 150)])
def test_signature_matches_dense_numpy_phash(w: int, h: int) -> None:
    dec = FrameDecoder()
    for seed in range(3):
        rgb = natural_image(seed, w, h)
        data, _ = rgb_to_i420(rgb, np.zeros((h, w), dtype=np.int16))
        cells = dec.luma_cells(dec.inspect(RawFrame(PixelFormat.I420, w, h, data)))
        sig = compute_signature(cells, w, h)
        hashes, margins = np_signature(cells.astype(np.float64), w, h)
        # Same arithmetic in another order: a coefficient sitting on the median may flip.
        assert int(np.bitwise_count(sig.hashes ^ hashes).max()) <= 1
        np.testing.assert_allclose(sig.margin, margins, rtol=1e-3, atol=1e-3)


def test_warm_up_compiles_every_kernel() -> None:
    kernels.warm_up()
    for name in ("cell_means", "max_abs_diff", "tile_gains", "screen_changes", "envelope",
                 "unexplained", "resample", "phashes"):
        assert getattr(kernels, name).signatures, name
