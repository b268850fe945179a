"""Train the shipped complexity model on the *train* split of the labelled set.

Usage (from the repo root):
    .venv/bin/python services/router-svc/scripts/train_complexity.py

Writes services/router-svc/src/parley_router/complexity_model.json. The test split is never
seen here; `eval_complexity.py` reports on it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SERVICE = HERE.parent
sys.path.insert(0, str(SERVICE / "src"))

from parley_router.complexity_train import (  # noqa: E402
    TrainOptions,
    cross_validate,
    load_examples,
    train,
)

EVAL_SET = SERVICE / "eval" / "complexity.jsonl"
MODEL_OUT = SERVICE / "src" / "parley_router" / "complexity_model.json"


def main() -> None:
    examples = load_examples(EVAL_SET)
    train_rows = [ex for ex in examples if ex.split == "train"]
    options = TrainOptions()
    folds = cross_validate(train_rows, 5, options)
    model = train(train_rows, options, name="linear-v1")
    model.meta["train_split_cv_accuracy"] = round(sum(folds) / len(folds), 4)
    model.meta["eval_set"] = "services/router-svc/eval/complexity.jsonl (split=train)"
    MODEL_OUT.write_text(json.dumps(model.to_json(), separators=(",", ":")) + "\n",
                         encoding="utf-8")
    print(f"trained on {len(train_rows)} examples; 5-fold CV on train: "
          f"{model.meta['train_split_cv_accuracy']:.3f}; wrote {MODEL_OUT}")


if __name__ == "__main__":
    main()
