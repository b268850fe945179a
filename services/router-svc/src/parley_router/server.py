"""RouterService over gRPC: protobuf <-> domain. Errors are ParleyErrors (the shared
interceptor turns them into status codes, with a retry-after trailer when set)."""

from __future__ import annotations

import math
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import grpc
from parley.router.v1 import router_pb2, router_pb2_grpc
from parley_runtime.catalog import Catalog, ModelEntry
from parley_runtime.context import require_tenant
from parley_runtime.errors import InvalidArgument
from parley_runtime.ids import check_id

from .chat import (
    ChatRequest,
    FinishReason,
    ImagePart,
    Message,
    Part,
    Role,
    TextDelta,
    TextPart,
    ToolCallEvent,
    ToolCallPart,
    ToolChoice,
    ToolResultPart,
    ToolSpec,
    Usage,
    parse_tool_schema,
)
from .complexity import TIERS, Tier
from .policy import RoutingHints
from .router import Completed, Decision, Routed, Turn, TurnRouter

__all__ = ["RouterServicer", "request_from_proto"]

_ROLES = {
    router_pb2.ROLE_SYSTEM: Role.SYSTEM,
    router_pb2.ROLE_USER: Role.USER,
    router_pb2.ROLE_ASSISTANT: Role.ASSISTANT,
    router_pb2.ROLE_TOOL: Role.TOOL,
}
# Bounds on hint values: real ones are far below them, and a message naming a bad value must
# stay small (gRPC refuses oversized status metadata, and callers read these messages).
MAX_HINT_PROVIDERS = 8
MAX_PROVIDER_NAME_LEN = 32

_TOOL_CHOICE: dict[int, ToolChoice] = {
    router_pb2.TOOL_CHOICE_UNSPECIFIED: ToolChoice.AUTO,
    router_pb2.TOOL_CHOICE_AUTO: ToolChoice.AUTO,
    router_pb2.TOOL_CHOICE_NONE: ToolChoice.NONE,
    router_pb2.TOOL_CHOICE_REQUIRED: ToolChoice.REQUIRED,
}
_FINISH = {
    FinishReason.STOP: router_pb2.FINISH_REASON_STOP,
    FinishReason.LENGTH: router_pb2.FINISH_REASON_LENGTH,
    FinishReason.TOOL_CALLS: router_pb2.FINISH_REASON_TOOL_CALLS,
    FinishReason.CONTENT_FILTER: router_pb2.FINISH_REASON_CONTENT_FILTER,
}


def _tier(value: int, field: str) -> Tier | None:
    if value == router_pb2.TIER_UNSPECIFIED:
        return None
    try:
        return Tier(value)
    except ValueError:
        raise InvalidArgument(f"{field}: unknown tier {value}") from None


def _tier_pb(t: Tier) -> Any:
    return int(t)


def _part(p: Any, where: str) -> Part:
    kind = p.WhichOneof("part")
    if kind == "text":
        return TextPart(p.text)
    if kind == "image":
        img = p.image
        return ImagePart(img.data, img.mime_type, img.width, img.height)
    if kind == "tool_call":
        tc = p.tool_call
        return ToolCallPart(tc.id, tc.name, tc.arguments_json)
    if kind == "tool_result":
        tr = p.tool_result
        return ToolResultPart(tr.call_id, tr.name, tr.content, tr.is_error)
    raise InvalidArgument(
        f"{where}: empty content part (set text, image, tool_call or tool_result)"
    )


def _messages(raw: Any) -> tuple[Message, ...]:
    out = []
    for i, m in enumerate(raw):
        role = _ROLES.get(m.role)
        if role is None:
            raise InvalidArgument(f"messages[{i}]: role must be SYSTEM, USER, ASSISTANT or TOOL")
        parts = tuple(_part(p, f"messages[{i}].parts[{j}]") for j, p in enumerate(m.parts))
        out.append(Message(role, parts, m.cache_breakpoint))
    return tuple(out)


def _tools(raw: Any) -> tuple[ToolSpec, ...]:
    return tuple(
        ToolSpec(t.name, t.description, parse_tool_schema(t.name, t.parameters_json_schema))
        for t in raw
    )


def _providers(raw: Any) -> frozenset[str]:
    if len(raw) > MAX_HINT_PROVIDERS:
        raise InvalidArgument(
            f"hints.allowed_providers has {len(raw)} entries, at most {MAX_HINT_PROVIDERS} are "
            "accepted: name the providers to use (e.g. google, anthropic)"
        )
    for i, p in enumerate(raw):
        if len(p) > MAX_PROVIDER_NAME_LEN:
            raise InvalidArgument(
                f"hints.allowed_providers[{i}] is {len(p)} characters long; provider names "
                f"have at most {MAX_PROVIDER_NAME_LEN} (e.g. google, anthropic)"
            )
    return frozenset(p.strip().lower() for p in raw if p.strip())


def _hints(h: Any) -> RoutingHints:
    # NaN compares false with everything: without isfinite it would pass as "no cap".
    if not math.isfinite(h.max_cost_usd) or h.max_cost_usd < 0:
        raise InvalidArgument(
            "hints.max_cost_usd must be a finite amount of USD, not negative (0 = no cap)"
        )
    model_id = h.model_id.strip()
    check_id("hints.model_id", model_id)
    force_tier = _tier(h.force_tier, "hints.force_tier")
    max_tier = _tier(h.max_tier, "hints.max_tier")
    if force_tier is not None and max_tier is not None and force_tier > max_tier:
        # The caller's own hints contradict each other: answering at either tier would ignore
        # one of them without telling (a tenant's cap on a hint is different: it is reported
        # in the decision's reason).
        raise InvalidArgument(
            f"hints.force_tier {force_tier.label} is above hints.max_tier {max_tier.label}: "
            "send one of them, or a force_tier within max_tier"
        )
    return RoutingHints(
        force_tier=force_tier,
        max_tier=max_tier,
        allowed_providers=_providers(h.allowed_providers),
        max_cost_usd=h.max_cost_usd,
        model_id=model_id,
    )


def _tool_choice(value: int) -> ToolChoice:
    choice = _TOOL_CHOICE.get(value)
    if choice is None:
        raise InvalidArgument(
            f"tool_choice: unknown value {value} (use TOOL_CHOICE_AUTO, NONE or REQUIRED)"
        )
    return choice


def request_from_proto(req: Any, default_max_output_tokens: int) -> ChatRequest:
    if req.max_output_tokens < 0:
        raise InvalidArgument("max_output_tokens must not be negative")
    return ChatRequest(
        messages=_messages(req.messages),
        tools=_tools(req.tools),
        tool_choice=_tool_choice(req.tool_choice),
        max_output_tokens=req.max_output_tokens or default_max_output_tokens,
        temperature=req.temperature if req.HasField("temperature") else None,
    )


def _decision_pb(d: Decision, model: ModelEntry, reason: str) -> Any:
    return router_pb2.RouteDecision(
        tier=_tier_pb(d.tier),
        provider=model.provider,
        model_id=model.model_id,
        complexity=d.complexity,
        estimator=d.estimator,
        reason=reason,
    )


def _usage_pb(u: Usage, cost: float) -> Any:
    return router_pb2.Usage(
        input_tokens=u.input_tokens,
        cached_input_tokens=u.cached_input_tokens,
        cache_write_tokens=u.cache_write_tokens,
        output_tokens=u.output_tokens,
        images=u.images,
        cost_usd=cost,
    )


def _model_pb(m: ModelEntry, catalog_today: Any) -> Any:
    p = m.price_at(catalog_today).usd_per_mtok
    return router_pb2.ModelInfo(
        model_id=m.model_id,
        provider=m.provider,
        input_usd_per_mtok=p.get("input", 0.0),
        output_usd_per_mtok=p.get("output", 0.0),
        cache_write_usd_per_mtok=p.get("cache_write", 0.0),
        cache_read_usd_per_mtok=p.get("cache_read", 0.0),
        context_window=m.context_window,
        min_cacheable_tokens=m.min_cacheable_tokens,
        supports_images=m.supports_images,
        supports_tools=m.supports_tools,
        retires_on=m.retires_on.isoformat() if m.retires_on else "",
        successor=m.successor or "",
    )


class RouterServicer(router_pb2_grpc.RouterServiceServicer):
    def __init__(self, router: TurnRouter, catalog: Catalog, *,
                 default_max_output_tokens: int = 1024) -> None:
        self._router = router
        self._catalog = catalog
        self._default_max_out = default_max_output_tokens

    async def StreamChat(
        self, request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        tenant = require_tenant()
        # Billing refuses usage with ids outside these rules: a turn answered with them would
        # never be billed (its event dead-lettered), so they are refused before any model runs.
        check_id("session_id", request.session_id)
        check_id("turn_id", request.turn_id)
        turn = Turn(
            tenant_id=tenant,
            session_id=request.session_id,
            turn_id=request.turn_id or f"gen-{uuid.uuid4().hex}",
            request=request_from_proto(request, self._default_max_out),
            hints=_hints(request.hints),
        )
        response = router_pb2.StreamChatResponse
        # No separate send_initial_metadata: the headers ride on the first message's write
        # (one gRPC operation fewer per turn, and nothing awaited before routing starts).
        async with aclosing(self._router.stream(turn)) as events:
            async for event in events:
                if isinstance(event, TextDelta):
                    yield response(text_delta=event.text)
                elif isinstance(event, ToolCallEvent):
                    yield response(tool_call=router_pb2.ToolCall(
                        id=event.id, name=event.name, arguments_json=event.arguments_json))
                elif isinstance(event, Routed):
                    yield response(route=_decision_pb(event.decision, event.model, event.reason))
                elif isinstance(event, Completed):
                    yield response(completion=router_pb2.Completion(
                        finish_reason=_FINISH[event.finish_reason],
                        usage=_usage_pb(event.usage, event.cost_usd),
                        provider=event.model.provider,
                        model_id=event.model.model_id,
                        tier=_tier_pb(event.tier),
                        fallback_used=event.fallback_used,
                        attempts=event.attempts,
                        time_to_first_token_ms=event.ttft_ms,
                        total_ms=event.total_ms,
                    ))

    async def ClassifyTurn(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        tenant = require_tenant()
        chat = ChatRequest(
            messages=_messages(request.messages),
            tools=_tools(request.tools),
            max_output_tokens=self._default_max_out,
        )
        turn = Turn(tenant, "", "classify", chat, _hints(request.hints))
        decision = await self._router.decide(turn, dry_run=True)
        return router_pb2.ClassifyTurnResponse(
            decision=_decision_pb(decision, decision.chain[0], decision.reason),
            baseline_tier=_tier_pb(
                decision.tier if decision.baseline_tier is None else decision.baseline_tier),
        )

    async def ListModels(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        tenant = require_tenant()
        policy = self._router.policy(tenant)
        today = self._router.today()
        models = [
            _model_pb(m, today)
            for m in sorted(self._catalog.models.values(), key=lambda m: m.model_id)
            if m.kind == "llm"
        ]
        tiers = [
            router_pb2.TierChain(tier=_tier_pb(t), model_ids=[m.model_id for m in policy.chains[t]])
            for t in TIERS
        ]
        return router_pb2.ListModelsResponse(
            catalog_version=self._catalog.version, models=models, tiers=tiers
        )
