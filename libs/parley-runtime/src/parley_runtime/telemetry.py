"""OpenTelemetry tracing configured from the standard OTEL_* variables.

`OTEL_TRACES_EXPORTER` picks the exporter (`otlp`, `console` or `none`); when it is unset, spans
are exported over OTLP/gRPC if `OTEL_EXPORTER_OTLP_ENDPOINT` is set. Without an exporter, spans
are not recorded (a parent-based sampler that samples nothing of its own: a span costs ~15 µs
instead of ~37), but they still carry trace ids, so ids reach the logs and propagate across gRPC
hops; a request arriving with a sampled parent is still recorded, so a chain of services some
of which export keeps its traces whole.
"""

from __future__ import annotations

import logging
import os

from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased

logger = logging.getLogger(__name__)
_configured = False
_exporting = False


def configure_tracing(service_name: str) -> None:
    global _configured, _exporting
    if _configured:
        return
    _configured = True
    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", service_name)})
    exporter_name = os.environ.get("OTEL_TRACES_EXPORTER")
    if exporter_name is None:
        exporter_name = "otlp" if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") else "none"
    _exporting = exporter_name in ("otlp", "console")
    # exporting: the standard OTEL_TRACES_SAMPLER choice (default: every root span)
    provider = (
        TracerProvider(resource=resource)
        if _exporting
        else TracerProvider(resource=resource, sampler=ParentBased(root=ALWAYS_OFF))
    )
    if exporter_name == "otlp":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    elif exporter_name == "console":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    trace.set_tracer_provider(provider)
    logger.debug("tracing configured", extra={"exporter": exporter_name})


def exporting_traces() -> bool:
    """Whether configure_tracing set up an exporter (spans recorded here go somewhere).

    Lets a service skip optional, purely diagnostic spans (e.g. an SDK's own) when they would
    only be recorded and dropped.
    """
    return _exporting


def tracer() -> trace.Tracer:
    return trace.get_tracer("parley")


def inject(carrier: dict[str, str]) -> None:
    propagate.inject(carrier)


def extract(carrier: dict[str, str]) -> object:
    return propagate.extract(carrier)
