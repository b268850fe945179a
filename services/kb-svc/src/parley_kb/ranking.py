"""Reciprocal rank fusion of ranked candidate lists (vector + full text = hybrid search)."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import TypeVar

K = TypeVar("K", bound=Hashable)

RRF_K = 60


def reciprocal_rank_fusion(
    ranked_lists: Sequence[Sequence[K]],
    *,
    k: int = RRF_K,
    weights: Sequence[float] | None = None,
) -> list[tuple[K, float]]:
    """Fuse ranked lists by RRF (Cormack et al. 2009): score(d) = sum_i w_i / (k + rank_i(d)).

    Scores are divided by their maximum possible value, so a candidate ranked first by every
    list scores 1.0 and the scale is the same whatever `k` and the weights are. Ties keep the
    order of first appearance, which makes results deterministic.
    """
    if k < 1:
        raise ValueError("k must be >= 1")
    if weights is None:
        weights = [1.0] * len(ranked_lists)
    if len(weights) != len(ranked_lists):
        raise ValueError("one weight per ranked list")
    best = sum(w / (k + 1) for w in weights)
    if best <= 0:
        return []
    scores: dict[K, float] = {}
    for ranked, weight in zip(ranked_lists, weights, strict=True):
        seen: set[K] = set()
        for rank, key in enumerate(ranked, start=1):
            if key in seen:
                continue
            seen.add(key)
            scores[key] = scores.get(key, 0.0) + weight / (k + rank)
    fused = sorted(scores.items(), key=lambda item: -item[1])
    return [(key, score / best) for key, score in fused]
