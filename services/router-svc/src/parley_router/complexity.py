"""Turn complexity estimation: which tier a turn needs.

Two estimators share one interface:

- `SeedHeuristic` is the seed document's regex score (length, technical words, question marks,
  reasoning phrases), kept as the named baseline every report compares against.
- `LinearComplexityModel` is a multinomial logistic regression over cue-word groups, shape
  features and hashed word n-grams, trained offline on the labelled set in
  `services/router-svc/eval/` (`scripts/train_complexity.py`) and shipped as a JSON weight file.
  Inference is a few dictionary look-ups and a 3-column dot product: tens of microseconds.
"""

from __future__ import annotations

import json
import math
import re
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

__all__ = [
    "ComplexityEstimate",
    "ComplexityEstimator",
    "FeatureExtractor",
    "LinearComplexityModel",
    "SeedHeuristic",
    "Tier",
    "load_default_estimator",
]


class Tier(IntEnum):
    """Complexity tiers (values equal the proto enum's)."""

    SIMPLE = 1
    STANDARD = 2
    PREMIUM = 3

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def from_label(cls, label: str) -> Tier:
        try:
            return cls[label.upper()]
        except KeyError:
            raise ValueError(f"unknown tier {label!r}: use simple, standard or premium") from None


TIERS: tuple[Tier, ...] = (Tier.SIMPLE, Tier.STANDARD, Tier.PREMIUM)


@dataclass(frozen=True, slots=True)
class ComplexityEstimate:
    tier: Tier
    # Expected complexity in [0, 1] (0 simple, 0.5 standard, 1 premium).
    score: float
    estimator: str


class ComplexityEstimator(Protocol):
    name: str

    def estimate(self, text: str) -> ComplexityEstimate: ...


# ---------------------------------------------------------------------------------------------
# Baseline: the seed's heuristic, re-implemented from its description (thresholds 2 and 5).

_SEED_TECHNICAL = re.compile(
    r"\b(?:API|SQL|code|function|algorithm|architecture|optimiz(?:e|ation)|analyze|compare"
    r"|explain why)\b",
    re.IGNORECASE,
)
_SEED_REASONING = re.compile(
    r"\b(?:how would|why|should I|which is better|pros and cons)\b", re.IGNORECASE
)


class SeedHeuristic:
    """The seed's complexity score: the baseline to beat."""

    name = "seed-heuristic"

    def score(self, text: str) -> int:
        points = 0
        words = len(text.split())
        if words > 50:
            points += 2
        elif words > 20:
            points += 1
        # One point per distinct technical pattern present, two per reasoning pattern.
        points += len({m.lower() for m in _SEED_TECHNICAL.findall(text)})
        if text.count("?") >= 2:
            points += 1
        points += 2 * len({m.lower() for m in _SEED_REASONING.findall(text)})
        return points

    def estimate(self, text: str) -> ComplexityEstimate:
        points = self.score(text)
        if points >= 5:
            tier = Tier.PREMIUM
        elif points >= 2:
            tier = Tier.STANDARD
        else:
            tier = Tier.SIMPLE
        return ComplexityEstimate(tier, min(points / 6.0, 1.0), self.name)


# ---------------------------------------------------------------------------------------------
# Features

_TOKEN_RE = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")

# Cue-word groups. Written from how people talk to a voice assistant, not from the eval set:
# they say *what kind* of work a request asks for, the weights say how much each kind matters.
_GROUPS: dict[str, frozenset[str]] = {
    "command": frozenset(
        "set remind reminder timer alarm play pause stop skip next turn dim lock unlock open "
        "close call text cancel mute unmute add book volume lights louder quieter resume "
        "repeat again start over flip roll".split()
    ),
    "smalltalk": frozenset(
        "hi hey hello thanks thank ok okay cool good night morning bye goodbye sorry yes no "
        "nope sure great perfect nice awesome hmm alright fine".split()
    ),
    "lookup": frozenset(
        "when where who whose spell pronounce mean meaning synonym opposite antonym capital "
        "weather time date today tomorrow tonight status balance convert tall old far many "
        "much fact score population rate symbol plural rhymes".split()
    ),
    "explain": frozenset(
        "explain explanation describe summarize summarise summary overview difference "
        "differences works work understand meaning story history rules".split()
    ),
    "produce": frozenset(
        "write draft rewrite rephrase translate plan list recipe tips suggest recommend "
        "outline make create template checklist ideas names poem haiku limerick toast bio "
        "email letter message note quiz practice".split()
    ),
    "reason": frozenset(
        "prove proof derive derivation design architect architecture debug diagnose "
        "diagnosis analyze analyse analysis critique evaluate steelman reconcile optimize "
        "optimise refactor implement estimate justify tradeoff tradeoffs trade offs "
        "prioritize prioritise prioritization weigh weighing counterargument implications "
        "strategy framework hypotheses hypothesis rank model modelling modeling assumptions "
        "rigorous rigorously edge cases flaws gap cause causes root".split()
    ),
    "tech": frozenset(
        "database databases query queries latency p99 p50 race concurrency deadlock deadlocks "
        "kubernetes pods docker dockerfile apis algorithm complexity schema cache caching "
        "function functions script python node react compiler tcp memory leak index replicas "
        "distributed consistency migration migrate uuid segfault parser bash regex thread "
        "threads async asyncio service services server cluster sql postgres dynamodb "
        "microservices monolith integer column columns recursion recursive iterative heap "
        "llm encryption cryptography protocol build builds runtime".split()
    ),
    "stakes": frozenset(
        "legal lawyer contract clause clauses deposition court tax taxes penalties insurance "
        "insurer appeal insulin medication diagnosed symptoms chest heart harm self laid "
        "layoff layoffs lawsuit custody gdpr compliance regulatory regulation jurisdiction "
        "landlord deposit will liability bullied dementia crisis runway valuation equity "
        "filing court".split()
    ),
    "money": frozenset(
        "thousand k million percent dollars euros budget loan loans invest investing "
        "revenue churn salary mortgage refinance withdraw savings retirement".split()
    ),
    "constraint": frozenset(
        "without while considering including under within every each only exactly nobody "
        "both except unless given assuming strict zero".split()
    ),
    "depth": frozenset(
        "why reasoning reason thoroughly accurately carefully detailed depth deeply practice "
        "principles intuition math".split()
    ),
    "decision": frozenset(
        "should decide decision whether versus vs better pick choose worth option options "
        "recommend".split()
    ),
}
_PHRASES: dict[str, tuple[tuple[str, str], ...]] = {
    "reason": (("walk", "through"), ("think", "through"), ("show", "your"), ("first", "principles"),
               ("edge", "cases"), ("root", "cause"), ("trade", "offs"), ("in", "practice"),
               ("second", "order"), ("what", "would"), ("how", "would")),
    "explain": (("how", "does"), ("how", "do"), ("what's", "the"), ("tell", "me")),
    "lookup": (("what", "time"), ("how", "many"), ("how", "much"), ("what's", "my")),
}
_GROUP_NAMES = tuple(_GROUPS)
_SHAPE_NAMES = (
    "bias_words_log",
    "long",
    "very_long",
    "questions",
    "digits",
    "commas",
    "clauses",
    "colon",
)
DENSE_NAMES: tuple[str, ...] = _SHAPE_NAMES + tuple(f"g_{g}" for g in _GROUP_NAMES)
# Cue word -> the groups it belongs to (one lookup per token instead of one per group).
_WORD_GROUPS: dict[str, tuple[str, ...]] = {}
for _g in _GROUP_NAMES:
    for _w in _GROUPS[_g]:
        _WORD_GROUPS[_w] = (*_WORD_GROUPS.get(_w, ()), _g)
_CLAUSE_WORDS = frozenset(("and", "but", "or", "then", "so", "because"))


class FeatureExtractor:
    """Text -> (dense feature vector, hashed n-gram indices)."""

    def __init__(self, *, hash_dims: int = 2048) -> None:
        self.hash_dims = hash_dims

    def tokens(self, text: str) -> list[str]:
        return _TOKEN_RE.findall(text.lower())

    def dense(self, text: str, tokens: Sequence[str]) -> list[float]:
        n = len(tokens)
        counts = dict.fromkeys(_GROUP_NAMES, 0)
        word_groups = _WORD_GROUPS
        for tok in tokens:
            groups = word_groups.get(tok)
            if groups is not None:
                for g in groups:
                    counts[g] += 1
        if n > 1:
            pairs = set(zip(tokens, tokens[1:], strict=False))
            for g, phrases in _PHRASES.items():
                for p in phrases:
                    if p in pairs:
                        counts[g] += 1
        digits = sum(1 for t in tokens if any(c.isdigit() for c in t))
        clauses = sum(1 for t in tokens if t in _CLAUSE_WORDS)
        shape = [
            math.log1p(n) / 4.0,
            1.0 if n > 18 else 0.0,
            1.0 if n > 32 else 0.0,
            min(text.count("?"), 3) / 3.0,
            min(digits, 5) / 5.0,
            min(text.count(","), 6) / 6.0,
            min(clauses, 6) / 6.0,
            1.0 if ":" in text else 0.0,
        ]
        return shape + [min(counts[g], 3) / 3.0 for g in _GROUP_NAMES]

    def hashed(self, tokens: Sequence[str]) -> list[int]:
        dims = self.hash_dims
        idx = {zlib.crc32(t.encode()) % dims for t in tokens}
        for a, b in zip(tokens, tokens[1:], strict=False):
            idx.add(zlib.crc32(f"{a} {b}".encode()) % dims)
        return sorted(idx)


# ---------------------------------------------------------------------------------------------
# The trained model


class LinearComplexityModel:
    """Multinomial logistic regression over `FeatureExtractor` features."""

    def __init__(
        self,
        *,
        dense_weights: Sequence[Sequence[float]],
        hash_weights: Mapping[int, Sequence[float]],
        bias: Sequence[float],
        hash_dims: int,
        name: str = "linear-v1",
        meta: dict[str, Any] | None = None,
    ) -> None:
        if len(dense_weights) != len(DENSE_NAMES):
            raise ValueError(
                f"weight file has {len(dense_weights)} dense weights; the extractor has "
                f"{len(DENSE_NAMES)}: retrain with scripts/train_complexity.py"
            )
        self.name = name
        self.meta = meta or {}
        self._features = FeatureExtractor(hash_dims=hash_dims)
        self._dense = [tuple(float(x) for x in row) for row in dense_weights]
        self._hash = {int(k): tuple(float(x) for x in v) for k, v in hash_weights.items()}
        self._bias = tuple(float(x) for x in bias)

    def probabilities(self, text: str) -> tuple[float, float, float]:
        tokens = self._features.tokens(text)
        s0, s1, s2 = self._bias
        for x, w in zip(self._features.dense(text, tokens), self._dense, strict=True):
            if x:
                s0 += x * w[0]
                s1 += x * w[1]
                s2 += x * w[2]
        hw = self._hash
        for i in self._features.hashed(tokens):
            hwi = hw.get(i)
            if hwi is not None:
                s0 += hwi[0]
                s1 += hwi[1]
                s2 += hwi[2]
        top = max(s0, s1, s2)
        e0, e1, e2 = math.exp(s0 - top), math.exp(s1 - top), math.exp(s2 - top)
        total = e0 + e1 + e2
        return e0 / total, e1 / total, e2 / total

    def estimate(self, text: str) -> ComplexityEstimate:
        p = self.probabilities(text)
        best = max(range(3), key=p.__getitem__)
        return ComplexityEstimate(TIERS[best], p[1] * 0.5 + p[2], self.name)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "hash_dims": self._features.hash_dims,
            "dense_names": list(DENSE_NAMES),
            "dense_weights": [list(r) for r in self._dense],
            "hash_weights": {str(k): list(v) for k, v in sorted(self._hash.items())},
            "bias": list(self._bias),
            "meta": self.meta,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LinearComplexityModel:
        if list(data.get("dense_names", [])) != list(DENSE_NAMES):
            raise ValueError(
                "weight file's features differ from the code's: retrain with "
                "scripts/train_complexity.py"
            )
        return cls(
            dense_weights=data["dense_weights"],
            hash_weights={int(k): v for k, v in data["hash_weights"].items()},
            bias=data["bias"],
            hash_dims=int(data["hash_dims"]),
            name=str(data.get("name", "linear")),
            meta=dict(data.get("meta") or {}),
        )

    @classmethod
    def load(cls, path: str | Path | None = None) -> LinearComplexityModel:
        if path is None:
            text = resources.files(__package__).joinpath("complexity_model.json").read_text(
                encoding="utf-8"
            )
        else:
            text = Path(path).read_text(encoding="utf-8")
        return cls.from_json(json.loads(text))


def load_default_estimator(path: str | Path | None = None) -> LinearComplexityModel:
    """The shipped trained model (or one from `path`)."""
    return LinearComplexityModel.load(path)
