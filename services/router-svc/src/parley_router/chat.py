"""Provider-independent chat turns, events and usage, with input validation."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any

from parley_runtime.errors import InvalidArgument

__all__ = [
    "ChatRequest",
    "FinishReason",
    "ImagePart",
    "Message",
    "Role",
    "TextDelta",
    "TextPart",
    "ToolCallEvent",
    "ToolCallPart",
    "ToolChoice",
    "ToolResultPart",
    "ToolSpec",
    "TurnFinished",
    "Usage",
    "billable_usage",
    "estimate_tokens",
    "shown",
    "validate_request",
]


class Role(Enum):
    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"
    TOOL = "tool"


class ToolChoice(Enum):
    AUTO = "auto"
    NONE = "none"
    REQUIRED = "required"


class FinishReason(Enum):
    STOP = "stop"
    LENGTH = "length"
    TOOL_CALLS = "tool_calls"
    CONTENT_FILTER = "content_filter"


@dataclass(frozen=True, slots=True)
class TextPart:
    text: str


@dataclass(frozen=True, slots=True)
class ImagePart:
    data: bytes
    mime_type: str
    width: int = 0
    height: int = 0


@dataclass(frozen=True, slots=True)
class ToolCallPart:
    id: str
    name: str
    arguments_json: str


@dataclass(frozen=True, slots=True)
class ToolResultPart:
    call_id: str
    name: str
    content: str
    is_error: bool = False


Part = TextPart | ImagePart | ToolCallPart | ToolResultPart


@dataclass(frozen=True, slots=True)
class Message:
    role: Role
    parts: tuple[Part, ...]
    cache_breakpoint: bool = False

    def text(self) -> str:
        return " ".join(p.text for p in self.parts if isinstance(p, TextPart))


@dataclass(frozen=True, slots=True)
class ToolSpec:
    name: str
    description: str
    # Parsed JSON Schema (an object schema) of the arguments.
    parameters: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ChatRequest:
    messages: tuple[Message, ...]
    tools: tuple[ToolSpec, ...] = ()
    tool_choice: ToolChoice = ToolChoice.AUTO
    max_output_tokens: int = 1024
    temperature: float | None = None

    @property
    def image_count(self) -> int:
        return sum(1 for m in self.messages for p in m.parts if isinstance(p, ImagePart))

    def last_user_text(self) -> str:
        for m in reversed(self.messages):
            if m.role is Role.USER:
                text = m.text()
                if text:
                    return text
        return ""


# Events a provider stream yields, in order: deltas and tool calls, then one TurnFinished.


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


@dataclass(frozen=True, slots=True)
class ToolCallEvent:
    id: str
    name: str
    arguments_json: str


@dataclass(slots=True)
class Usage:
    # Prompt tokens including cached and cache-written ones.
    input_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    output_tokens: int = 0
    images: int = 0
    # Some counts are the router's estimate (billable_usage), not the provider's.
    estimated: bool = False

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


@dataclass(frozen=True, slots=True)
class TurnFinished:
    finish_reason: FinishReason
    usage: Usage = field(default_factory=Usage)


ProviderEvent = TextDelta | ToolCallEvent | TurnFinished


# ---------------------------------------------------------------------------------------------
# Token estimation (for limits and cost caps before the provider tells the real count)

# ~4 characters per token for English text on both providers' tokenizers; images are priced
# by area on Anthropic (w*h/750, capped near 1.6k) and at 258 tokens per tile on Gemini: an
# upper-ish estimate keeps limits and cost caps on the safe side.
_CHARS_PER_TOKEN = 4
_IMAGE_TOKENS_UNKNOWN_SIZE = 1100


def image_tokens(width: int, height: int) -> int:
    if width <= 0 or height <= 0:
        return _IMAGE_TOKENS_UNKNOWN_SIZE
    return max(258, min(1600, (width * height) // 750))


def _part_tokens(part: Part) -> int:
    if isinstance(part, TextPart):
        return len(part.text) // _CHARS_PER_TOKEN + 1
    if isinstance(part, ImagePart):
        return image_tokens(part.width, part.height)
    if isinstance(part, ToolCallPart):
        return (len(part.name) + len(part.arguments_json)) // _CHARS_PER_TOKEN + 4
    return (len(part.name) + len(part.content)) // _CHARS_PER_TOKEN + 4


def message_tokens(message: Message) -> int:
    return 4 + sum(_part_tokens(p) for p in message.parts)


def tool_tokens(tool: ToolSpec) -> int:
    schema = json.dumps(tool.parameters, separators=(",", ":"))
    return (len(tool.name) + len(tool.description) + len(schema)) // _CHARS_PER_TOKEN + 8


def estimate_tokens(request: ChatRequest) -> int:
    """Estimated prompt tokens of `request` (before any provider counts them)."""
    return sum(message_tokens(m) for m in request.messages) + sum(
        tool_tokens(t) for t in request.tools
    )


def billable_usage(reported: Usage | None, request: ChatRequest, output_chars: int) -> Usage:
    """What to bill for a call that reached the provider and ended early (cancelled by the
    caller, broken, timed out): providers charge the whole input of such a request and the
    output generated until it stopped, but usually report the final counts only at the end.

    The provider's counts are kept where it gave them. A missing input count becomes the
    router's estimate of the prompt (the one rate limits reserve); output is at least the
    text already forwarded at ~4 characters per token (Anthropic's early counts are a
    placeholder until its last event, so a stale lower count is not trusted).
    """
    u = Usage() if reported is None else replace(reported)
    u.images = u.images or request.image_count
    if u.input_tokens <= 0:
        u.input_tokens = max(estimate_tokens(request),
                             u.cached_input_tokens + u.cache_write_tokens)
        u.estimated = True
    streamed = -(-output_chars // _CHARS_PER_TOKEN)
    if streamed > u.output_tokens:
        u.output_tokens = streamed
        u.estimated = True
    return u


# ---------------------------------------------------------------------------------------------
# Validation: every malformed request gets INVALID_ARGUMENT naming what is wrong.

# Longest piece of a caller's value quoted in an error: enough to recognise it; a whole one could
# push the status past gRPC's metadata limit (the caller would get RESOURCE_EXHAUSTED instead).
SHOWN_MAX = 64


def shown(value: object, limit: int = SHOWN_MAX) -> str:
    """`value` quoted for an error message, cut to `limit` characters (saying so)."""
    text = value if isinstance(value, str) else repr(value)
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"


TOOL_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,63}\Z")
IMAGE_MIME_TYPES = frozenset({"image/jpeg", "image/png", "image/webp", "image/gif"})
_JSON_TYPES = frozenset({"object", "array", "string", "number", "integer", "boolean", "null"})


def parse_tool_schema(name: str, raw: str) -> dict[str, Any]:
    """Parse and check a tool's parameters schema (an object JSON Schema)."""
    if not raw.strip():
        return {"type": "object", "properties": {}}
    try:
        schema = json.loads(raw)
    except ValueError as exc:
        raise InvalidArgument(
            f"tool {shown(name)}: parameters_json_schema is not JSON ({exc})"
        ) from None
    if not isinstance(schema, dict):
        raise InvalidArgument(f"tool {shown(name)}: parameters_json_schema must be a JSON object")
    if schema.get("type", "object") != "object":
        raise InvalidArgument(
            f"tool {shown(name)}: parameters_json_schema must describe an object (type: object)"
        )
    _check_schema_node(name, schema, "$")
    return schema


def _check_schema_node(tool: str, node: Any, path: str) -> None:
    if not isinstance(node, dict):
        raise InvalidArgument(f"tool {shown(tool)}: schema at {shown(path)} must be an object")
    kind = node.get("type")
    kinds = kind if isinstance(kind, list) else [kind] if kind is not None else []
    for k in kinds:
        if k not in _JSON_TYPES:
            raise InvalidArgument(
                f"tool {shown(tool)}: schema at {shown(path)} has unknown type {shown(k)}"
            )
    props = node.get("properties")
    if props is not None:
        if not isinstance(props, dict):
            raise InvalidArgument(
                f"tool {shown(tool)}: {shown(path + '.properties')} must be an object"
            )
        for key, sub in props.items():
            _check_schema_node(tool, sub, f"{path}.properties.{key}")
    required = node.get("required")
    if required is not None and (
        not isinstance(required, list) or not all(isinstance(r, str) for r in required)
    ):
        raise InvalidArgument(
            f"tool {shown(tool)}: {shown(path + '.required')} must be a list of names"
        )
    items = node.get("items")
    if items is not None:
        _check_schema_node(tool, items, f"{path}.items")
    enum = node.get("enum")
    if enum is not None and not isinstance(enum, list):
        raise InvalidArgument(f"tool {shown(tool)}: {shown(path + '.enum')} must be a list")


def validate_request(request: ChatRequest, *, max_input_tokens: int) -> int:
    """Check `request`; returns its estimated prompt tokens. Raises InvalidArgument."""
    if not request.messages:
        raise InvalidArgument("messages is empty: send at least one user message")
    if not any(m.role is not Role.SYSTEM for m in request.messages):
        raise InvalidArgument("messages holds only system messages: add a user message")
    tool_names = set()
    for t in request.tools:
        if not TOOL_NAME_RE.match(t.name):
            raise InvalidArgument(
                f"tool name {shown(t.name)} must match {TOOL_NAME_RE.pattern} "
                "(letters, digits, _ -)"
            )
        if t.name in tool_names:
            raise InvalidArgument(f"tool {shown(t.name)} is defined twice")
        tool_names.add(t.name)
    if request.tool_choice is ToolChoice.REQUIRED and not request.tools:
        raise InvalidArgument("tool_choice REQUIRED needs at least one tool")
    call_ids: set[str] = set()
    for i, m in enumerate(request.messages):
        if not m.parts:
            raise InvalidArgument(f"messages[{i}] has no parts")
        for j, p in enumerate(m.parts):
            where = f"messages[{i}].parts[{j}]"
            if isinstance(p, ImagePart):
                if not p.data:
                    raise InvalidArgument(f"{where}: image has no data")
                if p.mime_type not in IMAGE_MIME_TYPES:
                    raise InvalidArgument(
                        f"{where}: image mime_type {shown(p.mime_type)} is not one of "
                        f"{sorted(IMAGE_MIME_TYPES)}"
                    )
            elif isinstance(p, ToolCallPart):
                if m.role is not Role.ASSISTANT:
                    raise InvalidArgument(f"{where}: tool calls belong to assistant messages")
                if not p.id or not p.name:
                    raise InvalidArgument(f"{where}: tool call needs an id and a name")
                try:
                    args = json.loads(p.arguments_json or "{}")
                except ValueError:
                    raise InvalidArgument(
                        f"{where}: tool call arguments_json is not JSON"
                    ) from None
                if not isinstance(args, dict):
                    raise InvalidArgument(f"{where}: tool call arguments must be a JSON object")
                call_ids.add(p.id)
            elif isinstance(p, ToolResultPart):
                if not p.call_id:
                    raise InvalidArgument(f"{where}: tool result needs the call_id it answers")
                if p.call_id not in call_ids:
                    raise InvalidArgument(
                        f"{where}: tool result answers unknown call id {shown(p.call_id)}"
                    )
    if request.max_output_tokens <= 0:
        raise InvalidArgument("max_output_tokens must be positive")
    if request.temperature is not None and not 0.0 <= request.temperature <= 2.0:
        raise InvalidArgument("temperature must be between 0 and 2")
    tokens = estimate_tokens(request)
    if tokens > max_input_tokens:
        raise InvalidArgument(
            f"prompt is too large: about {tokens} tokens, the limit is {max_input_tokens}; "
            "trim the history or the knowledge context"
        )
    return tokens
