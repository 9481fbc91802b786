#!/usr/bin/env bash
# Install grpc-js (@grpc/grpc-js and @grpc/proto-loader, pinned by tests/grpcjs/package-lock.json)
# into tests/grpcjs/node_modules, for the grpc-js interop tests (tests/test_interop_grpcjs.py).
#
# Node and npm come from Debian's packages (nodejs, npm) when they are not on PATH already.
# The packages come from the npm registry through `npm ci`: exactly the lock file's versions,
# no install scripts run. Idempotent: does nothing when node_modules already matches the lock.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../tests/grpcjs"

need=()
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)
if [ "${#need[@]}" -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
    echo "install-grpcjs: apt-get install ${need[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
        "${need[@]}" >/dev/null
fi
for tool in node npm; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "install-grpcjs: ERROR: $tool is not on PATH (and apt did not provide it)" >&2
        exit 1
    fi
done
node_major="$(node -p 'process.versions.node.split(".")[0]')"
if [ "$node_major" -lt 18 ]; then
    echo "install-grpcjs: ERROR: node $(node --version) is too old; @grpc/grpc-js needs >= 18" >&2
    exit 1
fi

# npm ci leaves node_modules/.package-lock.json, a copy of the lock's package list: when it
# matches, the tree is already what the lock file says.
if [ -f node_modules/.package-lock.json ] &&
    node -e '
        const want = require("./package-lock.json").packages, have = require("./node_modules/.package-lock.json").packages;
        const v = (p) => Object.fromEntries(Object.entries(p).filter(([k]) => k).map(([k, e]) => [k, e.version]));
        process.exit(JSON.stringify(v(want)) === JSON.stringify(v(have)) ? 0 : 1);
    '; then
    echo "install-grpcjs: node_modules already matches package-lock.json"
else
    npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
fi

versions="$(node -p 'const v = (n) => require(n + "/package.json").version; `@grpc/grpc-js ${v("@grpc/grpc-js")}, @grpc/proto-loader ${v("@grpc/proto-loader")}`')"
echo "install-grpcjs: $(command -v node) ($(node --version)), npm $(npm --version); $versions"
