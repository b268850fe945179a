"""Settings of kb-svc (env prefix PARLEY_; data stores and providers by their standard names)
and the `kb:` section of a tenant's configuration."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit

from parley_runtime.errors import NotFound
from parley_runtime.settings import ServiceSettings
from parley_runtime.tenants import TenantRegistry
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_settings import SettingsConfigDict

DEFAULT_APP_ROLE = "parley_kb_app"
DEFAULT_APP_PASSWORD = "parley-kb-dev"
LOCAL_MODEL = "local-wordllama-256"


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="PARLEY_", extra="ignore", populate_by_name=True)

    service_name: str = "kb-svc"
    grpc_port: int = 50053
    metrics_port: int = 9103
    # Documents travel in one message: allow more than the runtime's 4 MiB default.
    max_message_bytes: int = Field(default=32 * 1024 * 1024, gt=0)

    # --- data stores -----------------------------------------------------------------------
    # Runtime connection: the non-owner application role (NOBYPASSRLS), so RLS applies.
    database_url: str | None = Field(
        default=None, validation_alias=AliasChoices("DATABASE_URL", "PARLEY_DATABASE_URL")
    )
    # Owner/superuser connection for `migrate` (and for migrating at start-up when set).
    migrate_database_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("MIGRATE_DATABASE_URL", "PARLEY_MIGRATE_DATABASE_URL"),
    )
    # The login role the service connects as; created/updated by `migrate`. Defaults to the
    # user and password in DATABASE_URL, else parley_kb_app / a development password.
    kb_app_role: str | None = None
    kb_app_password: str | None = None
    db_pool_min: int = Field(default=1, ge=0)
    db_pool_max: int = Field(default=10, ge=1)
    db_statement_timeout_ms: int = Field(default=15_000, ge=0)
    redis_url: str | None = Field(
        default=None, validation_alias=AliasChoices("REDIS_URL", "PARLEY_REDIS_URL")
    )

    # --- embeddings ------------------------------------------------------------------------
    voyage_api_key: str | None = Field(
        default=None, validation_alias=AliasChoices("VOYAGE_API_KEY", "PARLEY_VOYAGE_API_KEY")
    )
    voyage_base_url: str | None = Field(
        default=None, validation_alias=AliasChoices("VOYAGE_BASE_URL", "PARLEY_VOYAGE_BASE_URL")
    )
    kb_voyage_model: str = "voyage-3.5"
    kb_voyage_timeout_s: float = Field(default=30.0, gt=0)
    kb_voyage_max_retries: int = Field(default=2, ge=0)
    kb_embed_batch_size: int = Field(default=128, ge=1, le=1000)
    kb_embed_cache_entries: int = Field(default=20_000, ge=0)
    kb_embed_cache_ttl_s: int = Field(default=30 * 24 * 3600, ge=60)

    # --- chunking --------------------------------------------------------------------------
    kb_chunk_chars: int = Field(default=1200, ge=200, le=20_000)
    kb_chunk_overlap_chars: int = Field(default=200, ge=0)

    # --- search ----------------------------------------------------------------------------
    kb_top_k_default: int = Field(default=5, ge=1)
    kb_top_k_max: int = Field(default=50, ge=1, le=1000)
    kb_hnsw_ef_search: int = Field(default=100, ge=10, le=1000)
    # Partitions above this many chunks search with a proportionally larger ef_search
    # (x sqrt(chunks / this)), up to 1000.
    kb_hnsw_ef_reference_chunks: int = Field(default=50_000, ge=1000)
    # With a filter narrower than this many chunks, vector search scans them exactly.
    kb_exact_scan_max_chunks: int = Field(default=4000, ge=0)
    kb_max_query_chars: int = Field(default=4000, ge=1)

    # --- limits (defaults; a tenant's `kb:` section overrides) -----------------------------
    kb_max_document_bytes: int = Field(default=8 * 1024 * 1024, ge=1)
    kb_max_documents: int = Field(default=10_000, ge=0)
    kb_max_total_bytes: int = Field(default=1024 * 1024 * 1024, ge=0)
    kb_max_chunks: int = Field(default=500_000, ge=0)

    # --- admin REST ------------------------------------------------------------------------
    admin_port: int = Field(default=8083, ge=0, le=65535, description="0 disables admin REST")
    # Callers (token `iss`) allowed on the operator endpoints (/v1/admin/...): re-embedding,
    # export and offboarding of any tenant. Tenant-scoped callers such as agent-worker are not.
    kb_operator_callers: list[str] = Field(default_factory=lambda: ["kb-svc"])

    # --- operator commands -----------------------------------------------------------------
    kb_reembed_batch_chunks: int = Field(default=256, ge=1, le=100_000)
    # Offboarding drops partitions, which waits for in-flight statements on the parent tables.
    kb_offboard_lock_timeout_ms: int = Field(default=5000, ge=1)

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.kb_chunk_overlap_chars >= self.kb_chunk_chars // 2:
            raise ValueError("PARLEY_KB_CHUNK_OVERLAP_CHARS must be under half of the chunk size")
        if self.db_pool_min > self.db_pool_max:
            raise ValueError("PARLEY_DB_POOL_MIN must not exceed PARLEY_DB_POOL_MAX")
        return self

    @property
    def uses_voyage(self) -> bool:
        return bool(self.voyage_api_key)

    @property
    def embedding_model(self) -> str:
        return self.kb_voyage_model if self.uses_voyage else LOCAL_MODEL

    def app_role_credentials(self) -> tuple[str, str]:
        """The runtime login role and its password (settings, else DATABASE_URL, else dev)."""
        url_user = url_password = None
        if self.database_url:
            parts = urlsplit(self.database_url)
            url_user = unquote(parts.username) if parts.username else None
            url_password = unquote(parts.password) if parts.password else None
        role = self.kb_app_role or url_user or DEFAULT_APP_ROLE
        password = self.kb_app_password or url_password or DEFAULT_APP_PASSWORD
        return role, password


class TenantKbConfig(BaseModel):
    """A tenant's `kb:` section. Absent values fall back to the service defaults."""

    model_config = ConfigDict(extra="forbid")

    max_documents: int | None = Field(default=None, ge=0)
    max_total_bytes: int | None = Field(default=None, ge=0)
    max_chunks: int | None = Field(default=None, ge=0)
    max_document_bytes: int | None = Field(default=None, ge=1)
    # Turns off ingestion for the tenant (search keeps working).
    read_only: bool = False


class TenantLimits(BaseModel):
    model_config = ConfigDict(frozen=True)

    max_documents: int
    max_total_bytes: int
    max_chunks: int
    max_document_bytes: int
    read_only: bool = False


class KbTenants:
    """Known tenants and their kb limits, validated once at start-up."""

    def __init__(self, registry: TenantRegistry, settings: Settings) -> None:
        self._registry = registry
        self._limits: dict[str, TenantLimits] = {}
        for tenant in registry.all():
            try:
                section = TenantKbConfig.model_validate(tenant.kb or {})
            except ValidationError as exc:
                raise ValueError(
                    f"tenant {tenant.tenant_id!r}: invalid kb section: {exc}"
                ) from None
            self._limits[tenant.tenant_id] = TenantLimits(
                max_documents=_pick(section.max_documents, settings.kb_max_documents),
                max_total_bytes=_pick(section.max_total_bytes, settings.kb_max_total_bytes),
                max_chunks=_pick(section.max_chunks, settings.kb_max_chunks),
                max_document_bytes=_pick(
                    section.max_document_bytes, settings.kb_max_document_bytes
                ),
                read_only=section.read_only,
            )

    @classmethod
    def from_settings(cls, settings: Settings) -> KbTenants:
        if not settings.tenants_file:
            raise SystemExit(
                "PARLEY_TENANTS_FILE is not set: kb-svc serves only tenants named in it"
            )
        return cls(TenantRegistry.from_file(settings.tenants_file), settings)

    @classmethod
    def from_dict(cls, data: dict[str, Any], settings: Settings) -> KbTenants:
        return cls(TenantRegistry.from_dict(data), settings)

    def limits(self, tenant_id: str) -> TenantLimits:
        """Limits of a known tenant; NOT_FOUND for any other id."""
        self._registry.get(tenant_id)
        limits = self._limits.get(tenant_id)
        if limits is None:  # pragma: no cover - registry and limits are built together
            raise NotFound(f"unknown tenant {tenant_id!r}")
        return limits

    def ids(self) -> list[str]:
        return self._registry.ids()


def _pick(value: int | None, default: int) -> int:
    return default if value is None else value
