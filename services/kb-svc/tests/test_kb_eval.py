"""The retrieval evaluation set, run against the real stack: hybrid must beat both."""

from __future__ import annotations

from pathlib import Path

import pytest
from parley_kb.evaluation import evaluate, ingest_corpus, load_questions, render_markdown
from parley_kb.models import SearchMode
from parley_kb.testing import KbStack

pytestmark = pytest.mark.integration

EVAL_DIR = Path(__file__).resolve().parents[1] / "eval"


async def test_hybrid_beats_vector_and_full_text(kb_stack: KbStack) -> None:
    kb = kb_stack.runtime.kb
    chunks = await ingest_corpus(kb, "eval-co", EVAL_DIR / "corpus")
    questions = load_questions(EVAL_DIR / "questions.yaml")
    assert len(questions) >= 40 and chunks >= 100
    for q in questions:  # every question points at a document of the corpus
        assert (EVAL_DIR / "corpus" / q.document).exists(), q
    results = await evaluate(kb, "eval-co", questions)
    vector, text, hybrid = (results[m] for m in (SearchMode.VECTOR, SearchMode.FULL_TEXT,
                                                 SearchMode.HYBRID))
    report = render_markdown(results, questions, documents=22, chunks=chunks,
                             model=kb.embedding_model, chunking="default")
    assert hybrid.recall_at_5 > max(vector.recall_at_5, text.recall_at_5), report
    assert hybrid.mrr > max(vector.mrr, text.mrr), report
    assert hybrid.recall_at_5 >= 0.9
    # Re-ingesting the corpus is free: every document is unchanged.
    texts = kb_stack.embedder.texts
    assert await ingest_corpus(kb, "eval-co", EVAL_DIR / "corpus") == chunks
    assert kb_stack.embedder.texts == texts
