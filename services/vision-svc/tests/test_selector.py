"""TrackFrameSelector: decisions, staleness, stats, the naive baseline, bounded state."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from parley_vision.dedup import ContentKind
from parley_vision.frames import FrameDecoder, PixelFormat, RawFrame
from parley_vision.selector import DecisionKind, FrameInput, TrackFrameSelector
from parley_vision.stats import FrameStats
from parley_vision.tenant_config import VisionConfig
from vision_corpus import natural_image, rgb_to_i420

pytestmark = pytest.mark.unit

W, H = 640, 360


def i420(seed: int) -> bytes:
    return rgb_to_i420(natural_image(seed, W, H))[0]


def frame(seq: int, t_ms: float, data: bytes, speaking: bool = False,
          fmt: PixelFormat | None = PixelFormat.I420) -> FrameInput:
    return FrameInput(seq, int(t_ms * 1000), speaking, RawFrame(fmt, W, H, data))


def selector(**cfg: float) -> TrackFrameSelector:
    return TrackFrameSelector(config=VisionConfig(**cfg), kind=ContentKind.SCREEN,  # type: ignore[arg-type]
                              source_fps=30, decoder=FrameDecoder())


def test_decisions_and_stats_add_up() -> None:
    a, b = i420(1), i420(2)
    sel = selector()
    tenant = FrameStats()
    sel._tenant = tenant
    kinds = []
    for i in range(90):  # 3 s at 30 fps; picture b from 1.5 s
        data = a if i < 45 else b
        kinds.append(sel.process(frame(i, i * 1000 / 30, data)).kind)
    kinds.append(sel.process(frame(90, 3000, b"short")).kind)
    assert kinds[0] is DecisionKind.KEEP and kinds[45] is DecisionKind.KEEP
    assert kinds.count(DecisionKind.KEEP) == 2
    assert kinds[-1] is DecisionKind.REJECTED
    s = sel.stats
    assert s.frames_seen == 91 and s.rejected == 1 and s.kept == 2
    assert s.frames_seen == s.kept + s.kept_stale_forced + s.dropped_rate + s.dropped_duplicate \
        + s.rejected
    assert s.image_tokens_sent == 2 * 258 and s.naive_image_tokens == 90 * 258
    assert s.bytes_sent > 0 and s.naive_bytes > 20 * s.bytes_sent
    assert tenant == s


def test_rate_reasons_and_staleness_forces_a_keep() -> None:
    a = i420(3)
    sel = selector(max_staleness_s=2.0)
    first = sel.process(frame(0, 0, a))
    assert first.kind is DecisionKind.KEEP and first.encoded is not None
    rate = sel.process(frame(1, 33, a))
    assert rate.kind is DecisionKind.DROP_RATE and "ms since last keep" in rate.reason
    dup = sel.process(frame(2, 1000, a))
    assert dup.kind is DecisionKind.DROP_DUPLICATE and dup.reason.startswith("duplicate")
    stale = sel.process(frame(3, 2000, a))
    assert stale.kind is DecisionKind.KEEP_STALE_FORCED and stale.reason.startswith("stale: 2.0 s")
    assert sel.stats.kept_stale_forced == 1


def test_bad_frames_do_not_disturb_the_stream() -> None:
    a, b = i420(4), i420(5)
    sel = selector()
    assert sel.process(frame(0, 0, a)).kind is DecisionKind.KEEP
    bad = [
        frame(1, 100, a[:-10]),
        frame(2, 200, a, fmt=None),
        FrameInput(3, 300_000, False, RawFrame(PixelFormat.RGBA, W, H, a)),
    ]
    for f in bad:
        d = sel.process(f)
        assert d.kind is DecisionKind.REJECTED and d.error_code == "INVALID_ARGUMENT"
        assert d.error_message
    assert sel.process(frame(4, 400, a)).kind is DecisionKind.DROP_DUPLICATE
    assert sel.process(frame(5, 500, b)).kind is DecisionKind.KEEP


def test_an_encoding_failure_becomes_a_clean_rejection() -> None:
    sel = selector()
    keep = sel.decide(frame(0, 0, i420(4)))
    assert keep.kind is DecisionKind.KEEP
    d = sel.fail_encoding(keep, OSError("encoder error -2 on <_io.BytesIO object at 0x7f00aa>"))
    assert d.kind is DecisionKind.REJECTED and d.error_code == "INTERNAL"
    assert d.error_message == "could not encode the kept frame: encoder error -2 on"


def test_naive_baseline_counts_source_frames_not_sent_frames() -> None:
    a = i420(6)
    sel = TrackFrameSelector(config=VisionConfig(), kind=ContentKind.CAMERA, source_fps=30,
                             decoder=FrameDecoder())
    for i in range(10):  # the caller decimated to 10 fps: each frame stands for 3
        sel.process(frame(i, i * 100, a))
    assert sel.stats.naive_image_tokens == (1 + 9 * 3) * 258
    # A 20 s gap (track muted) counts as a pause, not as 600 frames.
    sel.process(frame(10, 20_900, a))
    assert sel.stats.naive_image_tokens == (1 + 9 * 3 + 30) * 258


def test_state_stays_bounded_on_an_endless_stream() -> None:
    pictures = [i420(s) for s in range(4)]
    sel = selector(idle_fps=30, sustained_fps=30, keep_burst=30)
    t = 0.0

    def run(n: int) -> None:
        nonlocal t
        for i in range(n):
            sel.process(frame(i, t, pictures[(i // 3) % 4]))
            t += 1000 / 30

    run(200)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    run(1500)
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert sel.stats.frames_kept > 400
    assert after - before < 512 * 1024, after - before


def test_camera_noise_is_dropped_as_duplicate() -> None:
    rgb = natural_image(7, W, H)
    rng = np.random.default_rng(0)
    sel = TrackFrameSelector(config=VisionConfig(), kind=ContentKind.CAMERA, source_fps=30,
                             decoder=FrameDecoder())
    kinds = []
    for i in range(60):
        noise = np.rint(rng.normal(0, 6, (H, W))).astype(np.int16)
        data, _ = rgb_to_i420(rgb, noise)
        kinds.append(sel.process(frame(i, i * 1000 / 30, data)).kind)
    assert kinds.count(DecisionKind.KEEP) == 1


def _scrolled(page: np.ndarray, offset: int) -> bytes:
    rgb = np.ascontiguousarray(np.roll(page, -offset, axis=0)[:H])
    return rgb_to_i420(rgb)[0]


@pytest.mark.parametrize("settle_debt", [1, 0])
def test_the_picture_a_scroll_settles_on_is_kept_at_once(settle_debt: int) -> None:
    """Continuous change is rate-capped; the frame it stops on is kept within a frame or two
    (the settle keep borrows from the bucket), unless the tenant turned borrowing off."""
    page = natural_image(9, W, 3 * H)
    # A slow sustained rate, so that the bucket is empty when the scroll stops.
    sel = selector(settle_debt=settle_debt, sustained_fps=0.25)
    kinds, t = [], 0.0
    for i in range(60):  # 2 s of scrolling at 30 fps, 6 px a frame
        t = i * 1000 / 30
        kinds.append(sel.process(frame(i, t, _scrolled(page, 6 * i))).kind)
    scroll_keeps = kinds.count(DecisionKind.KEEP)
    assert scroll_keeps == 2  # the burst of 2, then 0.25 fps: not 5-30 a second
    rest = _scrolled(page, 6 * 59)
    after = [sel.process(frame(60 + j, t + (j + 1) * 1000 / 30, rest)) for j in range(45)]
    first_keep = next((j for j, d in enumerate(after) if d.kind.keeps), None)
    if settle_debt:
        # Frame 0 of the rest equals the last scrolled frame: settled; kept within 100 ms.
        assert first_keep is not None and (first_keep + 1) * 1000 / 30 <= 100
        assert after[first_keep].reason.startswith("settled after continuous change")
        # Kept once; the rest is a duplicate of it.
        assert sum(d.kind.keeps for d in after) == 1
    else:
        assert first_keep is None or (first_keep + 1) * 1000 / 30 > 100


def test_a_static_screen_never_triggers_settle_checks() -> None:
    a = i420(4)
    sel = selector()
    kinds = [sel.process(frame(i, i * 1000 / 30, a)).kind for i in range(90)]
    assert kinds.count(DecisionKind.KEEP) == 1
    assert not any("settled" in sel.process(frame(90 + i, 3000 + i * 33, a)).reason
                   for i in range(30))


def test_frames_the_sender_skipped_as_unchanged_are_counted() -> None:
    """A sender that leaves out unchanged frames (the agent) sends one a second; the frames it
    skipped are seen, dropped as duplicates and priced in the naive baseline, as if sent."""
    a, b = i420(11), i420(12)

    def run(skip: bool) -> FrameStats:
        sel = selector(max_staleness_s=0)
        prev = 0
        for i in range(150):  # 5 s at 30 fps; picture b from 2.5 s
            data = a if i < 75 else b
            if skip and i not in (0, 30, 60, 75, 76, 106, 136, 149):
                continue
            skipped = 0
            if skip and i:
                skipped = i - prev - 1
            prev = i
            f = frame(i, i * 1000 / 30, data)
            sel.process(FrameInput(f.sequence, f.timestamp_us, f.speaking, f.raw,
                                   unchanged_skipped=skipped))
        return sel.stats

    every, skipping = run(False), run(True)
    assert skipping.frames_seen == every.frames_seen == 150
    assert skipping.kept == every.kept == 2
    assert skipping.dropped_duplicate + skipping.dropped_rate == 148
    assert skipping.naive_image_tokens == every.naive_image_tokens


def test_a_senders_skip_count_is_bounded_by_the_time_it_covers() -> None:
    a = i420(13)
    sel = selector()
    first = frame(0, 0, a)
    sel.process(FrameInput(0, first.timestamp_us, False, first.raw, unchanged_skipped=50))
    assert sel.stats.frames_seen == 1  # the first frame stands for nothing before it
    # 100 ms later: at most 12 frames fit (120 fps); at the nominal 30 fps it stands for 3
    f = frame(1, 100, a)
    sel.process(FrameInput(1, f.timestamp_us, False, f.raw, unchanged_skipped=4_000_000_000))
    s = sel.stats
    assert s.frames_seen == 2 + 12 and s.dropped_duplicate >= 12
    assert s.naive_image_tokens == (1 + 3) * 258
