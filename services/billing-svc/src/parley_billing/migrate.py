"""Schema migrations (run as the schema owner) and the app role's grants.

`python -m parley_billing migrate` applies `migrations/*.sql` in order, each once, under an
advisory lock (so replicas starting together do not race), with parley_runtime.migrations; an
applied file that was edited since is refused. It then grants the app role named by
DATABASE_URL exactly what it needs: SELECT and INSERT on the ledger (no UPDATE, no DELETE),
read/write on rollups and budgets. If that role does not exist and the owner may create roles,
it is created NOSUPERUSER NOBYPASSRLS with the password from DATABASE_URL.
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

import asyncpg
from parley_runtime.migrations import (
    Migration,
    MigrationError,
    advisory_lock,
    apply_migrations,
    ensure_app_role,
    load_migrations,
    quote_ident,
)

from .log import logger

__all__ = ["Migration", "MigrationError", "migrate", "migrations", "role_of"]

_LOCK_KEY = 0x5041524C4559_0001 & 0x7FFFFFFFFFFFFFFF  # "PARLEY" + 1
_TABLE = "billing_schema_migrations"
_APPEND_ONLY = ("usage_events",)
_READ_WRITE = ("usage_hourly", "usage_session_hourly", "budgets", "budget_alerts")
_READ_ONLY = ("usage_events_usd",)


def migrations() -> list[Migration]:
    return load_migrations(__package__ or "parley_billing")


def role_of(dsn: str) -> tuple[str | None, str | None]:
    """(user, password) of a PostgreSQL URL."""
    parts = urlsplit(dsn)
    user = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    return user, password


async def migrate(owner_dsn: str, app_dsn: str | None = None) -> list[str]:
    """Apply pending migrations; grant (and if needed create) the app role. Returns the file
    names of the migrations applied now."""
    conn = await asyncpg.connect(owner_dsn)
    try:
        async with advisory_lock(conn, _LOCK_KEY):  # the grants run under the lock too
            result = await apply_migrations(
                conn, migrations(), table=_TABLE, lock_key=_LOCK_KEY,
                # As before: a database migrated by a newer build is left to it.
                allow_unknown_versions=True,
            )
            if app_dsn:
                await _grant(conn, app_dsn)
    finally:
        await conn.close()
    return [m.filename for m in result.applied]


async def _grant(conn: asyncpg.Connection, app_dsn: str) -> None:
    user, password = role_of(app_dsn)
    owner = await conn.fetchval("SELECT current_user")
    if not user or user == owner:
        logger.warning(
            "DATABASE_URL uses the schema owner: row-level security would not apply; "
            "billing-svc refuses to serve like that"
        )
        return
    await ensure_app_role(conn, user, password)
    ident = quote_ident(user)
    async with conn.transaction():  # the app never sees a table between REVOKE and GRANT
        db = await conn.fetchval("SELECT current_database()")
        schema = await conn.fetchval("SELECT current_schema()")
        await conn.execute(f"GRANT CONNECT, TEMPORARY ON DATABASE {quote_ident(db)} TO {ident}")
        await conn.execute(f"GRANT USAGE ON SCHEMA {quote_ident(schema)} TO {ident}")
        for table in _APPEND_ONLY:
            await conn.execute(f"REVOKE ALL ON {table} FROM {ident}")
            await conn.execute(f"GRANT SELECT, INSERT ON {table} TO {ident}")
        for table in _READ_WRITE:
            await conn.execute(f"REVOKE ALL ON {table} FROM {ident}")
            await conn.execute(f"GRANT SELECT, INSERT, UPDATE ON {table} TO {ident}")
        for table in _READ_ONLY:
            await conn.execute(f"GRANT SELECT ON {table} TO {ident}")
