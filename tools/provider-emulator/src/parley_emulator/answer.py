"""Deterministic "model": answers built from the conversation, and tool-call decisions.

Answer rule (documented in the README):

* The question is the text of the last user turn that has text.
* Candidate sentences come from the context: system prompt, earlier messages (user and assistant)
  and tool results. When the conversation ends with tool results, those are the candidates.
* Words are lower-cased, stopwords dropped and plurals folded; a sentence scores the number of
  distinct question words it contains. The best sentence (plus a second one with the same score)
  becomes ``"Based on the information I have: <sentences>"``.
* No overlap: a fixed polite answer that restates the question's key words.
* Images in the last user turn are mentioned first: ``"I can see the image you shared (WxH)."``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

ANSWER_PREFIX = "Based on the information I have: "
TOOL_PREAMBLE = "Let me look that up for you."

_WORD_RE = re.compile(r"[^\W_]+", re.UNICODE)
_SENTENCE_SPLIT_RE = re.compile(r"(?<=[.!?])\s+|\n+")
_CHUNK_RE = re.compile(r"\S+\s*|\s+")
_CAMEL_RE = re.compile(r"([a-z0-9])([A-Z])")
_DIGIT_RE = re.compile(r"\d")
_SEARCH_TOOL_RE = re.compile(r"search|look_?up|knowledge|retriev|query|find|faq|docs?\b|kb\b|\bkb")
_PUNCT_STRIP = " \t\r\n\"'`*-\u2022"

STOPWORDS = frozenset(
    """a about above after again against all also am an and any are as at be because been before
    being below between both but by can could did do does doing done down during each either else
    ever every few for from further get gets got had has have having he her here hers herself him
    himself his how i if in into is it its itself just let me might more most much must my myself
    no nor not now of off on once only or other our ours ourselves out over own please same shall
    she should so some such tell than that the their theirs them themselves then there these they
    this those through to too under until up upon us very was we were what when where which while
    who whom whose why will with would yes yet you your yours yourself yourselves i'm it's don't
    s t d ll re ve m o y know like want need thanks thank hi hello hey okay ok""".split()
)

QUESTION_STARTERS = frozenset(
    """what how when who whom whose which where why is are was were am can could does do did will
    would should shall may might has have had""".split()
)

QUERY_PROPERTY_NAMES = frozenset(
    """query q question text topic search search_query searchquery search_term keywords prompt
    input term""".split()
)


def normalize_word(word: str) -> str:
    """Lower-case word with a crude plural fold (stores -> store, policies -> policy)."""
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 4 and word.endswith(("ches", "shes", "xes", "sses", "zes")):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def words(text: str) -> list[str]:
    return _WORD_RE.findall(text.lower())


def content_words(text: str) -> list[str]:
    """Normalized non-stopwords, in order, duplicates kept."""
    return [normalize_word(w) for w in words(text) if w not in STOPWORDS]


def key_words(text: str, limit: int = 6) -> list[str]:
    """Distinct non-stopwords of ``text`` as written (lower-cased), in order."""
    seen: dict[str, None] = {}
    for w in words(text):
        if w not in STOPWORDS and w not in seen:
            seen[w] = None
            if len(seen) >= limit:
                break
    return list(seen)


def split_sentences(text: str) -> list[str]:
    out = []
    for piece in _SENTENCE_SPLIT_RE.split(text):
        piece = piece.strip(_PUNCT_STRIP)
        if piece:
            out.append(piece)
    return out


def is_question(text: str) -> bool:
    stripped = text.strip()
    if not stripped:
        return False
    if stripped.endswith("?"):
        return True
    first = words(stripped[:40])
    return bool(first) and first[0] in QUESTION_STARTERS


def _join_words(items: Sequence[str]) -> str:
    if not items:
        return ""
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


@dataclass(frozen=True)
class ImageInfo:
    width: int | None
    height: int | None

    def describe(self) -> str:
        if self.width is None or self.height is None:
            return "unknown size"
        return f"{self.width}x{self.height}"


@dataclass
class Conversation:
    """Provider-neutral view of a request, as far as answering is concerned."""

    question: str = ""
    context: list[str] = field(default_factory=list)  # system prompt, earlier turns
    tool_results: list[str] = field(default_factory=list)  # of the trailing tool-result turn
    ends_with_tool_result: bool = False
    images: list[ImageInfo] = field(default_factory=list)  # in the last user turn


def _clean_context_text(text: str) -> str:
    # Our own earlier answers carry a fixed prefix; drop it so they don't duplicate sources.
    return text.replace(ANSWER_PREFIX, "")


def _best_sentences(question_words: set[str], texts: Iterable[str]) -> tuple[int, list[str]]:
    scored: list[tuple[int, float, int, str]] = []
    seen: set[str] = set()
    position = 0
    for text in texts:
        for sentence in split_sentences(_clean_context_text(text)):
            norm = " ".join(words(sentence))
            if not norm or norm in seen:
                continue
            seen.add(norm)
            swords = set(content_words(sentence))
            score = len(question_words & swords)
            if score:
                focus = score / (len(swords) + 1)
                scored.append((score, focus, position, sentence))
            position += 1
    if not scored:
        return 0, []
    scored.sort(key=lambda item: (-item[0], -item[1], item[2]))
    best = scored[0][0]
    chosen = [item for item in scored[:2] if item[0] == best]
    chosen.sort(key=lambda item: item[2])
    return best, [item[3] for item in chosen]


def _as_sentence(text: str) -> str:
    text = text.strip()
    return text if text.endswith((".", "!", "?")) else text + "."


def build_answer(conv: Conversation) -> str:
    parts: list[str] = []
    if conv.images:
        if len(conv.images) == 1:
            parts.append(f"I can see the image you shared ({conv.images[0].describe()}).")
        else:
            sizes = ", ".join(img.describe() for img in conv.images)
            parts.append(f"I can see the {len(conv.images)} images you shared ({sizes}).")
    qwords = set(content_words(conv.question))

    if conv.ends_with_tool_result:
        _, chosen = _best_sentences(qwords, conv.tool_results)
        if not chosen:
            sentences = [s for t in conv.tool_results for s in split_sentences(t)]
            chosen = sentences[:2]
        if chosen:
            parts.append(ANSWER_PREFIX + " ".join(_as_sentence(s) for s in chosen))
            return " ".join(parts)
        parts.append("The tool returned no information I could use.")
        return " ".join(parts)

    _, chosen = _best_sentences(qwords, conv.context)
    if chosen:
        parts.append(ANSWER_PREFIX + " ".join(_as_sentence(s) for s in chosen))
    elif not conv.images or qwords:
        kws = key_words(conv.question)
        if kws:
            parts.append(
                f"Thank you for your question about {_join_words(kws)}. I don't have specific "
                "information about that right now, but I'm happy to help with anything else."
            )
        else:
            parts.append("Hello! How can I help you today?")
    return " ".join(parts)


def stream_chunks(text: str, words_per_chunk: int = 3) -> list[str]:
    """Split text into small deltas (groups of words, whitespace kept) for streaming."""
    pieces = _CHUNK_RE.findall(text)
    return [
        "".join(pieces[i : i + words_per_chunk]) for i in range(0, len(pieces), words_per_chunk)
    ]


def split_json(text: str, size: int = 24) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def apply_stop(
    text: str, max_tokens: int | None, stop_sequences: Sequence[str], count: Any
) -> tuple[str, str | None, str | None]:
    """Cut ``text`` at the first stop sequence or at ``max_tokens`` tokens.

    Returns (text, reason, matched_stop) where reason is None, "stop_sequence" or "max_tokens".
    """
    reason: str | None = None
    matched: str | None = None
    first = -1
    for seq in stop_sequences:
        if seq:
            at = text.find(seq)
            if at != -1 and (first == -1 or at < first):
                first, matched = at, seq
    if first != -1:
        text, reason = text[:first], "stop_sequence"
    if max_tokens is not None and count(text) > max_tokens:
        text, reason, matched = text[: max_tokens * 4], "max_tokens", None
    return text, reason, matched


# ---------------------------------------------------------------------------------------------
# Tools


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str
    schema: dict[str, Any]


def _tool_words(tool: ToolSpec) -> set[str]:
    name = _CAMEL_RE.sub(r"\1 \2", tool.name).replace("_", " ").replace("-", " ")
    return set(content_words(name + " " + tool.description))


def choose_tool(
    tools: Sequence[ToolSpec], user_text: str, mode: str = "auto", forced: str | None = None
) -> ToolSpec | None:
    """Which tool to call for ``user_text``.

    mode: "auto" (call only when something fits), "any" (must call one), "none" (never),
    "tool" (call ``forced``).
    """
    if not tools or mode == "none":
        return None
    if mode == "tool" and forced is not None:
        for tool in tools:
            if tool.name == forced:
                return tool
        return None
    uwords = set(content_words(user_text))
    scored = [(len(uwords & _tool_words(t)), -i, t) for i, t in enumerate(tools)]
    if is_question(user_text):
        searchy = [s for s in scored if _SEARCH_TOOL_RE.search(s[2].name.lower())]
        if searchy:
            return max(searchy, key=lambda s: (s[0], s[1]))[2]
    best = max(scored, key=lambda s: (s[0], s[1]))
    if best[0] > 0 or mode == "any":
        return best[2]
    return None


def _schema_type(schema: dict[str, Any]) -> str:
    t = schema.get("type")
    if isinstance(t, list):
        t = next((x for x in t if str(x).lower() != "null"), "string")
    if t is None:
        for key in ("anyOf", "oneOf", "any_of"):
            options = schema.get(key)
            if isinstance(options, list):
                for opt in options:
                    if isinstance(opt, dict) and str(opt.get("type", "")).lower() != "null":
                        return _schema_type(opt)
        if "properties" in schema:
            return "object"
        return "string"
    return str(t).lower()


def _default_value(name: str, schema: dict[str, Any], user_text: str) -> Any:
    kind = _schema_type(schema)
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    if kind == "string":
        fmt = str(schema.get("format", ""))
        if fmt == "date":
            return "2025-01-01"
        if fmt == "date-time":
            return "2025-01-01T00:00:00Z"
        if fmt == "email":
            return "user@example.com"
        lname = name.lower()
        if any(h in lname for h in ("id", "number", "code", "ref")):
            for token in user_text.split():
                if _DIGIT_RE.search(token):
                    return token.strip(".,;:!?()[]\"'")
        kws = key_words(user_text)
        return " ".join(kws) if kws else "example"
    if kind in ("integer", "number"):
        value = 5
        lo, hi = schema.get("minimum"), schema.get("maximum")
        if isinstance(lo, (int, float)) and value < lo:
            value = int(lo) if float(lo).is_integer() else int(lo) + 1
        if isinstance(hi, (int, float)) and value > hi:
            value = int(hi)
        return value
    if kind == "boolean":
        return False
    if kind == "array":
        count = schema.get("minItems", 0)
        items = schema.get("items")
        if isinstance(count, int) and count > 0 and isinstance(items, dict):
            return [_default_value(name, items, user_text) for _ in range(count)]
        return []
    if kind == "object":
        return build_arguments(schema, user_text)
    if kind == "null":
        return None
    return "example"


def build_arguments(schema: dict[str, Any], user_text: str) -> dict[str, Any]:
    """Arguments for a tool call built from its JSON schema (see module docs)."""
    props = schema.get("properties")
    if not isinstance(props, dict):
        return {}
    required = schema.get("required")
    required_set = set(required) if isinstance(required, list) else set()
    args: dict[str, Any] = {}
    for name, prop in props.items():
        if not isinstance(prop, dict):
            continue
        if _schema_type(prop) == "string" and name.lower() in QUERY_PROPERTY_NAMES:
            args[name] = user_text.strip()
        elif name in required_set:
            args[name] = _default_value(name, prop, user_text)
    return args


def stable_id(prefix: str, *parts: str, length: int = 24) -> str:
    digest = hashlib.sha256("\x1f".join(parts).encode()).hexdigest()
    return prefix + digest[:length]
