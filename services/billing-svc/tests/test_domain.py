"""Domain rules without I/O: event validation, report periods, budgets, metric labels."""

from __future__ import annotations

import datetime as dt
import math
from decimal import Decimal

import pytest
from parley_billing.budgets import (
    Budget,
    BudgetState,
    defaults_from_tenants,
    evaluate,
    month_bounds,
)
from parley_billing.events import EventError, Usage, UsageType, validate
from parley_billing.metrics import TenantLabels
from parley_billing.reports import Period
from parley_runtime.tenants import TenantRegistry

pytestmark = pytest.mark.unit

NOW = dt.datetime(2026, 11, 24, 12, tzinfo=dt.UTC)


def _check(**kw: object) -> None:
    base: dict[str, object] = {
        "idempotency_key": "k1", "occurred_at": NOW, "session_id": "s", "service": "router-svc",
        "usage_type": UsageType.LLM, "model_id": "gemini-2.5-flash", "input_tokens": 10,
        "output_tokens": 1,
    }
    base.update(kw)
    validate(Usage(**base), now=NOW, max_age=dt.timedelta(days=400),  # type: ignore[arg-type]
             max_future_skew=dt.timedelta(minutes=5))


def test_a_plain_event_is_valid() -> None:
    _check()
    _check(usage_type=UsageType.SESSION, model_id="", minutes=3.5)


@pytest.mark.parametrize(
    "fields, fragment",
    [
        ({"idempotency_key": ""}, "idempotency_key is required"),
        ({"idempotency_key": "has space"}, "printable"),
        ({"idempotency_key": "x" * 201}, "1-200"),
        ({"input_tokens": -1}, "must not be negative"),
        ({"output_tokens": 10**12}, "implausibly large"),
        ({"cached_input_tokens": 8, "cache_write_tokens": 5}, "exceed input_tokens"),
        ({"occurred_at": NOW + dt.timedelta(hours=1)}, "in the future"),
        ({"occurred_at": NOW - dt.timedelta(days=500)}, "older than"),
        ({"service": ""}, "service is required"),
        ({"model_id": ""}, "model_id is required"),
        ({"model_id": "bad model"}, "model_id"),
        ({"session_id": "x" * 129}, "session_id"),
        ({"usage_type": UsageType.STT, "audio_seconds": math.nan}, "finite"),
        ({"usage_type": UsageType.STT, "audio_seconds": -2.0}, "negative"),
        ({"usage_type": UsageType.STT, "audio_seconds": 1e9}, "implausibly"),
        ({"usage_type": UsageType.TTS, "characters": -5}, "negative"),
        ({"usage_type": UsageType.SESSION, "minutes": math.inf}, "finite"),
        ({"usage_type": UsageType.VISION, "frames_seen": 10, "frames_kept": 5,
          "dropped_rate": 6}, "exceed frames_seen"),
        ({"usage_type": UsageType.VISION, "naive_image_tokens": 5}, "frames_seen is 0"),
        # latency_ms is not priced but is stored with the event: a measurement like the rest.
        ({"latency_ms": math.nan}, "latency_ms must be a finite"),
        ({"latency_ms": math.inf}, "latency_ms must be a finite"),
        ({"latency_ms": -1.0}, "latency_ms must not be negative"),
        ({"latency_ms": 1e12}, "latency_ms = .* implausibly"),
    ],
)
def test_invalid_events_are_refused_with_the_reason(fields: dict[str, object],
                                                     fragment: str) -> None:
    with pytest.raises(EventError, match=fragment):
        _check(**fields)


def test_period_splits_into_whole_hours_and_ledger_edges() -> None:
    t = lambda *a: dt.datetime(*a, tzinfo=dt.UTC)  # noqa: E731
    full, edges = Period(t(2026, 1, 1, 10, 30), t(2026, 1, 3, 5, 15)).split()
    assert full == (t(2026, 1, 1, 11), t(2026, 1, 3, 5))
    assert edges == [(t(2026, 1, 1, 10, 30), t(2026, 1, 1, 11)),
                     (t(2026, 1, 3, 5), t(2026, 1, 3, 5, 15))]
    # Hour-aligned: rollups only.
    assert Period(t(2026, 1, 1), t(2026, 2, 1)).split() == ((t(2026, 1, 1), t(2026, 2, 1)), [])
    # Within one hour: the ledger only.
    assert Period(t(2026, 1, 1, 1, 5), t(2026, 1, 1, 1, 50)).split() == (
        None, [(t(2026, 1, 1, 1, 5), t(2026, 1, 1, 1, 50))])
    # Other time zones are converted (hours are the same instants).
    ist = dt.timezone(dt.timedelta(hours=5, minutes=30))
    full, edges = Period(dt.datetime(2026, 1, 1, 12, 0, tzinfo=ist), t(2026, 1, 2)).split()
    assert full == (t(2026, 1, 1, 7), t(2026, 1, 2))
    assert edges == [(dt.datetime(2026, 1, 1, 12, 0, tzinfo=ist), t(2026, 1, 1, 7))]
    assert Period().split() == ((None, None), [])
    with pytest.raises(ValueError):
        Period(t(2026, 1, 2), t(2026, 1, 1))


def test_period_bounds_near_the_ends_of_time_are_refused_not_overflowed() -> None:
    # Rounding 9999-12-31T23:30Z up to the hour overflowed datetime (an INTERNAL error).
    for start in (dt.datetime(9999, 12, 31, 23, 30, tzinfo=dt.UTC),
                  dt.datetime(9999, 12, 31, 1, tzinfo=dt.UTC),
                  dt.datetime(1, 1, 1, 5, tzinfo=dt.timezone(dt.timedelta(hours=6)))):
        with pytest.raises(ValueError, match="from must be between 0001-01-02T00:00:00Z and "
                                             "9999-12-31T00:00:00Z"):
            Period(start)
    with pytest.raises(ValueError, match="to must be between"):
        Period(None, dt.datetime(9999, 12, 31, 0, 1, tzinfo=dt.UTC))
    # The last allowed bounds still split (in any time zone).
    far = dt.timezone(dt.timedelta(hours=-23, minutes=-59))
    for period in (Period(dt.datetime(9999, 12, 30, 23, 59, tzinfo=dt.UTC),
                          dt.datetime(9999, 12, 31, tzinfo=dt.UTC)),
                   Period(dt.datetime(1, 1, 2, 0, 1, tzinfo=far)),
                   Period(None, dt.datetime(9999, 12, 30, 0, 0, tzinfo=far))):
        period.split()


def test_budget_states() -> None:
    b = Budget.checked(100.0, 0.8, True)
    assert evaluate(b, Decimal("79.99")) is BudgetState.OK
    assert evaluate(b, Decimal("80")) is BudgetState.SOFT_EXCEEDED
    assert evaluate(b, Decimal("100")) is BudgetState.HARD_EXCEEDED
    soft_only = Budget.checked(100.0, 0.8, False)
    assert evaluate(soft_only, Decimal("150")) is BudgetState.SOFT_EXCEEDED
    assert evaluate(None, Decimal("1")) is BudgetState.NO_BUDGET
    assert Budget.checked(10.0, 0.0, False).soft_limit_ratio == 0.8  # 0 = default
    for bad in ((-1.0, 0.8), (math.nan, 0.8), (10.0, 1.5), (10.0, -0.1)):
        with pytest.raises(ValueError):
            Budget.checked(bad[0], bad[1], False)


def test_month_bounds_are_utc_calendar_months() -> None:
    assert month_bounds(dt.datetime(2026, 12, 31, 23, tzinfo=dt.UTC)) == (
        dt.date(2026, 12, 1), dt.date(2027, 1, 1))


def test_budget_defaults_come_from_the_tenant_file() -> None:
    reg = TenantRegistry.from_dict({"tenants": {
        "acme": {"billing": {"monthly_budget_usd": 250, "hard_limit": True}},
        "globex": {},
    }})
    defaults = defaults_from_tenants(reg)
    assert defaults["acme"].monthly_limit_usd == Decimal("250")
    assert defaults["acme"].hard_limit and defaults["acme"].soft_limit_ratio == 0.8
    assert "globex" not in defaults
    bad = TenantRegistry.from_dict({"tenants": {"acme": {"billing": {"monthly_budget": 5}}}})
    with pytest.raises(ValueError, match="acme"):
        defaults_from_tenants(bad)


def test_tenant_labels_are_capped() -> None:
    labels = TenantLabels(2)
    assert [labels(t) for t in ("a", "b", "c", "a", "d")] == ["a", "b", "other", "a", "other"]
