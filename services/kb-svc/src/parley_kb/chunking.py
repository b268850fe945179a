"""Split text into overlapping chunks that keep their Markdown heading path.

Chunks are sized in characters (a fair proxy for tokens with every embedding model here:
~4 characters per token in English). Each chunk carries the path of headings it sits under
("Install > Linux"), so a paragraph that says "run the script" still says which one.
Overlap stays within a section: a chunk never borrows text from under another heading.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .models import Chunk

CHUNKER_VERSION = "md-v1"

_ATX = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t]*#*[ \t]*$")
_FENCE = re.compile(r"^[ \t]*(```|~~~)")
_SENTENCE_END = re.compile(r"(?<=[.!?:;])\s+")
_HEADING_SEP = " > "
_MAX_HEADING_CHARS = 300


@dataclass(frozen=True, slots=True)
class ChunkingOptions:
    chunk_chars: int = 1200
    overlap_chars: int = 200

    def __post_init__(self) -> None:
        if self.chunk_chars < 100:
            raise ValueError("chunk_chars must be at least 100")
        if not 0 <= self.overlap_chars < self.chunk_chars // 2:
            raise ValueError("overlap_chars must be in [0, chunk_chars / 2)")

    @property
    def version(self) -> str:
        """Changes whenever the same input would be chunked differently."""
        return f"{CHUNKER_VERSION}:{self.chunk_chars}:{self.overlap_chars}"


@dataclass(slots=True)
class _Section:
    heading: str
    lines: list[str]


class MarkdownChunker:
    """Chunks plain text or Markdown with overlap, keeping heading paths."""

    def __init__(self, options: ChunkingOptions | None = None) -> None:
        self.options = options or ChunkingOptions()

    def chunk(self, text: str, *, markdown: bool) -> list[Chunk]:
        sections = _sections(text) if markdown else [_Section("", text.split("\n"))]
        chunks: list[Chunk] = []
        for section in sections:
            body = "\n".join(section.lines).strip()
            if not body:
                continue
            heading = section.heading[:_MAX_HEADING_CHARS]
            budget = max(self.options.chunk_chars - len(heading) - 2, self.options.chunk_chars // 2)
            for piece in self._pack(body, budget):
                chunks.append(Chunk(index=len(chunks), heading=heading, body=piece))
        return chunks

    def _pack(self, body: str, budget: int) -> list[str]:
        units = _units(body, budget)
        out: list[str] = []
        current: list[str] = []
        size = 0
        for unit, sep in units:
            extra = len(unit) + (len(sep) if current else 0)
            if current and size + extra > budget:
                out.append("".join(current).strip())
                overlap = _tail(out[-1], self.options.overlap_chars)
                current = [overlap] if overlap else []
                size = len(overlap)
                # The overlap must never push a unit past the budget.
                if current and size + len(sep) + len(unit) > budget:
                    current, size = [], 0
            if current:
                current.append(sep)
                size += len(sep)
            current.append(unit)
            size += len(unit)
        if current:
            out.append("".join(current).strip())
        return [piece for piece in out if piece]


def _sections(text: str) -> list[_Section]:
    sections: list[_Section] = [_Section("", [])]
    stack: list[tuple[int, str]] = []
    in_fence = False
    for line in text.split("\n"):
        if _FENCE.match(line):
            in_fence = not in_fence
            sections[-1].lines.append(line)
            continue
        match = None if in_fence else _ATX.match(line)
        if match is None:
            sections[-1].lines.append(line)
            continue
        level = len(match.group(1))
        title = match.group(2).strip()
        while stack and stack[-1][0] >= level:
            stack.pop()
        stack.append((level, title))
        sections.append(_Section(_HEADING_SEP.join(t for _, t in stack), []))
    return sections


def _units(body: str, budget: int) -> list[tuple[str, str]]:
    """Pieces no longer than `budget`, each with the separator that joins it to the previous:
    paragraphs, then sentences of long paragraphs, then words of long sentences."""
    units: list[tuple[str, str]] = []
    for para in re.split(r"\n[ \t]*\n", body):
        para = para.strip("\n")
        if not para.strip():
            continue
        if len(para) <= budget:
            units.append((para, "\n\n"))
            continue
        first = True
        for sentence in _SENTENCE_END.split(para):
            if not sentence:
                continue
            for piece in _hard_split(sentence, budget):
                units.append((piece, "\n\n" if first else " "))
                first = False
    return units


def _hard_split(text: str, budget: int) -> list[str]:
    if len(text) <= budget:
        return [text]
    pieces: list[str] = []
    current = ""
    for word in text.split():
        while len(word) > budget:  # a "word" longer than a chunk (base64, URLs): cut it
            if current:
                pieces.append(current)
                current = ""
            pieces.append(word[:budget])
            word = word[budget:]
        if current and len(current) + 1 + len(word) > budget:
            pieces.append(current)
            current = word
        else:
            current = f"{current} {word}" if current else word
    if current:
        pieces.append(current)
    return pieces


def _tail(text: str, max_chars: int) -> str:
    """The end of `text` (at most `max_chars`), starting at a sentence or word boundary."""
    if max_chars <= 0 or not text:
        return ""
    if len(text) <= max_chars:
        return text
    window = text[-max_chars:]
    sentences = _SENTENCE_END.split(window)
    if len(sentences) > 1:
        candidate = " ".join(sentences[1:]).strip()
        if len(candidate) >= max_chars // 3:
            return candidate
    space = window.find(" ")
    return window[space + 1 :].strip() if space >= 0 else window.strip()
