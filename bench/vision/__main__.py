"""`python -m bench.vision` from the repository root runs bench_vision.py."""

import runpy
from pathlib import Path

runpy.run_path(str(Path(__file__).with_name("bench_vision.py")), run_name="__main__")
