"""The worker's entry point runs numpy's BLAS on one thread in every process it starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from parley_agent.__main__ import BLAS_THREADS, _blas_threads

PROBE = """
import json, sys
if sys.argv[1] == "entry":
    from parley_agent.__main__ import _blas_threads
    _blas_threads()
import numpy
from threadpoolctl import threadpool_info
print(json.dumps([p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]))
"""


def blas_threads_after(mode: str) -> list[int]:
    unset = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")
    env = {k: v for k, v in os.environ.items() if k not in unset}
    out = subprocess.run([sys.executable, "-c", PROBE, mode], env=env, check=True,
                         capture_output=True, text=True, timeout=60).stdout
    return list(json.loads(out))


def test_entry_point_limits_blas_before_numpy_loads() -> None:
    cores = os.cpu_count() or 1
    assert blas_threads_after("plain") == [cores]  # the default the entry point changes
    assert blas_threads_after("entry") == [int(BLAS_THREADS)] == [1]


def test_operator_setting_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "2")
    _blas_threads()
    assert os.environ["OPENBLAS_NUM_THREADS"] == "2"
    monkeypatch.delenv("OPENBLAS_NUM_THREADS")
    _blas_threads()
    assert os.environ["OPENBLAS_NUM_THREADS"] == BLAS_THREADS
