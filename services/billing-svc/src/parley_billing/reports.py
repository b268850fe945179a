"""Report shapes (cost rows, bills, savings) and the arithmetic that builds them.

No I/O here: the store returns summed rollup rows, these functions turn them into what the
gRPC and REST layers serve.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum

from .pricing import LEVERS, Pricer, usd

ZERO = Decimal(0)


class Dimension(StrEnum):
    DAY = "day"
    SESSION = "session"
    SERVICE = "service"
    MODEL = "model"
    USAGE_TYPE = "usage_type"


# Bounds a period may have. A day inside Python's datetime range, so that rounding a bound to
# whole hours and converting it to UTC (Period.split) cannot overflow; anything the ledger can
# hold (events are at most a few hundred days old) is far inside.
PERIOD_MIN = dt.datetime(1, 1, 2, tzinfo=dt.UTC)
PERIOD_MAX = dt.datetime(9999, 12, 31, tzinfo=dt.UTC)
_PERIOD_RANGE = "between 0001-01-02T00:00:00Z and 9999-12-31T00:00:00Z"


@dataclass(frozen=True, slots=True)
class Period:
    """A half-open time range [start, end) in UTC; None means unbounded."""

    start: dt.datetime | None = None
    end: dt.datetime | None = None

    def __post_init__(self) -> None:
        for value in (self.start, self.end):
            if value is not None and value.tzinfo is None:
                raise ValueError("period bounds must be timezone-aware")
        for name, value in (("from", self.start), ("to", self.end)):
            # (Comparing aware datetimes does not convert them, so it cannot overflow.)
            if value is not None and not PERIOD_MIN <= value <= PERIOD_MAX:
                raise ValueError(
                    f"{name} must be {_PERIOD_RANGE}; leave it unset for an open end"
                )
        if self.start is not None and self.end is not None and self.end <= self.start:
            raise ValueError("the period's end must be after its start")

    def split(self) -> tuple[tuple[dt.datetime | None, dt.datetime | None] | None,
                             list[tuple[dt.datetime | None, dt.datetime | None]]]:
        """Whole UTC hours (served from the hourly rollups) and the partial hours at the
        edges (served from the ledger).

        Returns ((first_hour, end_hour) or None, [(edge_start, edge_end), ...]).
        """
        first = _ceil_hour(self.start) if self.start is not None else None
        last = _floor_hour(self.end) if self.end is not None else None
        if first is not None and last is not None and first >= last:
            return None, [(self.start, self.end)]
        edges: list[tuple[dt.datetime | None, dt.datetime | None]] = []
        if self.start is not None and first is not None and first != self.start:
            edges.append((self.start, first))
        if self.end is not None and last is not None and last != self.end:
            edges.append((last, self.end))
        return (first, last), edges


def _floor_hour(value: dt.datetime) -> dt.datetime:
    return value.astimezone(dt.UTC).replace(minute=0, second=0, microsecond=0)


def _ceil_hour(value: dt.datetime) -> dt.datetime:
    floor = _floor_hour(value)
    return floor if floor == value else floor + dt.timedelta(hours=1)


class ReportTooLarge(Exception):
    """The report would have more rows than allowed."""

    def __init__(self, rows: int) -> None:
        super().__init__(rows)
        self.rows = rows


@dataclass(frozen=True, slots=True)
class CostRow:
    keys: tuple[str, ...]
    cost_usd: Decimal
    events: int


@dataclass(frozen=True, slots=True)
class CostReport:
    group_by: tuple[Dimension, ...]
    rows: list[CostRow]
    total_usd: Decimal
    events: int


@dataclass(frozen=True, slots=True)
class Savings:
    actual_usd: Decimal = ZERO
    naive_usd: Decimal = ZERO
    levers: dict[str, Decimal] = field(default_factory=lambda: dict.fromkeys(LEVERS, ZERO))

    @property
    def saved_usd(self) -> Decimal:
        return self.naive_usd - self.actual_usd

    @classmethod
    def from_sums(cls, row: Mapping[str, object]) -> Savings:
        """From summed pico-USD columns (cost_pusd, naive_pusd, saved_<lever>_pusd)."""

        def d(name: str) -> Decimal:
            value = row.get(name)
            return usd(Decimal(str(value))) if value is not None else ZERO

        return cls(
            actual_usd=d("cost_pusd"),
            naive_usd=d("naive_pusd"),
            levers={lever: d(f"saved_{lever}_pusd") for lever in LEVERS},
        )


@dataclass(frozen=True, slots=True)
class LineItem:
    usage_type: str
    service: str
    model_id: str
    quantity: Decimal
    unit: str
    cost_usd: Decimal
    price_version: str


@dataclass(frozen=True, slots=True)
class SessionBill:
    session_id: str
    items: list[LineItem]
    total_usd: Decimal
    savings: Savings
    first_event_at: dt.datetime
    last_event_at: dt.datetime
    events: int


def _n(value: object) -> int:
    """An integer from a numeric column (asyncpg gives Decimal, maybe in exponent form)."""
    return int(Decimal(str(value)))


_LLM_COMPONENTS = ("input_tokens", "cached_input_tokens", "cache_write_tokens", "output_tokens")


def line_items(groups: Sequence[Mapping[str, object]], pricer: Pricer) -> list[LineItem]:
    """A bill's lines from session rollup groups (service, usage type, model, price version).

    LLM groups are split into their token components (uncached input, cache reads, cache
    writes, output), each priced with the stored price version, so a reader can check every
    line against the catalog; the components add up to the stored cost exactly.
    """
    items: list[LineItem] = []
    for g in groups:
        usage_type, service, model = str(g["usage_type"]), str(g["service"]), str(g["model_id"])
        version, cost_pusd = str(g["price_version"]), _n(g["cost_pusd"])
        cost = usd(cost_pusd)
        if usage_type == "llm":
            inp, cached = _n(g["input_tokens"]), _n(g["cached_input_tokens"])
            written, out = _n(g["cache_write_tokens"]), _n(g["output_tokens"])
            quantities = {
                "input_tokens": inp - cached - written,
                "cached_input_tokens": cached,
                "cache_write_tokens": written,
                "output_tokens": out,
            }
            parts = pricer.llm_line_costs(
                model, version, uncached=quantities["input_tokens"], cached=cached,
                written=written, output=out,
            )
            if parts is not None and sum(parts.values()) == cost_pusd:
                for unit in _LLM_COMPONENTS:
                    if quantities[unit]:
                        items.append(LineItem(usage_type, service, model,
                                              Decimal(quantities[unit]), unit, usd(parts[unit]),
                                              version))
                continue
            # The version left the catalog (or rounding differs): one line with the stored cost.
            items.append(LineItem(usage_type, service, model, Decimal(inp + out), "tokens",
                                  cost, version))
            continue
        items.append(LineItem(usage_type, service, model, Decimal(str(g["quantity"])),
                              str(g["unit"]), cost, version))
    return items
