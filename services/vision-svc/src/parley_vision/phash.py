"""Perceptual hashes of a frame from its luma cell means, with numpy only.

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

from .frames import CELL, FloatArray

GRID = 4
"""Tiles per side."""
_TILE_SAMPLES = 16
_SAMPLES = GRID * _TILE_SAMPLES  # 64x64 resample; 2x2 means of it give the 32x32 one.
HASH_BITS = 64

U64Array = npt.NDArray[np.uint64]
IntArray = npt.NDArray[np.intp]
Bands = tuple[IntArray, IntArray, IntArray, IntArray]


def _dct_matrix(n: int, k: int = 8) -> FloatArray:
    """First `k` rows of the unnormalised DCT-II matrix of size n (scipy.fftpack's scale)."""
    i = np.arange(k)[:, None]
    j = np.arange(n)[None, :]
    return np.asarray(2.0 * np.cos(np.pi * i * (2 * j + 1) / (2 * n)), dtype=np.float32)


_D32 = _dct_matrix(32)
_D16 = _dct_matrix(_TILE_SAMPLES)
_D32T = np.ascontiguousarray(_D32.T)
_D16T = np.ascontiguousarray(_D16.T)
# White noise of standard deviation s in n x n samples gives unnormalised 2-D AC coefficients of
# standard deviation 2 * n * s: dividing by 2n expresses coefficients in luma levels.
_AC_SCALE = np.asarray([2.0 * 32] + [2.0 * _TILE_SAMPLES] * (GRID * GRID), dtype=np.float32)
# (32, 64) pairwise means: the 32x32 resample from the 64x64 one.
_HALVE = np.kron(np.eye(32, dtype=np.float32), np.full((1, 2), 0.5, dtype=np.float32))
_HALVE_T = np.ascontiguousarray(_HALVE.T)


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
    # Tile index (row-major) of every cell, by the cell's centre.
    labels: npt.NDArray[np.intp]
    # Tiles are bands of whole cells: where each band of cell rows / columns starts and ends.
    row_edges: npt.NDArray[np.intp]  # (GRID + 1,)
    col_edges: npt.NDArray[np.intp]

    # When every band has cells: (row starts, column starts, rows per band, columns per band).
    bands: Bands | None = None


@lru_cache(maxsize=32)
def geometry(height: int, width: int) -> _Geometry:
    rows = _area_matrix(height, _SAMPLES)
    cols = np.ascontiguousarray(_area_matrix(width, _SAMPLES).T)
    hc, wc = -(-height // CELL), -(-width // CELL)
    cy = (np.arange(hc) * CELL + CELL / 2) * GRID // height
    cx = (np.arange(wc) * CELL + CELL / 2) * GRID // width
    ty, tx = np.clip(cy, 0, GRID - 1).astype(np.intp), np.clip(cx, 0, GRID - 1).astype(np.intp)
    labels = (ty[:, None] * GRID + tx[None, :]).astype(np.intp)
    row_edges = np.searchsorted(ty, np.arange(GRID + 1), side="left").astype(np.intp)
    col_edges = np.searchsorted(tx, np.arange(GRID + 1), side="left").astype(np.intp)
    for a in (rows, cols, labels, row_edges, col_edges):
        a.setflags(write=False)
    rows_per, cols_per = np.diff(row_edges), np.diff(col_edges)
    full = bool(np.all(rows_per > 0) and np.all(cols_per > 0))
    bands = (row_edges[:-1], col_edges[:-1], rows_per, cols_per) if full else None
    return _Geometry(rows, cols, labels, row_edges, col_edges, bands)


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
    s64 = geo.rows @ cells @ geo.cols  # (64, 64) area means
    s32 = _HALVE @ s64 @ _HALVE_T
    tiles = s64.reshape(GRID, _TILE_SAMPLES, GRID, _TILE_SAMPLES).swapaxes(1, 2)
    coefs = np.empty((1 + GRID * GRID, 64), dtype=np.float32)
    coefs[0] = (_D32 @ s32 @ _D32T).ravel()
    coefs[1:] = (_D16 @ tiles @ _D16T).reshape(GRID * GRID, 64)
    mid = np.partition(coefs, (31, 32), axis=1)
    med = (mid[:, 31:32] + mid[:, 32:33]) * 0.5  # numpy.median of 64 values
    bits = np.packbits(coefs > med, axis=1)
    hashes = bits.view(">u8").ravel().astype(np.uint64)
    spread = np.partition(np.abs(coefs - med), (31, 32), axis=1)
    margin = ((spread[:, 31] + spread[:, 32]) * 0.5 / _AC_SCALE).astype(np.float32)
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
    from .frames import _inverse_counts, _luma_cell_sums, _row_block_sums

    h, w = luma.shape
    cells = _luma_cell_sums(_row_block_sums(np.ascontiguousarray(luma))) * _inverse_counts(h, w)
    return compute_signature(cells, w, h).global_hash
