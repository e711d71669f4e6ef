#!/usr/bin/env bash
# Build the Envoy global rate-limit service (github.com/envoyproxy/ratelimit, Go) into
# .tools/bin/ratelimit, once per pinned version: the per-tenant rate limits' tests and
# `octo-sts dev stack --tenant-limits` run it (docs/deploy.md). ~1 min on a cold Go cache;
# a no-op when the pinned version is already there.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# The project publishes no tags: a pseudo-version of its main branch (2026-01-22).
VERSION="v1.4.1-0.20260122083618-3fb702589d36"
PACKAGE="github.com/envoyproxy/ratelimit/src/service_cmd"
TOOLS="$ROOT/.tools/bin"
BIN="$TOOLS/ratelimit"
STAMP="$BIN.version"

if [[ -x "$BIN" && -f "$STAMP" && "$(cat "$STAMP")" == "$VERSION" ]]; then
  exit 0
fi
command -v go >/dev/null || { echo "install-ratelimit: go is not installed" >&2; exit 1; }
mkdir -p "$TOOLS"
build="$(mktemp -d)"
trap 'rm -rf "$build"' EXIT
GOBIN="$build" go install -trimpath -ldflags="-s -w" "$PACKAGE@$VERSION"
mv "$build/service_cmd" "$BIN"
echo "$VERSION" >"$STAMP"
echo "install-ratelimit: $BIN ($VERSION)"
