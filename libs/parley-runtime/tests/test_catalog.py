from __future__ import annotations

import datetime as dt

import pytest
from parley_runtime.catalog import CatalogError, load_catalog

pytestmark = pytest.mark.unit


def test_default_catalog_loads_and_tiers_are_known() -> None:
    cat = load_catalog()
    assert cat.version
    for chain in cat.default_tiers.values():
        for model in chain:
            assert cat.get(model).kind == "llm"


def test_retired_model_resolves_to_successor_or_fails() -> None:
    cat = load_catalog()
    assert cat.resolve("claude-sonnet-4-5", dt.date(2026, 11, 29)) == "claude-sonnet-4-5"
    assert cat.resolve("claude-sonnet-4-5", dt.date(2026, 11, 30)) == "claude-sonnet-4-6"
    with pytest.raises(CatalogError):
        cat.get("gpt-4o")


def test_price_in_force_at_event_time() -> None:
    cat = load_catalog()
    m = cat.get("gemini-2.5-flash")
    assert m.price_at(dt.date(2026, 1, 1)).usd_per_mtok["input"] == pytest.approx(0.30)
