"""Entry point (wiring only).

    python -m parley_billing               serve gRPC (50054), REST + web (8084), /metrics (9104)
    python -m parley_billing migrate       apply the schema as MIGRATE_DATABASE_URL; grant the
                                           DATABASE_URL role
    python -m parley_billing page-link --tenant ID [--base-url URL]
                                           print a short-lived link to the tenant's web page
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import sys
from typing import TYPE_CHECKING

from parley_runtime.catalog import load_catalog
from parley_runtime.server import GrpcServiceHost, bootstrap, make_verifier
from parley_runtime.tenants import TenantRegistry

from .budgets import defaults_from_tenants
from .config import Settings
from .ledger import Ledger, Limits
from .log import logger
from .migrate import migrate
from .pricing import Pricer
from .server import SERVICE_NAME, register
from .store import BillingStore, create_pool

if TYPE_CHECKING:
    from .web import WebAuth


def _web_auth(settings: Settings) -> WebAuth:
    from .web import WebAuth

    verifier = None if settings.auth_disabled else make_verifier(settings)
    return WebAuth(verifier=verifier, keys=settings.auth_keys, page_kid=settings.signing_kid,
                   page_ttl_s=settings.page_link_ttl_s, issuer=settings.service_name)


def _public_url(settings: Settings) -> str:
    return (settings.public_url or f"http://{settings.host}:{settings.http_port}").rstrip("/")


async def serve(settings: Settings) -> None:
    bootstrap(settings)
    if not settings.database_url:
        raise SystemExit("DATABASE_URL is required (the non-owner app role's DSN)")
    if settings.migrate_database_url:
        await migrate(settings.migrate_database_url, settings.database_url)
    registry = TenantRegistry.from_file(settings.tenants_file) if settings.tenants_file else None
    ledger_defaults = defaults_from_tenants(registry)
    pricer = Pricer(load_catalog(settings.catalog_file))
    pool = await create_pool(settings.database_url, min_size=settings.db_pool_min,
                             max_size=settings.db_pool_max)
    store = BillingStore(pool)
    await store.check_role()
    ledger = Ledger(
        store=store, pricer=pricer, registry=registry, budget_defaults=ledger_defaults,
        budget_cache_s=settings.budget_cache_s,
        metrics_max_tenants=settings.metrics_max_tenants,
        limits=Limits(
            max_batch_events=settings.max_batch_events,
            max_event_age=dt.timedelta(days=settings.max_event_age_days),
            max_future_skew=dt.timedelta(seconds=settings.max_future_skew_s),
            report_max_rows=settings.report_max_rows,
        ),
    )
    host = GrpcServiceHost(settings)
    register(host.server, ledger)
    host.add_service_name(SERVICE_NAME)
    host.on_shutdown(pool.close)
    host.on_shutdown(ledger.close)
    await host.start()
    if settings.http_port:
        # Imported here: a process without the REST server starts faster without FastAPI.
        from .web import HttpServer, create_app

        public = settings.public_url
        http = HttpServer(
            create_app(ledger, _web_auth(settings),
                       public_url=(lambda: _public_url(settings)) if public else None),
            settings.host, settings.http_port,
        )
        await http.start()
        host.on_shutdown(http.stop)
    logger.info("billing-svc ready", extra={"catalog": pricer.catalog.version,
                                            "baseline_model": pricer.premium_model})
    await host.serve_until_signalled()


async def run_migrate(settings: Settings) -> None:
    owner = settings.migrate_database_url or settings.database_url
    if not owner:
        raise SystemExit("set MIGRATE_DATABASE_URL (the schema owner's DSN)")
    applied = await migrate(owner, settings.database_url or None)
    print(f"applied: {', '.join(applied) or 'nothing (up to date)'}")


def page_link(settings: Settings, tenant: str, base_url: str | None) -> None:
    token, expires = _web_auth(settings).page_token(tenant)
    base = (base_url or _public_url(settings)).rstrip("/")
    print(f"{base}/v1/dashboard?token={token}")
    print(f"expires {expires.isoformat()}", file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m parley_billing")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("serve")
    sub.add_parser("migrate")
    link = sub.add_parser("page-link")
    link.add_argument("--tenant", required=True)
    link.add_argument("--base-url")
    args = parser.parse_args(argv)
    settings = Settings()
    if args.command == "migrate":
        asyncio.run(run_migrate(settings))
    elif args.command == "page-link":
        page_link(settings, args.tenant, args.base_url)
    else:
        asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
