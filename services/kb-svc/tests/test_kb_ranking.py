"""Reciprocal rank fusion."""

from __future__ import annotations

import pytest
from parley_kb.ranking import reciprocal_rank_fusion

pytestmark = pytest.mark.unit


def test_items_ranked_high_by_both_lists_win() -> None:
    fused = reciprocal_rank_fusion([["a", "b", "c"], ["b", "a", "d"]], k=60)
    keys = [k for k, _ in fused]
    assert keys[:2] in (["a", "b"], ["b", "a"])
    assert set(keys) == {"a", "b", "c", "d"}
    assert fused[0][1] < 1.0


def test_scores_are_normalised_to_one_for_top_of_every_list() -> None:
    fused = reciprocal_rank_fusion([["x", "y"], ["x", "z"]], k=10)
    assert fused[0] == ("x", pytest.approx(1.0))
    assert all(0 < s <= 1 for _, s in fused)


def test_single_list_and_weights() -> None:
    assert [k for k, _ in reciprocal_rank_fusion([["a", "b"], []])] == ["a", "b"]
    fused = reciprocal_rank_fusion([["a"], ["b"]], weights=[1.0, 3.0])
    assert fused[0][0] == "b"
    with pytest.raises(ValueError):
        reciprocal_rank_fusion([["a"]], weights=[1.0, 2.0])


def test_duplicates_within_a_list_count_once() -> None:
    fused = dict(reciprocal_rank_fusion([["a", "a", "b"], ["b"]], k=60))
    assert fused["b"] > fused["a"]
