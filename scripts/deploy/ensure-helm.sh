#!/usr/bin/env bash
# Print the path of a helm binary of the pinned version, building it first if it is missing.
#
#   HELM="$(scripts/deploy/ensure-helm.sh)"
#
# The binary is cached per version under ${PARLEY_TOOLS_DIR:-$HOME/.cache/parley/tools}/helm-<ver>/,
# so running this again is free and a version bump gets a fresh directory. Helm is built from its
# Go module (no release tarball download needed): only the Go toolchain and the Go module proxy.
# Logs go to stderr; stdout carries only the path.
set -euo pipefail

HELM_VERSION="${HELM_VERSION:-v3.19.0}"
TOOLS_DIR="${PARLEY_TOOLS_DIR:-${HOME}/.cache/parley/tools}"
DEST_DIR="${TOOLS_DIR}/helm-${HELM_VERSION}"
HELM_BIN="${DEST_DIR}/helm"

# A binary that runs and reports the wanted version counts as installed. (`go install` leaves the
# version field of a module build as "v3.19", hence the prefix match on major.minor.)
want_minor="${HELM_VERSION%.*}"
if [[ -x "${HELM_BIN}" ]] && "${HELM_BIN}" version --template '{{.Version}}' 2>/dev/null \
    | grep -q "^${want_minor}"; then
  echo "${HELM_BIN}"
  exit 0
fi

if ! command -v go >/dev/null 2>&1; then
  for candidate in /usr/local/go/bin/go /usr/lib/go/bin/go; do
    if [[ -x "${candidate}" ]]; then PATH="$(dirname "${candidate}"):${PATH}"; break; fi
  done
fi
if ! command -v go >/dev/null 2>&1; then
  echo "ensure-helm: helm ${HELM_VERSION} is not at ${HELM_BIN} and no Go toolchain was found" >&2
  echo "ensure-helm: install Go (https://go.dev/dl) or put helm there yourself" >&2
  exit 1
fi

mkdir -p "${DEST_DIR}"
# Serialise concurrent callers (parallel test workers) on one lock per version.
exec 9>"${DEST_DIR}.lock"
flock 9
if [[ ! -x "${HELM_BIN}" ]]; then
  echo "ensure-helm: building helm ${HELM_VERSION} with $(go version) (takes a few minutes)" >&2
  # Build into a scratch dir and move into place so a half-built binary is never picked up.
  scratch="$(mktemp -d "${DEST_DIR}.build.XXXXXX")"
  trap 'rm -rf "${scratch}"' EXIT
  CGO_ENABLED=0 GOBIN="${scratch}" GOFLAGS="${GOFLAGS:-} -trimpath" \
    go install "helm.sh/helm/v3/cmd/helm@${HELM_VERSION}" >&2
  mv "${scratch}/helm" "${HELM_BIN}"
fi
"${HELM_BIN}" version --short >&2
echo "${HELM_BIN}"
