"""Which jobs the worker takes: tenant identity from dispatch/room metadata, tenant config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from parley_agent.metadata import MetadataError, parse_job_identity
from parley_agent.tenancy import TenantDirectory
from parley_agent.worker import JobRefused, SessionLoad, admit

pytestmark = pytest.mark.unit

TENANTS = """
tenants:
  acme:
    display_name: Acme
    agent:
      instructions: "You are Acme's assistant."
      greeting: "Hello from Acme"
      tts: {provider: espeak, voice: en-gb, rate_wpm: 180}
      knowledge: {top_k: 3}
      actions:
        create_task: {url: "http://127.0.0.1:9/tasks", secret_env: ACME_SECRET}
    vision: {speaking_fps: 10, idle_fps: 2, hamming_threshold: 8, something_else: 1}
  broken:
    agent:
      tts: {provider: festival}
"""


@pytest.fixture
def directory(tmp_path: Path) -> TenantDirectory:
    path = tmp_path / "tenants.yaml"
    path.write_text(TENANTS)
    return TenantDirectory(path)


def test_identity_from_dispatch_or_room() -> None:
    ident = parse_job_identity(json.dumps({"tenant_id": "acme", "user_id": "u1"}), "")
    assert (ident.tenant_id, ident.user_id, ident.role) == ("acme", "u1", "assistant")
    ident = parse_job_identity("", json.dumps({"tenant_id": "acme", "session_id": "s-9"}))
    assert ident.tenant_id == "acme" and ident.session_id == "s-9"
    ident = parse_job_identity(json.dumps({"role": "notetaker"}), json.dumps({"tenant_id": "acme"}))
    assert ident.role == "notetaker"
    # role is per dispatch: a room-level role does not turn every agent into a note-taker
    ident = parse_job_identity("", json.dumps({"tenant_id": "acme", "role": "notetaker"}))
    assert ident.role == "assistant"


@pytest.mark.parametrize(
    ("dispatch", "room", "reason"),
    [
        ("", "", "missing_tenant"),
        ("{}", '{"user_id": "u"}', "missing_tenant"),
        ("not json", "", "malformed_metadata"),
        ("[1, 2]", "", "malformed_metadata"),
        ('{"tenant_id": 42}', "", "malformed_metadata"),
        ('{"tenant_id": "Acme Corp!"}', "", "malformed_metadata"),
        ('{"tenant_id": "acme", "role": "admin"}', "", "malformed_metadata"),
        ('{"tenant_id": "acme"}', '{"tenant_id": "globex"}', "conflicting_tenant"),
        ('{"tenant_id": "acme", "pad": "' + "x" * 20000 + '"}', "", "metadata_too_large"),
    ],
)
def test_bad_metadata_is_refused(dispatch: str, room: str, reason: str) -> None:
    with pytest.raises(MetadataError) as info:
        parse_job_identity(dispatch, room)
    assert info.value.reason == reason


def test_admit_known_tenant_loads_its_config(directory: TenantDirectory) -> None:
    ident, prof = admit(directory, '{"tenant_id": "acme", "user_id": "u1"}', None)
    assert ident.tenant_id == "acme"
    assert prof.agent.greeting == "Hello from Acme"
    assert prof.agent.tts.voice == "en-gb" and prof.agent.knowledge.top_k == 3
    assert str(prof.agent.actions["create_task"].url) == "http://127.0.0.1:9/tasks"
    # the vision keys vision-svc understands are forwarded; others are vision-svc's business
    assert prof.vision.speaking_fps == 10 and prof.vision.hamming_threshold == 8


@pytest.mark.parametrize(
    ("dispatch", "reason"),
    [
        ('{"tenant_id": "globex"}', "unknown_tenant"),
        ('{"tenant_id": "broken"}', "invalid_tenant_config"),
        ("{}", "missing_tenant"),
        ("{oops", "malformed_metadata"),
    ],
)
def test_admit_refuses(directory: TenantDirectory, dispatch: str, reason: str) -> None:
    with pytest.raises(JobRefused) as info:
        admit(directory, dispatch, "")
    assert info.value.reason == reason


def test_no_tenants_file_refuses_everything() -> None:
    with pytest.raises(JobRefused) as info:
        admit(TenantDirectory(None), '{"tenant_id": "acme"}', "")
    assert info.value.reason == "no_tenants_file"


def test_tenants_file_reloads_on_change(directory: TenantDirectory, tmp_path: Path) -> None:
    with pytest.raises(JobRefused):
        admit(directory, '{"tenant_id": "initech"}', "")
    path = tmp_path / "tenants.yaml"
    path.write_text(TENANTS + "  initech:\n    agent: {}\n")
    import os

    os.utime(path, (1, 1))
    ident, _ = admit(directory, '{"tenant_id": "initech"}', "")
    assert ident.tenant_id == "initech"


def test_load_function_caps_sessions_exactly() -> None:
    load = SessionLoad(max_sessions=4, threshold=0.75)
    assert load.compute(0, cpu=0.1) == pytest.approx(0.1)
    assert load.compute(3, cpu=0.1) < 0.75  # still available
    assert load.compute(4, cpu=0.1) == pytest.approx(0.75)  # at the cap: unavailable
    assert load.compute(1, cpu=0.9) == pytest.approx(0.9)  # CPU-bound: unavailable
    assert 0.0 <= load.sample_cpu() <= 1.0


def test_specialist_names_must_be_unique(tmp_path: Path) -> None:
    path = tmp_path / "tenants.yaml"
    path.write_text(
        "tenants:\n  acme:\n    agent:\n      specialists:\n"
        "        - {name: billing, description: a, instructions: b}\n"
        "        - {name: billing, description: c, instructions: d}\n"
    )
    with pytest.raises(JobRefused) as info:
        admit(TenantDirectory(path), '{"tenant_id": "acme"}', "")
    assert info.value.reason == "invalid_tenant_config"
    assert "repeated: billing" in info.value.message


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("tenants: [acme]", "'tenants' must map tenant ids"),
        ("- acme\n- globex", "must be a mapping with a 'tenants:' key"),
        ("tenants:\n  acme: [1, 2]", "its settings must be a mapping"),
        ("tenants:\n  123: {}", "must be a string"),
        ("tenants:\n  acme: {agent: {x: 1}\n", "not valid YAML"),
        ("plans: [free]\ntenants: {}", "'plans' must be a mapping"),
    ],
)
def test_a_malformed_tenants_file_refuses_with_its_reason(
    tmp_path: Path, text: str, fragment: str
) -> None:
    path = tmp_path / "tenants.yaml"
    path.write_text(text)
    with pytest.raises(JobRefused) as info:
        admit(TenantDirectory(path), '{"tenant_id": "acme"}', "")
    assert info.value.reason == "tenants_file_invalid"
    assert fragment in info.value.message


@pytest.mark.parametrize(
    "dispatch", ["[" * 5000 + "]" * 5000, '{"tenant_id": "acme", "n": ' + "9" * 5000 + "}"]
)
def test_metadata_the_parser_cannot_hold_is_refused_cleanly(dispatch: str) -> None:
    with pytest.raises(MetadataError) as info:
        parse_job_identity(dispatch, "")
    assert info.value.reason == "malformed_metadata"
