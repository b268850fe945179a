"""The per-frame inner loops, compiled with numba.

Each frame's decision reads the whole luma plane once (cell means) and then works on those
cells (14,400 at 720p). Written as numpy expressions these are a dozen passes over memory and
as many interpreter round trips; as compiled loops they are one pass each. Measured on one core
(bench/vision): 720p cell means from a frame not in cache 250 -> 70 us, the change test and
hashes on the cells 160 -> 40 us.

Every kernel here has a plain-numpy twin in the tests (tests/test_kernels.py) that it must
agree with on random and real frames.

Compilation happens once per machine: `cache=True` stores machine code under numba's cache
directory (NUMBA_CACHE_DIR, else beside the sources or in the user's cache), and `warm_up()`
compiles or loads every kernel before a service reports ready, so no frame pays for it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

import numpy as np
from numba import njit

_F = TypeVar("_F", bound=Callable[..., Any])


def _compiled(fn: _F) -> _F:
    """numba's nopython compilation, cached on disk, releasing the GIL while it runs."""
    return cast(_F, njit(cache=True, nogil=True, boundscheck=False)(fn))


CELL = 8


@_compiled
def cell_means(plane: Any, w: int, scale: float, bias: float, out: Any) -> None:
    """out[cy, cx] = scale * mean of the CELLxCELL block (cy, cx) of a plane + bias.

    `plane` is a C-contiguous (rows, row stride) uint8 array whose first `w` columns are the
    samples (whole rows, so that the compiler sees contiguous rows and vectorises the adds;
    a view with strides would not). Edge cells of sizes that are not multiples of CELL
    average the pixels they have. Exact integer sums.
    """
    h = plane.shape[0]
    hc, wc = out.shape
    acc = np.zeros(w, np.uint16)  # at most CELL * 255 per column
    full = w // CELL
    for cy in range(hc):
        y0 = cy * CELL
        y1 = min(y0 + CELL, h)
        acc[:] = 0
        for y in range(y0, y1):
            row = plane[y]
            for x in range(w):
                acc[x] += row[x]
        f = scale / ((y1 - y0) * CELL)
        for cx in range(full):
            s = np.uint32(0)
            for k in range(CELL):
                s += acc[cx * CELL + k]
            out[cy, cx] = np.float32(s * f + bias)
        if full < wc:
            s = np.uint32(0)
            for x in range(full * CELL, w):
                s += acc[x]
            out[cy, full] = np.float32(s * scale / ((y1 - y0) * (w - full * CELL)) + bias)


@_compiled
def max_abs_diff(a: Any, b: Any) -> float:
    """max |a - b| over two C-contiguous float32 arrays of one shape."""
    m = np.float32(0.0)
    fa = a.ravel()
    fb = b.ravel()
    for i in range(fa.size):
        m = max(m, abs(fa[i] - fb[i]))
    return float(m)


# Tiles are rectangles of whole cells: tile (ty, tx) covers cell rows row_edges[ty] ..
# row_edges[ty + 1] and cell columns col_edges[tx] .. col_edges[tx + 1] (possibly empty).


@_compiled
def tile_gains(
    old: Any,
    cur: Any,
    row_edges: Any,
    col_edges: Any,
    min_mean: float,
    gain_lo: float,
    gain_hi: float,
    offset_bound: float,
) -> tuple[Any, Any]:
    """Per-tile photometric alignment of `cur` onto `old`: gains (lit tiles, clamped to
    [gain_lo, gain_hi]) and offsets (dark tiles, clamped to +-offset_bound), row-major."""
    gy = row_edges.size - 1
    gx = col_edges.size - 1
    gain = np.ones(gy * gx, np.float32)
    offset = np.zeros(gy * gx, np.float32)
    for ty in range(gy):
        for tx in range(gx):
            s_old = 0.0
            s_cur = 0.0
            for y in range(row_edges[ty], row_edges[ty + 1]):
                a = np.float32(0.0)
                c = np.float32(0.0)
                for x in range(col_edges[tx], col_edges[tx + 1]):
                    a += old[y, x]
                    c += cur[y, x]
                s_old += float(a)
                s_cur += float(c)
            n = (row_edges[ty + 1] - row_edges[ty]) * (col_edges[tx + 1] - col_edges[tx])
            k = max(float(n), 1.0)
            m_old = s_old / k
            m_cur = s_cur / k
            t = ty * gx + tx
            if m_old >= min_mean and m_cur >= min_mean:
                gain[t] = min(max(m_old / max(m_cur, 1.0), gain_lo), gain_hi)
            else:
                offset[t] = min(max(m_old - m_cur, -offset_bound), offset_bound)
    return gain, offset


@_compiled
def _aligned(cur: Any, row_edges: Any, col_edges: Any, gain: Any, offset: Any, out: Any) -> None:
    gx = col_edges.size - 1
    for ty in range(row_edges.size - 1):
        for tx in range(gx):
            g = gain[ty * gx + tx]
            o = offset[ty * gx + tx]
            for y in range(row_edges[ty], row_edges[ty + 1]):
                for x in range(col_edges[tx], col_edges[tx + 1]):
                    out[y, x] = cur[y, x] * g + o


@_compiled
def _count_tiles(mask: Any, row_edges: Any, col_edges: Any, per_tile: Any) -> int:
    gx = col_edges.size - 1
    total = 0
    for ty in range(row_edges.size - 1):
        for tx in range(gx):
            n = 0
            for y in range(row_edges[ty], row_edges[ty + 1]):
                for x in range(col_edges[tx], col_edges[tx + 1]):
                    n += mask[y, x]
            per_tile[ty * gx + tx] = n
            total += n
    return total


@_compiled
def screen_changes(
    old: Any,
    cur: Any,
    row_edges: Any,
    col_edges: Any,
    gain: Any,
    offset: Any,
    cell_delta: float,
    window_delta: float,
    mask: Any,
    per_tile: Any,
) -> int:
    """Residuals of light-aligned `cur` against `old`: a cell changes when its residual
    exceeds cell_delta, or a 2x2 window (marked at its top-left cell) when its summed residual
    exceeds window_delta. Fills `mask` and `per_tile` counts; returns the changed count."""
    hc, wc = cur.shape
    r = np.empty((hc, wc), np.float32)
    _aligned(cur, row_edges, col_edges, gain, offset, r)
    for y in range(hc):
        for x in range(wc):
            r[y, x] -= old[y, x]
    for y in range(hc):
        for x in range(wc):
            mask[y, x] = abs(r[y, x]) > cell_delta
    for y in range(hc - 1):
        for x in range(wc - 1):
            s = r[y, x] + r[y + 1, x] + r[y, x + 1] + r[y + 1, x + 1]
            mask[y, x] |= abs(s) > window_delta
    return _count_tiles(mask, row_edges, col_edges, per_tile)


@_compiled
def envelope(a: Any) -> tuple[Any, Any]:
    """Min and max over each cell's 3x3 neighbourhood (edges replicated), separably."""
    hc, wc = a.shape
    lo_r = np.empty((hc, wc), np.float32)
    hi_r = np.empty((hc, wc), np.float32)
    for y in range(hc):
        for x in range(wc):
            xa = max(x - 1, 0)
            xb = min(x + 1, wc - 1)
            lo_r[y, x] = min(min(a[y, xa], a[y, x]), a[y, xb])
            hi_r[y, x] = max(max(a[y, xa], a[y, x]), a[y, xb])
    lo = np.empty((hc, wc), np.float32)
    hi = np.empty((hc, wc), np.float32)
    for y in range(hc):
        ya = max(y - 1, 0)
        yb = min(y + 1, hc - 1)
        for x in range(wc):
            lo[y, x] = min(min(lo_r[ya, x], lo_r[y, x]), lo_r[yb, x])
            hi[y, x] = max(max(hi_r[ya, x], hi_r[y, x]), hi_r[yb, x])
    return lo, hi


@_compiled
def unexplained(
    old: Any,
    cur: Any,
    row_edges: Any,
    col_edges: Any,
    old_lo: Any,
    old_hi: Any,
    gain: Any,
    offset: Any,
    delta: float,
    mask: Any,
    per_tile: Any,
) -> int:
    """Cells of light-aligned `cur` outside `old`'s 3x3 range by more than `delta`, or cells of
    `old` outside aligned `cur`'s 3x3 range: what no shift of up to one cell explains. Fills
    `mask` and `per_tile`; returns the count."""
    hc, wc = cur.shape
    aligned = np.empty((hc, wc), np.float32)
    _aligned(cur, row_edges, col_edges, gain, offset, aligned)
    lo2, hi2 = envelope(aligned)
    for y in range(hc):
        for x in range(wc):
            v = aligned[y, x]
            o = old[y, x]
            e = max(max(v - old_hi[y, x], old_lo[y, x] - v), max(o - hi2[y, x], lo2[y, x] - o))
            mask[y, x] = e > delta
    return _count_tiles(mask, row_edges, col_edges, per_tile)


@_compiled
def resample(cells: Any, row_idx: Any, row_w: Any, col_idx: Any, col_w: Any) -> Any:
    """Separable area resampling with sparse weights: out[i, j] = sum_a sum_b
    row_w[i, a] * col_w[j, b] * cells[row_idx[i, a], col_idx[j, b]]."""
    n_r, k_r = row_idx.shape
    n_c, k_c = col_idx.shape
    wc = cells.shape[1]
    tmp = np.zeros((n_r, wc), np.float64)
    for i in range(n_r):
        for a in range(k_r):
            wgt = row_w[i, a]
            if wgt != 0.0:
                src = cells[row_idx[i, a]]
                for x in range(wc):
                    tmp[i, x] += wgt * src[x]
    out = np.zeros((n_r, n_c), np.float64)
    for i in range(n_r):
        for j in range(n_c):
            s = 0.0
            for b in range(k_c):
                s += col_w[j, b] * tmp[i, col_idx[j, b]]
            out[i, j] = s
    return out


@_compiled
def _dct_hash(block: Any, d: Any, ac_scale: float, hashes: Any, margins: Any, k: int) -> None:
    n = block.shape[0]
    half = np.zeros((8, n))
    for u in range(8):
        for y in range(n):
            du = d[u, y]
            for x in range(n):
                half[u, x] += du * block[y, x]
    c = np.empty(64)
    for u in range(8):
        for v in range(8):
            s = 0.0
            for x in range(n):
                s += half[u, x] * d[v, x]
            c[u * 8 + v] = s
    # The mean of the 32nd and 33rd smallest of 64 (numpy.median), by selection.
    srt = np.partition(c, 32)
    med = (srt[:32].max() + srt[32]) * 0.5
    h = np.uint64(0)
    for i in range(64):
        if c[i] > med:
            h |= np.uint64(1) << np.uint64(63 - i)
    hashes[k] = h
    dev = np.partition(np.abs(c - med), 32)
    margins[k] = (dev[:32].max() + dev[32]) * 0.5 / ac_scale


@_compiled
def phashes(
    s64: Any, d32: Any, d16: Any, grid: int, hashes: Any, margins: Any
) -> None:
    """pHashes of a (2n, 2n) area resample: hashes[0] of its (n, n) 2x2 means (with d32, the
    first 8 rows of that size's unnormalised DCT-II), hashes[1:] of its grid x grid tiles in
    row-major order (d16). Each: the top-left 8x8 DCT coefficients thresholded at their
    median, row-major, first coefficient in the most significant bit; margins: the median
    distance of the coefficients from that median, in luma levels (coefficient / 2n)."""
    m = s64.shape[0]
    n = m // 2
    s32 = np.empty((n, n))
    for y in range(n):
        for x in range(n):
            s32[y, x] = 0.25 * (
                s64[2 * y, 2 * x] + s64[2 * y + 1, 2 * x]
                + s64[2 * y, 2 * x + 1] + s64[2 * y + 1, 2 * x + 1]
            )
    _dct_hash(s32, d32, 2.0 * n, hashes, margins, 0)
    t = m // grid
    for ty in range(grid):
        for tx in range(grid):
            block = np.ascontiguousarray(s64[ty * t : (ty + 1) * t, tx * t : (tx + 1) * t])
            _dct_hash(block, d16, 2.0 * t, hashes, margins, 1 + ty * grid + tx)


def warm_up() -> None:
    """Compile (or load from the cache) every kernel for the argument types the service uses."""
    cells = np.zeros((3, 3), np.float32)
    cell_means(np.zeros((20, 20), np.uint8), 20, 1.0, 0.0, cells)
    # Frames arrive as bytes: read-only arrays are a type of their own to the compiler.
    cell_means(np.frombuffer(bytes(400), np.uint8).reshape(20, 20), 20, 1.0, 0.0, cells)
    max_abs_diff(cells, cells)
    edges = np.asarray([0, 1, 2], np.intp)
    gain, offset = tile_gains(cells, cells, edges, edges, 16.0, 0.8, 1.25, 24.0)
    mask = np.zeros((3, 3), np.bool_)
    per_tile = np.zeros(4, np.int64)
    screen_changes(cells, cells, edges, edges, gain, offset, 6.0, 8.0, mask, per_tile)
    lo, hi = envelope(cells)
    unexplained(cells, cells, edges, edges, lo, hi, gain, offset, 12.0, mask, per_tile)
    # Camera pans compare sub-windows (non-contiguous views) of the cell arrays.
    part = cells[1:, 1:]
    gain, offset = tile_gains(part, part, edges[:2], edges[:2], 16.0, 0.8, 1.25, 24.0)
    lo, hi = envelope(part)
    sub = edges[:2]
    unexplained(part, part, sub, sub, lo, hi, gain, offset, 12.0, mask[1:, 1:], per_tile)
    idx = np.zeros((4, 2), np.intp)
    wts = np.zeros((4, 2))
    s64 = resample(cells, idx, wts, idx, wts)
    hashes = np.zeros(5, np.uint64)
    margins = np.zeros(5, np.float32)
    phashes(s64, np.ones((8, 2)), np.ones((8, 2)), 2, hashes, margins)
