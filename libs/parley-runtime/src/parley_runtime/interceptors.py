"""gRPC interceptors: authentication, tenant context, tracing, metrics, deadlines, error mapping.

One server interceptor does all of it in a single wrapper so each RPC pays for one extra
coroutine frame, not five.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.context import _RUNTIME_CONTEXT
from opentelemetry.trace import SpanKind, Status, StatusCode

from .auth import ServiceIdentity, TokenSigner, TokenVerifier
from .context import (
    REQUEST_ID_HEADER,
    TENANT_HEADER,
    caller_var,
    deadline_var,
    request_id_var,
    tenant_id_var,
)
from .errors import (
    RETRY_AFTER_TRAILER,
    ParleyError,
    PermissionDenied,
    Unauthenticated,
)
from .metrics import AUTH_FAILURES, GRPC_HANDLED, GRPC_IN_FLIGHT, GRPC_LATENCY

logger = logging.getLogger(__name__)

PUBLIC_METHOD_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
_TRACE_HEADERS = ("traceparent", "tracestate", "baggage")


def _short(method: str) -> str:
    return method.rsplit("/", 1)[-1]


class ParleyServerInterceptor(grpc.aio.ServerInterceptor):
    """Authenticates the caller, binds tenant/request context, traces, meters, maps errors."""

    def __init__(
        self,
        *,
        service: str,
        verifier: TokenVerifier | None,
        default_deadline_s: float = 30.0,
        public_prefixes: Sequence[str] = PUBLIC_METHOD_PREFIXES,
    ) -> None:
        self._service = service
        self._verifier = verifier
        self._default_deadline = default_deadline_s
        self._public = tuple(public_prefixes)
        self._tracer = trace.get_tracer("parley.grpc")
        self._in_flight = GRPC_IN_FLIGHT.labels(service)
        self._latency: dict[str, Any] = {}
        self._handled: dict[tuple[str, grpc.StatusCode], Any] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or method.startswith(self._public):
            return handler
        metadata = dict(handler_call_details.invocation_metadata or ())
        try:
            ident = self._authenticate(metadata)
            tenant = self._resolve_tenant(metadata, ident)
        except ParleyError as exc:
            AUTH_FAILURES.labels(self._service, type(exc).__name__).inc()
            GRPC_HANDLED.labels(self._service, _short(method), exc.code.name).inc()
            logger.warning(
                "call rejected",
                extra={"method": method, "code": exc.code.name, "reason": exc.message},
            )
            return _rejecting_handler(handler, exc)
        request_id = metadata.get(REQUEST_ID_HEADER) or uuid.uuid4().hex
        bound = _Bound(
            self, method, str(ident.service) if ident else None, tenant, request_id, metadata
        )
        return _wrap_handler(handler, bound)

    def _authenticate(self, metadata: dict[str, str]) -> ServiceIdentity | None:
        if self._verifier is None:
            return None
        auth = metadata.get("authorization")
        if not auth:
            raise Unauthenticated("missing authorization metadata: send 'Bearer <service JWT>'")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Unauthenticated("authorization must be 'Bearer <service JWT>'")
        return self._verifier.verify(token.strip())

    @staticmethod
    def _resolve_tenant(metadata: dict[str, str], ident: ServiceIdentity | None) -> str | None:
        requested = metadata.get(TENANT_HEADER) or None
        if ident is None:
            return requested
        if requested is not None and ident.tenant is not None and requested != ident.tenant:
            raise PermissionDenied(
                f"tenant {requested!r} in the request differs from the token's tenant"
            )
        if requested is not None and ident.tenant is None:
            raise PermissionDenied("token names no tenant; it cannot act for a tenant")
        return ident.tenant

    def handled_child(self, method: str, code: grpc.StatusCode) -> Any:
        key = (method, code)
        child = self._handled.get(key)
        if child is None:
            child = GRPC_HANDLED.labels(self._service, method, code.name)
            self._handled[key] = child
        return child

    def latency_child(self, method: str) -> Any:
        child = self._latency.get(method)
        if child is None:
            child = GRPC_LATENCY.labels(self._service, method)
            self._latency[method] = child
        return child


class _Bound:
    """Per-call state shared by the wrappers."""

    __slots__ = ("icpt", "method", "short", "caller", "tenant", "request_id", "metadata")

    def __init__(
        self,
        icpt: ParleyServerInterceptor,
        method: str,
        caller: str | None,
        tenant: str | None,
        request_id: str,
        metadata: dict[str, str],
    ) -> None:
        self.icpt = icpt
        self.method = method
        self.short = _short(method)
        self.caller = caller
        self.tenant = tenant
        self.request_id = request_id
        self.metadata = metadata

    def enter(self, context: grpc.aio.ServicerContext[Any, Any]) -> tuple[Any, ...]:
        remaining = context.time_remaining()
        deadline = time.monotonic() + remaining if remaining is not None else None
        carrier = {k: self.metadata[k] for k in _TRACE_HEADERS if k in self.metadata}
        parent = propagate.extract(carrier) if carrier else None
        span = self.icpt._tracer.start_span(
            self.method,
            context=parent,
            kind=SpanKind.SERVER,
            attributes={"rpc.system": "grpc", "rpc.method": self.short},
        )
        if self.tenant:
            span.set_attribute("parley.tenant_id", self.tenant)
        tokens = (
            tenant_id_var.set(self.tenant),
            request_id_var.set(self.request_id),
            caller_var.set(self.caller),
            deadline_var.set(deadline),
        )
        self.icpt._in_flight.inc()
        otel_token = otel_context.attach(trace.set_span_in_context(span))
        return span, otel_token, tokens, time.perf_counter()

    def exit(self, state: tuple[Any, ...], code: grpc.StatusCode) -> None:
        span, otel_token, tokens, start = state
        self.icpt._in_flight.dec()
        self.icpt.latency_child(self.short).observe(time.perf_counter() - start)
        self.icpt.handled_child(self.short, code).inc()
        if code is not grpc.StatusCode.OK:
            span.set_status(Status(StatusCode.ERROR, code.name))
        span.set_attribute("rpc.grpc.status_code", code.value[0])
        span.end()
        try:
            _RUNTIME_CONTEXT.detach(otel_token)
        except ValueError:
            pass
        # A cancelled stream may finish in another context: then the tokens are not ours to
        # reset, and the context dies with the task anyway.
        variables: tuple[contextvars.ContextVar[Any], ...] = (
            tenant_id_var, request_id_var, caller_var, deadline_var,
        )
        for var, token in zip(variables, tokens, strict=True):
            try:
                var.reset(token)
            except ValueError:
                pass

    async def fail(
        self, context: grpc.aio.ServicerContext[Any, Any], exc: BaseException
    ) -> grpc.StatusCode:
        """Abort the RPC with the status for `exc`; returns the code used."""
        if isinstance(exc, ParleyError):
            trailers: tuple[tuple[str, str], ...] = ()
            if exc.retry_after_s is not None:
                trailers = ((RETRY_AFTER_TRAILER, f"{exc.retry_after_s:.3f}"),)
            await _abort(context, exc.code, exc.message, trailers)
            return exc.code
        if isinstance(exc, TimeoutError):
            await _abort(context, grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded", ())
            return grpc.StatusCode.DEADLINE_EXCEEDED
        logger.exception("unhandled error", extra={"method": self.method})
        await _abort(
            context,
            grpc.StatusCode.INTERNAL,
            f"internal error (request id {self.request_id})",
            (),
        )
        return grpc.StatusCode.INTERNAL


def status_for(exc: BaseException) -> grpc.StatusCode:
    if isinstance(exc, ParleyError):
        return exc.code
    if isinstance(exc, TimeoutError):
        return grpc.StatusCode.DEADLINE_EXCEEDED
    return grpc.StatusCode.INTERNAL


# A status message travels in the `grpc-message` trailer, percent-encoded (a non-ASCII
# character takes up to 12 bytes); past the peer's metadata limit (8-16 KiB) the caller gets
# RESOURCE_EXHAUSTED "metadata size exceeds limit" instead of the status. A message that echoes
# a caller's long value is cut well below that.
MAX_STATUS_MESSAGE_CHARS = 1000


def bounded_message(message: str) -> str:
    if len(message) <= MAX_STATUS_MESSAGE_CHARS:
        return message
    return message[: MAX_STATUS_MESSAGE_CHARS - 25] + "... (message truncated)"


async def _abort(
    context: grpc.aio.ServicerContext[Any, Any],
    code: grpc.StatusCode,
    message: str,
    trailers: tuple[tuple[str, str], ...],
) -> None:
    if trailers:
        context.set_trailing_metadata(trailers)
    # abort() raises AbortError, which grpc turns into the status.
    await context.abort(code, bounded_message(message))


def _aborted_code(context: grpc.aio.ServicerContext[Any, Any]) -> grpc.StatusCode:
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    return grpc.StatusCode.UNKNOWN


def _wrap_handler(handler: grpc.RpcMethodHandler, b: _Bound) -> grpc.RpcMethodHandler:
    default_deadline = b.icpt._default_deadline

    if handler.unary_unary or handler.stream_unary:
        inner = handler.unary_unary or handler.stream_unary

        async def unary_response(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            state = b.enter(context)
            code = grpc.StatusCode.OK
            try:
                try:
                    if default_deadline and context.time_remaining() is None:
                        async with asyncio.timeout(default_deadline):
                            return await inner(request, context)
                    return await inner(request, context)
                except grpc.aio.AbortError:
                    code = _aborted_code(context)
                    raise
                except asyncio.CancelledError:
                    code = grpc.StatusCode.CANCELLED
                    raise
                except Exception as exc:
                    code = status_for(exc)
                    await b.fail(context, exc)
                    raise
            finally:
                b.exit(state, code)

        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                unary_response, handler.request_deserializer, handler.response_serializer
            )
        return grpc.stream_unary_rpc_method_handler(
            unary_response, handler.request_deserializer, handler.response_serializer
        )

    inner_stream = handler.unary_stream or handler.stream_stream

    async def stream_response(
        request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        state = b.enter(context)
        code = grpc.StatusCode.OK
        result: Any = None
        try:
            try:
                result = inner_stream(request, context)
                if hasattr(result, "__aiter__"):
                    async for item in result:
                        yield item
                else:
                    await result
            except grpc.aio.AbortError:
                code = _aborted_code(context)
                raise
            except (asyncio.CancelledError, GeneratorExit):
                code = grpc.StatusCode.CANCELLED
                raise
            except Exception as exc:
                code = status_for(exc)
                await b.fail(context, exc)
        finally:
            # Close the handler's generator now (a cancelled call would otherwise leave its
            # `finally` to the garbage collector).
            if result is not None and hasattr(result, "aclose"):
                try:
                    await result.aclose()
                except (Exception, asyncio.CancelledError):
                    pass
            b.exit(state, code)

    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(
            stream_response, handler.request_deserializer, handler.response_serializer
        )
    return grpc.stream_stream_rpc_method_handler(
        stream_response, handler.request_deserializer, handler.response_serializer
    )


def _rejecting_handler(handler: grpc.RpcMethodHandler, exc: ParleyError) -> grpc.RpcMethodHandler:
    async def reject(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(exc.code, bounded_message(exc.message))

    des, ser = handler.request_deserializer, handler.response_serializer
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(reject, des, ser)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(reject, des, ser)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(reject, des, ser)
    return grpc.stream_stream_rpc_method_handler(reject, des, ser)


# ---------------------------------------------------------------------------------------------
# Client side


class _ClientBase:
    def __init__(self, *, signer: TokenSigner | None, audience: str = "parley") -> None:
        self._signer = signer
        self._audience = audience

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        md = grpc.aio.Metadata()
        if details.metadata:
            for key, value in details.metadata:
                md.add(key, value)
        tenant = md.get(TENANT_HEADER)
        if tenant is None:
            tenant = tenant_id_var.get()
            if tenant:
                md.add(TENANT_HEADER, tenant)
        if self._signer is not None and md.get("authorization") is None:
            token = self._signer.token(
                tenant=str(tenant) if tenant else None, audience=self._audience
            )
            md.add("authorization", f"Bearer {token}")
        if md.get(REQUEST_ID_HEADER) is None:
            md.add(REQUEST_ID_HEADER, request_id_var.get() or uuid.uuid4().hex)
        if trace.get_current_span().get_span_context().is_valid:
            carrier: dict[str, str] = {}
            propagate.inject(carrier)
            for key, value in carrier.items():
                md.add(key, value)
        timeout = details.timeout
        deadline = deadline_var.get()
        if deadline is not None:
            remaining = max(0.001, deadline - time.monotonic())
            timeout = remaining if timeout is None else min(timeout, remaining)
        return grpc.aio.ClientCallDetails(
            details.method, timeout, md, details.credentials, details.wait_for_ready
        )


class ParleyUnaryUnaryClientInterceptor(_ClientBase, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


class ParleyUnaryStreamClientInterceptor(_ClientBase, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


class ParleyStreamUnaryClientInterceptor(_ClientBase, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation: Any, details: Any, it: Any) -> Any:
        return await continuation(self._details(details), it)


class ParleyStreamStreamClientInterceptor(_ClientBase, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation: Any, details: Any, it: Any) -> Any:
        return await continuation(self._details(details), it)


def client_interceptors(
    signer: TokenSigner | None, audience: str = "parley"
) -> list[grpc.aio.ClientInterceptor]:
    return [
        ParleyUnaryUnaryClientInterceptor(signer=signer, audience=audience),
        ParleyUnaryStreamClientInterceptor(signer=signer, audience=audience),
        ParleyStreamUnaryClientInterceptor(signer=signer, audience=audience),
        ParleyStreamStreamClientInterceptor(signer=signer, audience=audience),
    ]
