#!/usr/bin/env bash
# Builds the Python SDK into a cached virtualenv and runs its tests against a
# real local stack. The venv is keyed by the hash of what goes into it.
set -euo pipefail
cd "$(dirname "$0")/.."

cache="${CACHE:-$HOME/.cache/runhouse-gateway}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$cache/target}"
key=$(cat sdk/pyproject.toml scripts/python-sdk.sh | sha256sum | cut -c1-16)
venv="$cache/venvs/sdk-$key"
if [ ! -x "$venv/bin/pytest" ]; then
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "maturin==1.16.0" "pytest==9.2.0"
fi
# `maturin develop` rebuilds the extension only when its sources changed.
(cd sdk && VIRTUAL_ENV="$venv" PATH="$venv/bin:$PATH" "$venv/bin/maturin" develop --quiet --locked)
if [ "${RH_SDK_RELEASE:-}" = 1 ]; then
    (cd sdk && VIRTUAL_ENV="$venv" PATH="$venv/bin:$PATH" "$venv/bin/maturin" develop --quiet --locked --release)
fi
[ $# -gt 0 ] || set -- tests/python
RH_BIN_DIR="${RH_BIN_DIR:-$CARGO_TARGET_DIR/debug}" "$venv/bin/pytest" -q -p no:cacheprovider "$@"
