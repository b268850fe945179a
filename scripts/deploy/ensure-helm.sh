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

# The Go toolchain: $GO if set, else `go` on PATH, else the usual install locations.
go_bin="${GO:-}"
if [[ -z "${go_bin}" ]]; then
  go_bin="$(command -v go 2>/dev/null || true)"
  for candidate in /usr/local/go/bin/go /usr/lib/go/bin/go; do
    if [[ -z "${go_bin}" && -x "${candidate}" ]]; then go_bin="${candidate}"; fi
  done
fi
if [[ -z "${go_bin}" || ! -x "${go_bin}" ]]; then
  echo "ensure-helm: helm ${HELM_VERSION} is not at ${HELM_BIN} and no Go toolchain was found" >&2
  echo "ensure-helm: install Go (https://go.dev/dl), set GO=/path/to/go, or put helm there" >&2
  exit 1
fi

mkdir -p "${DEST_DIR}"
# Serialise concurrent callers (parallel test workers) on one lock per version.
exec 9>"${DEST_DIR}.lock"
flock 9
if [[ ! -x "${HELM_BIN}" ]]; then
  echo "ensure-helm: building helm ${HELM_VERSION} with $("${go_bin}" version) (takes a few minutes)" >&2
  # Build into a scratch dir and move into place so a half-built binary is never picked up.
  scratch="$(mktemp -d "${DEST_DIR}.build.XXXXXX")"
  trap 'rm -rf "${scratch}"' EXIT
  # The ldflags helm's own Makefile sets: without them the binary reports a bare "v3.19" and
  # defaults to Kubernetes 1.20 for `helm template`/`lint` (callers here pass --kube-version).
  k8s_minor="${HELM_K8S_MINOR:-34}"  # client-go v0.34 in helm v3.19's go.mod
  ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=${HELM_VERSION}"
  for pkg in helm.sh/helm/v3/pkg/chartutil helm.sh/helm/v3/pkg/lint/rules; do
    ldflags+=" -X ${pkg}.k8sVersionMajor=1 -X ${pkg}.k8sVersionMinor=${k8s_minor}"
  done
  CGO_ENABLED=0 GOBIN="${scratch}" \
    "${go_bin}" install -trimpath -ldflags "${ldflags}" "helm.sh/helm/v3/cmd/helm@${HELM_VERSION}" >&2
  mv "${scratch}/helm" "${HELM_BIN}"
fi
"${HELM_BIN}" version --short >&2
echo "${HELM_BIN}"
