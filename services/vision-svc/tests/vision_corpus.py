"""A generated corpus of screen-share and camera sequences with ground-truth changes.

Nothing is downloaded: every frame is drawn here (Pillow's bundled font for text), converted to
BT.601 video-range I420 as LiveKit delivers it, and, for cameras, given sensor noise.

Each sequence lists its real changes as events, each with the span during which it is visible
(a typed character stays visible; a tooltip is gone after 0.4 s). A policy "captures" an event
when it keeps a frame inside that span; a kept frame is "redundant" when no event started since
the previous kept frame. Sensor noise, lighting flicker, a blinking caret, head sway, blinks and
a speaking mouth are not events: keeping frames for them is waste.
"""

from __future__ import annotations

import functools
import math
import zlib
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFilter, ImageFont

FPS = 30
SCREEN = (1280, 720)
CAMERA = (640, 480)
US = 1_000_000

RGB = npt.NDArray[np.uint8]


@dataclass(frozen=True, slots=True)
class Event:
    start_us: int
    end_us: int | None  # None: visible until the end
    category: str
    label: str
    # A gradual change has no instant: a frame kept this long before `start_us` already shows
    # it (e.g. a cross-fade within 5% of the mark).
    early_us: int = 0


@dataclass(slots=True)
class CorpusFrame:
    index: int
    timestamp_us: int
    speaking: bool
    i420: bytes
    # Full-range luma of the same frame, for baselines that hash a PIL image.
    luma: npt.NDArray[np.uint8]
    # Frames with the same version are pixel-identical (lets baselines memoise their hashes).
    version: Hashable


@dataclass(slots=True)
class Sequence:
    name: str
    kind: str  # "screen" | "camera"
    description: str
    width: int
    height: int
    duration_s: float
    events: list[Event]
    speaking: list[tuple[float, float]]
    render: Callable[[float], tuple[Hashable, Callable[[], RGB]]] = field(repr=False)
    noise_sigma: float = 0.0

    @property
    def n_frames(self) -> int:
        return int(round(self.duration_s * FPS))

    def is_speaking(self, t: float) -> bool:
        return any(a <= t < b for a, b in self.speaking)

    def frames(self) -> Iterator[CorpusFrame]:
        """Frames at 30 FPS; identical screen states are rendered and converted once."""
        cache: dict[Hashable, tuple[bytes, npt.NDArray[np.uint8]]] = {}
        rng = np.random.default_rng(zlib.crc32(self.name.encode()))
        h, w = self.height, self.width
        # Sensor noise: random windows into one pre-drawn field (cheap and uncorrelated
        # enough from frame to frame); screens get a faint stable codec texture per picture.
        sigma = self.noise_sigma or 0.8
        field_ = np.rint(rng.standard_normal((h + 97, w + 89)) * sigma).astype(np.int16)
        for i in range(self.n_frames):
            t = i / FPS
            key, draw = self.render(t)
            if self.noise_sigma > 0:
                dy, dx = int(rng.integers(0, 97)), int(rng.integers(0, 89))
                data, luma = rgb_to_i420(draw(), field_[dy : dy + h, dx : dx + w])
                version: Hashable = (key, i)
            else:
                hit = cache.get(key)
                if hit is None:
                    k = len(cache) % 50
                    hit = rgb_to_i420(draw(), field_[k : k + h, k : k + w])
                    if len(cache) > 64:
                        cache.clear()
                    cache[key] = hit
                data, luma = hit
                version = key
            yield CorpusFrame(i, int(round(t * US)), self.is_speaking(t), data, luma, version)


# ---------------------------------------------------------------------------------------------
# Pixels

_Y_VIDEO = [round(16 + v * 219 / 255) for v in range(256)]
_C_VIDEO = [round(16 + v * 224 / 255) for v in range(256)]


def rgb_to_i420(
    rgb: RGB, luma_noise: npt.NDArray[np.int16] | None = None
) -> tuple[bytes, npt.NDArray[np.uint8]]:
    """BT.601 video-range I420 (what WebRTC/LiveKit delivers), chroma 2x2-averaged, with
    optional luma noise; and the full-range luma."""
    h, w = rgb.shape[:2]
    y, cb, cr = Image.fromarray(rgb).convert("YCbCr").split()
    luma = np.asarray(y)
    if luma_noise is not None:
        luma = np.clip(luma.astype(np.int16) + luma_noise, 0, 255).astype(np.uint8)
    y_video = np.asarray(_Y_VIDEO, dtype=np.uint8)[luma]
    half = (w // 2, h // 2)
    u = cb.resize(half, Image.Resampling.BOX).point(_C_VIDEO)
    v = cr.resize(half, Image.Resampling.BOX).point(_C_VIDEO)
    return y_video.tobytes() + u.tobytes() + v.tobytes(), luma


@functools.cache
def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def natural_image(seed: int, w: int, h: int) -> RGB:
    """Natural-looking picture: smooth colour gradients, blurred shapes, fine noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.zeros((h, w, 3), np.float32)
    for c in range(3):
        a, b, ph = rng.uniform(-1, 1, 3)
        fx, fy = rng.uniform(0.5, 3, 2)
        img[..., c] = 128 + 60 * np.sin(xx / w * np.pi * fx + ph) * np.cos(
            yy / h * np.pi * fy + a
        ) + 30 * b
    im = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(im)
    for _ in range(int(rng.integers(6, 24))):
        x0, y0 = int(rng.integers(-w // 8, w)), int(rng.integers(-h // 8, h))
        x1, y1 = x0 + int(rng.integers(w // 20, w // 2)), y0 + int(rng.integers(h // 20, h // 2))
        col = tuple(int(v) for v in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            d.ellipse([x0, y0, x1, y1], fill=col)
        else:
            d.rectangle([x0, y0, x1, y1], fill=col)
    im = im.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.8, 2.5))))
    arr = np.asarray(im).astype(np.float32) + rng.normal(0, 3, (h, w, 3))
    return np.clip(arr, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# Screen content

_WORDS = (
    "latency budget tenant frames model vision cost cache router region quarterly revenue "
    "pipeline review launch metrics customer support growth retention churn forecast design "
    "billing ledger savings policy scaling replicas storage search index rollout canary"
).split()


def _sentence(rng: np.random.Generator, n: int) -> str:
    return " ".join(str(rng.choice(_WORDS)) for _ in range(n)).capitalize()


@functools.cache
def _slide(index: int, page_label: str, body_seed: int) -> Image.Image:
    w, h = SCREEN
    rng = np.random.default_rng(body_seed)
    im = Image.new("RGB", (w, h), (250, 250, 247))
    d = ImageDraw.Draw(im)
    hue = [(32, 64, 128), (128, 40, 48), (30, 110, 70), (90, 60, 120), (160, 100, 20)][
        body_seed % 5
    ]
    d.rectangle([0, 0, w, 96], fill=hue)
    d.text((48, 26), _sentence(rng, 4), font=font(40), fill=(255, 255, 255))
    y = 140
    for _ in range(5):
        d.ellipse([56, y + 12, 66, y + 22], fill=hue)
        d.text((84, y), _sentence(rng, int(rng.integers(5, 9))), font=font(28), fill=(30, 30, 30))
        y += 56
    if body_seed % 2 == 0:
        for k in range(6):
            bh = int(rng.integers(40, 200))
            d.rectangle([820 + k * 60, 620 - bh, 860 + k * 60, 620], fill=hue)
    d.text((w - 200, h - 40), page_label, font=font(18), fill=(90, 90, 90))
    return im


@functools.cache
def _document(seed: int, height: int = 2400) -> Image.Image:
    """A long page of paragraphs (for scrolling, cursor and pop-up sequences)."""
    w = SCREEN[0]
    rng = np.random.default_rng(seed)
    im = Image.new("RGB", (w, height), (255, 255, 255))
    d = ImageDraw.Draw(im)
    d.rectangle([0, 0, 220, height], fill=(238, 240, 244))
    for k in range(height // 40):
        d.text((20, 20 + k * 40), _sentence(rng, 2), font=font(16), fill=(70, 70, 90))
    y = 30
    while y < height - 60:
        if rng.random() < 0.15:
            d.text((260, y), _sentence(rng, 5), font=font(30), fill=(20, 20, 60))
            y += 56
            continue
        for _ in range(int(rng.integers(3, 7))):
            d.text((260, y), _sentence(rng, int(rng.integers(10, 14))), font=font(18),
                   fill=(35, 35, 35))
            y += 28
        y += 20
    return im


def _np(im: Image.Image) -> RGB:
    return np.asarray(im.convert("RGB"))


# ---------------------------------------------------------------------------------------------
# Sequences


def _spans(events: list[tuple[float, str, str]], duration: float) -> list[Event]:
    """Events that stay visible until the next event of the same chain starts."""
    out = []
    for i, (t, cat, label) in enumerate(events):
        end = events[i + 1][0] if i + 1 < len(events) else None
        out.append(Event(int(round(t * US)), None if end is None else int(round(end * US)), cat,
                         label))
    return out


def slides() -> Sequence:
    dur, per = 24.0, 4.0

    def render(t: float) -> tuple[Hashable, Callable[[], RGB]]:
        k = min(int(t // per), 5)
        return ("slide", k), lambda: _np(_slide(k, f"{k + 1} / 6", 10 + k))

    events = _spans([(k * per, "slide", f"slide {k + 1}") for k in range(6)], dur)
    return Sequence("slides", "screen", "6 slides, 4 s each, full slide changes", *SCREEN, dur,
                    events, [(1, 3), (5, 9), (13, 15), (18, 22)], render)


def slide_number() -> Sequence:
    dur, per = 15.0, 3.0

    def render(t: float) -> tuple[Hashable, Callable[[], RGB]]:
        k = min(int(t // per), 4)
        return ("page", k), lambda: _np(_slide(0, f"Page {12 + k} of 40", 10))

    events = _spans([(k * per, "slide-number", f"page {12 + k}") for k in range(5)], dur)
    return Sequence("slide-number", "screen", "same slide, only the page number changes",
                    *SCREEN, dur, events, [(2, 5), (9, 11)], render)


_CODE = ["def mean(xs):", "    total = sum(xs)", "    return total / len(xs).",
         "# ok, done: 3 lines."]


def typing() -> Sequence:
    rng = np.random.default_rng(7)
    keys: list[tuple[float, int, int]] = []  # (time, line, chars on that line)
    t = 1.5
    for li, line in enumerate(_CODE):
        for ci in range(1, len(line) + 1):
            keys.append((t, li, ci))
            t += float(rng.uniform(0.11, 0.26))
        t += 1.2
    dur = math.ceil(t + 2.5)
    times = [k[0] for k in keys]
    blink = 0.53

    def state(t: float) -> tuple[int, bool]:
        n = int(np.searchsorted(times, t, side="right"))
        last = times[n - 1] if n else 0.0
        # Caret is solid while typing, then blinks (530 ms on, 530 ms off).
        caret = n == 0 or (t - last) < blink or int((t - last) // blink) % 2 == 0
        return n, caret

    def draw(n: int, caret: bool) -> RGB:
        w, h = SCREEN
        im = Image.new("RGB", (w, h), (30, 32, 38))
        d = ImageDraw.Draw(im)
        d.rectangle([0, 0, w, 34], fill=(50, 52, 60))
        d.text((16, 8), "mean.py - editor", font=font(16), fill=(200, 200, 200))
        for k in range(30):
            d.text((12, 60 + k * 26), f"{k + 1:>3}", font=font(16), fill=(110, 110, 120))
        x0, y0 = 70, 60
        cx, cy = x0, y0
        if n:
            li, ci = keys[n - 1][1], keys[n - 1][2]
            for j in range(li):
                d.text((x0, y0 + j * 26), _CODE[j], font=font(18), fill=(220, 220, 210))
            text = _CODE[li][:ci]
            d.text((x0, y0 + li * 26), text, font=font(18), fill=(220, 220, 210))
            cx, cy = x0 + int(d.textlength(text, font=font(18))), y0 + li * 26
        if caret:
            d.rectangle([cx + 1, cy + 2, cx + 2, cy + 21], fill=(235, 235, 235))
        return np.asarray(im)

    def render(t: float) -> tuple[Hashable, Callable[[], RGB]]:
        n, caret = state(t)
        return ("typing", n, caret), lambda: draw(n, caret)

    events = [Event(int(round(k[0] * US)), None, "keystroke", f"line {k[1] + 1} char {k[2]}")
              for k in keys]
    return Sequence("typing", "screen", "4 code lines typed at 4-9 keys/s; blinking caret",
                    *SCREEN, float(dur), events, [(4, 6), (12, 14)], render)


def _motion_events(
    moves: list[tuple[float, float]], dur: float, cat: str, segment: float = 1.0
) -> list[Event]:
    """Each motion: one event per `segment` of motion (visible only then), then a rest event
    visible until the next motion starts."""
    out = [Event(0, int(moves[0][0] * US), f"{cat}-rest", "initial view")]
    for i, (a, b) in enumerate(moves):
        s = a
        while s < b - 1e-9:
            e = min(b, s + segment)
            out.append(Event(int(round(s * US)), int(round(e * US)), f"{cat}-motion",
                             f"motion {i + 1} @{s:.1f}s"))
            s = e
        nxt = moves[i + 1][0] if i + 1 < len(moves) else None
        out.append(Event(int(round(b * US)), None if nxt is None else int(round(nxt * US)),
                         f"{cat}-rest", f"rest {i + 1}"))
    return out


def scrolling() -> Sequence:
    dur = 12.0
    moves = [(2.0, 5.0), (8.0, 9.0)]

    def offset(t: float) -> int:
        if t < 2:
            return 0
        if t < 5:
            return int((t - 2) * 120)
        if t < 8:
            return 360
        if t < 9:
            return 360 + int((t - 8) * 240)
        return 600

    def render(t: float) -> tuple[Hashable, Callable[[], RGB]]:
        off = offset(t)
        return ("scroll", off), lambda: _np(_document(3).crop((0, off, SCREEN[0], off + SCREEN[1])))

    return Sequence("scrolling", "screen", "document scrolled at 120 then 240 px/s", *SCREEN,
                    dur, _motion_events(moves, dur, "scroll"), [(8, 10)], render)


_ARROW = [(0, 0), (0, 17), (4, 13), (7, 19), (10, 18), (7, 12), (12, 12)]


def _cursor_at(im: Image.Image, x: int, y: int) -> Image.Image:
    im = im.copy()
    d = ImageDraw.Draw(im)
    d.polygon([(x + a, y + b) for a, b in _ARROW], fill=(0, 0, 0), outline=(255, 255, 255))
    return im


def cursor() -> Sequence:
    dur = 11.0
    moves = [(2.0, 3.5, (200, 200), (900, 500)), (6.0, 7.0, (900, 500), (420, 600))]

    def pos(t: float) -> tuple[int, int]:
        p = moves[0][2]
        for a, b, p0, p1 in moves:
            if t < a:
                return p
            if t < b:
                f = (t - a) / (b - a)
                return int(p0[0] + f * (p1[0] - p0[0])), int(p0[1] + f * (p1[1] - p0[1]))
            p = p1
        return p

    page = _document(5).crop((0, 0, *SCREEN))

    def render(t: float) -> tuple[Hashable, Callable[[], RGB]]:
        x, y = pos(t)
        return ("cursor", x, y), lambda: _np(_cursor_at(page, x, y))

    events = _motion_events([(a, b) for a, b, *_ in moves], dur, "cursor")
    return Sequence("cursor", "screen", "mouse pointer moves twice, rests between",
                    *SCREEN, dur, events, [(5.5, 7.5)], render)


def popup() -> Sequence:
    dur = 14.0
    page = _document(9).crop((0, 0, *SCREEN))

    def draw(dialog: bool, tooltip: bool, toast: bool) -> RGB:
        im = page.copy()
        d = ImageDraw.Draw(im)
        if dialog:  # cursor-sized: 44x28
            d.rectangle([700, 300, 744, 328], fill=(245, 245, 245), outline=(60, 60, 60))
            d.text((712, 305), "OK", font=font(14), fill=(0, 0, 0))
        if tooltip:
            d.rectangle([520, 420, 640, 442], fill=(255, 255, 225), outline=(90, 90, 90))
            d.text((526, 424), "Save (Ctrl+S)", font=font(13), fill=(0, 0, 0))
        if toast:
            d.rectangle([1000, 620, 1250, 690], fill=(40, 40, 48))
            d.text((1016, 640), "Build finished", font=font(18), fill=(255, 255, 255))
        return np.asarray(im)

    def render(t: float) -> tuple[Hashable, Callable[[], RGB]]:
        st = (3.0 <= t < 5.0, 8.0 <= t < 8.4, t >= 11.0)
        return ("popup", *st), lambda: draw(*st)

    events = [
        Event(0, None, "popup", "page"),
        Event(3 * US, 5 * US, "popup", "44x28 dialog opens"),
        Event(5 * US, None, "popup", "dialog closes"),
        Event(8 * US, int(8.4 * US), "popup", "tooltip shows for 0.4 s"),
        Event(int(8.4 * US), None, "popup", "tooltip hides"),
        Event(11 * US, None, "popup", "toast appears"),
    ]
    return Sequence("popup", "screen", "44x28 dialog, 0.4 s tooltip, toast", *SCREEN, dur,
                    events, [(2, 4)], render)


def static_share() -> Sequence:
    """Static-dominated 30 FPS screen share: 40 s, one slide change, one word typed."""
    dur = 40.0
    word_keys = [30.0, 30.18, 30.35, 30.5]

    def draw(k: int, chars: int) -> RGB:
        im = _slide(k, f"{k + 3} / 9", 20 + k).copy()
        if chars:
            ImageDraw.Draw(im).text((84, 620), "TODO"[:chars], font=font(28), fill=(200, 0, 0))
        return _np(im)

    def render(t: float) -> tuple[Hashable, Callable[[], RGB]]:
        k = 0 if t < 15 else 1
        chars = sum(1 for s in word_keys if t >= s)
        return ("static", k, chars), lambda: draw(k, chars)

    events = [Event(0, 15 * US, "slide", "slide 3"), Event(15 * US, None, "slide", "slide 4")]
    events += [Event(int(s * US), None, "keystroke", f"TODO[{i}]") for i, s in enumerate(word_keys)]
    return Sequence("static-share", "screen", "40 s mostly static: 1 slide change, 1 word typed",
                    *SCREEN, dur, events, [(5, 12), (20, 26)], render)


# --- camera -----------------------------------------------------------------------------------


@functools.cache
def _room(seed: int) -> Image.Image:
    w, h = CAMERA
    base = Image.fromarray(natural_image(seed, w, h)).filter(ImageFilter.GaussianBlur(2))
    d = ImageDraw.Draw(base)
    d.rectangle([430, 60, 620, 70], fill=(110, 80, 50))  # a shelf
    for k in range(7):
        d.rectangle([440 + k * 24, 20, 458 + k * 24, 60], fill=(60 + 25 * k, 90, 140 - 10 * k))
    return base


def _person(im: Image.Image, t: float, speaking: bool, dx: float, dy: float) -> Image.Image:
    im = im.copy()
    d = ImageDraw.Draw(im)
    cx, cy = 320 + dx, 250 + dy
    d.ellipse([cx - 150, cy + 120, cx + 150, cy + 400], fill=(40, 60, 110))  # shoulders
    d.ellipse([cx - 80, cy - 110, cx + 80, cy + 110], fill=(224, 180, 150))  # face
    d.chord([cx - 86, cy - 130, cx + 86, cy + 20], 180, 360, fill=(60, 40, 30))  # hair
    blink = (t % 3.7) < 0.15
    for ex in (-32, 32):
        if blink:
            d.line([cx + ex - 12, cy - 20, cx + ex + 12, cy - 20], fill=(70, 50, 40), width=3)
        else:
            d.ellipse([cx + ex - 12, cy - 28, cx + ex + 12, cy - 12], fill=(255, 255, 255))
            d.ellipse([cx + ex - 5, cy - 25, cx + ex + 5, cy - 15], fill=(50, 40, 30))
    opening = 2 + (12 * abs(math.sin(2 * math.pi * 4.1 * t)) if speaking else 0)
    d.ellipse([cx - 24, cy + 48, cx + 24, cy + 50 + opening], fill=(120, 40, 40))
    return im


def _sway(t: float) -> tuple[float, float]:
    return 4 * math.sin(2 * math.pi * 0.3 * t), 2 * math.sin(2 * math.pi * 0.5 * t + 1)


def talking_head() -> Sequence:
    dur = 20.0
    speaking = [(1, 6), (8, 13), (15, 19)]
    seq = Sequence("talking-head", "camera", "noise, head sway, blinks, speaking mouth",
                   *CAMERA, dur, [Event(0, None, "camera", "person")], speaking,
                   lambda t: (None, lambda: np.empty(0, np.uint8)), noise_sigma=5.0)

    def render(t: float) -> tuple[Hashable, Callable[[], RGB]]:
        dx, dy = _sway(t)
        return ("head", t), lambda: _np(_person(_room(31), t, seq.is_speaking(t), dx, dy))

    seq.render = render
    return seq


def camera_card() -> Sequence:
    """Lighting flicker and auto-exposure drift, then a card with text is held up."""
    dur = 20.0
    speaking = [(11, 16)]
    seq = Sequence("camera-card", "camera", "flicker +-8%, exposure ramp, card held up",
                   *CAMERA, dur, [], speaking, lambda t: (None, lambda: np.empty(0, np.uint8)),
                   noise_sigma=6.0)

    def card_y(t: float) -> int | None:
        if t < 12.0 or t >= 17.3:
            return None
        if t < 12.3:
            return int(480 - (t - 12.0) / 0.3 * 300)
        if t < 17.0:
            return 180
        return int(180 + (t - 17.0) / 0.3 * 300)

    card_img = Image.new("RGB", (200, 130), (245, 245, 240))
    cd = ImageDraw.Draw(card_img)
    cd.text((14, 20), "Q3 plan", font=font(34), fill=(10, 10, 10))
    cd.text((14, 74), "ship v2 by Sep", font=font(20), fill=(150, 20, 20))

    rng = np.random.default_rng(5)
    flicker = 1 + 0.06 * np.sin(2 * np.pi * 7.3 * np.arange(int(dur * FPS)) / FPS)
    flicker += rng.uniform(-0.02, 0.02, flicker.shape)

    def draw(t: float) -> RGB:
        dx, dy = _sway(t)
        im = _person(_room(47), t, seq.is_speaking(t), dx, dy)
        y = card_y(t)
        if y is not None:
            im.paste(card_img, (380, y))
        exposure = 1 + 0.15 * min(max((t - 5) / 5, 0), 1) * (1 if t < 10 else max(0, (14 - t) / 4))
        gain = float(flicker[min(int(t * FPS), len(flicker) - 1)]) * exposure
        arr = np.asarray(im).astype(np.float32) * gain
        return np.clip(arr, 0, 255).astype(np.uint8)

    def render(t: float) -> tuple[Hashable, Callable[[], RGB]]:
        return ("card", t), lambda: draw(t)

    seq.render = render
    seq.events = [
        Event(0, 12 * US, "camera", "person"),
        Event(int(12.3 * US), 17 * US, "object", "card held up"),
        Event(int(17.3 * US), None, "object", "card lowered"),
    ]
    return seq


def drift() -> Sequence:
    """Everything drifts slowly: the view pans 8 px/s while cross-fading to another scene."""
    dur = 20.0
    w, h = CAMERA
    a = natural_image(71, w + 200, h).astype(np.float32)
    b_minus_a = natural_image(72, w + 200, h).astype(np.float32) - a

    def fade(t: float) -> float:
        return min(max((t - 2.0) / 16.0, 0.0), 1.0)

    def draw(t: float) -> RGB:
        x = int(t * 8)
        f = fade(t)
        mix = a[:, x : x + w] + f * b_minus_a[:, x : x + w]
        return np.clip(mix, 0, 255).astype(np.uint8)

    def render(t: float) -> tuple[Hashable, Callable[[], RGB]]:
        return ("drift", t), lambda: draw(t)

    marks = [(0.0, "drift", "scene A")] + [
        (2.0 + 16.0 * q, "drift", f"cross-fade {int(q * 100)}%") for q in (0.25, 0.5, 0.75, 1.0)
    ]
    # A frame within 5% of the fade (0.8 s) of a mark shows that mark's picture.
    events = [Event(e.start_us, e.end_us, e.category, e.label, early_us=800_000 if i else 0)
              for i, e in enumerate(_spans(marks, dur))]
    return Sequence("drift", "camera", "pan 8 px/s + 16 s cross-fade to another scene",
                    *CAMERA, dur, events, [(3, 6), (12, 15)], render, noise_sigma=3.0)


def all_sequences() -> list[Sequence]:
    return [slides(), slide_number(), typing(), scrolling(), cursor(), popup(), static_share(),
            talking_head(), camera_card(), drift()]
