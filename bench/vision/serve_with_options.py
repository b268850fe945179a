"""Runs vision-svc with extra gRPC server options (bench only).

GrpcServiceHost has no way to pass server channel options yet; this wrapper adds them to
grpc.aio.server() to measure what the proposed runtime option would change, e.g.
    EXTRA_GRPC_SERVER_OPTIONS='[["grpc.http2.bdp_probe", 0]]' python serve_with_options.py
"""

from __future__ import annotations

import json
import os
import runpy
import sys
from typing import Any

import grpc

_EXTRA = [tuple(o) for o in json.loads(os.environ.get("EXTRA_GRPC_SERVER_OPTIONS", "[]"))]
_server = grpc.aio.server


def _with_options(*args: Any, options: Any = None, **kwargs: Any) -> Any:
    return _server(*args, options=[*(options or ()), *_EXTRA], **kwargs)


grpc.aio.server = _with_options
sys.argv = ["parley_vision"]
runpy.run_module("parley_vision", run_name="__main__")
