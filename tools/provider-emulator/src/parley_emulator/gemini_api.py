"""Gemini API: generateContent, streamGenerateContent (SSE), countTokens, cachedContents."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from .answer import (
    Conversation,
    ImageInfo,
    ToolSpec,
    apply_stop,
    build_answer,
    build_arguments,
    choose_tool,
    stable_id,
    stream_chunks,
)
from .common import (
    BadJSON,
    Segment,
    canonical,
    dumps,
    flatten_strings,
    json_response,
    read_json,
    retry_after_value,
    rolling_hashes,
    sleep_ms,
)
from .state import CachedContent, EmulatorState, key_fingerprint
from .stream import EmulatedStream, Event, Outcome
from .tokens import (
    GEMINI_TOKENS_PER_TILE,
    ImageError,
    count_text_tokens,
    decode_image_size,
    gemini_image_tokens,
)

KNOWN_MODELS = frozenset(
    {
        "gemini-2.5-flash",
        "gemini-2.5-flash-lite",
        "gemini-2.5-pro",
        "gemini-2.0-flash",
        "gemini-2.0-flash-lite",
        "gemini-3-pro-preview",
        "gemini-3-flash-preview",
        "gemini-flash-latest",
        "gemini-flash-lite-latest",
    }
)
STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    408: "DEADLINE_EXCEEDED",
    409: "ABORTED",
    413: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
    529: "UNAVAILABLE",
}
STATUS_MESSAGES = {
    429: "Resource has been exhausted (e.g. check quota). (emulated)",
    500: "An internal error has occurred. (emulated)",
    503: "The model is overloaded. Please try again later. (emulated)",
    529: "The model is overloaded. Please try again later. (emulated)",
}
DEFAULT_CACHE_TTL_S = 3600.0
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)s\s*$")
_FUNC_NAME_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_.:-]{0,127}$")
_PART_KINDS = (
    "text",
    "inlineData",
    "inline_data",
    "fileData",
    "file_data",
    "functionCall",
    "function_call",
    "functionResponse",
    "function_response",
    "executableCode",
    "executable_code",
    "codeExecutionResult",
    "code_execution_result",
)


def model_known(model: str) -> bool:
    return model in KNOWN_MODELS or model.startswith("gemini-")


class Invalid(ValueError):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _g(d: dict[str, Any], camel: str, snake: str) -> Any:
    value = d.get(camel)
    return d.get(snake) if value is None else value


def error_body(status: int, message: str | None, retry_after: str | None) -> dict[str, Any]:
    err: dict[str, Any] = {
        "code": status,
        "message": message or STATUS_MESSAGES.get(status, f"Error {status} (emulated)"),
        "status": STATUS_NAMES.get(status, "UNKNOWN"),
    }
    if retry_after is not None:
        err["details"] = [
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{retry_after}s"}
        ]
    return {"error": err}


def error_response(
    status: int, message: str | None = None, retry_after: str | None = None
) -> Response:
    headers = {"retry-after": retry_after} if retry_after is not None else None
    return json_response(error_body(status, message, retry_after), status, headers)


def stream_error_event(status: int) -> bytes:
    return b"data: " + dumps(error_body(status, None, None)) + b"\r\n\r\n"


def _rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_rfc3339(value: str) -> float:
    text = value.strip().replace("Z", "+00:00")
    # Python 3.11 handles up to microseconds; trim nanoseconds if given
    text = re.sub(r"(\.\d{6})\d+", r"\1", text)
    return datetime.fromisoformat(text).timestamp()


# ---------------------------------------------------------------------------------------------
# Parsing


@dataclass
class PromptInfo:
    segments: list[Segment] = field(default_factory=list)
    conversation: Conversation = field(default_factory=Conversation)
    tools: list[ToolSpec] = field(default_factory=list)
    text_tokens: int = 0
    image_tokens: int = 0
    last_role: str = "user"
    call_count: int = 0


@dataclass
class _Msg:
    role: str
    texts: list[str] = field(default_factory=list)
    images: list[ImageInfo] = field(default_factory=list)
    results: list[str] = field(default_factory=list)


def _parse_part(part: Any, where: str, msg: _Msg, info: PromptInfo, role: str) -> int:
    if not isinstance(part, dict):
        raise Invalid(f"Invalid value at '{where}': a part must be an object")
    if not any(k in part for k in _PART_KINDS):
        raise Invalid(f"* {where}: required oneof field 'data' must have one initialized field")
    text = part.get("text")
    if text is not None:
        if not isinstance(text, str):
            raise Invalid(f"Invalid value at '{where}.text': expected a string")
        if not part.get("thought"):
            msg.texts.append(text)
        tokens = count_text_tokens(text)
        info.text_tokens += tokens
        return tokens
    inline = _g(part, "inlineData", "inline_data")
    if inline is not None:
        if not isinstance(inline, dict):
            raise Invalid(f"Invalid value at '{where}.inline_data'")
        mime = str(_g(inline, "mimeType", "mime_type") or "")
        data = inline.get("data")
        if mime.startswith("image/"):
            try:
                width, height = decode_image_size(data if isinstance(data, str) else "")
            except ImageError as exc:
                raise Invalid(f"Unable to process input image. {where}: {exc}") from exc
            msg.images.append(ImageInfo(width, height))
            tokens = gemini_image_tokens(width, height)
        else:
            tokens = count_text_tokens(str(data or "")) // 3 + 1
        info.image_tokens += tokens
        return tokens
    fdata = _g(part, "fileData", "file_data")
    if fdata is not None:
        msg.images.append(ImageInfo(None, None))
        info.image_tokens += GEMINI_TOKENS_PER_TILE
        return GEMINI_TOKENS_PER_TILE
    call = _g(part, "functionCall", "function_call")
    if call is not None:
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            raise Invalid(f"* {where}.function_call.name: Name cannot be empty.")
        info.call_count += 1
        tokens = count_text_tokens(call["name"] + dumps(call.get("args") or {}).decode())
        info.text_tokens += tokens
        return tokens
    resp = _g(part, "functionResponse", "function_response")
    if resp is not None:
        if not isinstance(resp, dict) or not isinstance(resp.get("name"), str):
            raise Invalid(f"* {where}.function_response.name: Name cannot be empty.")
        strings = flatten_strings(resp.get("response"))
        msg.results.extend(strings)
        tokens = count_text_tokens(resp["name"] + dumps(resp.get("response") or {}).decode())
        info.text_tokens += tokens
        return tokens
    other = dumps(part).decode()
    tokens = count_text_tokens(other)
    info.text_tokens += tokens
    return tokens


def _parse_tools(raw_tools: Any, info: PromptInfo, where: str = "tools") -> None:
    if raw_tools is None:
        return
    if not isinstance(raw_tools, list):
        raise Invalid(f"Invalid value at '{where}': expected a list")
    names: set[str] = set()
    for i, tool in enumerate(raw_tools):
        if not isinstance(tool, dict):
            raise Invalid(f"Invalid value at '{where}[{i}]'")
        decls = _g(tool, "functionDeclarations", "function_declarations") or []
        if not isinstance(decls, list):
            raise Invalid(f"Invalid value at '{where}[{i}].function_declarations'")
        for j, decl in enumerate(decls):
            dwhere = f"{where}[{i}].function_declarations[{j}]"
            if not isinstance(decl, dict):
                raise Invalid(f"Invalid value at '{dwhere}'")
            name = decl.get("name")
            if not isinstance(name, str) or not _FUNC_NAME_RE.match(name):
                raise Invalid(
                    f"* {dwhere}.name: Invalid function name. Must start with a letter or an "
                    "underscore and contain only a-z, A-Z, 0-9, underscores, dots, colons and "
                    "dashes, with a maximum length of 128."
                )
            if name in names:
                raise Invalid(f"* {dwhere}.name: Duplicate function declaration name {name}")
            names.add(name)
            schema = decl.get("parameters")
            if schema is None:
                schema = _g(decl, "parametersJsonSchema", "parameters_json_schema")
            if schema is None:
                schema = {"type": "object", "properties": {}}
            if not isinstance(schema, dict):
                raise Invalid(f"* {dwhere}.parameters: must be a schema object")
            stype = str(schema.get("type", "object")).lower()
            if stype != "object":
                raise Invalid(f"* {dwhere}.parameters.type: must be OBJECT, got {stype.upper()}")
            props = schema.get("properties")
            if props is not None and not isinstance(props, dict):
                raise Invalid(f"* {dwhere}.parameters.properties: must be a map")
            description = decl.get("description") or ""
            info.tools.append(ToolSpec(name, str(description), schema))
        info.segments.append(
            Segment(b"T" + canonical(tool), count_text_tokens(dumps(tool).decode()))
        )
        info.text_tokens += info.segments[-1].tokens


def parse_prompt(
    system_instruction: Any,
    tools: Any,
    contents: Any,
    require_contents: bool = True,
) -> tuple[PromptInfo, list[_Msg]]:
    info = PromptInfo()
    context: list[str] = []
    if system_instruction is not None:
        if isinstance(system_instruction, str):
            system_instruction = {"parts": [{"text": system_instruction}]}
        if not isinstance(system_instruction, dict):
            raise Invalid("Invalid value at 'system_instruction'")
        parts = system_instruction.get("parts") or []
        sys_msg = _Msg("system")
        for i, part in enumerate(parts):
            tokens = _parse_part(part, f"system_instruction.parts[{i}]", sys_msg, info, "system")
            info.segments.append(Segment(b"S" + canonical(part), tokens))
        context.extend(sys_msg.texts)
    _parse_tools(tools, info)
    if contents is None:
        contents = []
    if not isinstance(contents, list):
        raise Invalid("Invalid value at 'contents': expected a list")
    if require_contents and not contents:
        raise Invalid("* GenerateContentRequest.contents: contents is not specified")
    msgs: list[_Msg] = []
    for c_i, content in enumerate(contents):
        where = f"contents[{c_i}]"
        if not isinstance(content, dict):
            raise Invalid(f"Invalid value at '{where}'")
        role = content.get("role") or "user"
        if role not in ("user", "model", "function", "tool"):
            raise Invalid(
                f"* {where}.role: Please use a valid role: user, model."
            )
        parts = content.get("parts")
        if not isinstance(parts, list) or not parts:
            raise Invalid(
                f"* GenerateContentRequest.{where}.parts: contents.parts must not be empty."
            )
        msg = _Msg("model" if role == "model" else "user")
        mark = b"M" if role == "model" else b"U"
        for p_i, part in enumerate(parts):
            tokens = _parse_part(part, f"{where}.parts[{p_i}]", msg, info, msg.role)
            info.segments.append(Segment(mark + (b"0" if p_i == 0 else b"1") + canonical(part),
                                         tokens))
        msgs.append(msg)
    info.conversation.context = context
    return info, msgs


def finish_conversation(info: PromptInfo, msgs: list[_Msg]) -> None:
    conv = info.conversation
    if not msgs:
        return
    last = msgs[-1]
    info.last_role = last.role
    q_index = len(msgs) - 1
    while q_index >= 0 and not (msgs[q_index].role == "user" and msgs[q_index].texts):
        q_index -= 1
    if last.role == "user" and last.results:
        conv.ends_with_tool_result = True
        conv.tool_results = list(last.results)
    if q_index >= 0:
        conv.question = "\n".join(msgs[q_index].texts)
        if q_index == len(msgs) - 1:
            conv.images = list(msgs[q_index].images)
    for i, msg in enumerate(msgs):
        if i != q_index:
            conv.context.extend(msg.texts)
        if not (conv.ends_with_tool_result and i == len(msgs) - 1):
            conv.context.extend(msg.results)


@dataclass
class GenRequest:
    model: str
    info: PromptInfo
    cached: CachedContent | None
    max_tokens: int | None
    stop_sequences: list[str]
    tool_mode: str
    allowed: list[str] | None
    prompt_tokens: int
    cached_tokens: int = 0


def _tool_config(body: dict[str, Any]) -> tuple[str, list[str] | None]:
    cfg = _g(body, "toolConfig", "tool_config")
    if not isinstance(cfg, dict):
        return "auto", None
    fcc = _g(cfg, "functionCallingConfig", "function_calling_config")
    if not isinstance(fcc, dict):
        return "auto", None
    mode = str(fcc.get("mode") or "AUTO").upper()
    allowed = _g(fcc, "allowedFunctionNames", "allowed_function_names")
    names = [str(n) for n in allowed] if isinstance(allowed, list) and allowed else None
    return {"NONE": "none", "ANY": "any", "VALIDATED": "auto"}.get(mode, "auto"), names


def parse_generate(state: EmulatorState, api_key: str, model: str, body: Any) -> GenRequest:
    if not isinstance(body, dict):
        raise Invalid("Invalid JSON payload received. Expected an object.")
    gen_cfg = _g(body, "generationConfig", "generation_config") or {}
    if not isinstance(gen_cfg, dict):
        raise Invalid("Invalid value at 'generation_config'")
    max_tokens = _g(gen_cfg, "maxOutputTokens", "max_output_tokens")
    if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
        raise Invalid("* GenerateContentRequest.generation_config.max_output_tokens: must be > 0")
    temperature = gen_cfg.get("temperature")
    if temperature is not None and (
        not isinstance(temperature, (int, float)) or not 0.0 <= temperature <= 2.0
    ):
        raise Invalid("* GenerateContentRequest.generation_config.temperature: must be in [0, 2]")
    stops = _g(gen_cfg, "stopSequences", "stop_sequences") or []
    if not isinstance(stops, list):
        raise Invalid("Invalid value at 'generation_config.stop_sequences'")

    system = _g(body, "systemInstruction", "system_instruction")
    tools = body.get("tools")
    cache_name = _g(body, "cachedContent", "cached_content")
    cached: CachedContent | None = None
    if cache_name is not None:
        if not isinstance(cache_name, str):
            raise Invalid("Invalid value at 'cached_content'")
        cached = state.gemini_cached_content(cache_name)
        if cached is None or cached.api_key != api_key:
            raise Invalid("CachedContent not found (or permission denied)", 403)
        if cached.model != model:
            raise Invalid(
                f"Model used by GenerateContent request ({model}) and CachedContent "
                f"({cached.model}) has to be the same."
            )
        if system is not None or tools is not None or _g(body, "toolConfig", "tool_config"):
            raise Invalid(
                "CachedContent can not be used with GenerateContent request setting "
                "system_instruction, tools or tool_config.\n\nProposed fix: move those values "
                "to CachedContent from GenerateContent request."
            )
        system, tools = cached.system_instruction, cached.tools
        contents: Any = list(cached.contents) + list(body.get("contents") or [])
    else:
        contents = body.get("contents")
    info, msgs = parse_prompt(system, tools, contents)
    finish_conversation(info, msgs)
    tool_mode, allowed = _tool_config(
        body if cached is None else {"toolConfig": cached.tool_config}
    )
    req = GenRequest(
        model=model,
        info=info,
        cached=cached,
        max_tokens=max_tokens,
        stop_sequences=[str(s) for s in stops],
        tool_mode=tool_mode,
        allowed=allowed,
        prompt_tokens=sum(s.tokens for s in info.segments),
    )
    if cached is not None:
        req.cached_tokens = cached.token_count
    return req


def apply_implicit_cache(state: EmulatorState, api_key: str, req: GenRequest) -> None:
    """Shared-prefix detection across recent requests of the same key and model."""
    if req.cached is not None:
        return
    minimum = state.gemini_min_cache(req.model)
    if req.prompt_tokens < minimum:
        return
    segments = req.info.segments
    hashes = rolling_hashes(segments, b"gemini")
    store = state.gemini_implicit
    ttl = state.config.gemini_implicit_ttl_s
    cum: list[int] = []
    running = 0
    for seg in segments:
        running += seg.tokens
        cum.append(running)
    best = 0
    for j in range(len(segments) - 1, -1, -1):
        if cum[j] < minimum:
            break
        hit = store.get((api_key, req.model, hashes[j]))
        if hit is not None:
            best = hit
            break
    for j in range(len(segments)):
        if cum[j] >= minimum:
            store.put((api_key, req.model, hashes[j]), cum[j], ttl)
    req.cached_tokens = best


# ---------------------------------------------------------------------------------------------
# Output


@dataclass
class GenOutput:
    text: str
    call: dict[str, Any] | None
    finish_reason: str
    output_tokens: int


def generate(req: GenRequest) -> GenOutput:
    conv = req.info.conversation
    tools = req.info.tools
    if req.allowed is not None:
        tools = [t for t in tools if t.name in req.allowed]
    tool: ToolSpec | None = None
    if tools and req.info.last_role == "user":
        if req.tool_mode == "any" or not conv.ends_with_tool_result:
            tool = choose_tool(tools, conv.question, req.tool_mode)
    if tool is not None:
        args = build_arguments(tool.schema, conv.question)
        call = {
            "name": tool.name,
            "args": args,
            "id": stable_id("call_emu", req.model, conv.question, str(len(req.info.segments))),
        }
        return GenOutput("", call, "STOP", count_text_tokens(tool.name + dumps(args).decode()))
    text = build_answer(conv)
    text, reason, _ = apply_stop(text, req.max_tokens, req.stop_sequences, count_text_tokens)
    return GenOutput(text, None, "MAX_TOKENS" if reason == "max_tokens" else "STOP",
                     count_text_tokens(text))


def _usage(req: GenRequest, output_tokens: int | None) -> dict[str, Any]:
    info = req.info
    usage: dict[str, Any] = {"promptTokenCount": req.prompt_tokens}
    if output_tokens is not None:
        usage["candidatesTokenCount"] = output_tokens
    usage["totalTokenCount"] = req.prompt_tokens + (output_tokens or 0)
    details = [{"modality": "TEXT", "tokenCount": info.text_tokens}]
    if info.image_tokens:
        details.append({"modality": "IMAGE", "tokenCount": info.image_tokens})
    usage["promptTokensDetails"] = details
    if req.cached_tokens:
        usage["cachedContentTokenCount"] = req.cached_tokens
        usage["cacheTokensDetails"] = [{"modality": "TEXT", "tokenCount": req.cached_tokens}]
    return usage


def _chunk(req: GenRequest, rid: str, parts: list[dict[str, Any]], finish: str | None,
           usage: dict[str, Any]) -> dict[str, Any]:
    cand: dict[str, Any] = {"content": {"parts": parts, "role": "model"}, "index": 0}
    if finish is not None:
        cand["finishReason"] = finish
    return {
        "candidates": [cand],
        "usageMetadata": usage,
        "modelVersion": req.model,
        "responseId": rid,
    }


def _sse(obj: Any) -> bytes:
    return b"data: " + dumps(obj) + b"\r\n\r\n"


def build_events(req: GenRequest, rid: str, out: GenOutput) -> list[Event]:
    partial = _usage(req, None)
    events: list[Event] = []
    if out.call is not None:
        events.append(
            Event(_sse(_chunk(req, rid, [{"functionCall": out.call}], None, partial)),
                  tokens=out.output_tokens, content=True)
        )
    else:
        for piece in stream_chunks(out.text):
            events.append(
                Event(_sse(_chunk(req, rid, [{"text": piece}], None, partial)),
                      tokens=count_text_tokens(piece), content=True)
            )
    final = _chunk(req, rid, [{"text": ""}], out.finish_reason, _usage(req, out.output_tokens))
    events.append(Event(_sse(final)))
    return events


# ---------------------------------------------------------------------------------------------
# Endpoints


def _api_key(request: Request) -> str | None:
    return request.headers.get("x-goog-api-key") or request.query_params.get("key")


def _auth(request: Request) -> tuple[str, Response | None]:
    key = _api_key(request)
    if not key:
        return "", error_response(
            403, "Method doesn't allow unregistered callers (callers without established "
            "identity). Please use API Key or other form of API consumer identity to call this API."
        )
    if key.startswith("invalid"):
        return key, error_response(400, "API key not valid. Please pass a valid API key.")
    return key, None


def _bare_model(name: str) -> str:
    return name[len("models/"):] if name.startswith("models/") else name


async def model_action(request: Request) -> Response:
    """``/{version}/models/{model}:{action}``."""
    state: EmulatorState = request.app.state.emulator
    target: str = request.path_params["target"]
    version: str = request.path_params["version"]
    model, sep, action = target.rpartition(":")
    if not sep:
        return error_response(404, f"Unknown path /{version}/models/{target}")
    key, err = _auth(request)
    if err is not None:
        return err
    if not model_known(model):
        state.log_request(api="gemini", model=model, status=404, key_id=key_fingerprint(key))
        return error_response(
            404, f"models/{model} is not found for API version {version}, or is not supported "
            f"for {action}. Call ListModels to see the list of available models and their "
            "supported methods."
        )
    try:
        body = await read_json(request)
    except BadJSON as exc:
        return error_response(400, f"Invalid JSON payload received. {exc}")
    if action == "countTokens":
        return _count_tokens(state, key, model, body)
    if action == "generateContent":
        return await _generate(state, request, key, model, body, stream=False)
    if action == "streamGenerateContent":
        return await _generate(state, request, key, model, body, stream=True)
    return error_response(404, f"Method {action} is not emulated")


def _count_tokens(state: EmulatorState, key: str, model: str, body: Any) -> Response:
    if not isinstance(body, dict):
        return error_response(400, "Invalid JSON payload received. Expected an object.")
    inner = _g(body, "generateContentRequest", "generate_content_request")
    try:
        if isinstance(inner, dict):
            req = parse_generate(state, key, model, inner)
            total, cached = req.prompt_tokens, req.cached_tokens
        else:
            info, _ = parse_prompt(
                _g(body, "systemInstruction", "system_instruction"),
                body.get("tools"),
                body.get("contents"),
                require_contents=False,
            )
            total, cached = sum(s.tokens for s in info.segments), 0
    except Invalid as exc:
        return error_response(exc.status, str(exc))
    state.stats.add(model, count_tokens_requests=1)
    resp: dict[str, Any] = {"totalTokens": total}
    if cached:
        resp["cachedContentTokenCount"] = cached
    return json_response(resp)


async def _generate(
    state: EmulatorState, request: Request, key: str, model: str, body: Any, stream: bool
) -> Response:
    key_id = key_fingerprint(key)
    try:
        req = parse_generate(state, key, model, body)
    except Invalid as exc:
        state.stats.add(model, invalid_requests=1)
        state.log_request(api="gemini", model=model, status=exc.status, key_id=key_id)
        return error_response(exc.status, str(exc))
    stats = state.stats
    stats.add(model, requests=1, stream_requests=int(stream))
    decision = state.faults.decide(model, stream)
    await sleep_ms(decision.timing.latency_ms)
    if decision.error_status is not None:
        stats.add(model, errors_injected=1)
        state.log_request(api="gemini", model=model, stream=stream, key_id=key_id,
                          status=decision.error_status, injected=True)
        return error_response(
            decision.error_status,
            retry_after=retry_after_value(decision.retry_after_s, decision.error_status),
        )
    apply_implicit_cache(state, key, req)
    out = generate(req)
    rid = uuid.uuid4().hex[:22]
    stats.add(model, input_tokens=req.prompt_tokens, cached_tokens=req.cached_tokens)
    state.log_request(api="gemini", model=model, stream=stream, key_id=key_id, status=200,
                      tool=out.call["name"] if out.call else None,
                      cached_tokens=req.cached_tokens)
    if not stream:
        timing = decision.timing
        await sleep_ms(timing.ttft_ms + timing.inter_token_ms * out.output_tokens)
        stats.add(model, output_tokens=out.output_tokens)
        parts: list[dict[str, Any]] = (
            [{"functionCall": out.call}] if out.call is not None else [{"text": out.text}]
        )
        return json_response(_chunk(req, rid, parts, out.finish_reason,
                                    _usage(req, out.output_tokens)))

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

    return EmulatedStream(build_events(req, rid, out), decision, stream_error_event, on_done)


# ---------------------------------------------------------------------------------------------
# cachedContents


def _cache_json(item: CachedContent) -> dict[str, Any]:
    return {
        "name": item.name,
        "displayName": item.display_name,
        "model": "models/" + item.model,
        "createTime": _rfc3339(item.create_time),
        "updateTime": _rfc3339(item.update_time),
        "expireTime": _rfc3339(item.expire_time),
        "usageMetadata": {"totalTokenCount": item.token_count},
    }


def _expiry(state: EmulatorState, body: dict[str, Any], default: float | None) -> float | None:
    ttl = body.get("ttl")
    if ttl is not None:
        match = _DURATION_RE.match(str(ttl))
        if not match:
            raise Invalid(f"Invalid value at 'cached_content.ttl' ({ttl!r}): expected e.g. '300s'")
        return state.clock.wall() + float(match.group(1))
    expire = _g(body, "expireTime", "expire_time")
    if expire is not None:
        try:
            return _parse_rfc3339(str(expire))
        except ValueError as exc:
            raise Invalid(f"Invalid value at 'cached_content.expire_time': {exc}") from exc
    return None if default is None else state.clock.wall() + default


async def create_cache(request: Request) -> Response:
    state: EmulatorState = request.app.state.emulator
    key, err = _auth(request)
    if err is not None:
        return err
    try:
        body = await read_json(request)
        if not isinstance(body, dict):
            raise Invalid("Invalid JSON payload received. Expected an object.")
        raw_model = body.get("model")
        if not isinstance(raw_model, str) or not raw_model:
            raise Invalid("* CachedContent.model: model is required")
        model = _bare_model(raw_model)
        if not model_known(model):
            return error_response(404, f"models/{model} is not found")
        contents = body.get("contents") or []
        system = _g(body, "systemInstruction", "system_instruction")
        tools = body.get("tools")
        info, _ = parse_prompt(system, tools, contents, require_contents=False)
        tokens = sum(s.tokens for s in info.segments)
        minimum = state.gemini_min_cache(model)
        if tokens < minimum:
            raise Invalid(
                f"Cached content is too small. total_token_count={tokens}, "
                f"min_total_token_count={minimum}"
            )
        expire = _expiry(state, body, DEFAULT_CACHE_TTL_S)
    except BadJSON as exc:
        return error_response(400, f"Invalid JSON payload received. {exc}")
    except Invalid as exc:
        return error_response(exc.status, str(exc))
    now = state.clock.wall()
    name = "cachedContents/" + uuid.uuid4().hex[:16]
    item = CachedContent(
        name=name,
        model=model,
        api_key=key,
        display_name=str(_g(body, "displayName", "display_name") or ""),
        contents=list(contents),
        system_instruction=system,
        tools=list(tools or []),
        tool_config=_g(body, "toolConfig", "tool_config"),
        token_count=tokens,
        create_time=now,
        update_time=now,
        expire_time=expire or now + DEFAULT_CACHE_TTL_S,
    )
    state.gemini_cached_contents[name] = item
    state.stats.add(model, cache_creation_tokens=tokens)
    return json_response(_cache_json(item))


def _lookup_cache(request: Request) -> tuple[EmulatorState, CachedContent | None, Response | None]:
    state: EmulatorState = request.app.state.emulator
    key, err = _auth(request)
    if err is not None:
        return state, None, err
    name = "cachedContents/" + request.path_params["cache_id"]
    item = state.gemini_cached_content(name)
    if item is None or item.api_key != key:
        return state, None, error_response(
            403, "CachedContent not found (or permission denied)"
        )
    return state, item, None


async def get_cache(request: Request) -> Response:
    _, item, err = _lookup_cache(request)
    if err is not None or item is None:
        return err or error_response(404)
    return json_response(_cache_json(item))


async def delete_cache(request: Request) -> Response:
    state, item, err = _lookup_cache(request)
    if err is not None or item is None:
        return err or error_response(404)
    state.gemini_cached_contents.pop(item.name, None)
    return json_response({})


async def update_cache(request: Request) -> Response:
    state, item, err = _lookup_cache(request)
    if err is not None or item is None:
        return err or error_response(404)
    try:
        body = await read_json(request)
        if not isinstance(body, dict):
            raise Invalid("Invalid JSON payload received. Expected an object.")
        expire = _expiry(state, body, None)
    except BadJSON as exc:
        return error_response(400, f"Invalid JSON payload received. {exc}")
    except Invalid as exc:
        return error_response(exc.status, str(exc))
    if expire is not None:
        item.expire_time = expire
    item.update_time = state.clock.wall()
    return json_response(_cache_json(item))


async def list_caches(request: Request) -> Response:
    state: EmulatorState = request.app.state.emulator
    key, err = _auth(request)
    if err is not None:
        return err
    items = [
        _cache_json(item)
        for name in list(state.gemini_cached_contents)
        if (item := state.gemini_cached_content(name)) is not None and item.api_key == key
    ]
    return json_response({"cachedContents": items} if items else {})
