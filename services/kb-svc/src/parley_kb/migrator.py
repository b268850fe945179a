"""Versioned SQL migrations (files in `migrations/`), applied by `python -m parley_kb migrate`
and at start-up when MIGRATE_DATABASE_URL is set.

Runs as the owner (or a superuser). Each file is applied once, in its own transaction, under
an advisory lock so replicas starting together do not race; applied files are checksummed and
an edited one is refused. After the files it converges, every run: the runtime login role
(NOBYPASSRLS, member of parley_kb_runtime), the embedding table of the configured model, and
the partitions of every configured tenant.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

import asyncpg
from parley_runtime import migrations as shared
from parley_runtime.migrations import Migration, MigrationError, advisory_lock

__all__ = ["Migration", "MigrationError", "MigrationReport", "load_migrations", "migrate"]

logger = logging.getLogger(__name__)

_LOCK_KEY = 0x6B62_6D69  # "kbmi"
_TABLE = "kb.schema_migrations"


@dataclass(frozen=True, slots=True)
class MigrationReport:
    applied: list[int]
    already_applied: list[int]
    app_role: str | None
    embedding_table: str | None
    tenants: int


def load_migrations() -> list[Migration]:
    return shared.load_migrations(__package__ or "parley_kb")


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
        async with advisory_lock(conn, _LOCK_KEY):  # convergence runs under the lock too
            result = await shared.apply_migrations(
                conn, load_migrations(), table=_TABLE, lock_key=_LOCK_KEY,
                recorded_name=lambda m: m.name,
                # A newer build (a canary that was rolled back) may have migrated the database:
                # migrations stay backward compatible, so this build runs on that schema (as
                # billing's migrate does) instead of failing the release's migrate Job.
                allow_unknown_versions=True,
            )
            applied = [m.version for m in result.applied]
            already = [m.version for m in result.already_applied]
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
        await conn.close()
    return MigrationReport(applied, already, role, table, count)


async def _ensure_app_role(
    conn: asyncpg.Connection, role: str, password: str | None
) -> str:
    # Created, or updated (attributes and password) every run; refused if it is the owner, a
    # superuser or has BYPASSRLS. Then a member of the runtime group that the schema grants to.
    await shared.ensure_app_role(conn, role, password, update_existing=True)
    grant = await conn.fetchval("SELECT format('GRANT parley_kb_runtime TO %I', $1::text)", role)
    await conn.execute(grant)
    return role
