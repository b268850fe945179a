"""Complexity estimation: the seed baseline, the shipped model, the eval set and speed."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from parley_router.complexity import LinearComplexityModel, SeedHeuristic, Tier
from parley_router.complexity_train import (
    TrainOptions,
    accuracy,
    confusion,
    load_examples,
    train,
)

pytestmark = pytest.mark.unit

EVAL_SET = Path(__file__).resolve().parents[1] / "eval" / "complexity.jsonl"


@pytest.fixture(scope="module")
def examples() -> list:  # type: ignore[type-arg]
    return load_examples(EVAL_SET)


def test_eval_set_is_large_labelled_and_split(examples: list) -> None:  # type: ignore[type-arg]
    assert len(examples) >= 300
    tiers = {ex.tier for ex in examples}
    assert tiers == {Tier.SIMPLE, Tier.STANDARD, Tier.PREMIUM}
    assert all(ex.reason.strip() for ex in examples)
    for tier in tiers:
        assert sum(1 for ex in examples if ex.tier is tier) >= 80
    test = [ex for ex in examples if ex.split == "test"]
    assert 0.2 * len(examples) <= len(test) <= 0.4 * len(examples)
    assert len({ex.text.lower() for ex in examples}) == len(examples), "duplicate queries"


def test_seed_heuristic_scores_as_the_seed_describes() -> None:
    seed = SeedHeuristic()
    assert seed.estimate("hi").tier is Tier.SIMPLE
    # 'why' (2) + 'should I' (2) -> 4 -> moderate
    assert seed.estimate("why should I care").tier is Tier.STANDARD
    # two reasoning phrases + two technical words + two questions -> complex
    text = "How would you optimize this SQL? Why is it slow?"
    assert seed.score(text) >= 5
    assert seed.estimate(text).tier is Tier.PREMIUM
    long_simple = " ".join(["word"] * 60)
    assert seed.score(long_simple) == 2


def test_shipped_model_beats_the_seed_on_the_held_out_split(examples: list) -> None:  # type: ignore[type-arg]
    test = [ex for ex in examples if ex.split == "test"]
    model = LinearComplexityModel.load()
    seed_acc = accuracy(SeedHeuristic(), test)
    model_acc = accuracy(model, test)
    assert model_acc >= 0.75
    assert model_acc >= seed_acc + 0.25, (model_acc, seed_acc)
    # Under-routing a premium turn to the cheapest tier is the costly mistake: rare.
    cm = confusion(model, test)
    assert cm[2][0] <= 2


def test_shipped_model_was_trained_on_the_train_split_only(examples: list) -> None:  # type: ignore[type-arg]
    train_rows = [ex for ex in examples if ex.split == "train"]
    test = [ex for ex in examples if ex.split == "test"]
    shipped = LinearComplexityModel.load()
    assert shipped.meta["trained_on"] == len(train_rows)
    retrained = train(train_rows, TrainOptions(**shipped.meta["options"]))
    assert abs(accuracy(retrained, test) - accuracy(shipped, test)) < 0.02


def test_estimate_is_fast_on_one_core(examples: list) -> None:  # type: ignore[type-arg]
    try:
        before = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {min(before)})
    except (AttributeError, OSError):
        before = None
    try:
        model = LinearComplexityModel.load()
        texts = [ex.text for ex in examples] * 5
        samples = []
        for t in texts:
            # CPU time of this thread: what the estimate costs, not how long a loaded machine
            # kept us off the core.
            start = time.thread_time_ns()
            est = model.estimate(t)
            samples.append((time.thread_time_ns() - start) / 1e9)
            assert 0.0 <= est.score <= 1.0
        samples.sort()
        assert samples[int(len(samples) * 0.99)] < 0.001
    finally:
        if before is not None:
            os.sched_setaffinity(0, before)


def test_model_file_mismatch_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "m.json"
    bad.write_text('{"dense_names": ["x"], "dense_weights": [], "hash_weights": {}, '
                   '"bias": [0,0,0], "hash_dims": 8}')
    with pytest.raises(ValueError, match="retrain"):
        LinearComplexityModel.load(bad)
