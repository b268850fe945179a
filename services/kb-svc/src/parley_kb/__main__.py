"""Entry point: `python -m parley_kb [serve|migrate|ingest|search]` (wiring only)."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
