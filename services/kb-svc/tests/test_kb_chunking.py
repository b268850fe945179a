"""Chunking: sizes, overlap, heading paths, code fences, pathological input."""

from __future__ import annotations

import pytest
from parley_kb.chunking import ChunkingOptions, MarkdownChunker

pytestmark = pytest.mark.unit


def test_markdown_chunks_keep_their_heading_path() -> None:
    text = (
        "# Guide\n\nWelcome.\n\n## Install\n\nRun the installer.\n\n### Linux\n\n"
        "Use the tarball.\n\n## Billing\n\nInvoices monthly."
    )
    chunks = MarkdownChunker().chunk(text, markdown=True)
    assert [(c.heading, c.body) for c in chunks] == [
        ("Guide", "Welcome."),
        ("Guide > Install", "Run the installer."),
        ("Guide > Install > Linux", "Use the tarball."),
        ("Guide > Billing", "Invoices monthly."),
    ]
    assert chunks[2].text == "Guide > Install > Linux\n\nUse the tarball."
    assert [c.index for c in chunks] == [0, 1, 2, 3]


def test_headings_inside_code_fences_are_not_headings() -> None:
    text = "# Real\n\n```bash\n# not a heading\necho hi\n```\n\nAfter."
    chunks = MarkdownChunker().chunk(text, markdown=True)
    assert len(chunks) == 1
    assert chunks[0].heading == "Real"
    assert "# not a heading" in chunks[0].body


def test_plain_text_ignores_hashes() -> None:
    chunks = MarkdownChunker().chunk("# not a heading in plain text\n\nbody", markdown=False)
    assert len(chunks) == 1 and chunks[0].heading == ""


def test_long_sections_split_within_budget_with_overlap() -> None:
    sentences = [f"Sentence number {i} talks about topic {i % 7}." for i in range(200)]
    text = "# Long\n\n" + " ".join(sentences)
    opts = ChunkingOptions(chunk_chars=400, overlap_chars=100)
    chunks = MarkdownChunker(opts).chunk(text, markdown=True)
    assert len(chunks) > 10
    for chunk in chunks:
        assert len(chunk.text) <= 400, len(chunk.text)
        assert chunk.heading == "Long"
    # Consecutive chunks share text (overlap), and together they cover every sentence.
    for prev, nxt in zip(chunks, chunks[1:], strict=False):
        tail_words = prev.body.split()[-3:]
        assert " ".join(tail_words) in nxt.body
    joined = " ".join(c.body for c in chunks)
    for s in sentences:
        assert s in joined


def test_no_overlap_option() -> None:
    text = " ".join(f"word{i}." for i in range(500))
    chunks = MarkdownChunker(ChunkingOptions(chunk_chars=200, overlap_chars=0)).chunk(
        text, markdown=False
    )
    words = " ".join(c.body for c in chunks).split()
    assert len(words) == 500  # nothing repeated, nothing lost


def test_giant_word_is_cut() -> None:
    text = "x" * 5000
    chunks = MarkdownChunker(ChunkingOptions(chunk_chars=1000, overlap_chars=100)).chunk(
        text, markdown=False
    )
    assert all(len(c.body) <= 1000 for c in chunks)
    assert sum(len(c.body) for c in chunks) >= 5000


def test_empty_sections_produce_no_chunks() -> None:
    assert MarkdownChunker().chunk("# A\n\n## B\n\n", markdown=True) == []


def test_options_are_validated() -> None:
    with pytest.raises(ValueError):
        ChunkingOptions(chunk_chars=500, overlap_chars=300)
    assert ChunkingOptions(1200, 200).version != ChunkingOptions(1200, 100).version
