"""Prices usage events from the versioned catalog, and measures what each lever saved.

Every event is priced once, at ingest, with the catalog entry in force on the day it happened
(UTC), and the entry's version is stored with it: adding a price entry later never rewrites
history.

Money is integer pico-USD (1e-12 USD). Catalog prices with at most 6 decimal places per million
tokens are whole pico-USD per token, so LLM and embedding costs are exact integers and every
total is an exact sum of stored values; per-second and per-character prices are rounded half to
even to the pico-dollar per event.

The naive baseline is what the same recorded usage would have cost with no lever at all:
every LLM turn on the premium tier's first model with no prompt cache, every video frame at
the source frame rate sent to that model, and every embedding computed. For each event:

    LLM       actual   = uncached_input*input + cached*cache_read + cache_write*cache_write
                         + output*output                       (its own model's prices)
              no_cache = input*input + output*output           (its own model)
              naive    = input*input_P + output*output_P       (premium model P, no cache)
              caching  = no_cache - actual ; routing = naive - no_cache
    vision    dedup    = dropped_duplicate frames' image tokens at P's input price
              adaptive_fps = dropped_rate frames' image tokens at P's input price
              (tokens per frame = naive_image_tokens / frames_seen; the kept frames' tokens
              are billed inside the LLM events that carried them, so vision's own cost is 0)
    embedding embedding_cache = cached_texts * (tokens / embedded_texts) at its price
    STT, TTS, session minutes: priced straight, naive = actual.

so that, per event and in every sum, naive - actual = the sum of the levers.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal

from parley_runtime.catalog import Catalog, CatalogError, ModelEntry, PriceEntry

from .events import CATALOG_KIND, DEFAULT_SESSION_MODEL, EventError, Usage, UsageType

PICO = 10**12
_LLM, _VISION, _STT, _TTS, _EMBEDDING, _SESSION = (
    UsageType.LLM, UsageType.VISION, UsageType.STT, UsageType.TTS, UsageType.EMBEDDING,
    UsageType.SESSION,
)
LEVERS = ("dedup", "adaptive_fps", "caching", "routing", "embedding_cache")


def usd(pico: int | Decimal) -> Decimal:
    """pico-USD to USD, exactly."""
    return Decimal(pico).scaleb(-12)


def div_round(num: int, den: int) -> int:
    """num / den rounded half to even, in integers (den > 0)."""
    q, r = divmod(num, den)
    twice = 2 * r
    if twice > den or (twice == den and q % 2):
        q += 1
    return q


def _pico(value: float | None, per: int, what: str) -> int:
    """A catalog price in USD as whole pico-USD per `per` units; refuses finer prices."""
    if value is None:
        return 0
    exact = Decimal(repr(float(value))) * PICO / per
    if exact != exact.to_integral_value():
        raise CatalogError(f"{what}: price {value} has more decimal places than billing can "
                           "price exactly")
    return int(exact)


@dataclass(frozen=True, slots=True)
class Rates:
    """One catalog price entry in pico-USD: per token, per minute, per 1,000 characters."""

    version: str
    input: int
    output: int
    cache_read: int
    cache_write: int
    per_minute: int
    per_kchar: int

    @classmethod
    def of(cls, entry: PriceEntry, catalog_version: str, model_id: str) -> Rates:
        mtok = entry.usd_per_mtok
        what = f"{model_id}@{entry.effective_from}"
        per_in = _pico(mtok.get("input"), 1_000_000, what)
        return cls(
            version=entry.version(catalog_version, model_id),
            input=per_in,
            output=_pico(mtok.get("output"), 1_000_000, what),
            # A model without cache prices gets no discount and no surcharge.
            cache_read=_pico(mtok["cache_read"], 1_000_000, what) if "cache_read" in mtok
            else per_in,
            cache_write=_pico(mtok["cache_write"], 1_000_000, what) if "cache_write" in mtok
            else per_in,
            per_minute=_pico(entry.usd_per_minute, 1, what),
            per_kchar=_pico(entry.usd_per_kchar, 1, what),
        )


@dataclass(slots=True)
class Priced:
    """An event's price and savings in pico-USD, as stored in the ledger."""

    model_id: str
    provider: str
    quantity: float
    unit: str
    cost: int
    naive: int
    price_version: str
    saved_caching: int = 0
    saved_routing: int = 0
    saved_dedup: int = 0
    saved_adaptive_fps: int = 0
    saved_embedding_cache: int = 0

    def saved(self, lever: str) -> int:
        return int(getattr(self, f"saved_{lever}"))


class Pricer:
    """Prices events against one catalog. Cheap per event: rates are memoised per model/day."""

    def __init__(self, catalog: Catalog, *, premium_model: str | None = None) -> None:
        premium = catalog.default_tiers.get("premium")
        if premium_model is None:
            if not premium:
                raise CatalogError("the catalog has no default 'premium' tier for the baseline")
            premium_model = premium[0]
        if catalog.get(premium_model).kind != "llm":
            raise CatalogError(f"baseline model {premium_model!r} is not an LLM")
        for entry in catalog.models.values():
            for price in entry.prices:
                if entry.kind in ("llm", "embedding") and "input" not in price.usd_per_mtok:
                    raise CatalogError(f"{entry.model_id}: a price entry lacks 'input'")
                # Fails at start-up, not at the first event, if a price cannot be exact.
                Rates.of(price, catalog.version, entry.model_id)
        self.catalog = catalog
        self.premium_model = premium_model
        self._rates: dict[tuple[str, int], Rates] = {}
        self._contexts: dict[tuple[str, UsageType, dt.date], tuple[str, Rates, Rates]] = {}

    def model(self, model_id: str, usage_type: UsageType) -> ModelEntry:
        entry = self.catalog.models.get(model_id)
        if entry is None:
            raise EventError(
                f"model_id {model_id!r} is not in price catalog {self.catalog.version}"
            )
        want = CATALOG_KIND[usage_type]
        if entry.kind != want:
            raise EventError(
                f"model_id {model_id!r} is a {entry.kind} model; a {usage_type.value} event "
                f"needs a {want} model"
            )
        return entry

    def rates(self, model_id: str, day: dt.date) -> Rates:
        key = (model_id, day.toordinal())
        hit = self._rates.get(key)
        if hit is None:
            entry = self.catalog.get(model_id)
            hit = Rates.of(entry.price_at(day), self.catalog.version, model_id)
            if len(self._rates) > 50_000:
                self._rates.clear()
            self._rates[key] = hit
        return hit

    def _context(self, model_id: str, kind: UsageType, day: dt.date) -> tuple[str, Rates, Rates]:
        """(catalog provider, the model's rates, the baseline model's rates) for one day."""
        key = (model_id, kind, day)
        hit = self._contexts.get(key)
        if hit is None:
            entry = self.model(model_id, kind)
            hit = (entry.provider, self.rates(model_id, day), self.rates(self.premium_model, day))
            if len(self._contexts) > 50_000:
                self._contexts.clear()
            self._contexts[key] = hit
        return hit

    def price(self, u: Usage) -> Priced:
        """Price one validated event. Raises EventError for models the catalog cannot price."""
        kind = u.usage_type
        model_id = u.model_id or (DEFAULT_SESSION_MODEL if kind is _SESSION else "")
        catalog_provider, r, p = self._context(model_id, kind, u.occurred_at.date())  # UTC
        provider = u.provider or catalog_provider

        if kind is _LLM:
            inp, cached, written, out = (
                u.input_tokens, u.cached_input_tokens, u.cache_write_tokens, u.output_tokens
            )
            actual = ((inp - cached - written) * r.input + cached * r.cache_read
                      + written * r.cache_write + out * r.output)
            no_cache = inp * r.input + out * r.output
            naive = inp * p.input + out * p.output
            return Priced(model_id, provider, float(inp + out), "tokens", actual, naive,
                          r.version, saved_caching=no_cache - actual,
                          saved_routing=naive - no_cache)

        if kind is _VISION:
            dedup = fps = 0
            if u.frames_seen:
                per_frames = u.naive_image_tokens * p.input
                dedup = div_round(u.dropped_duplicate * per_frames, u.frames_seen)
                fps = div_round(u.dropped_rate * per_frames, u.frames_seen)
            return Priced(model_id, provider, float(u.frames_kept), "frames", 0, dedup + fps,
                          p.version, saved_dedup=dedup, saved_adaptive_fps=fps)

        if kind is _EMBEDDING:
            actual = u.input_tokens * r.input
            saved = 0
            if u.embedded_texts and u.cached_texts:
                saved = div_round(u.input_tokens * u.cached_texts * r.input, u.embedded_texts)
            return Priced(model_id, provider, float(u.input_tokens), "tokens", actual,
                          actual + saved, r.version, saved_embedding_cache=saved)

        if kind is _STT:
            micros = round(u.audio_seconds * 1_000_000)
            cost = div_round(micros * r.per_minute, 60_000_000)
            return Priced(model_id, provider, micros / 1_000_000, "seconds", cost, cost,
                          r.version)

        if kind is _TTS:
            cost = div_round(u.characters * r.per_kchar, 1000)
            return Priced(model_id, provider, float(u.characters), "characters", cost, cost,
                          r.version)

        micros = round(u.minutes * 1_000_000)
        cost = div_round(micros * r.per_minute, 1_000_000)
        return Priced(model_id, provider, micros / 1_000_000, "minutes", cost, cost, r.version)

    def llm_line_costs(
        self, model_id: str, price_version: str, *, uncached: int, cached: int, written: int,
        output: int,
    ) -> dict[str, int] | None:
        """Per-component cost (pico-USD) of summed LLM tokens under a stored price version.

        Exact (integer tokens times whole pico-USD per token), so the components add up to
        the stored total. None when the version is not in the catalog any more.
        """
        rates = self.rates_for_version(model_id, price_version)
        if rates is None:
            return None
        return {
            "input_tokens": uncached * rates.input,
            "cached_input_tokens": cached * rates.cache_read,
            "cache_write_tokens": written * rates.cache_write,
            "output_tokens": output * rates.output,
        }

    def rates_for_version(self, model_id: str, price_version: str) -> Rates | None:
        """The rates a stored `price_version` ("<catalog>/<model>@<date>") refers to."""
        catalog_version, _, rest = price_version.partition("/")
        model, _, day = rest.rpartition("@")
        entry = self.catalog.models.get(model_id)
        if model != model_id or entry is None:
            return None
        try:
            effective = dt.date.fromisoformat(day)
        except ValueError:
            return None
        for price in entry.prices:
            if price.effective_from == effective:
                return Rates.of(price, catalog_version, model_id)
        return None
