"""Settings of billing-svc (env prefix PARLEY_, plus the standard DATABASE_URL variables)."""

from __future__ import annotations

from parley_runtime.settings import ServiceSettings
from pydantic import AliasChoices, Field, field_validator


class Settings(ServiceSettings):
    service_name: str = "billing-svc"
    grpc_port: int = 50054
    metrics_port: int = 9104
    # REST reports, CSV export and the per-tenant web page (0 disables).
    http_port: int = Field(default=8084, ge=0, le=65535)

    # The app role: a non-owner role without BYPASSRLS (row-level security applies to it).
    database_url: str = Field(
        default="", validation_alias=AliasChoices("DATABASE_URL", "PARLEY_DATABASE_URL")
    )
    # The schema owner; used by `python -m parley_billing migrate` and, when set, at start-up.
    migrate_database_url: str = Field(
        default="",
        validation_alias=AliasChoices("MIGRATE_DATABASE_URL", "PARLEY_MIGRATE_DATABASE_URL"),
    )
    db_pool_min: int = Field(default=2, ge=1)
    db_pool_max: int = Field(default=10, ge=1)

    # The price catalog (default: the one packaged with parley-runtime).
    catalog_file: str | None = None

    # Ingest limits: larger batches are refused (the client splits them).
    max_batch_events: int = Field(default=5000, gt=0)
    # Events older than this are refused (days); later ones land in their own period.
    max_event_age_days: int = Field(default=400, gt=0)
    # Clock skew tolerated for events dated in the future (seconds).
    max_future_skew_s: float = Field(default=300.0, ge=0)

    # Reports with more rows are refused (narrow the period or the dimensions).
    report_max_rows: int = Field(default=50_000, gt=0)

    # CheckBudget answers from a per-tenant cache of this age (seconds).
    budget_cache_s: float = Field(default=5.0, ge=0)

    # Distinct tenant label values per process on the cost/usage metrics; the rest are "other".
    metrics_max_tenants: int = Field(default=50, ge=1)

    # Lifetime of the signed links to the web page (seconds).
    page_link_ttl_s: int = Field(default=900, gt=0, le=86_400)
    # Public base URL of the REST server used in page links (default http://host:http_port).
    public_url: str | None = None

    @field_validator("database_url", "migrate_database_url")
    @classmethod
    def _strip(cls, value: str) -> str:
        return value.strip()
