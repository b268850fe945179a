"""Versioned SQL migrations (files in `migrations/`), applied by `python -m parley_kb migrate`
and at start-up when MIGRATE_DATABASE_URL is set.

Runs as the owner (or a superuser). Each file is applied once, in its own transaction, under
an advisory lock so replicas starting together do not race; applied files are checksummed and
an edited one is refused. After the files it converges, every run: the runtime login role
(NOBYPASSRLS, member of parley_kb_runtime), the embedding table of the configured model, and
the partitions of every configured tenant.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources

import asyncpg

logger = logging.getLogger(__name__)

_LOCK_KEY = 0x6B62_6D69  # "kbmi"
_FILE_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_ROLE_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class MigrationReport:
    applied: list[int]
    already_applied: list[int]
    app_role: str | None
    embedding_table: str | None
    tenants: int


def load_migrations() -> list[Migration]:
    folder = resources.files(__package__).joinpath("migrations")
    found: list[Migration] = []
    for entry in folder.iterdir():
        match = _FILE_RE.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"duplicate migration versions: {versions}")
    return found


class MigrationError(RuntimeError):
    pass


async def migrate(
    dsn: str,
    *,
    app_role: str | None = None,
    app_password: str | None = None,
    embedding_model: str | None = None,
    embedding_dimensions: int | None = None,
    tenants: Iterable[str] = (),
) -> MigrationReport:
    """Apply pending migrations and converge roles, embedding tables and tenant partitions."""
    conn = await asyncpg.connect(dsn, server_settings={"application_name": "kb-svc-migrate"})
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
        try:
            applied, already = await _apply_files(conn)
            role = None
            if app_role is not None:
                role = await _ensure_app_role(conn, app_role, app_password)
            table = None
            if embedding_model is not None and embedding_dimensions is not None:
                table = await conn.fetchval(
                    "SELECT kb.ensure_embedding_space($1, $2)",
                    embedding_model, embedding_dimensions,
                )
            count = 0
            for tenant_id in tenants:
                async with conn.transaction():
                    await conn.execute("SELECT set_config('app.tenant_id', $1, true)", tenant_id)
                    await conn.execute("SELECT kb.ensure_tenant($1)", tenant_id)
                count += 1
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
    finally:
        await conn.close()
    if applied:
        logger.info("migrations applied", extra={"versions": applied})
    return MigrationReport(applied, already, role, table, count)


async def _apply_files(conn: asyncpg.Connection) -> tuple[list[int], list[int]]:
    await conn.execute(
        "CREATE SCHEMA IF NOT EXISTS kb;"
        " CREATE TABLE IF NOT EXISTS kb.schema_migrations ("
        "  version integer PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,"
        "  applied_at timestamptz NOT NULL DEFAULT now())"
    )
    rows = await conn.fetch("SELECT version, name, checksum FROM kb.schema_migrations")
    done = {row["version"]: row for row in rows}
    applied: list[int] = []
    already: list[int] = []
    for migration in load_migrations():
        row = done.get(migration.version)
        if row is not None:
            if row["checksum"] != migration.checksum:
                raise MigrationError(
                    f"migration {migration.version:04d}_{migration.name} was edited after it was "
                    "applied; add a new migration instead"
                )
            already.append(migration.version)
            continue
        async with conn.transaction():
            await conn.execute(migration.sql)
            await conn.execute(
                "INSERT INTO kb.schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                migration.version, migration.name, migration.checksum,
            )
        applied.append(migration.version)
    unknown = sorted(set(done) - {m.version for m in load_migrations()})
    if unknown:
        raise MigrationError(
            f"the database has migrations this build does not know ({unknown}): "
            "it was migrated by a newer kb-svc"
        )
    return applied, already


async def _ensure_app_role(
    conn: asyncpg.Connection, role: str, password: str | None
) -> str:
    if not _ROLE_RE.match(role):
        raise MigrationError(f"application role name {role!r} must match {_ROLE_RE.pattern}")
    me = await conn.fetchval("SELECT current_user")
    if role == me:
        raise MigrationError(
            "the application role must differ from the migrating (owner) role: "
            "row-level security does not apply to table owners"
        )
    exists = await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role)
    verb = "ALTER" if exists else "CREATE"
    attrs = "LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE NOREPLICATION"
    if password:
        statement = await conn.fetchval(
            f"SELECT format('{verb} ROLE %I {attrs} PASSWORD %L', $1::text, $2::text)",
            role, password,
        )
    else:
        statement = await conn.fetchval(f"SELECT format('{verb} ROLE %I {attrs}', $1::text)", role)
    await conn.execute(statement)
    grant = await conn.fetchval("SELECT format('GRANT parley_kb_runtime TO %I', $1::text)", role)
    await conn.execute(grant)
    return role
