"""PostgreSQL access for billing-svc (asyncpg).

Every request runs in one transaction that first binds the tenant with
`set_config('app.tenant_id', $1, true)`; row-level security does the rest, so a query can
only ever see or write the calling tenant's rows. The app role has no UPDATE or DELETE on the
ledger.

Ingest of a batch is one transaction: binary COPY into a per-connection temporary staging
table, then one statement that inserts the new events into the ledger (ON CONFLICT DO NOTHING
on the tenant's idempotency key) and folds exactly those rows into both rollups. It commits
with synchronous_commit on before the RPC is acknowledged.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import asyncpg
from parley_runtime.errors import Unavailable

from .budgets import Budget
from .events import Usage
from .log import logger
from .pricing import LEVERS, Priced, usd
from .reports import CostRow, Dimension, Period, ReportTooLarge

# Columns a batch carries (the staging table) besides the tenant.
STAGED = (
    "idempotency_key", "occurred_at", "session_id", "service", "usage_type", "provider",
    "model_id", "quantity", "unit", "input_tokens", "cached_input_tokens",
    "cache_write_tokens", "output_tokens", "frames_seen", "frames_kept", "dropped_rate",
    "dropped_duplicate", "image_tokens_sent", "naive_image_tokens", "cost_pusd", "naive_pusd",
    "saved_caching_pusd", "saved_routing_pusd", "saved_dedup_pusd", "saved_adaptive_fps_pusd",
    "saved_embedding_cache_pusd", "price_version", "event",
)
_COUNTS = (
    "input_tokens", "cached_input_tokens", "cache_write_tokens", "output_tokens",
    "frames_seen", "frames_kept", "dropped_rate", "dropped_duplicate", "image_tokens_sent",
    "naive_image_tokens",
)
# Money columns, integer pico-USD.
_MONEY = ("cost_pusd", "naive_pusd", *(f"saved_{lever}_pusd" for lever in LEVERS))
# Summed rollup measures.
SUMS = ("quantity", *_COUNTS, *_MONEY)

_STAGING_DDL = """
CREATE TEMP TABLE IF NOT EXISTS usage_staging (
    idempotency_key text, occurred_at timestamptz, session_id text, service text,
    usage_type text, provider text, model_id text, quantity float8, unit text,
    input_tokens bigint, cached_input_tokens bigint, cache_write_tokens bigint,
    output_tokens bigint, frames_seen bigint, frames_kept bigint, dropped_rate bigint,
    dropped_duplicate bigint, image_tokens_sent bigint, naive_image_tokens bigint,
    cost_pusd bigint, naive_pusd bigint, saved_caching_pusd bigint, saved_routing_pusd bigint,
    saved_dedup_pusd bigint, saved_adaptive_fps_pusd bigint, saved_embedding_cache_pusd bigint,
    price_version text, event bytea
) ON COMMIT DELETE ROWS
"""


def _ingest_sql() -> str:
    cols = ", ".join(STAGED)
    sums = ", ".join(f"sum({c})" for c in SUMS)
    measures = ", ".join(SUMS)

    def add(t: str) -> str:
        return ", ".join(f"{c} = {t}.{c} + EXCLUDED.{c}" for c in SUMS)

    hour = "date_trunc('hour', occurred_at, 'UTC'), (occurred_at AT TIME ZONE 'UTC')::date"
    # Rows are inserted and rollups upserted in key order, so concurrent batches take their
    # locks in the same order and do not deadlock.
    return f"""
WITH ins AS (
    INSERT INTO usage_events (tenant_id, {cols})
    SELECT $1, {cols} FROM usage_staging ORDER BY idempotency_key
    ON CONFLICT (tenant_id, idempotency_key) DO NOTHING
    RETURNING idempotency_key, occurred_at, session_id, service, usage_type, model_id,
              price_version, unit, {measures}
), hourly AS (
    INSERT INTO usage_hourly AS r (tenant_id, hour, day, service, usage_type, model_id,
                                   events, {measures})
    SELECT $1, {hour}, service, usage_type, model_id, count(*), {sums}
    FROM ins GROUP BY 2, 3, 4, 5, 6 ORDER BY 2, 3, 4, 5, 6
    ON CONFLICT (tenant_id, hour, service, usage_type, model_id) DO UPDATE
    SET events = r.events + EXCLUDED.events, {add("r")}
), sess AS (
    INSERT INTO usage_session_hourly AS s (tenant_id, session_id, hour, day, service,
                                           usage_type, model_id, price_version, unit, events,
                                           {measures}, first_at, last_at)
    SELECT $1, session_id, {hour}, service, usage_type, model_id, price_version, min(unit),
           count(*), {sums}, min(occurred_at), max(occurred_at)
    FROM ins GROUP BY 2, 3, 4, 5, 6, 7, 8 ORDER BY 2, 3, 4, 5, 6, 7, 8
    ON CONFLICT (tenant_id, session_id, hour, service, usage_type, model_id, price_version)
    DO UPDATE SET events = s.events + EXCLUDED.events, {add("s")},
                  first_at = least(s.first_at, EXCLUDED.first_at),
                  last_at = greatest(s.last_at, EXCLUDED.last_at)
)
SELECT coalesce(array_agg(idempotency_key), '{{}}') AS keys FROM ins
"""


INGEST_SQL = _ingest_sql()

# Keys of this batch that were already stored with a different event: a sender reused a key
# for another occurrence (or changed an event before re-sending it). The first event counts;
# this only makes the reuse visible. Run in the ingest transaction after INGEST_SQL, and only
# when some keys were duplicates: one primary-key lookup per duplicate, nothing otherwise.
# (`event` is the serialized UsageEvent as received; billing serializes every event itself, so
# an honest re-send has the same bytes.)
CONFLICTS_SQL = """
SELECT s.idempotency_key FROM usage_staging s
JOIN usage_events e ON e.tenant_id = $1 AND e.idempotency_key = s.idempotency_key
WHERE s.idempotency_key <> ALL($2::text[]) AND e.event <> s.event
"""

# Report dimension -> expression over a rollup row / over a ledger row.
# (Days are grouped as dates and formatted in Python: to_char per row costs microseconds.)
_DIM_ROLLUP = {
    Dimension.DAY: "day",
    Dimension.SESSION: "session_id",
    Dimension.SERVICE: "service",
    Dimension.MODEL: "model_id",
    Dimension.USAGE_TYPE: "usage_type",
}
_DIM_LEDGER = {
    **_DIM_ROLLUP,
    Dimension.DAY: "(occurred_at AT TIME ZONE 'UTC')::date",
}


@dataclass(frozen=True, slots=True)
class Stored:
    """Outcome of one batch: the idempotency keys this call stored (the rest were known), and
    those of the known ones stored with a different event."""

    inserted_keys: frozenset[str]
    conflicting_keys: frozenset[str] = frozenset()


_ACQUIRE_TIMEOUT_S = 10.0
_REPORT_SETTINGS = (
    "SELECT set_config('app.tenant_id', $1, true), "
    "set_config('enable_seqscan', 'off', true), "
    "set_config('max_parallel_workers_per_gather', '0', true)"
)
_DB_DOWN = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    OSError,
    TimeoutError,
)


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.execute(_STAGING_DDL)


async def create_pool(dsn: str, *, min_size: int = 2, max_size: int = 10) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        init=_init_connection,
        # An acknowledged batch must survive a crash of the database server.
        server_settings={"synchronous_commit": "on", "application_name": "billing-svc"},
        command_timeout=60,
    )
    assert pool is not None
    return pool


class BillingStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @property
    def pool(self) -> asyncpg.Pool:
        return self._pool

    @asynccontextmanager
    async def _tenant_tx(
        self, tenant: str, *, readonly: bool = False, ledger_report: bool = False
    ) -> AsyncIterator[asyncpg.Connection]:
        try:
            async with (
                self._pool.acquire(timeout=_ACQUIRE_TIMEOUT_S) as conn,
                conn.transaction(readonly=readonly),
            ):
                if ledger_report:
                    # Report edges read the newest ledger rows, which are always newer than the
                    # table's statistics: the planner then guesses "many rows" and scans the
                    # whole ledger (measured: 1.5 s instead of 4 ms on a 10M-event tenant).
                    # Every report path has a (tenant_id, time) index; make the planner use it.
                    await conn.execute(_REPORT_SETTINGS, tenant)
                else:
                    await conn.execute("SELECT set_config('app.tenant_id', $1, true)", tenant)
                yield conn
        except _DB_DOWN as exc:
            logger.warning("database unavailable", extra={"error": repr(exc)})
            raise Unavailable("the billing database is unavailable; retry") from exc

    async def check_role(self) -> None:
        """Refuse to run as a role row-level security does not apply to."""
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow(
                "SELECT r.rolname, r.rolsuper, r.rolbypassrls, "
                "       (SELECT tableowner FROM pg_tables WHERE tablename = 'usage_events' "
                "        AND schemaname = current_schema()) AS owner "
                "FROM pg_roles r WHERE r.rolname = current_user"
            )
        if row is None or row["owner"] is None:
            raise RuntimeError("the billing schema is missing: run `python -m parley_billing "
                               "migrate` (or set MIGRATE_DATABASE_URL)")
        if row["rolsuper"] or row["rolbypassrls"] or row["owner"] == row["rolname"]:
            raise RuntimeError(
                f"DATABASE_URL connects as {row['rolname']!r}, which bypasses row-level "
                "security (superuser, BYPASSRLS or table owner): use the non-owner app role"
            )

    # ---------------------------------------------------------------------------- ingest

    async def ingest(self, tenant: str, batch: Sequence[tuple[Usage, Priced]]) -> Stored:
        records = [_record(u, p) for u, p in batch]
        for attempt in range(5):
            try:
                async with self._tenant_tx(tenant) as conn:
                    await conn.copy_records_to_table(
                        "usage_staging", records=records, columns=STAGED
                    )
                    keys = await conn.fetchval(INGEST_SQL, tenant)
                    conflicts: list[str] = []
                    if len(keys) < len(records):
                        conflicts = [r[0] for r in await conn.fetch(CONFLICTS_SQL, tenant, keys)]
                return Stored(frozenset(keys), frozenset(conflicts))
            except (asyncpg.DeadlockDetectedError, asyncpg.SerializationError):
                # Both roll back completely; the batch is retried as a whole.
                logger.warning("ingest transaction conflict, retrying",
                               extra={"attempt": attempt + 1})
                await asyncio.sleep(0.01 * (attempt + 1))
        raise RuntimeError("ingest kept conflicting with concurrent batches")

    # --------------------------------------------------------------------------- reports

    async def cost_rows(
        self, tenant: str, period: Period, group_by: Sequence[Dimension], *, max_rows: int
    ) -> list[CostRow]:
        rollup = "usage_session_hourly" if Dimension.SESSION in group_by else "usage_hourly"
        keys_r = [f"{_DIM_ROLLUP[d]} AS k{i}" for i, d in enumerate(group_by)]
        keys_l = [f"{_DIM_LEDGER[d]} AS k{i}" for i, d in enumerate(group_by)]
        parts, args = self._period_parts(
            tenant, period,
            rollup_select=", ".join([*keys_r, "cost_pusd", "events"]),
            ledger_select=", ".join([*keys_l, "cost_pusd", "1::bigint AS events"]),
            rollup=rollup,
        )
        names = [f"k{i}" for i in range(len(group_by))]
        grouping = f"GROUP BY {', '.join(names)} ORDER BY {', '.join(names)}" if names else ""
        select = ", ".join([*names, "sum(cost_pusd) AS cost_pusd",
                            "sum(events)::bigint AS events"])
        union = " UNION ALL ".join(parts)
        sql = f"SELECT {select} FROM ({union}) x {grouping} LIMIT {max_rows + 1}"
        edges = _reads_ledger(parts)
        async with self._tenant_tx(tenant, readonly=True, ledger_report=edges) as conn:
            rows = await conn.fetch(sql, *args)
        if len(rows) > max_rows:
            raise ReportTooLarge(max_rows)
        out = []
        for r in rows:
            if r["events"] is None:
                continue
            out.append(CostRow(tuple(str(r[n]) for n in names), usd(r["cost_pusd"]),
                               int(r["events"])))
        return out

    async def savings_sums(self, tenant: str, period: Period) -> dict[str, Any]:
        measures = ", ".join(_MONEY)
        parts, args = self._period_parts(
            tenant, period, rollup_select=measures, ledger_select=measures,
            rollup="usage_hourly",
        )
        sums = ", ".join(f"coalesce(sum({c}), 0) AS {c}" for c in _MONEY)
        sql = f"SELECT {sums} FROM ({' UNION ALL '.join(parts)}) x"
        edges = _reads_ledger(parts)
        async with self._tenant_tx(tenant, readonly=True, ledger_report=edges) as conn:
            row = await conn.fetchrow(sql, *args)
        return dict(row) if row is not None else {}

    @staticmethod
    def _period_parts(
        tenant: str, period: Period, *, rollup_select: str, ledger_select: str, rollup: str
    ) -> tuple[list[str], list[Any]]:
        """Whole hours from `rollup`, the partial hours at the edges from the ledger."""
        args: list[Any] = [tenant]

        def arg(value: Any) -> str:
            args.append(value)
            return f"${len(args)}"

        full, edges = period.split()
        parts: list[str] = []
        if full is not None:
            conds = ["tenant_id = $1"]
            if full[0] is not None:
                conds.append(f"hour >= {arg(full[0])}")
            if full[1] is not None:
                conds.append(f"hour < {arg(full[1])}")
            parts.append(f"SELECT {rollup_select} FROM {rollup} WHERE {' AND '.join(conds)}")
        for lo, hi in edges:
            conds = ["tenant_id = $1"]
            if lo is not None:
                conds.append(f"occurred_at >= {arg(lo)}")
            if hi is not None:
                conds.append(f"occurred_at < {arg(hi)}")
            parts.append(f"SELECT {ledger_select} FROM usage_events WHERE {' AND '.join(conds)}")
        return parts, args

    async def session_groups(self, tenant: str, session_id: str) -> list[dict[str, Any]]:
        sums = ", ".join(f"sum({c}) AS {c}" for c in SUMS)
        sql = f"""
            SELECT service, usage_type, model_id, price_version, min(unit) AS unit,
                   sum(events)::bigint AS events, {sums},
                   min(first_at) AS first_at, max(last_at) AS last_at
            FROM usage_session_hourly WHERE tenant_id = $1 AND session_id = $2
            GROUP BY service, usage_type, model_id, price_version
            ORDER BY usage_type, service, model_id, price_version
        """
        async with self._tenant_tx(tenant, readonly=True) as conn:
            rows = await conn.fetch(sql, tenant, session_id)
        return [dict(r) for r in rows]

    # --------------------------------------------------------------------------- budgets

    async def month_spend(self, tenant: str, first_day: dt.date, next_month: dt.date) -> Decimal:
        start = dt.datetime(first_day.year, first_day.month, first_day.day, tzinfo=dt.UTC)
        end = dt.datetime(next_month.year, next_month.month, next_month.day, tzinfo=dt.UTC)
        async with self._tenant_tx(tenant, readonly=True) as conn:
            value = await conn.fetchval(
                "SELECT coalesce(sum(cost_pusd), 0) FROM usage_hourly "
                "WHERE tenant_id = $1 AND hour >= $2 AND hour < $3",
                tenant, start, end,
            )
        return usd(value)

    async def get_budget(self, tenant: str) -> Budget | None:
        async with self._tenant_tx(tenant, readonly=True) as conn:
            row = await conn.fetchrow(
                "SELECT monthly_limit_usd, soft_limit_ratio, hard_limit FROM budgets "
                "WHERE tenant_id = $1", tenant,
            )
        if row is None:
            return None
        return Budget(row["monthly_limit_usd"], row["soft_limit_ratio"], row["hard_limit"], "api")

    async def set_budget(self, tenant: str, budget: Budget, updated_by: str) -> None:
        async with self._tenant_tx(tenant) as conn:
            await conn.execute(
                """
                INSERT INTO budgets (tenant_id, monthly_limit_usd, soft_limit_ratio, hard_limit,
                                     updated_by)
                VALUES ($1, $2, $3, $4, $5)
                ON CONFLICT (tenant_id) DO UPDATE SET
                    monthly_limit_usd = EXCLUDED.monthly_limit_usd,
                    soft_limit_ratio = EXCLUDED.soft_limit_ratio,
                    hard_limit = EXCLUDED.hard_limit,
                    updated_at = now(), updated_by = EXCLUDED.updated_by
                """,
                tenant, budget.monthly_limit_usd, budget.soft_limit_ratio, budget.hard_limit,
                updated_by,
            )

    async def record_alert(
        self, tenant: str, month: dt.date, level: str, spent: Decimal, limit: Decimal
    ) -> bool:
        """Record that an alert fired; False when this level already fired this month."""
        async with self._tenant_tx(tenant) as conn:
            inserted = await conn.fetchval(
                "INSERT INTO budget_alerts (tenant_id, month, level, spent_usd, limit_usd) "
                "VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING RETURNING true",
                tenant, month, level, spent, limit,
            )
        return bool(inserted)


def _reads_ledger(parts: Sequence[str]) -> bool:
    return any("FROM usage_events" in part for part in parts)


def _record(u: Usage, p: Priced) -> tuple[Any, ...]:
    return (
        u.idempotency_key, u.occurred_at, u.session_id, u.service, u.usage_type.value,
        p.provider, p.model_id, p.quantity, p.unit, u.input_tokens, u.cached_input_tokens,
        u.cache_write_tokens, u.output_tokens, u.frames_seen, u.frames_kept, u.dropped_rate,
        u.dropped_duplicate, u.image_tokens_sent, u.naive_image_tokens, p.cost, p.naive,
        p.saved_caching, p.saved_routing, p.saved_dedup, p.saved_adaptive_fps,
        p.saved_embedding_cache, p.price_version, u.raw,
    )
