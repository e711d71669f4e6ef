#!/usr/bin/env bash
# Build Helm (helm.sh/helm/v3) into .tools/bin/helm, once per pinned version: the chart tests
# (tests/integration/test_helm_chart.py, deploy/helm/octo-sts) run `helm lint` and
# `helm template` with it. A few minutes on a cold Go cache; a no-op when the pinned
# version is already there. Prints the binary's path.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VERSION="v3.22.0"
PACKAGE="helm.sh/helm/v3/cmd/helm"
TOOLS="$ROOT/.tools/bin"
BIN="$TOOLS/helm"
STAMP="$BIN.version"

if [[ -x "$BIN" && -f "$STAMP" && "$(cat "$STAMP")" == "$VERSION" ]]; then
  echo "$BIN"
  exit 0
fi
command -v go >/dev/null || { echo "install-helm: go is not installed" >&2; exit 1; }
mkdir -p "$TOOLS"
build="$(mktemp -d)"
trap 'rm -rf "$build"' EXIT
GOBIN="$build" go install -trimpath -ldflags="-s -w" "$PACKAGE@$VERSION" >&2
mv "$build/helm" "$BIN"
echo "$VERSION" >"$STAMP"
echo "install-helm: $BIN ($VERSION)" >&2
echo "$BIN"
