"""vision-svc tests: the generated corpus helpers live next to the tests."""

from __future__ import annotations

import sys
from pathlib import Path

# The corpus generator and the policy harness are shared by several test modules and by
# scripts/corpus_report.py; pytest runs with --import-mode=importlib, so put them on the path.
_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
