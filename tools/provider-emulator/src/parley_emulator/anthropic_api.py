"""Anthropic Messages API: ``POST /v1/messages`` (streaming and not) and ``count_tokens``."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from .answer import (
    TOOL_PREAMBLE,
    Conversation,
    ImageInfo,
    ToolSpec,
    apply_stop,
    build_answer,
    build_arguments,
    choose_tool,
    split_json,
    stable_id,
    stream_chunks,
)
from .common import (
    BadJSON,
    Segment,
    bearer_token,
    canonical,
    dumps,
    json_response,
    read_json,
    retry_after_value,
    rolling_hashes,
    sleep_ms,
)
from .faults import Decision
from .state import EmulatorState, key_fingerprint
from .stream import EmulatedStream, Event, Outcome
from .tokens import (
    UNKNOWN_IMAGE_SIZE,
    ImageError,
    anthropic_image_tokens,
    count_text_tokens,
    decode_image_size,
)

KNOWN_MODELS = frozenset(
    {
        "claude-sonnet-4-5",
        "claude-sonnet-4-5-20250929",
        "claude-sonnet-4-6",
        "claude-haiku-4-5",
        "claude-haiku-4-5-20251001",
        "claude-opus-4-5",
        "claude-opus-4-5-20251101",
        "claude-opus-4-6",
        "claude-opus-4-1",
        "claude-opus-4-1-20250805",
    }
)
# Retired ids answer 404 like the real API (useful to exercise a router's fallback).
RETIRED_MODELS = frozenset(
    {
        "claude-instant-1.2",
        "claude-2.0",
        "claude-2.1",
        "claude-3-sonnet-20240229",
        "claude-3-opus-20240229",
        "claude-3-7-sonnet-latest",
        "claude-3-7-sonnet-20250219",
        "claude-3-5-haiku-latest",
        "claude-3-5-haiku-20241022",
        "claude-sonnet-4-0",
        "claude-sonnet-4-20250514",
        "claude-opus-4-0",
        "claude-opus-4-20250514",
    }
)

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    409: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
ERROR_MESSAGES = {
    429: "Number of request tokens has exceeded your per-minute rate limit (emulated)",
    500: "Internal server error (emulated)",
    503: "Service unavailable (emulated)",
    529: "Overloaded",
}

TTL_5M = 300.0
TTL_1H = 3600.0
MAX_BREAKPOINTS = 4
CACHE_LOOKBACK_BLOCKS = 20
IMAGE_MEDIA_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
_TOOL_NAME_RE = re.compile(r"^[a-zA-Z0-9_-]{1,128}$")
TOOL_CHOICES = ("auto", "any", "tool", "none")
_ROLE_MARK = {"user": b"U", "assistant": b"A"}


def model_known(model: str) -> bool:
    if model in RETIRED_MODELS:
        return False
    return model in KNOWN_MODELS or model.startswith("claude-")


class Invalid(ValueError):
    pass


def error_response(
    status: int, message: str | None = None, retry_after: str | None = None
) -> Response:
    request_id = "req_emu_" + uuid.uuid4().hex[:24]
    body = {
        "type": "error",
        "error": {
            "type": ERROR_TYPES.get(status, "api_error"),
            "message": message or ERROR_MESSAGES.get(status, f"Error {status} (emulated)"),
        },
        "request_id": request_id,
    }
    headers = {"request-id": request_id}
    if retry_after is not None:
        headers["retry-after"] = retry_after
    return json_response(body, status, headers)


def stream_error_event(status: int) -> bytes:
    body = {
        "type": "error",
        "error": {
            "type": ERROR_TYPES.get(status, "api_error"),
            "message": ERROR_MESSAGES.get(status, "Internal server error (emulated)"),
        },
    }
    return b"event: error\ndata: " + dumps(body) + b"\n\n"


def _sse(name: bytes, payload: Any) -> bytes:
    return b"event: " + name + b"\ndata: " + dumps(payload) + b"\n\n"


# ---------------------------------------------------------------------------------------------
# Request parsing


@dataclass
class Parsed:
    model: str
    max_tokens: int | None
    stream: bool
    segments: list[Segment]
    conversation: Conversation
    tools: list[ToolSpec]
    tool_mode: str
    forced_tool: str | None
    last_role: str
    stop_sequences: list[str]
    total_tokens: int = 0
    tool_use_ids: set[str] = field(default_factory=set)


def _cache_ttl(block: dict[str, Any], where: str) -> float | None:
    cc = block.get("cache_control")
    if cc is None:
        return None
    if not isinstance(cc, dict) or cc.get("type") != "ephemeral":
        raise Invalid(f"{where}.cache_control: Input should be {{'type': 'ephemeral'}}")
    ttl = cc.get("ttl", "5m")
    if ttl == "5m":
        return TTL_5M
    if ttl == "1h":
        return TTL_1H
    raise Invalid(f"{where}.cache_control.ttl: Input should be '5m' or '1h'")


def _strip_cc(block: dict[str, Any]) -> dict[str, Any]:
    if "cache_control" in block:
        return {k: v for k, v in block.items() if k != "cache_control"}
    return block


def _image_info(block: dict[str, Any], where: str) -> tuple[ImageInfo, int]:
    source = block.get("source")
    if not isinstance(source, dict):
        raise Invalid(f"{where}.source: Field required")
    stype = source.get("type")
    if stype == "base64":
        media_type = source.get("media_type")
        if media_type not in IMAGE_MEDIA_TYPES:
            raise Invalid(
                f"{where}.source.media_type: Input should be 'image/jpeg', 'image/png', "
                "'image/gif' or 'image/webp'"
            )
        try:
            width, height = decode_image_size(source.get("data", ""))
        except ImageError as exc:
            raise Invalid(f"{where}.source.data: {exc}") from exc
        return ImageInfo(width, height), anthropic_image_tokens(width, height)
    if stype in ("url", "file"):
        return ImageInfo(None, None), anthropic_image_tokens(*UNKNOWN_IMAGE_SIZE)
    raise Invalid(f"{where}.source.type: Input should be 'base64', 'url' or 'file'")


def _text_of_tool_result(content: Any, where: str) -> tuple[list[str], list[ImageInfo], int]:
    """Texts, images and tokens of a tool_result's content."""
    if content is None:
        return [], [], 0
    if isinstance(content, str):
        return [content], [], count_text_tokens(content)
    if not isinstance(content, list):
        raise Invalid(f"{where}.content: Input should be a valid string or list")
    texts: list[str] = []
    images: list[ImageInfo] = []
    tokens = 0
    for j, item in enumerate(content):
        if not isinstance(item, dict):
            raise Invalid(f"{where}.content.{j}: Input should be an object")
        itype = item.get("type")
        if itype == "text":
            text = item.get("text")
            if not isinstance(text, str):
                raise Invalid(f"{where}.content.{j}.text: Field required")
            texts.append(text)
            tokens += count_text_tokens(text)
        elif itype == "image":
            info, itokens = _image_info(item, f"{where}.content.{j}")
            images.append(info)
            tokens += itokens
        elif itype in ("document", "search_result"):
            strings = _document_texts(item)
            texts.extend(strings)
            tokens += sum(count_text_tokens(s) for s in strings)
        else:
            raise Invalid(f"{where}.content.{j}.type: unsupported tool_result content {itype!r}")
    return texts, images, tokens


def _document_texts(block: dict[str, Any]) -> list[str]:
    out: list[str] = []
    source = block.get("source")
    if isinstance(source, dict) and source.get("type") == "text":
        data = source.get("data")
        if isinstance(data, str):
            out.append(data)
    elif isinstance(source, dict) and source.get("type") == "content":
        for item in source.get("content") or []:
            if isinstance(item, dict) and isinstance(item.get("text"), str):
                out.append(item["text"])
    for key in ("title", "context"):
        if isinstance(block.get(key), str):
            out.append(block[key])
    for item in block.get("content") or [] if isinstance(block.get("content"), list) else []:
        if isinstance(item, dict) and isinstance(item.get("text"), str):
            out.append(item["text"])
    return out


def parse_request(body: Any, for_count: bool = False) -> Parsed:
    if not isinstance(body, dict):
        raise Invalid("Request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise Invalid("model: Field required")
    max_tokens = body.get("max_tokens")
    if not for_count:
        if max_tokens is None:
            raise Invalid("max_tokens: Field required")
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise Invalid("max_tokens: Input should be a positive integer")
    else:
        max_tokens = None
    messages = body.get("messages")
    if messages is None:
        raise Invalid("messages: Field required")
    if not isinstance(messages, list) or not messages:
        raise Invalid("messages: at least one message is required")
    temperature = body.get("temperature")
    if temperature is not None and (
        not isinstance(temperature, (int, float)) or not 0.0 <= temperature <= 1.0
    ):
        raise Invalid("temperature: Input should be less than or equal to 1")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise Invalid("stream: Input should be a valid boolean")
    stops = body.get("stop_sequences") or []
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise Invalid("stop_sequences: Input should be a list of strings")

    segments: list[Segment] = []
    context: list[str] = []

    # tools (first in the prompt prefix)
    tools: list[ToolSpec] = []
    raw_tools = body.get("tools")
    if raw_tools is not None:
        if not isinstance(raw_tools, list):
            raise Invalid("tools: Input should be a valid list")
        names: set[str] = set()
        for i, tool in enumerate(raw_tools):
            where = f"tools.{i}"
            if not isinstance(tool, dict):
                raise Invalid(f"{where}: Input should be an object")
            name = tool.get("name")
            if not isinstance(name, str) or not _TOOL_NAME_RE.match(name):
                raise Invalid(
                    f"{where}.name: String should match pattern '^[a-zA-Z0-9_-]{{1,128}}$'"
                )
            if name in names:
                raise Invalid("tools: Tool names must be unique.")
            names.add(name)
            ttype = tool.get("type")
            if ttype in (None, "custom"):
                schema = tool.get("input_schema")
                if not isinstance(schema, dict) or schema.get("type") != "object":
                    raise Invalid(
                        f"{where}.custom.input_schema: JSON schema is invalid. It must match "
                        "JSON Schema draft 2020-12 with a top-level 'type': 'object'"
                    )
                props = schema.get("properties")
                if props is not None and not isinstance(props, dict):
                    raise Invalid(f"{where}.custom.input_schema.properties: must be an object")
                description = tool.get("description", "")
                if not isinstance(description, str):
                    raise Invalid(f"{where}.description: Input should be a valid string")
                tools.append(ToolSpec(name, description, schema))
            stripped = _strip_cc(tool)
            segments.append(
                Segment(b"T" + canonical(stripped), count_text_tokens(dumps(stripped).decode()),
                        _cache_ttl(tool, where))
            )

    # system
    system = body.get("system")
    if system is not None:
        if isinstance(system, str):
            if system:
                segments.append(Segment(b"S" + canonical(system), count_text_tokens(system)))
                context.append(system)
        elif isinstance(system, list):
            for i, block in enumerate(system):
                where = f"system.{i}"
                if not isinstance(block, dict) or block.get("type") != "text":
                    raise Invalid(f"{where}: system blocks must be text blocks")
                text = block.get("text")
                if not isinstance(text, str) or not text:
                    raise Invalid(f"{where}.text: text content blocks must be non-empty")
                context.append(text)
                segments.append(
                    Segment(b"S" + canonical(_strip_cc(block)), count_text_tokens(text),
                            _cache_ttl(block, where))
                )
        else:
            raise Invalid("system: Input should be a valid string or list of text blocks")

    # messages
    parsed_msgs: list[dict[str, Any]] = []  # per message: role, texts, images, tool_results
    pending_tool_uses: set[str] = set()
    all_tool_uses: set[str] = set()
    for m_i, msg in enumerate(messages):
        where = f"messages.{m_i}"
        if not isinstance(msg, dict):
            raise Invalid(f"{where}: Input should be an object")
        role = msg.get("role")
        if role not in ("user", "assistant"):
            raise Invalid(f"{where}.role: Input should be 'user' or 'assistant'")
        content = msg.get("content")
        if isinstance(content, str):
            blocks: list[Any] = [{"type": "text", "text": content}]
            if not content and not (role == "assistant" and m_i == len(messages) - 1):
                raise Invalid(f"{where}: text content blocks must be non-empty")
        elif isinstance(content, list):
            if not content:
                raise Invalid(f"{where}.content: messages must have non-empty content")
            blocks = content
        else:
            raise Invalid(f"{where}.content: Field required")
        info: dict[str, Any] = {"role": role, "texts": [], "images": [], "tool_results": []}
        seen_results: set[str] = set()
        for b_i, block in enumerate(blocks):
            bwhere = f"{where}.content.{b_i}"
            if not isinstance(block, dict):
                raise Invalid(f"{bwhere}: Input should be an object")
            btype = block.get("type")
            tokens = 0
            if btype == "text":
                text = block.get("text")
                if not isinstance(text, str):
                    raise Invalid(f"{bwhere}.text: Field required")
                if not text and not (role == "assistant" and m_i == len(messages) - 1):
                    raise Invalid(f"{bwhere}: text content blocks must be non-empty")
                info["texts"].append(text)
                tokens = count_text_tokens(text)
            elif btype == "image":
                image, tokens = _image_info(block, bwhere)
                info["images"].append(image)
            elif btype == "tool_use":
                if role != "assistant":
                    raise Invalid(f"{bwhere}: tool_use blocks are only allowed in assistant turns")
                tid, tname, tinput = block.get("id"), block.get("name"), block.get("input")
                if not isinstance(tid, str) or not isinstance(tname, str):
                    raise Invalid(f"{bwhere}: tool_use blocks need an id and a name")
                if not isinstance(tinput, dict):
                    raise Invalid(f"{bwhere}.input: Input should be a valid dictionary")
                pending_tool_uses.add(tid)
                all_tool_uses.add(tid)
                tokens = count_text_tokens(tname + dumps(tinput).decode())
            elif btype == "tool_result":
                if role != "user":
                    raise Invalid(f"{bwhere}: tool_result blocks are only allowed in user turns")
                tid = block.get("tool_use_id")
                if not isinstance(tid, str) or tid not in all_tool_uses:
                    raise Invalid(
                        f"{bwhere}: unexpected `tool_use_id` found in `tool_result` blocks: {tid}. "
                        "Each `tool_result` block must have a corresponding `tool_use` block in "
                        "the previous message."
                    )
                seen_results.add(tid)
                texts, images, tokens = _text_of_tool_result(block.get("content"), bwhere)
                info["tool_results"].extend(texts)
                info["images"].extend(images)
            elif btype in ("document", "search_result"):
                strings = _document_texts(block)
                info["texts"].extend(strings)
                tokens = sum(count_text_tokens(s) for s in strings) or 1
            elif btype in ("thinking", "redacted_thinking"):
                if role != "assistant":
                    raise Invalid(f"{bwhere}: thinking blocks are only allowed in assistant turns")
                tokens = count_text_tokens(str(block.get("thinking") or block.get("data") or ""))
            else:
                raise Invalid(f"{bwhere}.type: unsupported content block type {btype!r}")
            mark = _ROLE_MARK[role] + (b"0" if b_i == 0 else b"1")
            segments.append(
                Segment(mark + canonical(_strip_cc(block)), tokens, _cache_ttl(block, bwhere))
            )
        if role == "user" and pending_tool_uses:
            missing = pending_tool_uses - seen_results
            if missing:
                raise Invalid(
                    f"{where}: `tool_use` ids were found without `tool_result` blocks immediately "
                    f"after: {', '.join(sorted(missing))}. Each `tool_use` block must have a "
                    "corresponding `tool_result` block in the next message."
                )
            pending_tool_uses.clear()
        parsed_msgs.append(info)

    # top-level cache_control: automatic breakpoint on the last block
    top_cc = body.get("cache_control")
    if top_cc is not None and segments:
        segments[-1].cache_ttl_s = _cache_ttl({"cache_control": top_cc}, "cache_control")

    breakpoints = sum(1 for s in segments if s.cache_ttl_s is not None)
    if breakpoints > MAX_BREAKPOINTS:
        raise Invalid(
            f"A maximum of {MAX_BREAKPOINTS} blocks with cache_control may be provided. "
            f"Found {breakpoints}."
        )

    # tool_choice
    tool_mode, forced = "auto", None
    choice = body.get("tool_choice")
    if choice is not None:
        if not isinstance(choice, dict) or choice.get("type") not in TOOL_CHOICES:
            raise Invalid("tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none'")
        tool_mode = str(choice["type"])
        if tool_mode == "tool":
            forced = choice.get("name")
            if not isinstance(forced, str) or forced not in {t.name for t in tools}:
                raise Invalid(f"tool_choice.name: tool {forced!r} is not among the tools")

    # conversation view
    last = parsed_msgs[-1]
    conv = Conversation()
    q_index = len(parsed_msgs) - 1
    while q_index >= 0 and not (
        parsed_msgs[q_index]["role"] == "user" and parsed_msgs[q_index]["texts"]
    ):
        q_index -= 1
    if last["role"] == "user" and last["tool_results"]:
        conv.ends_with_tool_result = True
        conv.tool_results = list(last["tool_results"])
    if q_index >= 0:
        conv.question = "\n".join(parsed_msgs[q_index]["texts"])
        if q_index == len(parsed_msgs) - 1 or (
            last["role"] == "assistant" and q_index == len(parsed_msgs) - 2
        ):
            conv.images = list(parsed_msgs[q_index]["images"])
    for i, info in enumerate(parsed_msgs):
        if i != q_index:
            context.extend(info["texts"])
        if not (conv.ends_with_tool_result and i == len(parsed_msgs) - 1):
            context.extend(info["tool_results"])
    conv.context = context

    parsed = Parsed(
        model=model,
        max_tokens=max_tokens,
        stream=stream,
        segments=segments,
        conversation=conv,
        tools=tools,
        tool_mode=tool_mode,
        forced_tool=forced,
        last_role=str(last["role"]),
        stop_sequences=list(stops),
        tool_use_ids=all_tool_uses,
    )
    parsed.total_tokens = sum(s.tokens for s in segments)
    return parsed


# ---------------------------------------------------------------------------------------------
# Prompt caching


@dataclass
class CacheUsage:
    read: int = 0
    write_5m: int = 0
    write_1h: int = 0

    @property
    def write(self) -> int:
        return self.write_5m + self.write_1h


def apply_prompt_cache(state: EmulatorState, api_key: str, p: Parsed) -> CacheUsage:
    """Anthropic prompt-cache accounting for one request (see README)."""
    usage = CacheUsage()
    bps = [i for i, s in enumerate(p.segments) if s.cache_ttl_s is not None]
    if not bps:
        return usage
    minimum = state.anthropic_min_cache(p.model)
    cum: list[int] = []
    running = 0
    for seg in p.segments:
        running += seg.tokens
        cum.append(running)
    hashes = rolling_hashes(p.segments, b"anthropic")
    store = state.anthropic_cache

    # read: the longest cached prefix at a breakpoint or up to 20 blocks before one
    read_idx = -1
    for bp in reversed(bps):
        for j in range(bp, max(-1, bp - CACHE_LOOKBACK_BLOCKS - 1), -1):
            if j <= read_idx:
                break
            key = (api_key, p.model, hashes[j])
            if cum[j] >= minimum and store.get(key) is not None:
                read_idx = j
                expiry = store.expiry(key) or 0.0
                ttl = max(TTL_5M, expiry - state.clock.now())
                store.put(key, True, ttl)  # refresh
                break
        if read_idx >= 0:
            break
    if read_idx >= 0:
        usage.read = cum[read_idx]

    # write: every breakpoint past the read point whose prefix is long enough
    prev = usage.read
    for bp in bps:
        if bp <= read_idx or cum[bp] < minimum:
            continue
        ttl = p.segments[bp].cache_ttl_s or TTL_5M
        store.put((api_key, p.model, hashes[bp]), True, ttl)
        added = cum[bp] - prev
        if added > 0:
            if ttl >= TTL_1H:
                usage.write_1h += added
            else:
                usage.write_5m += added
            prev = cum[bp]
    return usage


# ---------------------------------------------------------------------------------------------
# Output


@dataclass
class Output:
    text: str
    tool: ToolSpec | None
    tool_input: dict[str, Any]
    tool_id: str
    stop_reason: str
    stop_sequence: str | None
    output_tokens: int


def generate(p: Parsed) -> Output:
    conv = p.conversation
    tool: ToolSpec | None = None
    if p.tools and p.last_role == "user":
        if p.tool_mode in ("any", "tool") or not conv.ends_with_tool_result:
            tool = choose_tool(p.tools, conv.question, p.tool_mode, p.forced_tool)
    if tool is not None:
        args = build_arguments(tool.schema, conv.question)
        tool_id = stable_id("toolu_emu", p.model, conv.question, str(len(p.segments)),
                            str(len(p.tool_use_ids)))
        text = TOOL_PREAMBLE if p.tool_mode != "tool" else ""
        tokens = count_text_tokens(text) + count_text_tokens(tool.name + dumps(args).decode())
        return Output(text, tool, args, tool_id, "tool_use", None, tokens)
    text = build_answer(conv)
    text, reason, matched = apply_stop(text, p.max_tokens, p.stop_sequences, count_text_tokens)
    return Output(text, None, {}, "", reason or "end_turn", matched, count_text_tokens(text))


def _usage(p: Parsed, cache: CacheUsage, output_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": p.total_tokens - cache.read - cache.write,
        "cache_creation_input_tokens": cache.write,
        "cache_read_input_tokens": cache.read,
        "cache_creation": {
            "ephemeral_5m_input_tokens": cache.write_5m,
            "ephemeral_1h_input_tokens": cache.write_1h,
        },
        "output_tokens": output_tokens,
        "service_tier": "standard",
    }


def _content_blocks(out: Output) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    if out.text or out.tool is None:
        blocks.append({"type": "text", "text": out.text})
    if out.tool is not None:
        blocks.append(
            {"type": "tool_use", "id": out.tool_id, "name": out.tool.name, "input": out.tool_input}
        )
    return blocks


def build_events(msg_id: str, p: Parsed, cache: CacheUsage, out: Output) -> list[Event]:
    start_usage = _usage(p, cache, 1)
    events = [
        Event(
            _sse(
                b"message_start",
                {
                    "type": "message_start",
                    "message": {
                        "id": msg_id,
                        "type": "message",
                        "role": "assistant",
                        "model": p.model,
                        "content": [],
                        "stop_reason": None,
                        "stop_sequence": None,
                        "usage": start_usage,
                    },
                },
            )
        )
    ]
    index = 0
    if out.text or out.tool is None:
        events.append(
            Event(
                _sse(
                    b"content_block_start",
                    {
                        "type": "content_block_start",
                        "index": index,
                        "content_block": {"type": "text", "text": ""},
                    },
                )
            )
        )
        events.append(Event(_sse(b"ping", {"type": "ping"})))
        for chunk in stream_chunks(out.text):
            events.append(
                Event(
                    _sse(
                        b"content_block_delta",
                        {
                            "type": "content_block_delta",
                            "index": index,
                            "delta": {"type": "text_delta", "text": chunk},
                        },
                    ),
                    tokens=count_text_tokens(chunk),
                    content=True,
                )
            )
        events.append(
            Event(_sse(b"content_block_stop", {"type": "content_block_stop", "index": index}))
        )
        index += 1
    if out.tool is not None:
        events.append(
            Event(
                _sse(
                    b"content_block_start",
                    {
                        "type": "content_block_start",
                        "index": index,
                        "content_block": {
                            "type": "tool_use",
                            "id": out.tool_id,
                            "name": out.tool.name,
                            "input": {},
                        },
                    },
                )
            )
        )
        for piece in split_json(dumps(out.tool_input).decode()):
            events.append(
                Event(
                    _sse(
                        b"content_block_delta",
                        {
                            "type": "content_block_delta",
                            "index": index,
                            "delta": {"type": "input_json_delta", "partial_json": piece},
                        },
                    ),
                    tokens=count_text_tokens(piece),
                    content=True,
                )
            )
        events.append(
            Event(_sse(b"content_block_stop", {"type": "content_block_stop", "index": index}))
        )
    final_usage = _usage(p, cache, out.output_tokens)
    del final_usage["service_tier"]
    events.append(
        Event(
            _sse(
                b"message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": out.stop_reason, "stop_sequence": out.stop_sequence},
                    "usage": final_usage,
                },
            )
        )
    )
    events.append(Event(_sse(b"message_stop", {"type": "message_stop"})))
    return events


# ---------------------------------------------------------------------------------------------
# Endpoints


def _api_key(request: Request) -> str | None:
    return request.headers.get("x-api-key") or bearer_token(request)


def _auth_error(request: Request) -> tuple[str, Response | None]:
    key = _api_key(request)
    if key is None:
        return "", error_response(401, "x-api-key header is required")
    if key.startswith("invalid"):
        return key, error_response(401, "invalid x-api-key")
    return key, None


async def _parse_body(request: Request, for_count: bool) -> tuple[str | None, Parsed | Response]:
    try:
        body = await read_json(request)
    except BadJSON as exc:
        return None, error_response(400, str(exc))
    model = body.get("model") if isinstance(body, dict) else None
    if not isinstance(model, str) or not model:
        model = None
    elif not model_known(model):
        return model, error_response(404, f"model: {model}")
    try:
        return model, parse_request(body, for_count=for_count)
    except Invalid as exc:
        return model, error_response(400, str(exc))


async def count_tokens(request: Request) -> Response:
    state: EmulatorState = request.app.state.emulator
    _, err = _auth_error(request)
    if err is not None:
        return err
    _, parsed = await _parse_body(request, for_count=True)
    if isinstance(parsed, Response):
        return parsed
    state.stats.add(parsed.model, count_tokens_requests=1)
    return json_response({"input_tokens": parsed.total_tokens})


async def messages(request: Request) -> Response:
    state: EmulatorState = request.app.state.emulator
    key, err = _auth_error(request)
    if err is not None:
        return err
    model_id, parsed = await _parse_body(request, for_count=False)
    if isinstance(parsed, Response):
        if model_id is not None:
            state.stats.add(model_id, invalid_requests=1)
        state.log_request(api="anthropic", model=model_id, status=parsed.status_code,
                          key_id=key_fingerprint(key))
        return parsed
    p = parsed
    stats = state.stats
    stats.add(p.model, requests=1, stream_requests=int(p.stream))
    decision: Decision = state.faults.decide(p.model, p.stream)
    await sleep_ms(decision.timing.latency_ms)
    key_id = key_fingerprint(key)
    if decision.error_status is not None:
        stats.add(p.model, errors_injected=1)
        state.log_request(api="anthropic", model=p.model, stream=p.stream, key_id=key_id,
                          status=decision.error_status, injected=True)
        return error_response(
            decision.error_status,
            retry_after=retry_after_value(decision.retry_after_s, decision.error_status),
        )

    cache = apply_prompt_cache(state, key, p)
    out = generate(p)
    msg_id = "msg_emu" + uuid.uuid4().hex[:20]
    stats.add(
        p.model,
        input_tokens=p.total_tokens,
        cached_tokens=cache.read,
        cache_creation_tokens=cache.write,
    )
    state.log_request(api="anthropic", model=p.model, stream=p.stream, key_id=key_id, status=200,
                      tool=out.tool.name if out.tool else None,
                      cache_read=cache.read, cache_write=cache.write)
    headers = {"request-id": "req_emu_" + msg_id[7:]}
    if not p.stream:
        timing = decision.timing
        await sleep_ms(timing.ttft_ms + timing.inter_token_ms * out.output_tokens)
        stats.add(p.model, output_tokens=out.output_tokens)
        body = {
            "id": msg_id,
            "type": "message",
            "role": "assistant",
            "model": p.model,
            "content": _content_blocks(out),
            "stop_reason": out.stop_reason,
            "stop_sequence": out.stop_sequence,
            "usage": _usage(p, cache, out.output_tokens),
        }
        return json_response(body, headers=headers)

    model = p.model
    total_out = out.output_tokens

    def on_done(outcome: Outcome) -> None:
        stats.add(
            model,
            output_tokens=total_out if outcome.completed else outcome.tokens_sent,
            streams_completed=int(outcome.completed),
            streams_cut=int(outcome.cut),
            streams_stalled=int(outcome.stalled),
            stream_errors_injected=int(outcome.stream_error),
        )

    return EmulatedStream(
        build_events(msg_id, p, cache, out),
        decision,
        stream_error_event,
        on_done,
        extra_headers=[(b"request-id", headers["request-id"].encode())],
    )
