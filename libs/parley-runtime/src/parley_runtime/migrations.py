"""Versioned SQL migrations shared by the services that own a PostgreSQL schema.

A service ships `migrations/NNNN_name.sql` files in its package. `load_migrations` reads and
validates them (strict names, no duplicate versions); `apply_migrations` applies the pending
ones in order on an open connection, each in its own transaction, under a session-level
advisory lock (replicas starting together do not race), and records version, name and SHA-256
checksum in the service's own table. A file edited after it was applied is refused, never
re-run or silently ignored. `ensure_app_role` creates (or checks) the non-owner login role a
service connects as. Grants and anything else a service converges stay in the service.

asyncpg is deliberately not a dependency of parley-runtime: callers pass an open asyncpg
connection (anything with the few methods of `Connection`).
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from dataclasses import dataclass, field
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any, Protocol

logger = logging.getLogger(__name__)

FILE_PATTERN = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
ROLE_PATTERN = re.compile(r"^[a-z_][a-z0-9_]{0,62}\Z")
_TABLE_PATTERN = re.compile(r"^(?:([a-z_][a-z0-9_]{0,62})\.)?([a-z_][a-z0-9_]{0,62})\Z")
_ROLE_ATTRIBUTES = "LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE NOREPLICATION"
_DUPLICATE_OBJECT = "42710"


class Connection(Protocol):
    """The part of an asyncpg connection the runner uses."""

    async def execute(self, query: str, *args: Any) -> Any: ...

    async def fetch(self, query: str, *args: Any) -> Any: ...

    async def fetchval(self, query: str, *args: Any) -> Any: ...

    def transaction(self) -> AbstractAsyncContextManager[Any]: ...


class MigrationError(RuntimeError):
    """A migration cannot be loaded or applied safely."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str  # the part between the version and ".sql"
    sql: str

    @property
    def filename(self) -> str:
        return f"{self.version:04d}_{self.name}.sql"

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class MigrationResult:
    applied: list[Migration] = field(default_factory=list)
    already_applied: list[Migration] = field(default_factory=list)


def read_migrations(folder: Traversable) -> list[Migration]:
    """The `NNNN_name.sql` files of a folder, sorted by version.

    Other files (`__init__.py`, a README) are ignored; a `.sql` file with any other name, and
    two files with one version, are refused rather than skipped or applied in a guessed order.
    """
    found: list[Migration] = []
    for entry in folder.iterdir():
        if not entry.name.endswith(".sql"):
            continue
        match = FILE_PATTERN.match(entry.name)
        if match is None:
            raise MigrationError(
                f"migration file {entry.name!r} must be named like 0001_name.sql "
                f"({FILE_PATTERN.pattern})"
            )
        found.append(Migration(int(match.group(1)), match.group(2), entry.read_text("utf-8")))
    found.sort(key=lambda m: (m.version, m.name))
    for previous, current in zip(found, found[1:], strict=False):
        if previous.version == current.version:
            raise MigrationError(
                f"duplicate migration version {current.version:04d}: "
                f"{previous.filename} and {current.filename}"
            )
    return found


def load_migrations(package: str, folder: str = "migrations") -> list[Migration]:
    """The migrations packaged in `package`/`folder` (read with importlib.resources)."""
    return read_migrations(resources.files(package).joinpath(folder))


@asynccontextmanager
async def advisory_lock(conn: Connection, key: int) -> AsyncIterator[None]:
    """Hold the session-level advisory lock `key` (a bigint) for the block.

    Session-level advisory locks are re-entrant, so `apply_migrations` may take the same key
    again inside the block; a service wraps its grants/convergence in this to keep them under
    the migration lock too.
    """
    await conn.execute("SELECT pg_advisory_lock($1)", key)
    try:
        yield
    except BaseException:
        with suppress(Exception):  # a broken connection releases its locks anyway
            await conn.execute("SELECT pg_advisory_unlock($1)", key)
        raise
    await conn.execute("SELECT pg_advisory_unlock($1)", key)


def _table_sql(table: str) -> tuple[str | None, str]:
    match = _TABLE_PATTERN.match(table)
    if match is None:
        raise MigrationError(f"migrations table {table!r} must match {_TABLE_PATTERN.pattern}")
    schema, name = match.group(1), match.group(2)
    qualified = f'"{schema}"."{name}"' if schema else f'"{name}"'
    return (f'"{schema}"' if schema else None), qualified


async def apply_migrations(
    conn: Connection,
    migrations: Sequence[Migration],
    *,
    table: str,
    lock_key: int,
    recorded_name: Callable[[Migration], str] = lambda m: m.filename,
    allow_unknown_versions: bool = False,
) -> MigrationResult:
    """Apply the pending `migrations` in version order, each once, under `lock_key`.

    `table` (`name` or `schema.name`, lower-case) records version, `recorded_name(m)` and the
    SHA-256 of each file; it is created if missing. Before anything is applied, every file
    already recorded is checked against its checksum: an edited one raises MigrationError
    naming it. A recorded version with no file (a newer build migrated the database) raises
    too unless `allow_unknown_versions`. Each pending file runs in its own transaction together
    with its record, so a failure leaves the earlier files applied and this one not.
    """
    schema, qualified = _table_sql(table)
    ordered = sorted(migrations, key=lambda m: m.version)
    versions = [m.version for m in ordered]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"duplicate migration versions: {versions}")
    result = MigrationResult()
    async with advisory_lock(conn, lock_key):
        if schema is not None:
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {qualified} ("
            " version integer PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        rows = await conn.fetch(f"SELECT version, name, checksum FROM {qualified}")
        done: dict[int, str] = {row["version"]: row["checksum"] for row in rows}
        for m in ordered:
            if m.version in done and done[m.version] != m.checksum:
                raise MigrationError(
                    f"migration {m.filename} was edited after it was applied (its checksum "
                    f"differs from the one recorded in {table}); restore it and add a new "
                    "migration instead"
                )
        unknown = sorted(set(done) - set(versions))
        if unknown and not allow_unknown_versions:
            raise MigrationError(
                f"the database has migrations this build does not know ({unknown}): "
                "it was migrated by a newer build"
            )
        if unknown:
            # a newer build (e.g. an aborted canary) migrated it; migrations are backward
            # compatible, so this build runs on that schema and leaves it as it is
            logger.warning("the database was migrated by a newer build; leaving its schema",
                           extra={"unknown_versions": unknown, "table": table})
        for m in ordered:
            if m.version in done:
                result.already_applied.append(m)
                continue
            async with conn.transaction():
                await conn.execute(m.sql)
                await conn.execute(
                    f"INSERT INTO {qualified} (version, name, checksum) VALUES ($1, $2, $3)",
                    m.version, recorded_name(m), m.checksum,
                )
            result.applied.append(m)
    if result.applied:
        names = [m.filename for m in result.applied]
        logger.info("migrations applied", extra={"migrations": names})
    return result


def quote_ident(name: str) -> str:
    """A double-quoted SQL identifier (for names that cannot be bind parameters)."""
    if "\x00" in name:
        raise MigrationError("an identifier cannot contain NUL")
    return '"' + name.replace('"', '""') + '"'


def check_role_name(role: str) -> None:
    if not ROLE_PATTERN.match(role):
        raise MigrationError(f"application role name {role!r} must match {ROLE_PATTERN.pattern}")


async def ensure_app_role(
    conn: Connection,
    role: str,
    password: str | None,
    *,
    update_existing: bool = False,
) -> bool:
    """Make sure the login role a service connects as exists and row-level security applies
    to it. Returns True when it was created now.

    The role must be a plain lower-case name and must not be the connected (owner) role. If it
    is missing it is created LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE with
    `password` (required then). An existing role that is a superuser or has BYPASSRLS is
    refused. With `update_existing` an existing role gets those attributes (and `password`,
    when given) set again. Statements are built server-side with format(%I, %L).
    """
    check_role_name(role)
    me = await conn.fetchval("SELECT current_user")
    if role == me:
        raise MigrationError(
            "the application role must differ from the migrating (owner) role: "
            "row-level security does not apply to table owners"
        )
    flags = await _role_flags(conn, role)
    created = False
    if flags is None:
        if not password:
            raise MigrationError(
                f"application role {role!r} does not exist and there is no password to create "
                "it with"
            )
        statement = await conn.fetchval(
            f"SELECT format('CREATE ROLE %I {_ROLE_ATTRIBUTES} PASSWORD %L', $1::text, $2::text)",
            role, password,
        )
        try:
            async with conn.transaction():  # a savepoint: a concurrent creator may win
                await conn.execute(statement)
            created = True
            logger.info("app role created", extra={"role": role})
        except Exception as exc:
            if getattr(exc, "sqlstate", None) != _DUPLICATE_OBJECT:
                raise
        flags = await _role_flags(conn, role)
        if flags is None:  # pragma: no cover - created and dropped concurrently
            raise MigrationError(f"application role {role!r} vanished while being created")
    if flags[0] or flags[1]:
        raise MigrationError(
            f"application role {role!r} is a superuser or has BYPASSRLS: row-level security "
            "would not apply to it"
        )
    if update_existing and not created:
        if password:
            statement = await conn.fetchval(
                f"SELECT format('ALTER ROLE %I {_ROLE_ATTRIBUTES} PASSWORD %L', $1::text, "
                "$2::text)",
                role, password,
            )
        else:
            statement = await conn.fetchval(
                f"SELECT format('ALTER ROLE %I {_ROLE_ATTRIBUTES}', $1::text)", role
            )
        await conn.execute(statement)
    return created


async def _role_flags(conn: Connection, role: str) -> tuple[bool, bool] | None:
    rows = await conn.fetch(
        "SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = $1", role
    )
    if not rows:
        return None
    return bool(rows[0]["rolsuper"]), bool(rows[0]["rolbypassrls"])

