"""The generated corpus, side by side: vision-svc vs the seed's rule vs livekit's sampler."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from vision_corpus import all_sequences
from vision_eval import CorpusResult, SamplerPolicy, category_rows, render_report, run_corpus

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def corpus() -> CorpusResult:
    result = run_corpus(all_sequences())
    print("\n" + render_report(result))
    return result


def test_no_slide_change_is_missed(corpus: CorpusResult) -> None:
    for name in ("slides", "slide-number", "static-share"):
        s = corpus.by(name, "parley")
        assert not [m for m in s.missed if m.startswith("slide")], (name, s.missed)
    # The seed's global hash does miss the page-number changes: the corpus can tell.
    assert corpus.by("slide-number", "seed").missed


def test_typed_characters_are_kept_within_one_second(corpus: CorpusResult) -> None:
    keys = within = 0
    for s in corpus.scores:
        if s.policy == "parley":
            keys += s.keystrokes
            within += s.keystrokes_within_1s
    assert keys >= 80
    assert within / keys >= 0.95, (within, keys)


def test_static_dominated_screen_share_drops_90_percent(corpus: CorpusResult) -> None:
    for name in ("static-share", "slides", "slide-number", "popup"):
        s = corpus.by(name, "parley")
        assert s.dropped_fraction >= 0.90, (name, s.dropped_fraction)


def test_no_change_missed_fewer_frames_than_the_sampler(corpus: CorpusResult) -> None:
    parley = corpus.policy_total("parley")
    sampler = corpus.policy_total("lk-sampler")
    seed = corpus.policy_total("seed")
    assert parley["missed"] == 0
    assert int(parley["kept"]) < int(sampler["kept"])  # type: ignore[call-overload]
    assert int(parley["kept, nothing changed"]) < int(sampler["kept, nothing changed"])  # type: ignore[call-overload]
    assert int(seed["missed"]) > 10  # type: ignore[call-overload]


def test_discrete_changes_are_captured_within_100_ms(corpus: CorpusResult) -> None:
    seqs = {s.name: s for s in corpus.sequences}
    rows = {(r["change"], r["policy"]): r for r in category_rows(corpus.scores, seqs)}
    for cat in ("slide", "slide-number", "popup"):
        r = rows[(cat, "parley")]
        assert r["missed"] == 0 and float(str(r["latency max ms"])) <= 100, r
    # Continuous change (typing, scrolling, a moving pointer, a card raised) is paced by the
    # sustained rate: still far ahead of the 1 fps sampler.
    for cat in ("keystroke", "scroll-rest", "cursor-rest", "object"):
        ours, theirs = rows[(cat, "parley")], rows[(cat, "lk-sampler")]
        assert float(str(ours["latency p95 ms"])) <= 700, ours
        assert float(str(ours["latency p95 ms"])) < float(str(theirs["latency p95 ms"])), cat


def test_cameras_keep_nothing_for_noise_flicker_and_motion(corpus: CorpusResult) -> None:
    head = corpus.by("talking-head", "parley")
    assert head.kept <= 2  # the first frame and one staleness keep at 15 s
    card = corpus.by("camera-card", "parley")
    assert not card.missed and card.redundant <= 5


def test_sampler_matches_livekit_voice_activity_video_sampler(monkeypatch: Any) -> None:
    """The re-implemented rule decides like livekit-agents' own class on the same clock."""
    from livekit.agents.voice import agent_session

    clock = {"now": 0.0}

    class FakeTime:
        @staticmethod
        def time() -> float:
            return clock["now"]

    monkeypatch.setattr(agent_session, "time", FakeTime)

    class Session:
        user_state = "listening"

    real = agent_session.VoiceActivityVideoSampler(speaking_fps=1.0, silent_fps=0.3)
    ours = SamplerPolicy()
    rng = np.random.default_rng(0)
    session = Session()
    from vision_corpus import CorpusFrame

    agree = 0
    for i in range(900):
        t_us = int(i * 1_000_000 / 30)
        speaking = bool((i // 45) % 2) if rng.random() > 0.05 else not bool((i // 45) % 2)
        clock["now"] = t_us / 1e6
        session.user_state = "speaking" if speaking else "listening"
        frame = CorpusFrame(i, t_us, speaking, b"", np.empty(0, np.uint8), i)
        theirs = real(None, session)  # type: ignore[arg-type]
        agree += theirs == ours.keep(frame, 0, 0)
    assert agree == 900
