"""scripts/deploy/ensure-helm.sh: idempotent, cached per version, clear when it cannot install."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
from deploy_support import ROOT, Helm

# The first test may build helm (ensure-helm.sh) on a fresh machine: allow for it.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

ENSURE = ROOT / "scripts" / "deploy" / "ensure-helm.sh"


def test_scripts_parse() -> None:
    for script in sorted((ROOT / "scripts" / "deploy").glob("*.sh")):
        assert os.access(script, os.X_OK), f"{script} is not executable"
        subprocess.run(["bash", "-n", str(script)], check=True)


def test_ensure_helm_is_idempotent(helm: Helm) -> None:
    start = time.monotonic()
    proc = subprocess.run([str(ENSURE)], capture_output=True, text=True, timeout=60, check=True)
    assert time.monotonic() - start < 10  # cached: no rebuild
    assert proc.stdout.strip() == helm.binary  # stdout carries the path only
    assert Path(helm.binary).parent.name == "helm-v3.19.0"  # cache keyed by version
    version = subprocess.run(
        [helm.binary, "version", "--template", "{{.Version}}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert version.startswith("v3.19")


def test_ensure_helm_reports_a_missing_toolchain(tmp_path: Path) -> None:
    env = {**os.environ, "PARLEY_TOOLS_DIR": str(tmp_path / "tools"), "GO": str(tmp_path / "no-go")}
    proc = subprocess.run([str(ENSURE)], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 1
    assert "no Go toolchain was found" in proc.stderr and proc.stdout == ""
    assert not (tmp_path / "tools" / "helm-v3.19.0" / "helm").exists()
