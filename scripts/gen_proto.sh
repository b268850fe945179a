#!/usr/bin/env bash
# Regenerates the Python stubs (+ .pyi type stubs) from proto/ into libs/parley-proto/src.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${PYTHON:-$ROOT/.venv/bin/python}
export PATH="$ROOT/.venv/bin:$PATH"
OUT=libs/parley-proto/src
find "$OUT/parley" -name '*_pb2*.py*' -delete 2>/dev/null || true
mapfile -t PROTOS < <(cd proto && find parley -name '*.proto' | sort)
(cd proto && "$PY" -m grpc_tools.protoc -I. \
  --python_out="../$OUT" --pyi_out="../$OUT" --grpc_python_out="../$OUT" \
  --mypy_grpc_out="../$OUT" "${PROTOS[@]}")
# make every generated folder a regular package
find "$OUT/parley" -type d -exec sh -c 'test -f "$1/__init__.py" || : > "$1/__init__.py"' _ {} \;
touch "$OUT/parley/py.typed"
