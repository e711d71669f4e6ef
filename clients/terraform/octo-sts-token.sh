#!/bin/sh
# Terraform `external` data source program: exchange a workload OIDC token for a GitHub token.
#
#   data "external" "github_token" {
#     program = ["sh", "${path.module}/octo-sts-token.sh"]
#     query = {
#       endpoint   = "https://sts.example.com"
#       scope      = "my-org/my-repo"
#       identity   = "terraform"
#       token_file = "/var/run/secrets/tokens/octo-sts"   # or token_env = "OIDC_TOKEN"
#       # ca_file  = "ca.pem"   audience = "sts.example.com"   (optional)
#     }
#   }
#   provider "github" { token = data.external.github_token.result.token }
#
# The query arrives on stdin as a JSON object of strings; the answer is a flat JSON object of
# strings on stdout (`external` accepts nothing else): token, token_type, expires_at, expires_in.
# Errors go to stderr with a non-zero exit, which Terraform shows. The OIDC token is handed to
# curl on stdin (--config -), never on its command line, where `ps` would show it.
# Needs: curl, jq.
set -eu

fail() {
  printf 'octo-sts-token: %s\n' "$*" >&2
  exit 1
}

command -v jq >/dev/null 2>&1 || fail "jq is required"
command -v curl >/dev/null 2>&1 || fail "curl is required"

query=$(head -c 65536)
printf '%s' "$query" | jq -e 'type == "object"' >/dev/null 2>&1 || fail "the query on stdin must be a JSON object"
field() {
  printf '%s' "$query" | jq -r --arg k "$1" '.[$k] // "" | tostring'
}

endpoint=$(field endpoint)
scope=$(field scope)
identity=$(field identity)
token_file=$(field token_file)
token_env=$(field token_env)
ca_file=$(field ca_file)
audience=$(field audience)

[ -n "$endpoint" ] || fail "query.endpoint is required"
[ -n "$scope" ] || fail "query.scope is required"
[ -n "$identity" ] || fail "query.identity is required"
case "$endpoint" in
  https://* | http://*) ;;
  *) fail "query.endpoint must start with https:// or http://" ;;
esac

if [ -n "$token_file" ]; then
  [ -r "$token_file" ] || fail "cannot read token_file $token_file"
  oidc=$(head -c 16384 "$token_file" | tr -d ' \t\r\n')
elif [ -n "$token_env" ]; then
  case "$token_env" in
    *[!A-Za-z0-9_]* | [0-9]*) fail "token_env must be a variable name" ;;
  esac
  oidc=$(printenv "$token_env" | tr -d ' \t\r\n') || fail "environment variable $token_env is not set"
else
  fail "query.token_file or query.token_env is required"
fi
[ -n "$oidc" ] || fail "the OIDC token is empty"
case "$oidc" in
  *[!A-Za-z0-9._-]*) fail "the OIDC token is not a JWT" ;;
esac

body=$(mktemp)
trap 'rm -f "$body"' EXIT

set -- --silent --show-error --config - --max-time 30 --max-filesize 262144 \
  --proto '=https,http' --get --output "$body" --write-out '%{http_code}' \
  --data-urlencode "scope=$scope" --data-urlencode "identity=$identity"
[ -z "$audience" ] || set -- "$@" --data-urlencode "audience=$audience"
[ -z "$ca_file" ] || set -- "$@" --cacert "$ca_file"

status=$(printf 'header = "Authorization: Bearer %s"\n' "$oidc" |
  curl "$@" "${endpoint%/}/sts/exchange") || fail "cannot reach $endpoint"

if [ "$status" != 200 ]; then
  detail=$(head -c 262144 "$body" | jq -r '[.message, (.details[0].metadata.request_id // .request_id // empty)] | map(select(. != null)) | join(" request_id=")' 2>/dev/null) ||
    detail=$(head -c 300 "$body")
  fail "HTTP $status: $detail"
fi

head -c 262144 "$body" | jq -ce '
  if (.token | type) == "string" and (.token | length) > 0 then
    {token: .token, token_type: (.token_type // "Bearer"), expires_at: (.expires_at // ""),
     expires_in: ((.expires_in // "") | tostring)}
  else error("no token in the response") end' 2>/dev/null || fail "the response carries no token"
