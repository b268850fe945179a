#!/usr/bin/env bash
# Sets up everything Parley needs on a fresh machine; fast when already done.
# Slow artefacts are cached outside the clone (uv's cache, ~/.cache/parley/tools/<tool>-<version>).
set -euo pipefail
cd "$(dirname "$0")/.."
export PARLEY_CACHE_DIR="${PARLEY_CACHE_DIR:-$HOME/.cache/parley}"
UV_VERSION=0.13.9
step() { printf '\n==> %s\n' "$*"; }

if ! command -v uv >/dev/null 2>&1; then
  step "installing uv $UV_VERSION"
  python3 -m pip install -q "uv==$UV_VERSION"
fi

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v espeak-ng >/dev/null 2>&1 || missing+=(espeak-ng)
[ -x /usr/bin/chromium ] || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
  step "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q "${missing[@]}" >/dev/null 2>&1 || {
    apt-get update -q >/dev/null && apt-get install -y -q "${missing[@]}" >/dev/null; }
fi

step "python workspace (uv sync --frozen)"
uv sync --all-packages --frozen

step "vision-svc kernels (numba: compiled once, cached beside the sources)"
.venv/bin/python -c "from parley_vision.kernels import warm_up; warm_up()"

step "livekit-server (go install, cached in $PARLEY_CACHE_DIR/tools)"
.venv/bin/python -c "from parley_devstack.livekit import ensure_livekit_server as e; print(e())"

if [ -x scripts/deploy/ensure-helm.sh ]; then
  step "helm (go install, cached)"
  scripts/deploy/ensure-helm.sh
fi
echo "setup done"
