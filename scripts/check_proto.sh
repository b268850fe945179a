#!/usr/bin/env bash
# Fails when the committed stubs differ from a fresh generation, or buf lint complains.
set -euo pipefail
cd "$(dirname "$0")/.."
(cd proto && ../.venv/bin/buf lint)
(cd proto && ../.venv/bin/buf format -d --exit-code) || { echo "run: (cd proto && buf format -w)"; exit 1; }
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
cp -r libs/parley-proto/src "$tmp/before"
./scripts/gen_proto.sh >/dev/null 2>&1
if ! diff -r "$tmp/before" libs/parley-proto/src >/dev/null; then
  diff -r "$tmp/before" libs/parley-proto/src | head -20
  echo "generated stubs are stale: run scripts/gen_proto.sh and commit the result" >&2
  exit 1
fi
echo "proto: lint clean, stubs up to date"
