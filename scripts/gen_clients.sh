#!/usr/bin/env bash
# Regenerate the Go and TypeScript clients from proto/ (generated code is committed).
#
#   scripts/gen_clients.sh            # both
#   scripts/gen_clients.sh go|typescript
#
# Idempotent: with unchanged protos and pinned plugins the output is byte-identical,
# so CI can run it and then `git diff --exit-code clients/`.
# protoc is grpcio-tools' (pinned in pyproject.toml), run from .venv; the Go plugins are
# installed at pinned versions into .tools/bin; protoc-gen-es comes from clients/typescript's
# package-lock.json.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

PY="${PY:-$ROOT/.venv/bin/python}"
TOOLS="$ROOT/.tools/bin"
PROTOC_GEN_GO_VERSION="v1.36.12"
PROTOC_GEN_GO_GRPC_VERSION="v1.6.2"
GO_MODULE="github.com/octo-sts/octo-sts-python/clients/go"
WHAT="${1:-all}"

# The same include paths as scripts/gen_protos.py: our protos, googleapis-common-protos'
# google/api, grpcio-tools' well-known types.
read -r GOOGLEAPIS WELL_KNOWN < <("$PY" - <<'PY'
import pathlib, google.api, grpc_tools
print(pathlib.Path(next(iter(google.api.__path__))).parent.parent, pathlib.Path(grpc_tools.__file__).parent / "_proto")
PY
)
# octosts/gateway/ is Envoy's target for form POSTs, not an API clients call.
PROTOS=()
while IFS= read -r p; do PROTOS+=("$p"); done < <(cd proto && find . -name '*.proto' -not -path './octosts/gateway/*' | sed 's|^\./||' | LC_ALL=C sort)

protoc() {
  "$PY" -m grpc_tools.protoc -Iproto "-I$GOOGLEAPIS" "-I$WELL_KNOWN" "$@"
}

ensure_go_plugin() { # name module version
  local bin="$TOOLS/$1" want="$3"
  if [[ -x "$bin" ]] && "$bin" --version 2>/dev/null | grep -q -- "${want#v}"; then
    return
  fi
  command -v go >/dev/null || { echo "gen_clients: go is not installed" >&2; exit 1; }
  mkdir -p "$TOOLS"
  GOBIN="$TOOLS" go install "$2@$want"
}

gen_go() {
  ensure_go_plugin protoc-gen-go google.golang.org/protobuf/cmd/protoc-gen-go "$PROTOC_GEN_GO_VERSION"
  ensure_go_plugin protoc-gen-go-grpc google.golang.org/grpc/cmd/protoc-gen-go-grpc "$PROTOC_GEN_GO_GRPC_VERSION"
  rm -rf clients/go/octostsv1 clients/go/chainguardoidc
  protoc \
    "--plugin=protoc-gen-go=$TOOLS/protoc-gen-go" \
    "--plugin=protoc-gen-go-grpc=$TOOLS/protoc-gen-go-grpc" \
    --go_out=clients/go "--go_opt=module=$GO_MODULE" \
    --go-grpc_out=clients/go "--go-grpc_opt=module=$GO_MODULE" \
    "${PROTOS[@]}"
  echo "gen_clients: Go code in clients/go/{octostsv1,chainguardoidc}"
}

gen_typescript() {
  local dir=clients/typescript
  if [[ ! -x "$dir/node_modules/.bin/protoc-gen-es" ]]; then
    (cd "$dir" && npm ci --no-audit --no-fund)
  fi
  rm -rf "$dir/src/gen"
  mkdir -p "$dir/src/gen"
  # google/api/{annotations,http}.proto are generated too (the octosts.v1 descriptor imports them),
  # and google/rpc/error_details.proto to read the ErrorInfo (reason) in error details.
  protoc \
    "--plugin=protoc-gen-es=$dir/node_modules/.bin/protoc-gen-es" \
    "--es_out=$dir/src/gen" --es_opt=target=ts,import_extension=js \
    "${PROTOS[@]}" google/api/annotations.proto google/api/http.proto google/rpc/error_details.proto
  echo "gen_clients: TypeScript code in $dir/src/gen"
}

case "$WHAT" in
  all) gen_go; gen_typescript ;;
  go) gen_go ;;
  typescript|ts) gen_typescript ;;
  *) echo "usage: $0 [all|go|typescript]" >&2; exit 2 ;;
esac
