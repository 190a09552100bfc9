#!/usr/bin/env bash
# Installs what the test suite needs beyond Go and ClickHouse, non-interactively: Debian's
# chromium (browser test) and docker-compose (compose file validation), and the npm packages
# of tools/chdb and tools/browser. Idempotent; used by `make test`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

sudo=()
if [ "$(id -u)" -ne 0 ]; then sudo=(sudo -n); fi

missing=()
command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ] || missing+=(chromium)
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
command -v node >/dev/null 2>&1 || missing+=(nodejs npm)
if [ ${#missing[@]} -gt 0 ]; then
    echo "test-deps: installing ${missing[*]} from Debian" >&2
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

for tool in chdb browser; do
    dir="$ROOT/tools/$tool"
    stamp="$dir/node_modules/.installed"
    if [ ! -f "$stamp" ] || [ "$dir/package-lock.json" -nt "$stamp" ]; then
        echo "test-deps: npm ci in tools/$tool" >&2
        npm ci --prefix "$dir" --no-audit --no-fund --loglevel=error
        touch "$stamp"
    fi
done
