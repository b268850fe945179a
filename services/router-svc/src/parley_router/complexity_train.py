"""Offline training and evaluation of `LinearComplexityModel` (numpy; not used at serving time)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .complexity import (
    DENSE_NAMES,
    TIERS,
    ComplexityEstimator,
    FeatureExtractor,
    LinearComplexityModel,
    Tier,
)

__all__ = [
    "Example",
    "TrainOptions",
    "accuracy",
    "confusion",
    "cross_validate",
    "load_examples",
    "train",
]


@dataclass(frozen=True, slots=True)
class Example:
    id: str
    text: str
    tier: Tier
    reason: str
    split: str


@dataclass(frozen=True, slots=True)
class TrainOptions:
    hash_dims: int = 2048
    l2_dense: float = 1e-3
    l2_hash: float = 3e-2
    epochs: int = 600
    learning_rate: float = 0.5


def load_examples(path: str | Path) -> list[Example]:
    out: list[Example] = []
    seen: set[str] = set()
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        if row["id"] in seen:
            raise ValueError(f"line {n}: duplicate id {row['id']!r}")
        seen.add(row["id"])
        if not str(row.get("reason", "")).strip():
            raise ValueError(f"line {n}: every label needs a reason")
        out.append(
            Example(row["id"], row["text"], Tier.from_label(row["tier"]), row["reason"],
                    row.get("split", "train"))
        )
    return out


def _matrices(
    examples: Sequence[Example], fx: FeatureExtractor
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = len(examples)
    dense = np.zeros((n, len(DENSE_NAMES)))
    hashed = np.zeros((n, fx.hash_dims))
    labels = np.zeros(n, dtype=np.int64)
    for i, ex in enumerate(examples):
        tokens = fx.tokens(ex.text)
        dense[i] = fx.dense(ex.text, tokens)
        hashed[i, fx.hashed(tokens)] = 1.0
        labels[i] = TIERS.index(ex.tier)
    return dense, hashed, labels


def train(
    examples: Sequence[Example], options: TrainOptions | None = None, *, name: str = "linear-v1"
) -> LinearComplexityModel:
    """Fit an L2-regularised softmax regression by full-batch gradient descent (Adam)."""
    opt = options or TrainOptions()
    fx = FeatureExtractor(hash_dims=opt.hash_dims)
    dense, hashed, labels = _matrices(examples, fx)
    x = np.hstack([dense, hashed])
    n, d = x.shape
    y = np.zeros((n, 3))
    y[np.arange(n), labels] = 1.0
    # Balance the classes so a majority tier does not win by default.
    class_w = n / (3.0 * np.maximum(y.sum(axis=0), 1.0))
    sample_w = (y * class_w).sum(axis=1, keepdims=True)
    l2 = np.concatenate(
        [np.full(dense.shape[1], opt.l2_dense), np.full(hashed.shape[1], opt.l2_hash)]
    )
    w = np.zeros((d, 3))
    b = np.zeros(3)
    m_w, v_w, m_b, v_b = np.zeros_like(w), np.zeros_like(w), np.zeros(3), np.zeros(3)
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    lr = opt.learning_rate / 10.0
    for step in range(1, opt.epochs + 1):
        z = x @ w + b
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        g = (p - y) * sample_w / n
        grad_w = x.T @ g + l2[:, None] * w
        grad_b = g.sum(axis=0)
        m_w = beta1 * m_w + (1 - beta1) * grad_w
        v_w = beta2 * v_w + (1 - beta2) * grad_w**2
        m_b = beta1 * m_b + (1 - beta1) * grad_b
        v_b = beta2 * v_b + (1 - beta2) * grad_b**2
        corr1, corr2 = 1 - beta1**step, 1 - beta2**step
        w -= lr * (m_w / corr1) / (np.sqrt(v_w / corr2) + eps)
        b -= lr * (m_b / corr1) / (np.sqrt(v_b / corr2) + eps)
    n_dense = dense.shape[1]
    hash_w = {
        i: [round(float(v), 5) for v in w[n_dense + i]]
        for i in range(hashed.shape[1])
        if np.abs(w[n_dense + i]).max() > 1e-4
    }
    return LinearComplexityModel(
        dense_weights=[[round(float(v), 5) for v in row] for row in w[:n_dense]],
        hash_weights=hash_w,
        bias=[round(float(v), 5) for v in b],
        hash_dims=opt.hash_dims,
        name=name,
        meta={"trained_on": len(examples), "options": vars_of(opt)},
    )


def vars_of(opt: TrainOptions) -> dict[str, float]:
    return {k: getattr(opt, k) for k in opt.__dataclass_fields__}


def accuracy(estimator: ComplexityEstimator, examples: Iterable[Example]) -> float:
    rows = list(examples)
    if not rows:
        return 0.0
    hits = sum(1 for ex in rows if estimator.estimate(ex.text).tier == ex.tier)
    return hits / len(rows)


def confusion(estimator: ComplexityEstimator, examples: Iterable[Example]) -> list[list[int]]:
    """3x3 counts: rows are the labelled tier, columns the predicted tier."""
    m = [[0, 0, 0] for _ in range(3)]
    for ex in examples:
        m[TIERS.index(ex.tier)][TIERS.index(estimator.estimate(ex.text).tier)] += 1
    return m


def cross_validate(
    examples: Sequence[Example], folds: int = 5, options: TrainOptions | None = None
) -> list[float]:
    """Stratified k-fold accuracies (deterministic fold assignment by position within tier)."""
    by_tier: dict[Tier, list[Example]] = {t: [] for t in TIERS}
    for ex in examples:
        by_tier[ex.tier].append(ex)
    fold_of: dict[str, int] = {}
    for rows in by_tier.values():
        for i, ex in enumerate(rows):
            fold_of[ex.id] = i % folds
    scores = []
    for k in range(folds):
        train_rows = [ex for ex in examples if fold_of[ex.id] != k]
        test_rows = [ex for ex in examples if fold_of[ex.id] == k]
        scores.append(accuracy(train(train_rows, options), test_rows))
    return scores
