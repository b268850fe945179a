"""The versioned model and price catalog shared by router-svc and billing-svc."""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

logger = logging.getLogger(__name__)

__all__ = ["Catalog", "ModelEntry", "PriceEntry", "load_catalog", "CatalogError"]


class CatalogError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class PriceEntry:
    effective_from: dt.date
    # Per 1M tokens (LLM/embedding): input, output, cache_write, cache_read.
    usd_per_mtok: dict[str, float] = field(default_factory=dict)
    usd_per_minute: float | None = None
    usd_per_kchar: float | None = None

    def version(self, catalog_version: str, model_id: str) -> str:
        return f"{catalog_version}/{model_id}@{self.effective_from.isoformat()}"


@dataclass(frozen=True, slots=True)
class ModelEntry:
    model_id: str
    provider: str
    kind: str
    prices: tuple[PriceEntry, ...]
    context_window: int = 0
    min_cacheable_tokens: int = 0
    supports_images: bool = False
    supports_tools: bool = False
    dimensions: int | None = None
    status: str = "ga"
    retires_on: dt.date | None = None
    successor: str | None = None
    source: str = ""
    checked_on: str = ""

    def price_at(self, when: dt.datetime | dt.date) -> PriceEntry:
        day = when.date() if isinstance(when, dt.datetime) else when
        chosen = None
        for entry in self.prices:
            if entry.effective_from <= day:
                chosen = entry
        if chosen is None:
            # Usage before the first known price is priced with the earliest entry.
            chosen = self.prices[0]
        return chosen

    def is_retired(self, today: dt.date) -> bool:
        return self.retires_on is not None and today >= self.retires_on


@dataclass(frozen=True, slots=True)
class Catalog:
    version: str
    models: dict[str, ModelEntry]
    default_tiers: dict[str, tuple[str, ...]]

    def get(self, model_id: str) -> ModelEntry:
        try:
            return self.models[model_id]
        except KeyError:
            raise CatalogError(
                f"unknown model {model_id!r}; known: {sorted(self.models)}"
            ) from None

    def resolve(self, model_id: str, today: dt.date | None = None) -> str:
        """The model to use for `model_id` today: itself, or its successor if it has retired.

        Raises CatalogError when it has retired and names no successor.
        """
        today = today or dt.date.today()
        seen: set[str] = set()
        current = model_id
        while True:
            entry = self.get(current)
            if not entry.is_retired(today):
                if current != model_id:
                    logger.warning(
                        "retired model replaced by its successor",
                        extra={"model": model_id, "successor": current},
                    )
                return current
            if entry.successor is None or entry.successor in seen:
                raise CatalogError(
                    f"model {current!r} retired on {entry.retires_on} and names no successor: "
                    "change the configuration"
                )
            seen.add(current)
            current = entry.successor


def _parse(data: dict[str, Any]) -> Catalog:
    models: dict[str, ModelEntry] = {}
    for model_id, raw in (data.get("models") or {}).items():
        life = raw.get("lifecycle") or {}
        prices = tuple(
            sorted(
                (
                    PriceEntry(
                        effective_from=dt.date.fromisoformat(str(p["effective_from"])),
                        usd_per_mtok={
                            k: float(v) for k, v in (p.get("usd_per_mtok") or {}).items()
                        },
                        usd_per_minute=p.get("usd_per_minute"),
                        usd_per_kchar=p.get("usd_per_kchar"),
                    )
                    for p in raw.get("prices") or []
                ),
                key=lambda e: e.effective_from,
            )
        )
        if not prices:
            raise CatalogError(f"model {model_id!r} has no prices")
        retires = life.get("retires_on")
        models[model_id] = ModelEntry(
            model_id=model_id,
            provider=str(raw["provider"]),
            kind=str(raw["kind"]),
            prices=prices,
            context_window=int(raw.get("context_window") or 0),
            min_cacheable_tokens=int(raw.get("min_cacheable_tokens") or 0),
            supports_images=bool(raw.get("supports_images", False)),
            supports_tools=bool(raw.get("supports_tools", False)),
            dimensions=raw.get("dimensions"),
            status=str(life.get("status", "ga")),
            retires_on=dt.date.fromisoformat(str(retires)) if retires else None,
            successor=life.get("successor"),
            source=str(raw.get("source", "")),
            checked_on=str(raw.get("checked_on", "")),
        )
    tiers = {k: tuple(v) for k, v in (data.get("default_tiers") or {}).items()}
    for tier, chain in tiers.items():
        for m in chain:
            if m not in models:
                raise CatalogError(f"default tier {tier!r} names unknown model {m!r}")
    return Catalog(version=str(data["version"]), models=models, default_tiers=tiers)


def load_catalog(path: str | Path | None = None) -> Catalog:
    """Load the catalog from `path` (PARLEY_CATALOG_FILE) or the packaged default."""
    if path is None:
        return _default_catalog()
    with open(path, encoding="utf-8") as fh:
        return _parse(yaml.safe_load(fh))


@cache
def _default_catalog() -> Catalog:
    text = resources.files(__package__).joinpath("catalog.yaml").read_text(encoding="utf-8")
    return _parse(yaml.safe_load(text))
