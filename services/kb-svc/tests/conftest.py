"""Fixtures: a migrated database on the session's real PostgreSQL, the real Redis, the service
in-process (gRPC on a free port, admin REST over ASGI) with the local embedding model."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from parley_kb.embeddings import load_wordllama
from parley_kb.migrator import migrate
from parley_kb.testing import (
    APP_PASSWORD,
    APP_ROLE,
    TENANTS,
    KbDatabase,
    KbStack,
    app_dsn,
    start_stack,
    stop_stack,
)


@pytest.fixture(scope="session")
def wordllama_model() -> Any:
    return load_wordllama()


@pytest.fixture(scope="session")
def make_kb_database(new_database: Callable[[str], str]) -> Callable[..., Any]:
    async def make(prefix: str = "kb", *, model: str = "local-wordllama-256",
                   dimensions: int = 256) -> KbDatabase:
        admin = new_database(prefix)
        await migrate(admin, app_role=APP_ROLE, app_password=APP_PASSWORD,
                      embedding_model=model, embedding_dimensions=dimensions,
                      tenants=list(TENANTS["tenants"]))
        return KbDatabase(admin, app_dsn(admin))

    return make


@pytest.fixture(scope="session")
async def kb_db(make_kb_database: Callable[..., Any]) -> KbDatabase:
    db: KbDatabase = await make_kb_database("kb")
    return db


@pytest.fixture(scope="session")
async def kb_stack(kb_db: KbDatabase, redis_url: str, wordllama_model: Any
                   ) -> AsyncIterator[KbStack]:
    stack = await start_stack(kb_db, redis_url, wordllama_model)
    yield stack
    await stop_stack(stack)


@pytest.fixture
def unique() -> Callable[[str], str]:
    run = uuid.uuid4().hex[:8]
    return lambda name: f"{run}-{name}"
