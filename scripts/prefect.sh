#!/usr/bin/env bash
# Runs the shim generator's tests and the Prefect integration's tests against
# a real Prefect server and a real local stack. Prefect, pytest and the
# integration live in a cached venv keyed by the hash of what goes into it;
# the SDK is used from this checkout (a .pth file pointing at sdk/python,
# whose native extension is already built), so nothing here compiles Rust.
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"

cache="${CACHE:-$HOME/.cache/runhouse-gateway}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$cache/target}"
python="${PYTHON:-python3.11}"
pins='"prefect==3.9.1" "pytest==9.2.0" "setuptools>=75"'
key=$(echo "$pins" | cat - providers/prefect/pyproject.toml | sha256sum | cut -c1-16)
venv="$cache/venvs/prefect-$key"
if [ ! -f "$venv/.ready" ]; then
    rm -rf "$venv"
    "$python" -m venv "$venv"
    eval "\"$venv/bin/pip\" install --quiet --disable-pip-version-check $pins"
    touch "$venv/.ready"
fi
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
if [ "$(cat "$venv/.provider-src" 2>/dev/null)" != "$repo" ]; then
    "$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e providers/prefect
    echo "$repo" > "$venv/.provider-src"
fi
echo "$repo/sdk/python" > "$site/runhouse_gateway_sdk.pth"

paths=0
for arg in "$@"; do [ -e "${arg%%::*}" ] && paths=1; done
[ "$paths" = 1 ] || set -- "$@" tests/shims tests/prefect
export RH_BIN_DIR="${RH_BIN_DIR:-$CARGO_TARGET_DIR/debug}"
exec "$venv/bin/pytest" -q -p no:cacheprovider "$@"
