"""FrameDeduplicator: small real changes are caught, noise, flicker and motion are not."""

from __future__ import annotations

import numpy as np
import pytest
from parley_vision.dedup import ContentKind, FrameDeduplicator
from parley_vision.frames import FrameDecoder, PixelFormat, RawFrame
from parley_vision.phash import compute_signature
from PIL import Image, ImageDraw
from vision_corpus import _document, font, natural_image, rgb_to_i420

pytestmark = pytest.mark.unit

DEC = FrameDecoder()


def cells(rgb: np.ndarray, noise: np.ndarray | None = None) -> np.ndarray:
    h, w = rgb.shape[:2]
    data, _ = rgb_to_i420(rgb, noise)
    return DEC.luma_cells(DEC.inspect(RawFrame(PixelFormat.I420, w, h, data)))


def dedup(kind: ContentKind, ref: np.ndarray) -> FrameDeduplicator:
    d = FrameDeduplicator(kind=kind, hamming_threshold=10, tile_hamming_threshold=14)
    h, w = ref.shape[0] * 8, ref.shape[1] * 8
    d.accept(compute_signature(ref, w, h))
    return d


def page() -> Image.Image:
    return _document(5).crop((0, 0, 1280, 720))


@pytest.mark.parametrize("text", ["x", ".", ",", "Slide 13", "i"])
def test_a_single_typed_character_on_a_screen_is_a_change(text: str) -> None:
    base = page()
    edited = base.copy()
    # A blank spot of the page; x = 1000 + 7 puts a full stop across a cell border.
    ImageDraw.Draw(edited).text((1007, 700), text, font=font(18), fill=(0, 0, 0))
    d = dedup(ContentKind.SCREEN, cells(np.asarray(base)))
    report, _ = d.check(cells(np.asarray(edited)), 1280, 720)
    assert report.changed, report
    assert report.changed_tiles >= 1
    # ...which a 64-bit global hash does not see.
    assert report.hamming <= 10


def test_cursor_sized_dialog_is_a_change_and_codec_noise_is_not() -> None:
    rng = np.random.default_rng(1)
    base = np.asarray(page())
    d = dedup(ContentKind.SCREEN, cells(base))
    for _ in range(5):
        noise = np.rint(rng.normal(0, 2.0, base.shape[:2])).astype(np.int16)
        report, _ = d.check(cells(base, noise), 1280, 720)
        assert not report.changed, report
    dialog = page()
    ImageDraw.Draw(dialog).rectangle([700, 300, 744, 328], fill=(245, 245, 245),
                                     outline=(60, 60, 60))
    report, _ = d.check(cells(np.asarray(dialog)), 1280, 720)
    assert report.changed and "cell" in report.reason


def _room_with(rng: np.random.Generator, card: bool = False, dx: int = 0, gain: float = 1.0,
               sigma: float = 5.0) -> np.ndarray:
    scene = Image.fromarray(natural_image(77, 700, 480)).crop((30 + dx, 0, 670 + dx, 480))
    if card:
        ImageDraw.Draw(scene).rectangle([380, 160, 560, 290], fill=(245, 245, 240))
    arr = np.asarray(scene).astype(np.float32) * gain
    arr += rng.normal(0, sigma, arr.shape[:2])[..., None]
    return np.clip(arr, 0, 255).astype(np.uint8)


def test_camera_ignores_noise_flicker_and_small_pans_but_sees_an_object() -> None:
    rng = np.random.default_rng(2)
    d = dedup(ContentKind.CAMERA, cells(_room_with(rng)))
    for gain in (0.9, 1.08, 1.15):
        report, _ = d.check(cells(_room_with(rng, gain=gain)), 640, 480)
        assert not report.changed, (gain, report)
    for dx in (3, -6, 12):  # larger pans move the global hash past the tenant threshold
        report, _ = d.check(cells(_room_with(rng, dx=dx)), 640, 480)
        assert not report.changed, (dx, report)
    report, _ = d.check(cells(_room_with(rng, card=True, gain=1.05)), 640, 480)
    assert report.changed, report


def test_the_same_small_change_passes_on_a_camera_but_not_on_a_screen() -> None:
    """A 2-cell change is information on a screen and a blink on a camera."""
    rgb = natural_image(8, 640, 480)
    edited = rgb.copy()
    edited[200:212, 300:316] = 255
    for kind, expected in ((ContentKind.SCREEN, True), (ContentKind.CAMERA, False)):
        d = dedup(kind, cells(rgb))
        report, _ = d.check(cells(edited), 640, 480)
        assert report.changed is expected, (kind, report)


def test_slow_drift_is_caught_against_the_last_kept_frame() -> None:
    """Each step is below every threshold, the sum is not."""
    a = natural_image(10, 640, 480).astype(np.float32)
    b = natural_image(11, 640, 480).astype(np.float32)
    ref = cells(a.astype(np.uint8))
    d = dedup(ContentKind.CAMERA, ref)
    prev = ref
    kept_at = None
    for step in range(1, 101):
        f = step / 100
        cur = cells(((1 - f) * a + f * b).astype(np.uint8))
        step_delta = np.abs(cur - prev).max()
        prev = cur
        assert step_delta < 12  # frame-to-frame: never a change
        report, sig = d.check(cur, 640, 480)
        if report.changed:
            kept_at = step
            break
    assert kept_at is not None and kept_at <= 40


def test_blinking_caret_is_sent_a_bounded_number_of_times() -> None:
    base = page()
    on = base.copy()
    ImageDraw.Draw(on).rectangle([600, 400, 601, 419], fill=(0, 0, 0))
    frames = {True: cells(np.asarray(on)), False: cells(np.asarray(base))}
    d = FrameDeduplicator(kind=ContentKind.SCREEN, hamming_threshold=10,
                          tile_hamming_threshold=14)
    kept = 0
    t = 0
    for i in range(40):  # 20 blinks at 530 ms, sampled every 265 ms
        c = frames[(i // 2) % 2 == 0]
        report, sig = d.check(c, 1280, 720, t)
        if report.changed:
            assert sig is not None
            d.accept(sig, t)
            kept += 1
        t += 265_000
    assert kept == 3  # on, off, on again; then recognised as oscillation

    # A tooltip that appears and goes away once is two changes, both sent.
    d = FrameDeduplicator(kind=ContentKind.SCREEN, hamming_threshold=10,
                          tile_hamming_threshold=14)
    seq = [False, True, True, False, False]
    sent = []
    for i, state in enumerate(seq):
        report, sig = d.check(frames[state], 1280, 720, i * 200_000)
        if report.changed:
            assert sig is not None
            d.accept(sig, i * 200_000)
            sent.append(i)
    assert sent == [0, 1, 3]


def test_resolution_change_is_a_change() -> None:
    rgb = natural_image(12, 640, 480)
    d = dedup(ContentKind.SCREEN, cells(rgb))
    small = np.asarray(Image.fromarray(rgb).resize((320, 240)))
    report, _ = d.check(cells(small), 320, 240)
    assert report.changed and "resolution changed 640x480 -> 320x240" in report.reason
