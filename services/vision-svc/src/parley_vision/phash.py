"""Perceptual hashes of a frame from its luma cell means (numpy and compiled loops; no PIL).

The global hash is imagehash's pHash: the luma resampled to 32x32, a 2-D DCT-II (unnormalised,
as scipy.fftpack computes it), the top-left 8x8 coefficients thresholded at their median, bits
in row-major order. imagehash resizes with a Lanczos filter from the full picture; here the
32x32 samples are exact area means of the 8x8 cell means, which agree with it to a few bits on
natural images (tested against imagehash itself).

On top of it, the frame is split into a GRIDxGRID grid of tiles, each with its own 64-bit pHash
(16x16 samples per tile), so a change confined to one region moves that tile's hash even when
the global hash barely notices it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import numpy.typing as npt

from . import kernels
from .frames import CELL, FloatArray

GRID = 4
"""Tiles per side."""
_TILE_SAMPLES = 16
_SAMPLES = GRID * _TILE_SAMPLES  # 64x64 resample; 2x2 means of it give the 32x32 one.
HASH_BITS = 64

U64Array = npt.NDArray[np.uint64]
IntArray = npt.NDArray[np.intp]


def _dct_matrix(n: int, k: int = 8) -> FloatArray:
    """First `k` rows of the unnormalised DCT-II matrix of size n (scipy.fftpack's scale)."""
    i = np.arange(k)[:, None]
    j = np.arange(n)[None, :]
    return np.asarray(2.0 * np.cos(np.pi * i * (2 * j + 1) / (2 * n)), dtype=np.float32)


_D32 = _dct_matrix(32).astype(np.float64)
_D16 = _dct_matrix(_TILE_SAMPLES).astype(np.float64)


def _area_matrix(pixels: int, n_out: int) -> FloatArray:
    """(n_out, n_cells) weights: output bin j = area mean of the cells' pixels in its span."""
    n_cells = -(-pixels // CELL)
    edges = np.linspace(0.0, float(pixels), n_out + 1)
    starts = np.arange(n_cells, dtype=np.float64) * CELL
    ends = np.minimum(starts + CELL, pixels)
    lo = np.maximum(edges[:-1, None], starts[None, :])
    hi = np.minimum(edges[1:, None], ends[None, :])
    overlap = np.clip(hi - lo, 0.0, None)
    weights = overlap / (edges[1:] - edges[:-1])[:, None]
    return np.asarray(weights, dtype=np.float32)


@dataclass(frozen=True, slots=True)
class _Geometry:
    rows: FloatArray  # (64, hc)
    cols: FloatArray  # (wc, 64)
    # Tiles are bands of whole cells, each cell in the tile of its centre: where each band of
    # cell rows / columns starts and ends (a band may be empty on tiny frames).
    row_edges: npt.NDArray[np.intp]  # (GRID + 1,)
    col_edges: npt.NDArray[np.intp]
    # `rows` and `cols` as sparse weights: each output sample averages a few cells.
    row_idx: IntArray
    row_w: npt.NDArray[np.float64]
    col_idx: IntArray
    col_w: npt.NDArray[np.float64]


@lru_cache(maxsize=32)
def geometry(height: int, width: int) -> _Geometry:
    rows = _area_matrix(height, _SAMPLES)
    cols = np.ascontiguousarray(_area_matrix(width, _SAMPLES).T)
    hc, wc = -(-height // CELL), -(-width // CELL)
    cy = (np.arange(hc) * CELL + CELL / 2) * GRID // height
    cx = (np.arange(wc) * CELL + CELL / 2) * GRID // width
    ty, tx = np.clip(cy, 0, GRID - 1).astype(np.intp), np.clip(cx, 0, GRID - 1).astype(np.intp)
    row_edges = np.searchsorted(ty, np.arange(GRID + 1), side="left").astype(np.intp)
    col_edges = np.searchsorted(tx, np.arange(GRID + 1), side="left").astype(np.intp)
    for a in (rows, cols, row_edges, col_edges):
        a.setflags(write=False)
    row_idx, row_w = _sparse(rows)
    col_idx, col_w = _sparse(cols.T)
    return _Geometry(rows, cols, row_edges, col_edges, row_idx, row_w, col_idx, col_w)


def _sparse(m: FloatArray) -> tuple[IntArray, npt.NDArray[np.float64]]:
    """(n, k) column indices and weights of the non-zero entries of each row of `m` (padded
    with zero weights), k the most any row has."""
    nz = [np.flatnonzero(row) for row in m]
    k = max(1, max(len(z) for z in nz))
    idx = np.zeros((m.shape[0], k), dtype=np.intp)
    w = np.zeros((m.shape[0], k), dtype=np.float64)
    for i, z in enumerate(nz):
        idx[i, : len(z)] = z
        w[i, : len(z)] = m[i, z]
    idx.setflags(write=False)
    w.setflags(write=False)
    return idx, w


@dataclass(frozen=True, slots=True)
class FrameSignature:
    """What the deduplicator keeps of a frame: cell means and hashes."""

    width: int
    height: int
    cells: FloatArray
    # [0] is the global pHash, [1:] the tiles' in row-major order.
    hashes: U64Array
    # Median distance of the coefficients from the median that thresholds them, in luma
    # levels: when it is as small as the noise, most bits are decided by noise, not content
    # (flat regions, plain gradients).
    margin: FloatArray

    @property
    def global_hash(self) -> int:
        return int(self.hashes[0])


def compute_signature(cells: FloatArray, width: int, height: int) -> FrameSignature:
    """Global and per-tile pHashes of a frame from its luma cell means."""
    geo = geometry(height, width)
    s64 = kernels.resample(cells, geo.row_idx, geo.row_w, geo.col_idx, geo.col_w)
    hashes = np.empty(1 + GRID * GRID, dtype=np.uint64)
    margin = np.empty(1 + GRID * GRID, dtype=np.float32)
    kernels.phashes(s64, _D32, _D16, GRID, hashes, margin)
    return FrameSignature(
        width=width,
        height=height,
        cells=cells,
        hashes=hashes,
        margin=margin,
    )


def hamming(a: U64Array, b: U64Array) -> npt.NDArray[np.uint8]:
    """Bitwise Hamming distances of two arrays of 64-bit hashes."""
    out: npt.NDArray[np.uint8] = np.bitwise_count(a ^ b)
    return out


def phash_luma(luma: npt.NDArray[np.uint8]) -> int:
    """The 64-bit global pHash of a full-resolution luma plane (for tests and tools)."""
    from .frames import gray_cell_means

    h, w = luma.shape
    return compute_signature(gray_cell_means(luma), w, h).global_hash
