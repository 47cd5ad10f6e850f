#!/usr/bin/env bash
# Runs the Airflow provider's tests and the dashboard's browser tests against
# a real Airflow, headless Chromium and one real local stack (the `rh_stack`
# plugin in tests/support). Airflow, Playwright, pytest and the provider live
# in a cached venv keyed by the hash of what goes into it; the SDK is used
# from this checkout (a .pth file pointing at sdk/python, whose native
# extension is already built), so nothing here compiles Rust. Chromium is
# Debian's package, installed with apt when missing (Playwright's own browser
# downloads need the internet).
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"

cache="${CACHE:-$HOME/.cache/runhouse-gateway}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$cache/target}"
python="${PYTHON:-python3.11}"
shopt -s nullglob
key=$(cat providers/airflow/pyproject.toml scripts/airflow.sh providers/airflow/requirements*.txt | sha256sum | cut -c1-16)
shopt -u nullglob
venv="$cache/venvs/airflow-$key"
if [ ! -f "$venv/.ready" ]; then
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check \
        "apache-airflow==3.3.2" "pytest==9.2.0" "setuptools>=69" "playwright==1.65.2"
    touch "$venv/.ready"
fi
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
# The provider is installed editable from this checkout (its entry point is
# how Airflow finds it); reinstall when the venv last saw another checkout.
if [ "$(cat "$venv/.provider-src" 2>/dev/null)" != "$repo" ]; then
    "$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps --no-build-isolation \
        -e providers/airflow
    echo "$repo" > "$venv/.provider-src"
fi
echo "$repo/sdk/python" > "$site/runhouse_gateway_sdk.pth"

if ! command -v chromium >/dev/null 2>&1 && [ -z "${RH_CHROMIUM:-}" ]; then
    if [ "$(id -u)" = 0 ]; then
        echo "installing Debian's chromium for the dashboard's browser tests"
        (apt-get install -y -qq chromium >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq chromium; }) >/dev/null
    else
        echo "the dashboard tests need Chromium: run 'sudo apt-get install -y chromium' (or set RH_CHROMIUM)" >&2
        exit 1
    fi
fi

# Run tests/airflow and tests/dashboard unless a test path is given (options such as -k or -x alone keep the default).
paths=0
for arg in "$@"; do [ -e "${arg%%::*}" ] && paths=1; done
[ "$paths" = 1 ] || set -- "$@" tests/airflow tests/dashboard
export RH_BIN_DIR="${RH_BIN_DIR:-$CARGO_TARGET_DIR/debug}"
export PYTHONPATH="$repo/tests/support${PYTHONPATH:+:$PYTHONPATH}"
exec "$venv/bin/pytest" -q -p no:cacheprovider -p rh_stack -p rh_browser "$@"
