#!/usr/bin/env bash
# Install Debian's PyPy (pypy3, Python 3.9) and make a PyPy venv with wove_h2grpc and its
# test dependencies, without grpcio.
#
#   .ci/install-pypy.sh VENV_DIR
#
# - pypy3-venv carries ensurepip, without which 'pypy3 -m venv' cannot make a venv with pip.
# - '.[test]' on PyPy: the test extra's grpcio marker (CPython only) leaves grpcio out;
#   grpcio publishes no PyPy wheels and its source build is not what this lane tests.
# - cryptography<44 (for trustme): 43.0.3 is the last release with a PyPy 3.9 wheel
#   (pp39-pypy39_pp73 manylinux); newer releases are sdists for PyPy 3.9 and need a Rust
#   build. --only-binary makes that a fast, clear failure instead of a long build.
# - msgpack installs its pure-Python fallback where no compiled module fits; either is fine.
set -euo pipefail

venv="${1:?usage: install-pypy.sh VENV_DIR}"
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! command -v pypy3 >/dev/null 2>&1 || ! pypy3 -c 'import ensurepip' >/dev/null 2>&1; then
    if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
    echo "install-pypy: apt-get install pypy3 pypy3-venv"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
        pypy3 pypy3-venv >/dev/null
fi
pypy3 --version

pypy3 -m venv --clear "$venv"
# (the grep hides warnings about absent local index folders that some machines configure)
"$venv/bin/python" -m pip install -q '.[test]' 'cryptography<44' --only-binary cryptography 2>&1 \
    | { grep -v 'is ignored: it is neither a file nor a directory' || true; }
"$venv/bin/python" - <<'PYEOF'
import platform
from importlib.metadata import version

names = ("h2", "wove", "cryptography", "trustme", "msgpack", "pytest", "pytest-asyncio")
print(
    f"install-pypy: {platform.python_implementation()} {platform.python_version()}:",
    ", ".join(f"{n} {version(n)}" for n in names),
)
PYEOF
