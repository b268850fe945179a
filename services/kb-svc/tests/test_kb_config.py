"""Settings from the environment and the tenants' `kb:` sections."""

from __future__ import annotations

import pytest
from parley_kb.config import LOCAL_MODEL, KbTenants, Settings
from parley_runtime.errors import NotFound

pytestmark = pytest.mark.unit


def test_standard_env_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://kb_app:s3cret%21@db:5432/parley")
    monkeypatch.setenv("MIGRATE_DATABASE_URL", "postgresql://owner@db:5432/parley")
    monkeypatch.setenv("REDIS_URL", "redis://cache:6379/0")
    monkeypatch.setenv("PARLEY_KB_TOP_K_MAX", "20")
    monkeypatch.delenv("VOYAGE_API_KEY", raising=False)
    settings = Settings()
    assert settings.redis_url == "redis://cache:6379/0"
    assert settings.kb_top_k_max == 20
    assert settings.grpc_port == 50053 and settings.admin_port == 8083
    assert settings.app_role_credentials() == ("kb_app", "s3cret!")
    assert settings.embedding_model == LOCAL_MODEL and not settings.uses_voyage
    monkeypatch.setenv("VOYAGE_API_KEY", "pa-x")
    monkeypatch.setenv("VOYAGE_BASE_URL", "http://127.0.0.1:9/v1")
    voyage = Settings()
    assert voyage.uses_voyage and voyage.embedding_model == "voyage-3.5"
    assert voyage.voyage_base_url == "http://127.0.0.1:9/v1"
    monkeypatch.setenv("PARLEY_KB_APP_PASSWORD", "explicit")
    assert Settings().app_role_credentials() == ("kb_app", "explicit")


def test_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="OVERLAP"):
        Settings(kb_chunk_chars=400, kb_chunk_overlap_chars=300)
    with pytest.raises(ValueError, match="POOL"):
        Settings(db_pool_min=5, db_pool_max=2)


def test_tenant_kb_sections() -> None:
    settings = Settings(kb_max_documents=100)
    tenants = KbTenants.from_dict(
        {"tenants": {"acme": {"kb": {"max_documents": 3, "read_only": True}}, "globex": {}}},
        settings,
    )
    assert tenants.limits("acme").max_documents == 3 and tenants.limits("acme").read_only
    assert tenants.limits("globex").max_documents == 100
    with pytest.raises(NotFound):
        tenants.limits("umbrella")
    with pytest.raises(ValueError, match="max_docs"):
        KbTenants.from_dict({"tenants": {"acme": {"kb": {"max_docs": 3}}}}, settings)
    with pytest.raises(ValueError):
        KbTenants.from_dict({"tenants": {"acme": {"kb": {"max_chunks": -1}}}}, settings)


def test_tenants_file_is_required_to_serve() -> None:
    with pytest.raises(SystemExit, match="PARLEY_TENANTS_FILE"):
        KbTenants.from_settings(Settings(tenants_file=None))
