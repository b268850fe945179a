"""Fixtures: a fresh migrated database per test and billing-svc running in this process."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
from parley_billing.testing import BillingHarness, prepare_database, start_billing


@pytest.fixture
async def billing_dsns(new_database: Callable[[str], str]) -> tuple[str, str]:
    """(owner DSN, app-role DSN) of a fresh database with the billing schema."""
    owner = await asyncio.to_thread(new_database, "billing")
    return owner, await prepare_database(owner)


@pytest.fixture
async def billing(billing_dsns: tuple[str, str]) -> AsyncIterator[BillingHarness]:
    harness = await start_billing(*billing_dsns)
    yield harness
    await harness.close()
