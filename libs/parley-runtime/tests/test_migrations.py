"""parley_runtime.migrations: file loading without a database, then the runner and the app-role
helper against the session's real PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg
import pytest
from parley_runtime.migrations import (
    Migration,
    MigrationError,
    apply_migrations,
    ensure_app_role,
    load_migrations,
    quote_ident,
    read_migrations,
)

LOCK = 0x7465_7374  # "test"
TABLE = "svc.schema_migrations"


def _write(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(exist_ok=True)
    for name, sql in files.items():
        (folder / name).write_text(sql, encoding="utf-8")
    return folder


# -- loading (no database) ---------------------------------------------------------------------


@pytest.mark.unit
def test_read_sorts_by_version_and_ignores_other_files(tmp_path: Path) -> None:
    folder = _write(tmp_path / "m", {
        "0010_later.sql": "SELECT 10;",
        "0002_second_step.sql": "SELECT 2;",
        "0001_first.sql": "SELECT 1;",
        "__init__.py": "",
        "README.md": "notes",
    })
    found = read_migrations(folder)
    assert [(m.version, m.name) for m in found] == [(1, "first"), (2, "second_step"), (10, "later")]
    assert found[1].filename == "0002_second_step.sql"
    assert found[0].sql == "SELECT 1;"
    assert found[0].checksum == Migration(1, "other", "SELECT 1;").checksum
    assert len(found[0].checksum) == 64
    assert read_migrations(_write(tmp_path / "empty", {})) == []


@pytest.mark.unit
@pytest.mark.parametrize("name", [
    "1_short.sql", "00001_long.sql", "0001-dash.sql", "0001_Upper.sql", "0001_.sql",
    "0001_has space.sql", "ledger.sql", "0001_x.v2.sql",
])
def test_read_refuses_badly_named_sql_files(tmp_path: Path, name: str) -> None:
    folder = _write(tmp_path / "m", {"0001_ok.sql": "SELECT 1;", name: "SELECT 2;"})
    with pytest.raises(MigrationError, match="must be named like"):
        read_migrations(folder)


@pytest.mark.unit
def test_read_refuses_duplicate_versions(tmp_path: Path) -> None:
    folder = _write(tmp_path / "m", {"0001_a.sql": "SELECT 1;", "0001_b.sql": "SELECT 2;"})
    with pytest.raises(MigrationError, match=r"duplicate migration version 0001: 0001_a\.sql "
                                             r"and 0001_b\.sql"):
        read_migrations(folder)


@pytest.mark.unit
def test_load_from_a_package() -> None:
    # parley_runtime ships no migrations folder: a missing folder is an error, not "nothing".
    with pytest.raises(FileNotFoundError):
        load_migrations("parley_runtime")


@pytest.mark.unit
def test_quote_ident() -> None:
    assert quote_ident("plain") == '"plain"'
    assert quote_ident('we"ird') == '"we""ird"'
    with pytest.raises(MigrationError):
        quote_ident("a\x00b")


@pytest.mark.unit
async def test_runner_refuses_bad_table_names_and_duplicates() -> None:
    conn: object = object()  # never reached: both are refused before any SQL
    with pytest.raises(MigrationError, match="migrations table"):
        await apply_migrations(conn, [], table='x"; DROP TABLE y; --', lock_key=LOCK)  # type: ignore[arg-type]
    twice = [Migration(1, "a", "SELECT 1"), Migration(1, "b", "SELECT 1")]
    with pytest.raises(MigrationError, match="duplicate"):
        await apply_migrations(conn, twice, table="t", lock_key=LOCK)  # type: ignore[arg-type]


# -- the runner against PostgreSQL ---------------------------------------------------------------

FILES = {
    "0001_items.sql": "CREATE TABLE svc.items (id int PRIMARY KEY);",
    "0002_seed.sql": "INSERT INTO svc.items VALUES (1), (2);",
}


@pytest.mark.integration
async def test_apply_twice_is_idempotent(
    new_database: Callable[[str], str], tmp_path: Path,
) -> None:
    dsn = new_database("rtmig")
    migrations = read_migrations(_write(tmp_path / "m", FILES))
    conn = await asyncpg.connect(dsn)
    try:
        first = await apply_migrations(conn, migrations, table=TABLE, lock_key=LOCK)
        assert [m.version for m in first.applied] == [1, 2] and first.already_applied == []
        rows = await conn.fetch("SELECT version, name, checksum, applied_at"
                                " FROM svc.schema_migrations ORDER BY version")
        assert [(r["version"], r["name"], r["checksum"]) for r in rows] == [
            (m.version, m.filename, m.checksum) for m in migrations]
        second = await apply_migrations(conn, migrations, table=TABLE, lock_key=LOCK)
        assert second.applied == [] and [m.version for m in second.already_applied] == [1, 2]
        assert rows == await conn.fetch("SELECT version, name, checksum, applied_at"
                                        " FROM svc.schema_migrations ORDER BY version")
        assert await conn.fetchval("SELECT count(*) FROM svc.items") == 2
        # A new file is applied on its own; the recorded name can follow a service's convention.
        more = read_migrations(_write(tmp_path / "m", {"0003_more.sql":
                                                       "INSERT INTO svc.items VALUES (3);"}))
        third = await apply_migrations(conn, more, table=TABLE, lock_key=LOCK,
                                       recorded_name=lambda m: m.name)
        assert [m.version for m in third.applied] == [3]
        assert await conn.fetchval("SELECT name FROM svc.schema_migrations WHERE version = 3") \
            == "more"
        # The session lock was released (it is re-entrant, so count its holders).
        assert await conn.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
        ) == 0
    finally:
        await conn.close()


@pytest.mark.integration
async def test_edited_applied_file_is_refused(
    new_database: Callable[[str], str], tmp_path: Path,
) -> None:
    dsn = new_database("rtmig")
    conn = await asyncpg.connect(dsn)
    try:
        await apply_migrations(conn, read_migrations(_write(tmp_path / "m", FILES)),
                               table=TABLE, lock_key=LOCK)
        edited = read_migrations(_write(tmp_path / "m", {
            "0002_seed.sql": "INSERT INTO svc.items VALUES (1), (2), (99);",
            "0003_pending.sql": "CREATE TABLE svc.never (x int);",
        }))
        with pytest.raises(MigrationError, match=r"0002_seed\.sql was edited"):
            await apply_migrations(conn, edited, table=TABLE, lock_key=LOCK)
        # Refused before anything ran: the pending file was not applied either.
        assert await conn.fetchval("SELECT to_regclass('svc.never')") is None
        assert await conn.fetchval("SELECT max(version) FROM svc.schema_migrations") == 2
    finally:
        await conn.close()


@pytest.mark.integration
async def test_unknown_recorded_versions_and_failed_files(
    new_database: Callable[[str], str], tmp_path: Path,
) -> None:
    dsn = new_database("rtmig")
    migrations = read_migrations(_write(tmp_path / "m", FILES))
    conn = await asyncpg.connect(dsn)
    try:
        await apply_migrations(conn, migrations, table=TABLE, lock_key=LOCK)
        with pytest.raises(MigrationError, match=r"does not know \(\[2\]\)"):
            await apply_migrations(conn, migrations[:1], table=TABLE, lock_key=LOCK)
        older = await apply_migrations(conn, migrations[:1], table=TABLE, lock_key=LOCK,
                                       allow_unknown_versions=True)
        assert older.applied == []
        broken = [*migrations, Migration(3, "ok", "CREATE TABLE svc.three (x int);"),
                  Migration(4, "broken", "CREATE TABLE svc.four (x int); SELECT 1/0;")]
        with pytest.raises(asyncpg.DivisionByZeroError):
            await apply_migrations(conn, broken, table=TABLE, lock_key=LOCK)
        # 3 is applied and recorded; 4 is neither (its transaction rolled back).
        assert [r[0] for r in await conn.fetch(
            "SELECT version FROM svc.schema_migrations ORDER BY 1")] == [1, 2, 3]
        assert await conn.fetchval("SELECT to_regclass('svc.four')") is None
        assert await conn.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
        ) == 0
    finally:
        await conn.close()


@pytest.mark.integration
async def test_concurrent_runs_apply_once(
    new_database: Callable[[str], str], tmp_path: Path,
) -> None:
    dsn = new_database("rtmig")
    # Without the lock both would run 0001 (one failing on the table or the record's key).
    migrations = read_migrations(_write(tmp_path / "m", {
        "0001_slow.sql": "SELECT pg_sleep(0.5); CREATE TABLE public.once (x int);"
                         " INSERT INTO public.once VALUES (1);",
        "0002_after.sql": "INSERT INTO public.once VALUES (2);",
    }))
    conns = [await asyncpg.connect(dsn) for _ in range(2)]
    try:
        results = await asyncio.gather(*(
            apply_migrations(c, migrations, table="schema_migrations", lock_key=LOCK)
            for c in conns))
        applied = sorted(len(r.applied) for r in results)
        assert applied == [0, 2]
        assert sorted(len(r.already_applied) for r in results) == [0, 2]
        assert [r[0] for r in await conns[0].fetch("SELECT x FROM public.once ORDER BY 1")] \
            == [1, 2]
        assert await conns[0].fetchval("SELECT count(*) FROM schema_migrations") == 2
    finally:
        for c in conns:
            await c.close()


# -- the app role ------------------------------------------------------------------------------


def _as(dsn: str, user: str, password: str) -> str:
    parts = urlsplit(dsn)
    netloc = f"{user}:{password}@{parts.hostname}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


@pytest.mark.integration
async def test_ensure_app_role(new_database: Callable[[str], str]) -> None:
    dsn = new_database("rtrole")
    role = f"rt_app_{uuid.uuid4().hex[:8]}"
    privileged = f"rt_priv_{uuid.uuid4().hex[:8]}"
    password = "it's a \"secret\"; DROP ROLE x; --"
    conn = await asyncpg.connect(dsn)
    try:
        assert await ensure_app_role(conn, role, password) is True
        flags = await conn.fetchrow(
            "SELECT rolcanlogin, rolsuper, rolbypassrls, rolcreatedb, rolcreaterole"
            " FROM pg_roles WHERE rolname = $1", role)
        assert flags is not None and flags["rolcanlogin"]
        assert not any(flags[k] for k in ("rolsuper", "rolbypassrls", "rolcreatedb",
                                          "rolcreaterole"))
        app = await asyncpg.connect(_as(dsn, role, quote(password, safe="")))
        try:
            assert await app.fetchval("SELECT current_user") == role
        finally:
            await app.close()
        # Existing: left alone (False), or updated with a new password.
        assert await ensure_app_role(conn, role, "other") is False
        assert await ensure_app_role(conn, role, "other", update_existing=True) is False
        app = await asyncpg.connect(_as(dsn, role, "other"))
        await app.close()

        with pytest.raises(MigrationError, match="must differ"):
            await ensure_app_role(conn, await conn.fetchval("SELECT current_user"), "x")
        with pytest.raises(MigrationError, match="must match"):
            await ensure_app_role(conn, "Robert'); DROP TABLE x;--", "x")
        with pytest.raises(MigrationError, match="no password"):
            await ensure_app_role(conn, f"rt_nopw_{uuid.uuid4().hex[:8]}", None)
        await conn.execute(f"CREATE ROLE {privileged} LOGIN BYPASSRLS")
        for update in (False, True):
            with pytest.raises(MigrationError, match="superuser or has BYPASSRLS"):
                await ensure_app_role(conn, privileged, "x", update_existing=update)
        # Refused, not silently demoted.
        assert await conn.fetchval("SELECT rolbypassrls FROM pg_roles WHERE rolname = $1",
                                   privileged)
    finally:
        for name in (role, privileged):
            await conn.execute(f"DROP ROLE IF EXISTS {name}")
        await conn.close()
