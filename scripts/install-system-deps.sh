#!/usr/bin/env bash
# Debian packages the test-suite uses as real components:
#   prometheus      real Prometheus scraping the service + promtool for alert rules
#   docker-compose  `docker-compose config -q` validates docker-compose.yml (no engine needed)
#   nghttp2-client  h2load, the HTTP/2 load generator of `make bench` (bench/gateway.py)
#   redis-server    the fleet's shared Redis (tests/integration/test_shared_redis.py, the fleet test)
#   jq, curl        the FAQ's `curl | jq` shapes and the Terraform program (tests/e2e/test_compat.py)
#   openssl         signs the webhook ping of docs/self-hosting.md (tests/e2e/test_self_hosting_doc.py)
#   podman, buildah, mmdebstrap, runc
#                   the container images built from a local Debian base and run for real, no
#                   Docker engine or registry needed (tests/e2e/test_image.py, docs/containers.md)
# Idempotent: installs only what is missing. Needs root (CI runs as root); elsewhere it says
# what to install and the tests that need the tool skip with a reason (they fail when CI is set).
set -euo pipefail
declare -A tool_of=([prometheus]=prometheus [promtool]=prometheus [docker-compose]=docker-compose [h2load]=nghttp2-client [jq]=jq [curl]=curl [openssl]=openssl [redis-server]=redis-server [podman]=podman [buildah]=buildah [mmdebstrap]=mmdebstrap [runc]=runc)
missing=()
for tool in "${!tool_of[@]}"; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("${tool_of[$tool]}")
done
[ ${#missing[@]} -eq 0 ] && exit 0
mapfile -t packages < <(printf '%s\n' "${missing[@]}" | sort -u)
if [ "$(id -u)" -ne 0 ]; then
  echo "note: missing Debian packages: ${packages[*]} (run: sudo apt-get install ${packages[*]})" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
# The package may start a system Prometheus; tests run their own on free ports.
if command -v service >/dev/null 2>&1; then service prometheus stop >/dev/null 2>&1 || true; fi
# Likewise a system redis-server: tests start their own on free ports.
if command -v service >/dev/null 2>&1; then service redis-server stop >/dev/null 2>&1 || true; fi
