"""Is this frame worth sending again? Compared with the last KEPT frame, never the last seen one,
so a slow drift accumulates until it is caught instead of passing frame by frame forever.

Detectors, any one of which keeps the frame:

1. Global pHash Hamming distance above the tenant's threshold (seed: 10): a different picture.
2. A tile's pHash (4x4 grid) above the tile threshold: a region changed, e.g. a window opened.
   Hashes whose coefficients hug their median (flat regions, plain gradients) are skipped:
   their bits are decided by noise. On cameras a tile also needs changed cells (below), since
   a nod moves a tile's hash as much as a new object does.
3. Cell residuals: the mean luma of 8x8-pixel cells, photometrically aligned per tile to the
   kept frame, minus the kept frame's. This catches what a 64-bit hash cannot see: a typed
   character, a slide number, a cursor-sized dialog.

Why these thresholds (luma levels, 0..255 full range; a cell mean averages 64 pixels):

* Screens. Content is noise-free; codec noise on a cell mean stays around 1-2 levels. A typed
  glyph (20-40 ink pixels at contrast >= 150) moves the cell it falls in by >= 12 levels even
  split over four cells; a full stop at 18 px (about 2.7 ink pixels) by 10.8 in one cell, or a
  10.8 sum over the 2x2 cells it straddles. So a cell changes when its residual exceeds
  CELL_DELTA = 6, or a 2x2 window of cells when its summed residual exceeds WINDOW_DELTA = 8,
  and one changed cell is enough: any real pixel change on a screen is information. A screen
  flipping back and forth between two kept pictures (a blinking caret) is sent three times,
  then recognised as oscillating.
* Light. Flicker and auto-exposure multiply luma: each tile is scaled by the ratio of its mean
  to the kept frame's, within 0.8..1.25 (beyond that it is not flicker and stays a change).
* Cameras. Sensor noise of sigma 8 per pixel is sigma 1 in a cell mean. A pan is found by phase
  correlation of the cells and compensated (content it reveals at the edge does not count); a
  cell then counts when its aligned value lies more than CAMERA_DELTA = 12 levels (about 8
  sigma of the difference of two noisy cells) outside the range of the kept frame's 3x3 cell
  neighbourhood, and vice versa: no shift of up to 8 px explains it. Such cells must cover 1%
  of the frame (CAMERA_MIN_AREA: 64x48 px at VGA, 128x72 at 720p): a card held up counts, a
  blink or a moving mouth (0.2-0.4%) does not.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import numpy.typing as npt

from . import kernels
from .frames import FloatArray
from .phash import GRID, FrameSignature, IntArray, compute_signature, geometry, hamming

CELL_DELTA = 6.0
WINDOW_DELTA = 8.0
# Every cell within this of the kept frame: a duplicate, no hashing needed (a third of
# CELL_DELTA; codec and sensor noise on cell means stays around 1-2 levels).
NEAR_EXACT = 2.0
CAMERA_DELTA = 12.0
CAMERA_MIN_AREA = 0.01
CAMERA_MIN_CELLS = 4
# On cameras a tile's hash counts only with changed cells over this share of the tile.
CAMERA_MIN_TILE_AREA = 0.1
# Largest camera pan compensated, as a fraction of each side (larger moves are new pictures).
MAX_SHIFT = 0.125
# A hash whose coefficients sit this close (luma levels) to their median has its bits decided
# by noise: skip it.
MIN_HASH_MARGIN = 1.0
GAIN_BOUNDS = (0.8, 1.25)
OFFSET_BOUND = 24.0
# Tiles darker than this (mean luma) are aligned by an offset, not a gain.
MIN_MEAN_FOR_GAIN = 16.0
# A screen that flips back to the frame kept before the last one, again, within this long of
# last showing it, is oscillating (a blinking caret, a spinner): it is not sent again.
OSCILLATION_WINDOW_US = 1_000_000

BoolArray = npt.NDArray[np.bool_]


class ContentKind(enum.Enum):
    """What a track shows; it decides how the cell detector tolerates noise and motion."""

    SCREEN = "screen"
    CAMERA = "camera"


@dataclass(frozen=True, slots=True)
class ChangeReport:
    changed: bool
    reason: str
    hamming: int
    changed_tiles: int
    changed_cells: int


@dataclass(slots=True)
class _Kept:
    sig: FrameSignature
    last_seen_us: int
    # Camera comparisons, computed on first use: the 3x3 envelope of the cells and their
    # windowed spectrum (for pan estimation).
    envelope: tuple[FloatArray, FloatArray] | None = None
    spectrum: npt.NDArray[np.complex128] | None = None


class FrameDeduplicator:
    """Compares frames with the last kept one.

    Args:
        kind: SCREEN (noise-free content; any changed cell counts) or CAMERA (tolerates
            noise, flicker, pans and small motion).
        hamming_threshold: global pHash distance above which a frame is different.
        tile_hamming_threshold: per-tile pHash distance above which a region changed (on
            cameras only together with changed cells in that tile: a nod moves a tile's hash
            as much as a new object does).
    """

    def __init__(
        self, *, kind: ContentKind, hamming_threshold: int, tile_hamming_threshold: int
    ) -> None:
        self.kind = kind
        self.hamming_threshold = hamming_threshold
        self.tile_hamming_threshold = tile_hamming_threshold
        self._ref: _Kept | None = None
        self._prev: _Kept | None = None
        self._alternations = 0

    @property
    def reference(self) -> FrameSignature | None:
        return self._ref.sig if self._ref is not None else None

    def accept(self, signature: FrameSignature, t_us: int = 0) -> None:
        """Make `signature` the reference (the frame was kept at stream time `t_us`)."""
        if self._prev is not None and _near_exact(signature, self._prev.sig):
            self._alternations += 1
        else:
            self._alternations = 0
        self._prev = self._ref
        self._ref = _Kept(signature, t_us)

    def reset(self) -> None:
        self._ref = self._prev = None
        self._alternations = 0

    def check(
        self, cells: FloatArray, width: int, height: int, t_us: int = 0
    ) -> tuple[ChangeReport, FrameSignature | None]:
        """Compare a frame's cells with the reference; hashes are computed only when needed.

        A frame whose every cell is within NEAR_EXACT levels of the kept frame is a duplicate
        whatever its hashes say (a hash can only move on such a frame through bits decided by
        noise), so the common case of a static screen costs one subtraction.
        """
        ref = self._ref
        if ref is not None and (ref.sig.width, ref.sig.height) == (width, height):
            delta = kernels.max_abs_diff(cells, ref.sig.cells)
            if delta <= NEAR_EXACT:
                ref.last_seen_us = t_us
                reason = f"duplicate (near-exact, max cell delta {delta:.1f})"
                return ChangeReport(False, reason, 0, 0, 0), None
        sig = compute_signature(cells, width, height)
        report = self.compare(sig)
        prev = self._prev
        if (
            report.changed
            and self.kind is ContentKind.SCREEN
            and prev is not None
            and self._alternations > 0
            and t_us - prev.last_seen_us <= OSCILLATION_WINDOW_US
            and _near_exact(sig, prev.sig)
        ):
            prev.last_seen_us = t_us
            reason = "duplicate (oscillating back to an earlier kept frame, e.g. a caret blink)"
            return ChangeReport(False, reason, report.hamming, 0, 0), sig
        return report, sig

    def compare(self, sig: FrameSignature) -> ChangeReport:
        """The full comparison of a signature with the reference."""
        ref = self.reference
        if ref is None:
            return ChangeReport(True, "first frame", 0, GRID * GRID, sig.cells.size)
        if (ref.width, ref.height) != (sig.width, sig.height):
            return ChangeReport(
                True,
                f"resolution changed {ref.width}x{ref.height} -> {sig.width}x{sig.height}",
                0,
                GRID * GRID,
                sig.cells.size,
            )
        dist = hamming(ref.hashes, sig.hashes).astype(np.int64)
        textured = (ref.margin >= MIN_HASH_MARGIN) & (sig.margin >= MIN_HASH_MARGIN)
        global_dist = int(dist[0])
        hash_hits = (dist[1:] > self.tile_hamming_threshold) & textured[1:]

        changed_cells, per_tile = self._changed_cells(ref, sig)
        if self.kind is ContentKind.SCREEN:
            tile_hits = hash_hits
            cells_hit = changed_cells > 0
        else:
            tile_cells = sig.cells.size / (GRID * GRID)
            min_cells = max(CAMERA_MIN_CELLS, CAMERA_MIN_TILE_AREA * tile_cells)
            tile_hits = hash_hits & (per_tile >= min_cells)
            cells_hit = changed_cells >= max(CAMERA_MIN_CELLS, CAMERA_MIN_AREA * sig.cells.size)
        n_tiles = int(np.count_nonzero(tile_hits | (per_tile > 0)))

        if textured[0] and global_dist > self.hamming_threshold:
            reason = f"global hamming {global_dist} > {self.hamming_threshold}"
            return ChangeReport(True, reason, global_dist, n_tiles, changed_cells)
        if tile_hits.any():
            t = int(np.argmax(np.where(tile_hits, dist[1:], -1)))
            reason = (
                f"tile ({t % GRID},{t // GRID}) hamming {int(dist[1 + t])} > "
                f"{self.tile_hamming_threshold}"
            )
            if self.kind is ContentKind.CAMERA:
                reason += f" with {int(per_tile[t])} changed cells"
            return ChangeReport(True, reason, global_dist, n_tiles, changed_cells)
        if cells_hit:
            t = int(per_tile.argmax())
            reason = f"{changed_cells} cell(s) changed, most in tile ({t % GRID},{t // GRID})"
            return ChangeReport(True, reason, global_dist, n_tiles, changed_cells)
        reason = f"duplicate (hamming {global_dist} <= {self.hamming_threshold}"
        reason += f", {changed_cells} changed cell(s))" if changed_cells else ", no cell change)"
        return ChangeReport(False, reason, global_dist, 0, changed_cells)

    # ----------------------------------------------------------------------------------------

    def _changed_cells(
        self, ref: FrameSignature, sig: FrameSignature
    ) -> tuple[int, npt.NDArray[np.int64]]:
        """How many cells changed beyond noise and flicker (on cameras: and beyond pans and
        small motion), and how many in each tile.

        Alignment and neighbourhoods only ever shrink a residual, so when the raw difference
        is below every threshold nothing changed and they are skipped.
        """
        geo = geometry(sig.height, sig.width)
        per_tile = np.zeros(GRID * GRID, dtype=np.int64)
        raw_delta = kernels.max_abs_diff(sig.cells, ref.cells)
        if self.kind is ContentKind.SCREEN:
            if raw_delta <= CELL_DELTA and 4 * raw_delta <= WINDOW_DELTA:
                return 0, per_tile
            gain, offset = _gains(ref.cells, sig.cells, geo.row_edges, geo.col_edges)
            mask = np.empty(sig.cells.shape, dtype=np.bool_)
            n = kernels.screen_changes(
                ref.cells, sig.cells, geo.row_edges, geo.col_edges, gain, offset,
                CELL_DELTA, WINDOW_DELTA, mask, per_tile,
            )
            return int(n), per_tile
        if raw_delta <= CAMERA_DELTA:
            return 0, per_tile
        kept = self._ref
        assert kept is not None
        if kept.envelope is None:
            kept.envelope = kernels.envelope(ref.cells)
        n = _unexplained(
            ref.cells, sig.cells, geo.row_edges, geo.col_edges, kept.envelope, per_tile
        )
        # Fewer unexplained cells than any camera rule needs (a blink, a mouth): no pan to find.
        least = max(CAMERA_MIN_CELLS, CAMERA_MIN_TILE_AREA * sig.cells.size / (GRID * GRID))
        if n < least:
            return n, per_tile
        # Maybe the camera panned. Phase correlation ignores brightness: find the pan, then
        # align the light on what both frames show. Content a pan reveals at an edge is not
        # counted (a pan big enough to matter moves the global hash).
        if kept.spectrum is None:
            kept.spectrum = _spectrum(ref.cells)
        dy, dx = _global_shift(kept.spectrum, sig.cells)
        if dy == 0 and dx == 0:
            return n, per_tile
        hc, wc = sig.cells.shape
        r0, c0 = max(dy, 0), max(dx, 0)
        r1, c1 = hc + min(dy, 0), wc + min(dx, 0)
        old = ref.cells[max(-dy, 0) : hc + min(-dy, 0), max(-dx, 0) : wc + min(-dx, 0)]
        cur = sig.cells[r0:r1, c0:c1]
        # The tiles keep their identity: their cell ranges, clipped to the overlap.
        rows = np.clip(geo.row_edges - r0, 0, r1 - r0)
        cols = np.clip(geo.col_edges - c0, 0, c1 - c0)
        n = _unexplained(old, cur, rows, cols, kernels.envelope(old), per_tile)
        return n, per_tile


def is_still(kind: ContentKind, prev: FloatArray, cur: FloatArray, width: int, height: int) -> bool:
    """Has the picture stopped moving between two consecutive frames? On screens: every cell
    within NEAR_EXACT. On cameras: no change by the camera rules (noise, flicker and sway
    allowed; fewer unexplained cells than 1% of the frame)."""
    if prev.shape != cur.shape:
        return False
    delta = kernels.max_abs_diff(cur, prev)
    if kind is ContentKind.SCREEN:
        return delta <= NEAR_EXACT
    if delta <= CAMERA_DELTA:
        return True
    geo = geometry(height, width)
    per_tile = np.zeros(GRID * GRID, dtype=np.int64)
    n = _unexplained(prev, cur, geo.row_edges, geo.col_edges, kernels.envelope(prev), per_tile)
    return n < max(CAMERA_MIN_CELLS, CAMERA_MIN_AREA * cur.size)


def _gains(
    old: FloatArray, cur: FloatArray, rows: IntArray, cols: IntArray
) -> tuple[FloatArray, FloatArray]:
    """Per-tile light alignment of `cur` onto `old` (see kernels.tile_gains)."""
    gain: FloatArray
    offset: FloatArray
    gain, offset = kernels.tile_gains(
        old, cur, rows, cols, MIN_MEAN_FOR_GAIN, GAIN_BOUNDS[0], GAIN_BOUNDS[1], OFFSET_BOUND
    )
    return gain, offset


def _unexplained(
    old: FloatArray,
    cur: FloatArray,
    rows: IntArray,
    cols: IntArray,
    old_envelope: tuple[FloatArray, FloatArray],
    per_tile: npt.NDArray[np.int64],
) -> int:
    """Cells of `cur` (light-aligned) outside `old`'s 3x3 range by CAMERA_DELTA, or vice
    versa: what no shift of up to one cell explains. Fills `per_tile`; returns the count."""
    gain, offset = _gains(old, cur, rows, cols)
    mask = np.empty(cur.shape, dtype=np.bool_)
    n = kernels.unexplained(
        old, cur, rows, cols, old_envelope[0], old_envelope[1], gain, offset,
        CAMERA_DELTA, mask, per_tile,
    )
    return int(n)


def _near_exact(a: FrameSignature, b: FrameSignature) -> bool:
    return a.cells.shape == b.cells.shape and kernels.max_abs_diff(a.cells, b.cells) <= NEAR_EXACT


@lru_cache(maxsize=16)
def _hann(h: int, w: int) -> FloatArray:
    win = np.outer(np.hanning(h), np.hanning(w)).astype(np.float32)
    win.setflags(write=False)
    return win


def _spectrum(cells: FloatArray) -> npt.NDArray[np.complex128]:
    h, w = cells.shape
    out: npt.NDArray[np.complex128] = np.fft.rfft2((cells - cells.mean()) * _hann(h, w))
    return out


def _global_shift(ref_spectrum: npt.NDArray[np.complex128], cur: FloatArray) -> tuple[int, int]:
    """Whole-cell translation (dy, dx) with cur[y, x] ~ ref[y - dy, x - dx], by phase
    correlation; (0, 0) when there is no clear single peak or it is beyond MAX_SHIFT."""
    h, w = cur.shape
    if h < 8 or w < 8:
        return 0, 0
    cross = _spectrum(cur) * np.conj(ref_spectrum)
    cross /= np.maximum(np.abs(cross), 1e-6)
    corr = np.fft.irfft2(cross, s=(h, w))
    peak = int(np.argmax(corr))
    py, px = divmod(peak, w)
    # A real translation gives one sharp peak; noise and flicker give a flat surface.
    if corr.flat[peak] < 0.15:
        return 0, 0
    dy = py - h if py > h // 2 else py
    dx = px - w if px > w // 2 else px
    if abs(dy) > MAX_SHIFT * h or abs(dx) > MAX_SHIFT * w:
        return 0, 0
    return int(dy), int(dx)
