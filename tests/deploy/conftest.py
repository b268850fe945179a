"""Fixtures for the deploy tests (helpers live in deploy_support.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# Test modules here import deploy_support; pytest runs with --import-mode=importlib, which does
# not put test folders on sys.path.
sys.path.insert(0, str(Path(__file__).parent))

from deploy_support import EXAMPLES, Example, Helm, Render, ensure_helm  # noqa: E402


@pytest.fixture(scope="session")
def helm() -> Helm:
    return ensure_helm()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "example" in metafunc.fixturenames:
        metafunc.parametrize(
            "example", [Example.load(n) for n in EXAMPLES], ids=[n[7:-5] for n in EXAMPLES]
        )


@pytest.fixture
def rendered(helm: Helm, example: Example) -> Render:
    return helm.render(example)
