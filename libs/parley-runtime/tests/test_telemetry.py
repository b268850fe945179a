"""Tracing set-up: what is recorded with and without an exporter (each case in a fresh
interpreter, since a process sets its tracer provider once)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.unit

PROBE = r"""
import json
from opentelemetry import propagate, trace
from parley_runtime.telemetry import configure_tracing, exporting_traces, tracer

configure_tracing("probe")
out = {"exporting": exporting_traces()}
with tracer().start_as_current_span("root") as span:
    ctx = span.get_span_context()
    out["root"] = {"recording": span.is_recording(), "valid": ctx.is_valid,
                   "trace_id": format(ctx.trace_id, "032x")}
    carrier = {}
    propagate.inject(carrier)
    out["propagated"] = carrier.get("traceparent", "")
parent = propagate.extract({"traceparent": "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"})
with tracer().start_as_current_span("child", context=parent) as span:
    out["sampled_parent"] = {"recording": span.is_recording(),
                             "trace_id": format(span.get_span_context().trace_id, "032x")}
print("PROBE " + json.dumps(out), flush=True)
"""


def probe(**env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    run = subprocess.run([sys.executable, "-c", PROBE], env={**clean, **env},
                         capture_output=True, text=True, timeout=60, check=True)
    line = next(x for x in run.stdout.splitlines() if x.startswith("PROBE "))
    return json.loads(line[len("PROBE "):])


def test_without_an_exporter_spans_are_not_recorded_but_carry_trace_ids() -> None:
    out = probe()
    assert out["exporting"] is False
    assert out["root"]["recording"] is False
    assert out["root"]["valid"] and out["root"]["trace_id"] != "0" * 32
    assert out["root"]["trace_id"] in out["propagated"]  # still propagates across hops
    # a caller that samples gets its trace recorded here too
    assert out["sampled_parent"] == {"recording": True, "trace_id": "ab" * 16}


def test_with_an_exporter_every_root_span_is_recorded() -> None:
    out = probe(OTEL_TRACES_EXPORTER="console")
    assert out["exporting"] is True
    assert out["root"]["recording"] is True
