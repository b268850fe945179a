"""Raw video frames: validation, luma cell means, and images for encoding.

Frames arrive as LiveKit delivers them (usually I420, planes with row strides) or already
encoded (JPEG). Everything the deduplicator needs is the mean luma of every 8x8 pixel cell,
computed straight from the luma plane with integer numpy adds (no RGB conversion, no PIL). For
packed RGB formats the cell means of each channel are summed first and weighted afterwards,
which is exact because the block mean is linear.

Only kept frames are turned into an image (resized first, in YCbCr where possible) for JPEG
encoding.
"""

from __future__ import annotations

import enum
import io
import re
import warnings
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import numpy.typing as npt
from parley_runtime.errors import InvalidArgument
from PIL import Image, UnidentifiedImageError

from . import kernels

CELL = kernels.CELL
"""Side in pixels of the square cells whose mean luma the change detector compares.

8 px keeps the cost at one pass of integer adds over the luma plane, and is small enough that
a typed glyph (7x10 px at 12 px font) covers most of one cell.
"""

MIN_SIDE = 16

# BT.601 luma weights, as PIL's "L" conversion and imagehash use them.
_LUMA_WEIGHTS = (0.299, 0.587, 0.114)
# Video-range (16..235) luma to full range, so thresholds mean the same for every format.
_VIDEO_RANGE_SCALE = 255.0 / 219.0

_M16 = np.uint64(0xFFFF)

FloatArray = npt.NDArray[np.float32]
U8Array = npt.NDArray[np.uint8]


class PixelFormat(enum.Enum):
    I420 = "I420"
    NV12 = "NV12"
    RGBA = "RGBA"
    BGRA = "BGRA"
    RGB24 = "RGB24"
    JPEG = "JPEG"


class FrameRejected(InvalidArgument):
    """A frame that cannot be processed (size, strides, data, format); the stream continues."""


# Pillow's messages name the stream it read from (`<_io.BytesIO object at 0x7f...>`): noise to
# the caller, and an address of this process.
_OBJECT_REPR_RE = re.compile(r"\s*<[^<>]*\bat 0x[0-9a-fA-F]+>")
_MAX_REASON_LEN = 120


def error_reason(exc: BaseException) -> str:
    """A short, caller-safe reason for a decoder or encoder failure: Pillow's message without
    object reprs, whitespace collapsed, at most _MAX_REASON_LEN characters."""
    if isinstance(exc, UnidentifiedImageError):
        # Its only content is "cannot identify image file <object repr>".
        return "no JPEG image found in it (not a JPEG file, or its header is damaged)"
    reason = " ".join(_OBJECT_REPR_RE.sub("", str(exc)).split())
    if not reason:
        return type(exc).__name__
    if len(reason) > _MAX_REASON_LEN:
        reason = reason[: _MAX_REASON_LEN - 3] + "..."
    return reason


def _not_a_jpeg(exc: BaseException) -> FrameRejected:
    return FrameRejected(
        f"frame data is not a decodable JPEG: {error_reason(exc)}; send a complete JPEG file "
        "or raw pixels in another FrameFormat"
    )


@dataclass(frozen=True, slots=True)
class RawFrame:
    """One frame as received. `strides` are row strides in bytes per plane (empty: tight)."""

    format: PixelFormat | None
    width: int
    height: int
    data: bytes
    strides: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class FrameLayout:
    """A validated frame: where its planes are. Cheap to build; no pixel is read."""

    format: PixelFormat
    width: int
    height: int
    data: bytes
    strides: tuple[int, ...]
    offsets: tuple[int, ...]

    def plane(self, index: int, rows: int, row_bytes: int) -> U8Array:
        """A (rows, row_bytes) uint8 view of plane `index` (no copy)."""
        base = np.frombuffer(self.data, dtype=np.uint8)
        stride = self.strides[index]
        start = self.offsets[index]
        end = start + stride * (rows - 1) + row_bytes
        flat = base[start:end]
        return np.lib.stride_tricks.as_strided(
            flat, shape=(rows, row_bytes), strides=(stride, 1), writeable=False
        )


    def pitched(self, index: int, rows: int, row_bytes: int) -> U8Array:
        """Plane `index` as a C-contiguous (rows, stride) array whose first `row_bytes` columns
        are the samples: a view when the buffer holds whole strides for every row (planes
        followed by others always do), else a tight copy."""
        stride = self.strides[index]
        start = self.offsets[index]
        if start + stride * rows <= len(self.data):
            base = np.frombuffer(self.data, dtype=np.uint8, count=stride * rows, offset=start)
            return base.reshape(rows, stride)
        return np.ascontiguousarray(self.plane(index, rows, row_bytes))


def _chroma(n: int) -> int:
    return (n + 1) // 2


class FrameDecoder:
    """Validates raw frames and computes their luma cell means.

    Args:
        max_pixels: frames with more pixels are rejected (they would cost more to hash than a
            model could use, and bound the memory one message can pin).
    """

    def __init__(self, *, max_pixels: int = 3840 * 2160) -> None:
        self.max_pixels = max_pixels

    # ----------------------------------------------------------------------------------------
    # Validation

    def inspect(self, frame: RawFrame) -> FrameLayout:
        """Check sizes, strides and data length; raise FrameRejected with the reason."""
        if frame.format is None:
            raise FrameRejected(
                "unknown or unspecified frame format: send I420, NV12, RGBA, BGRA, RGB24 or JPEG"
            )
        if frame.format is PixelFormat.JPEG:
            return self._inspect_jpeg(frame)
        w, h = frame.width, frame.height
        self._check_size(w, h)
        fmt = frame.format
        cw, ch = _chroma(w), _chroma(h)
        # (rows, row bytes) of each plane.
        planes: tuple[tuple[int, int], ...]
        if fmt is PixelFormat.I420:
            planes = ((h, w), (ch, cw), (ch, cw))
        elif fmt is PixelFormat.NV12:
            planes = ((h, w), (ch, 2 * cw))
        elif fmt is PixelFormat.RGB24:
            planes = ((h, 3 * w),)
        else:
            planes = ((h, 4 * w),)
        strides = frame.strides or tuple(row for _, row in planes)
        if len(strides) != len(planes):
            raise FrameRejected(
                f"{fmt.value} has {len(planes)} plane(s) but {len(strides)} strides were given"
            )
        offsets: list[int] = []
        offset = 0
        for i, ((rows, row_bytes), stride) in enumerate(zip(planes, strides, strict=True)):
            if stride < row_bytes:
                raise FrameRejected(
                    f"{fmt.value} {w}x{h}: stride {stride} of plane {i} is shorter than its "
                    f"{row_bytes}-byte rows"
                )
            offsets.append(offset)
            offset += stride * rows
        # The last row of the last plane need not be padded to its stride.
        needed = offsets[-1] + strides[-1] * (planes[-1][0] - 1) + planes[-1][1]
        size = len(frame.data)
        stride_txt = "/".join(str(s) for s in strides)
        if size < needed:
            raise FrameRejected(
                f"truncated {fmt.value} frame: {w}x{h} with strides {stride_txt} needs "
                f"{needed} bytes, got {size}"
            )
        if size > offset:
            raise FrameRejected(
                f"{fmt.value} frame {w}x{h} with strides {stride_txt} holds at most {offset} "
                f"bytes, got {size}: wrong format, size or strides?"
            )
        return FrameLayout(fmt, w, h, frame.data, tuple(strides), tuple(offsets))

    def _check_size(self, w: int, h: int) -> None:
        if w < MIN_SIDE or h < MIN_SIDE:
            raise FrameRejected(f"frame {w}x{h} is too small: width and height must be >= 16")
        if w * h > self.max_pixels:
            raise FrameRejected(
                f"frame {w}x{h} has {w * h} pixels, above the limit of {self.max_pixels}"
            )

    def _inspect_jpeg(self, frame: RawFrame) -> FrameLayout:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                img = Image.open(io.BytesIO(frame.data), formats=("JPEG",))
        except Exception as exc:  # noqa: BLE001 - any decoder failure is a bad frame
            raise _not_a_jpeg(exc) from None
        w, h = img.size
        img.close()
        if (frame.width or frame.height) and (frame.width, frame.height) != (w, h):
            raise FrameRejected(
                f"JPEG is {w}x{h} but the frame says {frame.width}x{frame.height}"
            )
        self._check_size(w, h)
        return FrameLayout(PixelFormat.JPEG, w, h, frame.data, (), ())

    # ----------------------------------------------------------------------------------------
    # Luma cell means

    def luma_cells(self, layout: FrameLayout) -> FloatArray:
        """Mean full-range luma (0..255) of every CELLxCELL block, float32 (ceil(h/8), ceil(w/8)).

        Edge cells of sizes that are not multiples of 8 average the pixels they have.
        """
        w, h, fmt = layout.width, layout.height, layout.format
        if fmt is PixelFormat.I420 or fmt is PixelFormat.NV12:
            # Video range (Y 16..235) to full range, on cells rather than pixels.
            scale = _VIDEO_RANGE_SCALE
            return _cell_means(layout.pitched(0, h, w), w, scale, -16.0 * scale)
        if fmt is PixelFormat.RGBA or fmt is PixelFormat.BGRA:
            rows = _row_block_sums(layout.plane(0, h, 4 * w))
            order = (0, 1, 2) if fmt is PixelFormat.RGBA else (2, 1, 0)
            return _rgba_cell_luma(rows, w, order) * _inverse_counts(h, w)
        if fmt is PixelFormat.RGB24:
            rows = _row_block_sums(layout.plane(0, h, 3 * w))
            return _rgb24_cell_luma(rows, w) * _inverse_counts(h, w)
        return self._jpeg_cells(layout)

    def _jpeg_cells(self, layout: FrameLayout) -> FloatArray:
        try:
            with Image.open(io.BytesIO(layout.data), formats=("JPEG",)) as img:
                # Decode straight to grayscale: libjpeg skips the colour conversion.
                img.draft("L", img.size)
                gray = img.convert("L")
        except Exception as exc:  # noqa: BLE001 - a truncated/corrupt JPEG is a bad frame
            raise _not_a_jpeg(exc) from None
        plane = np.asarray(gray)
        h, w = plane.shape
        if (w, h) != (layout.width, layout.height):
            raise FrameRejected(
                f"JPEG decoded to {w}x{h}, header said {layout.width}x{layout.height}"
            )
        return gray_cell_means(plane)

    # ----------------------------------------------------------------------------------------
    # Images for encoding (kept frames only)

    def to_image(
        self, layout: FrameLayout, size: tuple[int, int]
    ) -> tuple[Image.Image, Image.Image]:
        """The frame resized to `size`, ready for JPEG encoding, and its luma at that size.

        I420/NV12 are resized plane by plane and stay YCbCr (JPEG's own colour space), so no
        full-resolution RGB image is ever built.
        """
        w, h, fmt = layout.width, layout.height, layout.format
        resample = Image.Resampling.BILINEAR
        if fmt is PixelFormat.I420 or fmt is PixelFormat.NV12:
            y = _gray(layout.plane(0, h, w)).resize(size, resample, reducing_gap=2.0)
            cw, ch = _chroma(w), _chroma(h)
            if fmt is PixelFormat.I420:
                u_plane = layout.plane(1, ch, cw)
                v_plane = layout.plane(2, ch, cw)
            else:
                uv = layout.plane(1, ch, 2 * cw)
                u_plane = np.ascontiguousarray(uv[:, 0::2])
                v_plane = np.ascontiguousarray(uv[:, 1::2])
            u = _gray(u_plane).resize(size, resample, reducing_gap=2.0)
            v = _gray(v_plane).resize(size, resample, reducing_gap=2.0)
            # Video range to JPEG's full range (JFIF uses the same BT.601 matrix).
            y = y.point(_Y_LUT)
            u = u.point(_C_LUT)
            v = v.point(_C_LUT)
            return Image.merge("YCbCr", (y, u, v)), y
        rgb: Image.Image
        if fmt is PixelFormat.JPEG:
            try:
                with Image.open(io.BytesIO(layout.data), formats=("JPEG",)) as img:
                    img.draft("RGB", size)
                    rgb = img.convert("RGB")
            except Exception as exc:  # noqa: BLE001
                raise _not_a_jpeg(exc) from None
        else:
            mode, raw = {
                PixelFormat.RGBA: ("RGBA", "RGBA"),
                PixelFormat.BGRA: ("RGBA", "BGRA"),
                PixelFormat.RGB24: ("RGB", "RGB"),
            }[fmt]
            bpp = 3 if fmt is PixelFormat.RGB24 else 4
            plane = np.ascontiguousarray(layout.plane(0, h, bpp * w))
            packed = Image.frombuffer(mode, (w, h), plane, "raw", raw, 0, 1)
            rgb = packed.convert("RGB") if mode != "RGB" else packed
        rgb = rgb.resize(size, resample, reducing_gap=2.0)
        return rgb, rgb.convert("L")


_Y_LUT = [min(255, max(0, round((i - 16) * 255 / 219))) for i in range(256)]
_C_LUT = [min(255, max(0, round((i - 128) * 255 / 224 + 128))) for i in range(256)]


def _cell_means(plane: U8Array, w: int, scale: float, bias: float) -> FloatArray:
    """scale * the CELLxCELL block means of the first `w` columns of a C-contiguous plane
    + bias (kernels.cell_means)."""
    h = plane.shape[0]
    out = np.empty((-(-h // CELL), -(-w // CELL)), dtype=np.float32)
    kernels.cell_means(plane, w, scale, bias, out)
    return out


def gray_cell_means(plane: U8Array) -> FloatArray:
    """Mean luma of every CELLxCELL block of a full-range 8-bit grey plane."""
    return _cell_means(np.ascontiguousarray(plane), plane.shape[1], 1.0, 0.0)


def _gray(plane: U8Array) -> Image.Image:
    """An "L" image of a plane view (copied only when its rows are padded)."""
    return Image.fromarray(np.ascontiguousarray(plane), "L")


# --------------------------------------------------------------------------------------------
# Integer block sums


def _row_block_sums(plane: U8Array) -> npt.NDArray[np.uint16]:
    """Sums of each CELL-row band: (ceil(rows/8), row_bytes) uint16, at most 8*255 each."""
    rows, row_bytes = plane.shape
    full = rows // CELL * CELL
    bands = plane[:full].reshape(full // CELL, CELL, row_bytes)
    acc = np.add(bands[:, 0], bands[:, 1], dtype=np.uint16)
    for i in range(2, CELL):
        np.add(acc, bands[:, i], out=acc)
    if full < rows:
        tail = plane[full:].sum(axis=0, dtype=np.uint16)[None, :]
        acc = np.concatenate([acc, tail]) if full else tail
    return acc


def _rgba_cell_luma(
    rows: npt.NDArray[np.uint16], w: int, order: tuple[int, int, int]
) -> FloatArray:
    """Band sums of RGBA/BGRA rows to weighted luma cell sums."""
    hb = rows.shape[0]
    # One uint64 word = one pixel's four uint16 channel lanes.
    px = np.ascontiguousarray(rows).view(np.uint64).reshape(hb, w)
    full = w // CELL * CELL
    cells = np.empty((hb, -(-w // CELL)), dtype=np.uint64)
    if full:
        g = px[:, :full].reshape(hb, full // CELL, CELL)
        s = g[:, :, 0::2] + g[:, :, 1::2]
        s = s[:, :, 0::2] + s[:, :, 1::2]
        cells[:, : full // CELL] = s[:, :, 0] + s[:, :, 1]  # lanes <= 8 * 2040
    if full < w:
        cells[:, -1] = px[:, full:].sum(axis=1, dtype=np.uint64)
    lanes = [((cells >> np.uint64(16 * i)) & _M16).astype(np.float32) for i in range(3)]
    r, g_, b = lanes[order[0]], lanes[order[1]], lanes[order[2]]
    return np.asarray(
        _LUMA_WEIGHTS[0] * r + _LUMA_WEIGHTS[1] * g_ + _LUMA_WEIGHTS[2] * b, dtype=np.float32
    )


def _rgb24_cell_luma(rows: npt.NDArray[np.uint16], w: int) -> FloatArray:
    hb = rows.shape[0]
    px = rows.reshape(hb, w, 3).astype(np.float32)
    luma = px @ np.asarray(_LUMA_WEIGHTS, dtype=np.float32)
    full = w // CELL * CELL
    out = np.empty((hb, -(-w // CELL)), dtype=np.float32)
    if full:
        out[:, : full // CELL] = luma[:, :full].reshape(hb, full // CELL, CELL).sum(axis=2)
    if full < w:
        out[:, -1] = luma[:, full:].sum(axis=1)
    return out


@lru_cache(maxsize=64)
def _inverse_counts(h: int, w: int, scale: float = 1.0) -> FloatArray:
    """scale / (pixels per cell), handling partial edge cells."""
    rows = np.full(-(-h // CELL), CELL, dtype=np.float32)
    cols = np.full(-(-w // CELL), CELL, dtype=np.float32)
    if h % CELL:
        rows[-1] = h % CELL
    if w % CELL:
        cols[-1] = w % CELL
    inv = (scale / np.outer(rows, cols)).astype(np.float32)
    inv.setflags(write=False)
    return inv
