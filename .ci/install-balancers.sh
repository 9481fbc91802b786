#!/usr/bin/env bash
# Install Debian's nginx and HAProxy for the load-balancer tests, and h2load (nghttp2-client)
# for the benchmark harness's server-load section and its tests.
#
# Only the binaries are needed: the tests run each balancer as a foreground process on
# loopback with its own prefix and config (see .ci/balancers.md). The Debian packages try to
# start system services on install; in containers policy-rc.d refuses that, and we stop
# nothing we did not start. Idempotent: does nothing when all three are already installed.
set -euo pipefail
# Debian installs both into /usr/sbin, which a non-login or non-root PATH may lack.
case ":$PATH:" in *:/usr/sbin:*) ;; *) PATH="$PATH:/usr/sbin" ;; esac

need=()
command -v nginx >/dev/null 2>&1 || need+=(nginx)
command -v haproxy >/dev/null 2>&1 || need+=(haproxy)
command -v h2load >/dev/null 2>&1 || need+=(nghttp2-client)

if [ "${#need[@]}" -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        SUDO=sudo
    else
        SUDO=
    fi
    echo "install-balancers: apt-get install ${need[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
        "${need[@]}" >/dev/null
fi

nginx_version="$(nginx -v 2>&1)"
haproxy_version="$(haproxy -v 2>&1 | sed -n 1p)"
h2load_version="$(h2load --version 2>&1 | sed -n 1p)"
echo "install-balancers: $(command -v nginx) ($nginx_version); $(command -v haproxy) ($haproxy_version); $(command -v h2load) ($h2load_version)"
