"""Migrations are idempotent and leave row-level security that holds against the app role."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import asyncpg
import numpy as np
import pytest
from parley_kb.migrator import MigrationError, load_migrations, migrate
from parley_kb.store import PgKnowledgeStore, init_connection
from parley_kb.testing import APP_PASSWORD, APP_ROLE, KbDatabase

pytestmark = pytest.mark.integration

TENANT_TABLES = ("tenants", "documents", "chunks")


async def _seed_two_tenants(db: KbDatabase) -> str:
    """Rows for acme and globex written as the owner (bypassing the service)."""
    conn = await asyncpg.connect(db.admin_dsn)
    try:
        await init_connection(conn)
        table = await conn.fetchval(
            "SELECT table_name FROM kb.embedding_spaces WHERE model = 'local-wordllama-256'"
        )
        for tenant in ("acme", "globex"):
            await conn.execute(
                "INSERT INTO kb.documents (tenant_id, document_id, content_type, content_hash,"
                " fingerprint, size_bytes, chunk_count, embedding_model)"
                " VALUES ($1, 'doc', 'text', 'h', 'f', 3, 1, 'local-wordllama-256')", tenant)
            await conn.execute(
                "INSERT INTO kb.chunks (tenant_id, document_id, chunk_index, body, text_hash)"
                " VALUES ($1, 'doc', 0, $2, 'h')", tenant, f"secret of {tenant}")
            await conn.execute(
                f"INSERT INTO kb.{table} (tenant_id, document_id, chunk_index, embedding)"
                " VALUES ($1, 'doc', 0, $2)", tenant, np.ones(256, np.float32))
        return str(table)
    finally:
        await conn.close()


async def test_migrate_twice_is_a_no_op(make_kb_database: Callable[..., Any]) -> None:
    db: KbDatabase = await make_kb_database("kbmig")
    admin = await asyncpg.connect(db.admin_dsn)
    try:
        before = await admin.fetch("SELECT version, checksum, applied_at FROM kb.schema_migrations")
        tables_before = await admin.fetchval("SELECT count(*) FROM pg_tables WHERE schemaname='kb'")
        report = await migrate(db.admin_dsn, app_role=APP_ROLE, app_password=APP_PASSWORD,
                               embedding_model="local-wordllama-256", embedding_dimensions=256,
                               tenants=["acme", "globex"])
        assert report.applied == []
        assert report.already_applied == [m.version for m in load_migrations()]
        after = await admin.fetch("SELECT version, checksum, applied_at FROM kb.schema_migrations")
        assert before == after
        assert tables_before == await admin.fetchval(
            "SELECT count(*) FROM pg_tables WHERE schemaname='kb'")
        # A second embedding model gets its own table, and partitions for every tenant.
        report = await migrate(db.admin_dsn, embedding_model="voyage-3.5",
                               embedding_dimensions=1024)
        parts = await admin.fetchval(
            "SELECT count(*) FROM pg_inherits WHERE inhparent = $1::regclass",
            f"kb.{report.embedding_table}")
        assert parts == await admin.fetchval("SELECT count(*) FROM kb.tenant_keys") > 0
        # The same model with other dimensions is refused.
        with pytest.raises(asyncpg.PostgresError, match="dimensions"):
            await migrate(db.admin_dsn, embedding_model="voyage-3.5", embedding_dimensions=512)
        # A database a newer build migrated (a rolled-back canary) is left as it is and the
        # rest converges: the release's migrate Job does not fail.
        await admin.execute("INSERT INTO kb.schema_migrations (version, name, checksum) "
                            "VALUES (9999, 'from_a_newer_build', 'n')")
        report = await migrate(db.admin_dsn, tenants=["initech"])
        assert report.applied == [] and report.tenants == 1
        await admin.execute("DELETE FROM kb.schema_migrations WHERE version = 9999")
        # An edited migration is refused.
        await admin.execute("UPDATE kb.schema_migrations SET checksum = 'x' WHERE version = 1")
        with pytest.raises(MigrationError, match="edited"):
            await migrate(db.admin_dsn)
    finally:
        await admin.close()


async def test_roles_and_row_level_security_flags(kb_db: KbDatabase) -> None:
    admin = await asyncpg.connect(kb_db.admin_dsn)
    try:
        role = await admin.fetchrow(
            "SELECT rolsuper, rolbypassrls, rolcreaterole, rolcreatedb FROM pg_roles"
            " WHERE rolname = $1", APP_ROLE)
        assert role is not None and not any(role.values())
        assert await admin.fetchval("SELECT pg_has_role($1, 'parley_kb_runtime', 'MEMBER')",
                                    APP_ROLE)
        rows = await admin.fetch(
            "SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity,"
            " pg_has_role($1, c.relowner, 'USAGE') AS owned_by_app"
            " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'kb' AND c.relkind = 'p'", APP_ROLE)
        names = {r["relname"] for r in rows}
        assert {"chunks"} <= names and any(n.startswith("emb_") for n in names)
        for r in rows:
            assert r["relrowsecurity"] and r["relforcerowsecurity"], r["relname"]
            assert not r["owned_by_app"]
        for table in ("tenants", "documents"):
            flags = await admin.fetchrow(
                "SELECT relrowsecurity, relforcerowsecurity FROM pg_class"
                " WHERE oid = $1::regclass", f"kb.{table}")
            assert flags is not None and all(flags.values())
    finally:
        await admin.close()


async def test_app_role_without_tenant_sees_nothing_and_cannot_escape(
    make_kb_database: Callable[..., Any],
) -> None:
    db: KbDatabase = await make_kb_database("kbrls")
    table = await _seed_two_tenants(db)
    conn = await asyncpg.connect(db.app_dsn)
    try:
        await init_connection(conn)
        # No tenant bound: every table is empty.
        for name in (*TENANT_TABLES, table):
            assert await conn.fetchval(f"SELECT count(*) FROM kb.{name}") == 0, name
        # The seed's broken pattern (SET LOCAL with a bind parameter) is a syntax error.
        with pytest.raises(asyncpg.PostgresSyntaxError):
            async with conn.transaction():
                await conn.execute("SET LOCAL app.tenant_id = $1", "acme")
        async with conn.transaction():
            await conn.execute("SELECT set_config('app.tenant_id', 'acme', true)")
            bodies = await conn.fetch("SELECT tenant_id, body FROM kb.chunks")
            assert [tuple(r) for r in bodies] == [("acme", "secret of acme")]
            assert await conn.fetchval(f"SELECT count(*) FROM kb.{table}") == 1
            # Explicitly asking for another tenant's rows returns nothing...
            assert await conn.fetchval(
                "SELECT count(*) FROM kb.chunks WHERE tenant_id = 'globex'") == 0
            # ...and changing them changes nothing.
            assert await conn.execute(
                "UPDATE kb.documents SET title = 'pwned' WHERE tenant_id = 'globex'"
            ) == "UPDATE 0"
            assert await conn.execute(
                "DELETE FROM kb.chunks WHERE tenant_id = 'globex'") == "DELETE 0"
        # The binding ends with the transaction (is_local).
        assert await conn.fetchval("SELECT count(*) FROM kb.documents") == 0
        async with conn.transaction():
            await conn.execute("SELECT set_config('app.tenant_id', 'acme', true)")
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
                await conn.execute(
                    "INSERT INTO kb.documents (tenant_id, document_id, content_type,"
                    " content_hash, fingerprint, size_bytes, chunk_count, embedding_model)"
                    " VALUES ('globex', 'planted', 'text', 'h', 'f', 1, 0, 'm')")
        async with conn.transaction():
            await conn.execute("SELECT set_config('app.tenant_id', 'acme', true)")
            with pytest.raises(asyncpg.FeatureNotSupportedError):
                await conn.copy_records_to_table(
                    "documents", schema_name="kb", columns=["tenant_id"], records=[("acme",)])
        privileged = [
            "SELECT * FROM kb.tenant_keys",
            "SELECT * FROM kb.chunks_p1",
            "CREATE TABLE kb.mine (x int)",
            "SELECT kb.ensure_embedding_space('evil', 3)",
            "ALTER TABLE kb.documents DISABLE ROW LEVEL SECURITY",
            "DROP POLICY tenant_isolation ON kb.documents",
            "SET ROLE postgres",
        ]
        for statement in privileged:
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(statement)
        # ensure_tenant acts only for the tenant the transaction is bound to.
        async with conn.transaction():
            await conn.execute("SELECT set_config('app.tenant_id', 'acme', true)")
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="current tenant"):
                await conn.execute("SELECT kb.ensure_tenant('globex')")
    finally:
        await conn.close()
    admin = await asyncpg.connect(db.admin_dsn)
    try:
        rows = await admin.fetch("SELECT tenant_id, title FROM kb.documents ORDER BY 1")
        assert [tuple(r) for r in rows] == [("acme", ""), ("globex", "")]
        assert await admin.fetchval("SELECT count(*) FROM kb.chunks") == 2
    finally:
        await admin.close()


async def test_service_refuses_privileged_roles(kb_db: KbDatabase) -> None:
    with pytest.raises(SystemExit, match="superuser or BYPASSRLS"):
        await PgKnowledgeStore.connect(kb_db.admin_dsn, model="local-wordllama-256",
                                       dimensions=256)
    with pytest.raises(SystemExit, match="256"):
        await PgKnowledgeStore.connect(kb_db.app_dsn, model="local-wordllama-256",
                                       dimensions=384)
    with pytest.raises(SystemExit, match="migrate"):
        await PgKnowledgeStore.connect(kb_db.app_dsn, model="voyage-unknown", dimensions=1024)


async def test_app_role_must_not_be_the_owner(kb_db: KbDatabase) -> None:
    with pytest.raises(MigrationError, match="must differ"):
        await migrate(kb_db.admin_dsn, app_role="postgres", app_password="x")
    with pytest.raises(MigrationError, match="must match"):
        await migrate(kb_db.admin_dsn, app_role="Robert'); DROP TABLE x;--", app_password="x")


async def test_migration_0002_keeps_only_vectors_of_current_versions(
    new_database: Callable[[str], str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Before 0002 a write replaced vectors in the configured model's table only, so other
    models' tables could hold vectors of older versions: 0002 removes them (and orphans)."""
    import parley_kb.migrator as migrator

    admin = new_database("kbm2")
    everything = load_migrations()
    monkeypatch.setattr(migrator, "load_migrations", lambda: everything[:1])
    await migrate(admin, embedding_model="m-a", embedding_dimensions=3, tenants=["acme"])
    await migrate(admin, embedding_model="m-b", embedding_dimensions=3)
    conn = await asyncpg.connect(admin)
    try:
        await init_connection(conn)
        vec = np.ones(3, np.float32)
        for doc, model in (("doc-a", "m-a"), ("doc-b", "m-b")):
            await conn.execute(
                "INSERT INTO kb.documents (tenant_id, document_id, content_type, content_hash,"
                " fingerprint, size_bytes, chunk_count, embedding_model)"
                " VALUES ('acme', $1, 'text', 'h', 'f', 3, 1, $2)", doc, model)
            for table in ("emb_1", "emb_2"):  # one current, one stale (older version)
                await conn.execute(f"INSERT INTO kb.{table} VALUES ('acme', $1, 0, $2)", doc, vec)
        await conn.execute("INSERT INTO kb.emb_1 VALUES ('acme', 'deleted-doc', 0, $1)", vec)
        monkeypatch.setattr(migrator, "load_migrations", lambda: everything[:2])
        report = await migrate(admin)
        assert report.applied == [2]
        kept = {table: [r[0] for r in await conn.fetch(
            f"SELECT document_id FROM kb.{table} ORDER BY 1")] for table in ("emb_1", "emb_2")}
        assert kept == {"emb_1": ["doc-a"], "emb_2": ["doc-b"]}
    finally:
        await conn.close()
