"""Runs frame-selection policies side by side over the generated corpus and scores them.

Policies:
* parley: vision-svc's TrackFrameSelector (the real domain code, tenant defaults).
* seed: the seed's FrameProcessor rule: 30 FPS while speaking / 5 idle since the last
  processed frame, then `imagehash.phash(PIL.Image)` against the last processed frame's hash,
  keep when the Hamming distance is > 10 (frame timestamps instead of time.time(); the image
  given to imagehash is the frame's luma, which is what phash converts any image to).
* lk-sampler: livekit-agents' VoiceActivityVideoSampler (1 FPS speaking, 0.3 FPS silent, the
  first frame, then a frame whenever 1/fps has passed since the last one kept; no dedup),
  re-implemented on frame timestamps (test_vision_corpus checks it against the real class).
"""

from __future__ import annotations

import time
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field

import imagehash
import numpy as np
from parley_vision.dedup import ContentKind
from parley_vision.frames import FrameDecoder, PixelFormat, RawFrame
from parley_vision.selector import DecisionKind, FrameInput, TrackFrameSelector
from parley_vision.tenant_config import VisionConfig
from PIL import Image
from vision_corpus import CorpusFrame, Sequence

US = 1_000_000


class ParleyPolicy:
    def __init__(self, seq: Sequence, config: VisionConfig | None = None,
                 name: str = "parley") -> None:
        self.name = name
        kind = ContentKind.SCREEN if seq.kind == "screen" else ContentKind.CAMERA
        self.selector = TrackFrameSelector(
            config=config or VisionConfig(), kind=kind, source_fps=30.0,
            decoder=FrameDecoder(),
        )
        self.decide_s = 0.0
        self.decisions: dict[DecisionKind, int] = {}

    def keep(self, f: CorpusFrame, w: int, h: int) -> bool:
        raw = RawFrame(PixelFormat.I420, w, h, f.i420)
        start = time.thread_time()
        d = self.selector.decide(FrameInput(f.index, f.timestamp_us, f.speaking, raw))
        self.decide_s += time.thread_time() - start
        if d.kind.keeps:
            d = self.selector.commit(d, self.selector.encode(d))
        self.decisions[d.kind] = self.decisions.get(d.kind, 0) + 1
        return d.kind.keeps


class SeedPolicy:
    name = "seed"

    def __init__(self, active_fps: float = 30.0, idle_fps: float = 5.0,
                 threshold: int = 10) -> None:
        self.active_fps, self.idle_fps, self.threshold = active_fps, idle_fps, threshold
        self.last_hash: imagehash.ImageHash | None = None
        self.last_time_us: int | None = None
        self._memo: tuple[Hashable, imagehash.ImageHash] | None = None
        self.hash_s = 0.0
        self.hashed = 0

    def _phash(self, f: CorpusFrame) -> imagehash.ImageHash:
        if self._memo is not None and self._memo[0] == f.version:
            return self._memo[1]
        start = time.perf_counter()
        h = imagehash.phash(Image.fromarray(f.luma), hash_size=8)
        self.hash_s += time.perf_counter() - start
        self.hashed += 1
        self._memo = (f.version, h)
        return h

    def keep(self, f: CorpusFrame, w: int, h: int) -> bool:
        fps = self.active_fps if f.speaking else self.idle_fps
        if self.last_time_us is not None and f.timestamp_us - self.last_time_us < US / fps:
            return False
        ph = self._phash(f)
        if self.last_hash is not None and ph - self.last_hash <= self.threshold:
            return False
        self.last_hash = ph
        self.last_time_us = f.timestamp_us
        return True


class SamplerPolicy:
    name = "lk-sampler"

    def __init__(self, speaking_fps: float = 1.0, silent_fps: float = 0.3) -> None:
        self.speaking_fps, self.silent_fps = speaking_fps, silent_fps
        self.last_s: float | None = None

    def keep(self, f: CorpusFrame, w: int, h: int) -> bool:
        fps = self.speaking_fps if f.speaking else self.silent_fps
        if fps == 0:
            return False
        # Seconds as floats, exactly as the real class compares time.time() values.
        now = f.timestamp_us / US
        if self.last_s is None or now - self.last_s >= 1.0 / fps:
            self.last_s = now
            return True
        return False


@dataclass
class Score:
    policy: str
    sequence: str
    frames: int
    kept: int
    events: int
    missed: list[str] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    redundant: int = 0
    keystrokes: int = 0
    keystrokes_within_1s: int = 0
    missed_by_category: dict[str, int] = field(default_factory=dict)
    category_events: dict[str, int] = field(default_factory=dict)
    kept_us: list[int] = field(default_factory=list)

    @property
    def dropped_fraction(self) -> float:
        return 1 - self.kept / self.frames if self.frames else 0.0


def score(seq: Sequence, policy: str, kept_us: list[int]) -> Score:
    s = Score(policy, seq.name, seq.n_frames, len(kept_us), len(seq.events), kept_us=kept_us)
    kept = np.asarray(kept_us, dtype=np.int64)
    for ev in seq.events:
        s.category_events[ev.category] = s.category_events.get(ev.category, 0) + 1
        i = int(np.searchsorted(kept, ev.start_us - ev.early_us, side="left"))
        first = int(kept[i]) if i < len(kept) else None
        captured = first is not None and (ev.end_us is None or first < ev.end_us)
        if first is not None:
            first = max(first, ev.start_us)
        if ev.category == "keystroke":
            s.keystrokes += 1
            if captured and first is not None and first - ev.start_us <= US:
                s.keystrokes_within_1s += 1
        if captured and first is not None:
            s.latencies_ms.append((first - ev.start_us) / 1000)
        else:
            s.missed.append(f"{ev.category}: {ev.label}")
            s.missed_by_category[ev.category] = s.missed_by_category.get(ev.category, 0) + 1
    starts = np.asarray(sorted(ev.start_us for ev in seq.events), dtype=np.int64)
    prev = -1
    for t in kept_us:
        # Redundant: no change started since the previous kept frame.
        if not np.any((starts > prev) & (starts <= t)):
            s.redundant += 1
        prev = t
    return s


def run_sequence(seq: Sequence, extra: Iterable[tuple[str, VisionConfig]] = ()
                 ) -> tuple[list[Score], dict[str, object]]:
    policies: list[ParleyPolicy | SeedPolicy | SamplerPolicy] = [ParleyPolicy(seq)]
    policies += [ParleyPolicy(seq, cfg, name) for name, cfg in extra]
    policies += [SeedPolicy(), SamplerPolicy()]
    kept: dict[str, list[int]] = {p.name: [] for p in policies}
    for f in seq.frames():
        for p in policies:
            if p.keep(f, seq.width, seq.height):
                kept[p.name].append(f.timestamp_us)
    scores = [score(seq, p.name, kept[p.name]) for p in policies]
    parley = policies[0]
    seed = next(p for p in policies if isinstance(p, SeedPolicy))
    assert isinstance(parley, ParleyPolicy)
    info: dict[str, object] = {
        "parley_decide_us": parley.decide_s / seq.n_frames * 1e6,
        "parley_decisions": {k.value: v for k, v in parley.decisions.items()},
        "parley_stats": parley.selector.stats,
        "seed_hash_ms": seed.hash_s / max(1, seed.hashed) * 1e3,
        "kept_us": kept,
    }
    return scores, info


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def summary_rows(scores: list[Score]) -> list[dict[str, object]]:
    rows = []
    for s in scores:
        rows.append({
            "sequence": s.sequence,
            "policy": s.policy,
            "frames": s.frames,
            "kept": s.kept,
            "dropped %": f"{100 * s.dropped_fraction:.1f}",
            "changes": s.events,
            "missed": len(s.missed),
            "latency p50 ms": f"{_pct(s.latencies_ms, 50):.0f}",
            "latency p95 ms": f"{_pct(s.latencies_ms, 95):.0f}",
            "latency max ms": f"{max(s.latencies_ms) if s.latencies_ms else float('nan'):.0f}",
            "kept, nothing changed": s.redundant,
        })
    return rows


def totals(scores: list[Score]) -> list[dict[str, object]]:
    by: dict[str, list[Score]] = {}
    for s in scores:
        by.setdefault(s.policy, []).append(s)
    rows = []
    for policy, ss in by.items():
        lat = [x for s in ss for x in s.latencies_ms]
        frames = sum(s.frames for s in ss)
        kept = sum(s.kept for s in ss)
        ks = sum(s.keystrokes for s in ss)
        rows.append({
            "policy": policy,
            "frames": frames,
            "kept": kept,
            "dropped %": f"{100 * (1 - kept / frames):.1f}",
            "changes": sum(s.events for s in ss),
            "missed": sum(len(s.missed) for s in ss),
            "latency p50 ms": f"{_pct(lat, 50):.0f}",
            "latency p95 ms": f"{_pct(lat, 95):.0f}",
            "latency max ms": f"{max(lat) if lat else float('nan'):.0f}",
            "kept, nothing changed": sum(s.redundant for s in ss),
            "keys <= 1 s": f"{sum(s.keystrokes_within_1s for s in ss)}/{ks}",
        })
    return rows


def table(rows: list[dict[str, object]]) -> str:
    """A Markdown table."""
    if not rows:
        return ""
    cols = list(rows[0])
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    line = "| " + " | ".join(c.ljust(widths[c]) for c in cols) + " |"
    sep = "|" + "|".join("-" * (widths[c] + 2) for c in cols) + "|"
    body = ["| " + " | ".join(str(r[c]).ljust(widths[c]) for c in cols) + " |" for r in rows]
    return "\n".join([line, sep, *body])


def category_rows(scores: list[Score], seqs: dict[str, Sequence]) -> list[dict[str, object]]:
    """Latency and misses by kind of change, per policy."""
    acc: dict[tuple[str, str], tuple[list[float], int, int]] = {}
    for s in scores:
        seq = seqs[s.sequence]
        kept = np.asarray(s.kept_us, dtype=np.int64)
        for ev in seq.events:
            key = (ev.category, s.policy)
            lat, n, missed = acc.get(key, ([], 0, 0))
            i = int(np.searchsorted(kept, ev.start_us - ev.early_us, side="left"))
            first = int(kept[i]) if i < len(kept) else None
            if first is not None and (ev.end_us is None or first < ev.end_us):
                lat.append(max(0, first - ev.start_us) / 1000)
            else:
                missed += 1
            acc[key] = (lat, n + 1, missed)
    rows = []
    for (cat, policy), (lat, n, missed) in sorted(acc.items()):
        rows.append({
            "change": cat,
            "policy": policy,
            "changes": n,
            "missed": missed,
            "latency p50 ms": f"{_pct(lat, 50):.0f}",
            "latency p95 ms": f"{_pct(lat, 95):.0f}",
            "latency max ms": f"{max(lat) if lat else float('nan'):.0f}",
        })
    return rows


@dataclass
class CorpusResult:
    sequences: list[Sequence]
    scores: list[Score]
    info: dict[str, dict[str, object]]
    seconds: float

    def policy_total(self, policy: str) -> dict[str, object]:
        return next(r for r in totals(self.scores) if r["policy"] == policy)

    def by(self, sequence: str, policy: str) -> Score:
        return next(s for s in self.scores if s.sequence == sequence and s.policy == policy)


# Changes that arrive one after another faster than the sustained rate (a keystroke in a run
# of typing, a step of a scroll or of a moving pointer): their latency is what the tenant's
# `sustained_fps` buys. Every other change is discrete (a slide, a pop-up, a picture that
# settles, something held up to the camera).
CONTINUOUS = frozenset({"keystroke", "scroll-motion", "cursor-motion"})


def latency_by_class(scores: list[Score], seqs: dict[str, Sequence]) -> list[dict[str, object]]:
    """Latency of discrete vs continuous changes, per policy."""
    out = []
    for policy in dict.fromkeys(s.policy for s in scores):
        lat: dict[bool, list[float]] = {True: [], False: []}
        for sc in scores:
            if sc.policy != policy:
                continue
            seq = seqs[sc.sequence]
            kept = np.asarray(sc.kept_us, dtype=np.int64)
            for ev in seq.events:
                i = int(np.searchsorted(kept, ev.start_us - ev.early_us, side="left"))
                if i < len(kept) and (ev.end_us is None or kept[i] < ev.end_us):
                    first = max(int(kept[i]), ev.start_us)
                    lat[ev.category in CONTINUOUS].append((first - ev.start_us) / 1000)
        row: dict[str, object] = {"policy": policy}
        for cont, label in ((False, "discrete"), (True, "continuous")):
            v = lat[cont]
            row[f"{label} n"] = len(v)
            row[f"{label} p50 ms"] = f"{_pct(v, 50):.0f}"
            row[f"{label} p95 ms"] = f"{_pct(v, 95):.0f}"
            row[f"{label} <= 100 ms"] = f"{sum(x <= 100 for x in v)}/{len(v)}"
        out.append(row)
    return out


def run_corpus(
    sequences: list[Sequence], extra: Iterable[tuple[str, VisionConfig]] = ()
) -> CorpusResult:
    start = time.perf_counter()
    scores: list[Score] = []
    info: dict[str, dict[str, object]] = {}
    extra = list(extra)
    for seq in sequences:
        s, i = run_sequence(seq, extra)
        scores += s
        info[seq.name] = i
    return CorpusResult(sequences, scores, info, time.perf_counter() - start)


def render_report(result: CorpusResult) -> str:
    seqs = {s.name: s for s in result.sequences}
    lines = [
        "# vision-svc: frame selection on the generated corpus",
        "",
        "Generated by `services/vision-svc/scripts/corpus_report.py` (the same corpus and",
        "harness as `tests/test_vision_corpus.py`). Nothing is downloaded: every frame is drawn",
        "by `tests/vision_corpus.py` and converted to BT.601 I420 as LiveKit delivers it.",
        "",
        "Policies, side by side on the same frames in the same run:",
        "",
        "* **parley**: vision-svc's `TrackFrameSelector` with the default tenant settings",
        "  (30 fps speaking / 5 idle minimum spacing, burst 2 then 1.5 fps sustained, global",
        "  Hamming 10, tile Hamming 14, 15 s staleness).",
        "* **seed**: the seed's rule: 30 fps speaking / 5 idle since the last processed frame,",
        "  `imagehash.phash` against the last processed frame, keep when Hamming > 10.",
        "* **lk-sampler**: livekit-agents' `VoiceActivityVideoSampler` (1 fps speaking,",
        "  0.3 fps silent, time-based, no dedup).",
        "",
        "A change is *missed* when no frame is kept while it is visible; *latency* is the time",
        "from the change to the first kept frame showing it; *kept, nothing changed* counts kept",
        "frames with no change since the previous kept frame (noise, flicker, a blinking caret,",
        "head motion, staleness keeps).",
        "",
        "## Sequences",
        "",
        table([{"sequence": s.name, "kind": s.kind, "size": f"{s.width}x{s.height}",
                "seconds": f"{s.duration_s:g}", "frames": s.n_frames, "changes": len(s.events),
                "what": s.description} for s in result.sequences]),
        "",
        "## Totals",
        "",
        table(totals(result.scores)),
        "",
        "## Latency: discrete vs continuous changes",
        "",
        "Continuous changes (" + ", ".join(sorted(CONTINUOUS)) + ") come faster than the",
        "sustained rate allows frames, so their latency is the price of not sending 5-30",
        "frames a second; `sustained_fps` sets it per tenant (the extra rows, if any, show",
        "other settings on the same frames).",
        "",
        table(latency_by_class(result.scores, seqs)),
        "",
        "## Per sequence",
        "",
        table(summary_rows(result.scores)),
        "",
        "## By kind of change",
        "",
        table(category_rows(result.scores, seqs)),
        "",
        "## parley's decisions and cost per sequence",
        "",
        table([{
            "sequence": name,
            "decisions": ", ".join(f"{k} {v}" for k, v in
                                   sorted(dict(i["parley_decisions"]).items())),  # type: ignore[call-overload]
            "image tokens sent": i["parley_stats"].image_tokens_sent,  # type: ignore[attr-defined]
            "naive image tokens": i["parley_stats"].naive_image_tokens,  # type: ignore[attr-defined]
            "decide CPU us/frame": f"{float(i['parley_decide_us']):.0f}",  # type: ignore[arg-type]
        } for name, i in result.info.items()]),
        "",
        f"Corpus run: {result.seconds:.0f} s wall, frame generation included. Decide times are",
        "this thread's CPU time per frame on a shared, loaded machine (unpinned); bench/vision",
        "measures them pinned, against imagehash in the same run.",
        "",
    ]
    return "\n".join(lines)
