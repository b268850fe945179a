"""Schema migrations (run as the schema owner) and the app role's grants.

`python -m parley_billing migrate` applies `migrations/*.sql` in order, each once, under an
advisory lock (so replicas starting together do not race), then grants the app role named by
DATABASE_URL exactly what it needs: SELECT and INSERT on the ledger (no UPDATE, no DELETE),
read/write on rollups and budgets. If that role does not exist and the owner may create roles,
it is created NOSUPERUSER NOBYPASSRLS with the password from DATABASE_URL.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from urllib.parse import unquote, urlsplit

import asyncpg

from .log import logger

_LOCK_KEY = 0x5041524C4559_0001 & 0x7FFFFFFFFFFFFFFF  # "PARLEY" + 1
_APPEND_ONLY = ("usage_events",)
_READ_WRITE = ("usage_hourly", "usage_session_hourly", "budgets", "budget_alerts")
_READ_ONLY = ("usage_events_usd",)


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def migrations() -> list[Migration]:
    folder = resources.files(__package__).joinpath("migrations")
    out = []
    for item in folder.iterdir():
        if item.name.endswith(".sql"):
            version = int(item.name.split("_", 1)[0])
            out.append(Migration(version, item.name, item.read_text(encoding="utf-8")))
    return sorted(out, key=lambda m: m.version)


def role_of(dsn: str) -> tuple[str | None, str | None]:
    """(user, password) of a PostgreSQL URL."""
    parts = urlsplit(dsn)
    user = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    return user, password


async def migrate(owner_dsn: str, app_dsn: str | None = None) -> list[str]:
    """Apply pending migrations; grant (and if needed create) the app role. Returns the names
    of the migrations applied now."""
    conn = await asyncpg.connect(owner_dsn)
    applied: list[str] = []
    try:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
            await conn.execute(
                """CREATE TABLE IF NOT EXISTS billing_schema_migrations (
                       version int PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,
                       applied_at timestamptz NOT NULL DEFAULT now())"""
            )
            done = {
                r["version"]: r
                for r in await conn.fetch("SELECT version, name, checksum "
                                          "FROM billing_schema_migrations")
            }
            for m in migrations():
                row = done.get(m.version)
                if row is not None:
                    if row["checksum"] != m.checksum:
                        logger.warning("applied migration differs from the packaged file",
                                       extra={"migration": m.name})
                    continue
                await conn.execute(m.sql)
                await conn.execute(
                    "INSERT INTO billing_schema_migrations (version, name, checksum) "
                    "VALUES ($1, $2, $3)", m.version, m.name, m.checksum,
                )
                applied.append(m.name)
            if app_dsn:
                await _grant(conn, app_dsn)
    finally:
        await conn.close()
    if applied:
        logger.info("migrations applied", extra={"migrations": applied})
    return applied


async def _grant(conn: asyncpg.Connection, app_dsn: str) -> None:
    user, password = role_of(app_dsn)
    owner = await conn.fetchval("SELECT current_user")
    if not user or user == owner:
        logger.warning(
            "DATABASE_URL uses the schema owner: row-level security would not apply; "
            "billing-svc refuses to serve like that"
        )
        return
    ident = _quote(user)
    row = await conn.fetchrow(
        "SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = $1", user
    )
    if row is None:
        if not password:
            raise RuntimeError(f"app role {user!r} does not exist and DATABASE_URL has no "
                               "password to create it with")
        pw = password.replace("'", "''")
        try:
            async with conn.transaction():  # a savepoint: a concurrent creator may win
                await conn.execute(
                    f"CREATE ROLE {ident} LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB "
                    f"NOCREATEROLE PASSWORD '{pw}'"
                )
            logger.info("app role created", extra={"role": user})
        except asyncpg.DuplicateObjectError:
            pass
    elif row["rolsuper"] or row["rolbypassrls"]:
        raise RuntimeError(f"app role {user!r} is a superuser or has BYPASSRLS")
    db = await conn.fetchval("SELECT current_database()")
    schema = await conn.fetchval("SELECT current_schema()")
    await conn.execute(f"GRANT CONNECT, TEMPORARY ON DATABASE {_quote(db)} TO {ident}")
    await conn.execute(f"GRANT USAGE ON SCHEMA {_quote(schema)} TO {ident}")
    for table in _APPEND_ONLY:
        await conn.execute(f"REVOKE ALL ON {table} FROM {ident}")
        await conn.execute(f"GRANT SELECT, INSERT ON {table} TO {ident}")
    for table in _READ_WRITE:
        await conn.execute(f"REVOKE ALL ON {table} FROM {ident}")
        await conn.execute(f"GRANT SELECT, INSERT, UPDATE ON {table} TO {ident}")
    for table in _READ_ONLY:
        await conn.execute(f"GRANT SELECT ON {table} TO {ident}")


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
