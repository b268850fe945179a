"""FrameDecoder: every pixel format gives the same luma cells; bad frames get clear errors."""

from __future__ import annotations

import io

import numpy as np
import pytest
from parley_vision.frames import (
    FrameDecoder,
    FrameRejected,
    PixelFormat,
    RawFrame,
    error_reason,
)
from PIL import Image, UnidentifiedImageError
from vision_corpus import natural_image, rgb_to_i420

pytestmark = pytest.mark.unit


def _formats(rgb: np.ndarray) -> dict[PixelFormat, RawFrame]:
    h, w = rgb.shape[:2]
    i420, _ = rgb_to_i420(rgb)
    ysz, csz = w * h, (w // 2) * (h // 2)
    y = i420[:ysz]
    u, v = i420[ysz : ysz + csz], i420[ysz + csz :]
    uv = np.stack([np.frombuffer(u, np.uint8), np.frombuffer(v, np.uint8)], axis=1).tobytes()
    rgba = np.concatenate([rgb, np.full((h, w, 1), 255, np.uint8)], axis=2)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=95)
    return {
        PixelFormat.I420: RawFrame(PixelFormat.I420, w, h, i420),
        PixelFormat.NV12: RawFrame(PixelFormat.NV12, w, h, y + uv),
        PixelFormat.RGBA: RawFrame(PixelFormat.RGBA, w, h, rgba.tobytes()),
        PixelFormat.BGRA: RawFrame(PixelFormat.BGRA, w, h, rgba[..., [2, 1, 0, 3]].tobytes()),
        PixelFormat.RGB24: RawFrame(PixelFormat.RGB24, w, h, rgb.tobytes()),
        PixelFormat.JPEG: RawFrame(PixelFormat.JPEG, 0, 0, buf.getvalue()),
    }


def _reference_cells(rgb: np.ndarray) -> np.ndarray:
    luma = np.asarray(Image.fromarray(rgb).convert("L"), dtype=np.float64)
    h, w = luma.shape
    hc, wc = -(-h // 8), -(-w // 8)
    out = np.zeros((hc, wc))
    for i in range(hc):
        for j in range(wc):
            out[i, j] = luma[i * 8 : i * 8 + 8, j * 8 : j * 8 + 8].mean()
    return out


@pytest.mark.parametrize("size", [(640, 480), (1280, 720), (330, 186)])
def test_every_format_gives_the_same_luma_cells(size: tuple[int, int]) -> None:
    w, h = size
    rgb = natural_image(3, w, h)
    ref = _reference_cells(rgb)
    dec = FrameDecoder()
    for fmt, raw in _formats(rgb).items():
        layout = dec.inspect(raw)
        assert (layout.width, layout.height) == (w, h)
        cells = dec.luma_cells(layout)
        assert cells.shape == ref.shape, fmt
        err = np.abs(cells - ref)
        # Video-range rounding (I420/NV12) and JPEG q95 stay within a level or two.
        assert err.mean() < 1.0, (fmt, err.mean())
        assert err.max() < 6.0, (fmt, err.max())


def test_strided_planes_are_read_through_their_padding() -> None:
    w, h = 642, 362  # odd chroma sizes: 321x181
    rgb = natural_image(4, w, h)
    i420, _ = rgb_to_i420(rgb)
    cw, ch = w // 2, h // 2
    planes = [
        np.frombuffer(i420[: w * h], np.uint8).reshape(h, w),
        np.frombuffer(i420[w * h : w * h + cw * ch], np.uint8).reshape(ch, cw),
        np.frombuffer(i420[w * h + cw * ch :], np.uint8).reshape(ch, cw),
    ]
    strides = (704, 384, 352)
    padded = b"".join(
        np.pad(p, ((0, 0), (0, s - p.shape[1])), constant_values=7).tobytes()
        for p, s in zip(planes, strides, strict=True)
    )
    dec = FrameDecoder()
    tight = dec.luma_cells(dec.inspect(RawFrame(PixelFormat.I420, w, h, i420)))
    strided = dec.luma_cells(dec.inspect(RawFrame(PixelFormat.I420, w, h, padded, strides)))
    np.testing.assert_array_equal(tight, strided)
    # The last row need not be padded out to its stride.
    short = dec.inspect(RawFrame(PixelFormat.I420, w, h, padded[: -(352 - cw)], strides))
    np.testing.assert_array_equal(dec.luma_cells(short), tight)
    img, _ = dec.to_image(short, (321, 181))
    assert img.size == (321, 181)


@pytest.mark.parametrize(
    "raw, fragment",
    [
        (RawFrame(None, 640, 480, b"x"), "unknown or unspecified frame format"),
        (RawFrame(PixelFormat.I420, 0, 480, b""), "too small"),
        (RawFrame(PixelFormat.I420, -5, 480, b""), "too small"),
        (RawFrame(PixelFormat.I420, 640, 480, bytes(1000)), "truncated I420 frame"),
        (RawFrame(PixelFormat.I420, 640, 480, bytes(640 * 480 * 2)), "holds at most 460800"),
        (RawFrame(PixelFormat.I420, 640, 480, bytes(460800), (600, 320, 320)), "stride 600"),
        (RawFrame(PixelFormat.I420, 640, 480, bytes(460800), (640, 320)), "3 plane(s) but 2"),
        (RawFrame(PixelFormat.NV12, 640, 480, bytes(460799)), "truncated NV12"),
        (RawFrame(PixelFormat.RGBA, 640, 480, bytes(640 * 480 * 3)), "truncated RGBA"),
        (RawFrame(PixelFormat.RGB24, 640, 480, bytes(640 * 480 * 4)), "holds at most"),
        (RawFrame(PixelFormat.RGBA, 100_000, 100_000, b""), "above the limit"),
        (RawFrame(PixelFormat.JPEG, 0, 0, b"\xff\xd8 not really"),
         "frame data is not a decodable JPEG: no JPEG image found"),
        (RawFrame(PixelFormat.JPEG, 0, 0, bytes(100)), "not a decodable JPEG"),
    ],
)
def test_bad_frames_are_rejected_with_the_reason(raw: RawFrame, fragment: str) -> None:
    with pytest.raises(FrameRejected) as err:
        FrameDecoder().inspect(raw)
    assert fragment in err.value.message
    assert err.value.code.name == "INVALID_ARGUMENT"
    # Pillow's own text names its BytesIO (`<_io.BytesIO object at 0x...>`): not for callers.
    assert " at 0x" not in err.value.message and "BytesIO" not in err.value.message


def test_jpeg_errors_size_mismatch_truncation_and_bombs() -> None:
    rgb = natural_image(5, 320, 240)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=80)
    data = buf.getvalue()
    dec = FrameDecoder(max_pixels=1920 * 1080)
    with pytest.raises(FrameRejected, match="JPEG is 320x240 but the frame says 640x480"):
        dec.inspect(RawFrame(PixelFormat.JPEG, 640, 480, data))
    layout = dec.inspect(RawFrame(PixelFormat.JPEG, 0, 0, data[: len(data) // 2]))
    with pytest.raises(FrameRejected, match="not a decodable JPEG: image file is truncated"):
        dec.luma_cells(layout)
    # A tiny file declaring a huge picture is refused from its header, before decoding.
    big = io.BytesIO()
    Image.new("L", (4000, 4000)).save(big, "JPEG", quality=10)
    with pytest.raises(FrameRejected, match="above the limit"):
        dec.inspect(RawFrame(PixelFormat.JPEG, 0, 0, big.getvalue()))


def test_error_reasons_drop_object_reprs_and_stay_short() -> None:
    assert error_reason(OSError("broken data in <_io.BytesIO object at 0x7f5a14a143b0> here")) == (
        "broken data in here"
    )
    assert error_reason(UnidentifiedImageError("cannot identify image file <x at 0x1>")) == (
        "no JPEG image found in it (not a JPEG file, or its header is damaged)"
    )
    assert error_reason(OSError()) == "OSError"
    long = error_reason(ValueError("x" * 500))
    assert len(long) == 120 and long.endswith("...")


def test_images_for_encoding_keep_the_colours() -> None:
    w, h = 640, 360
    rgb = np.zeros((h, w, 3), np.uint8)
    rgb[:, : w // 2] = (200, 30, 40)
    rgb[:, w // 2 :] = (20, 160, 220)
    dec = FrameDecoder()
    for fmt, raw in _formats(rgb).items():
        img, luma = dec.to_image(dec.inspect(raw), (320, 180))
        out = np.asarray(img.convert("RGB"), dtype=np.int16)
        assert out.shape == (180, 320, 3), fmt
        assert np.abs(out[90, 40] - (200, 30, 40)).max() < 12, (fmt, out[90, 40])
        assert np.abs(out[90, 280] - (20, 160, 220)).max() < 12, (fmt, out[90, 280])
        assert luma.size == (320, 180)
