"""Runs the generated corpus through vision-svc, the seed's rule and livekit's sampler, and
writes services/vision-svc/REPORT.md.

    cd /work/main && .venv/bin/python services/vision-svc/scripts/corpus_report.py
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from parley_vision.cpu import limit_blas_threads  # noqa: E402
from parley_vision.tenant_config import VisionConfig  # noqa: E402
from vision_corpus import all_sequences  # noqa: E402
from vision_eval import render_report, run_corpus, table, totals  # noqa: E402


def main() -> None:
    limit_blas_threads()
    # The default settings, and the same frames at a faster sustained rate: what latency on
    # continuous change costs in frames.
    faster = VisionConfig(sustained_fps=5.0, keep_burst=3)
    result = run_corpus(all_sequences(), [("parley sustained 5 fps", faster)])
    out = HERE.parent / "REPORT.md"
    out.write_text(render_report(result))
    print(table(totals(result.scores)))
    print(f"\nwritten: {out}")


if __name__ == "__main__":
    main()
