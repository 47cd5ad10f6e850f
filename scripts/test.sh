#!/usr/bin/env bash
# The whole check suite, as `make test` and CI run it. Prints each phase's duration.
set -euo pipefail
cd "$(dirname "$0")/.."

cache="${CACHE:-$HOME/.cache/runhouse-gateway}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$cache/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
sqlx_version="0.8.6"
sqlx_root="$cache/tools/sqlx-cli-$sqlx_version"
export PATH="$sqlx_root/bin:$PATH"

summary=()
phase() {
    local name=$1; shift
    local start=$SECONDS
    echo "==> $name"
    "$@"
    local took=$((SECONDS - start))
    echo "<== $name: ${took}s"
    summary+=("$(printf '%5ss  %s' "$took" "$name")")
}

install_sqlx() {
    if ! "$sqlx_root/bin/sqlx" --version 2>/dev/null | grep -q "$sqlx_version"; then
        cargo install sqlx-cli --version "=$sqlx_version" --locked --no-default-features \
            --features postgres,rustls --root "$sqlx_root"
    fi
}

with_pg="$CARGO_TARGET_DIR/debug/rh-with-postgres"

phase "install sqlx-cli (cached)" install_sqlx
fmt_check() {
    cargo fmt --all --check && cargo fmt --manifest-path sdk/python/Cargo.toml --check
}
phase "cargo fmt --check" fmt_check
phase "cargo build (all targets)" cargo build --workspace --all-targets --locked
# The end-to-end tests run the binaries just built instead of building again.
export RH_E2E_BUILT=1
clippy() {
    cargo clippy --workspace --all-targets --locked -- -D warnings &&
        cargo clippy --manifest-path sdk/python/Cargo.toml --locked -- -D warnings
}
phase "cargo clippy -D warnings" clippy
phase "sqlx prepare --check" "$with_pg" -- sh -c \
    'sqlx migrate run --source migrations >/dev/null && cargo sqlx prepare --workspace --check -- --all-targets'
# moto's EC2 server for the aws provider tests, in a venv keyed by its pin.
moto_pin="moto[server]==5.2.1"
moto_venv="$cache/venvs/moto-$(echo "$moto_pin" | sha256sum | cut -c1-12)"
install_moto() {
    if [ ! -x "$moto_venv/bin/moto_server" ]; then
        rm -rf "$moto_venv"
        python3 -m venv "$moto_venv"
        "$moto_venv/bin/pip" install --quiet --disable-pip-version-check "$moto_pin"
    fi
}
phase "install moto (cached venv)" install_moto
export RH_MOTO_SERVER="$moto_venv/bin/moto_server"
# Wheels of what notebook entry points need (nbclient, ipykernel), downloaded
# once into a folder keyed by the pins; test nodes install from it, offline.
notebook_wheels="$cache/wheels/notebook-$(sha256sum tests/notebook-requirements.txt | cut -c1-12)"
download_notebook_wheels() {
    if [ ! -f "$notebook_wheels/.complete" ]; then
        rm -rf "$notebook_wheels"
        python3 -m pip download --quiet --disable-pip-version-check --dest "$notebook_wheels" \
            --only-binary=:all: -r tests/notebook-requirements.txt
        touch "$notebook_wheels/.complete"
    fi
}
phase "download notebook wheels (cached)" download_notebook_wheels
export RH_NOTEBOOK_WHEELS="$notebook_wheels"
# The notebook test's node keeps the environment it installs from them here
# between runs, keyed by the pins and the Python: a folder the node's
# unprivileged worker user can read (not under $HOME).
export RH_NOTEBOOK_ENVS="/var/tmp/runhouse-gateway/node-envs-$( (cat tests/notebook-requirements.txt; python3 --version) | sha256sum | cut -c1-12)"
test_log="$(mktemp)"
hostile_log="$(mktemp)"
hostile_pid=""
cleanup() {
    if [ -n "$hostile_pid" ]; then kill "$hostile_pid" 2>/dev/null || true; fi
    rm -f "$test_log" "$hostile_log"
}
trap cleanup EXIT
# The hostile-input phase (schemathesis against its own `rh-gateway dev`, for
# a fixed time) runs beside the cargo tests, which leave most of a core idle
# while their real processes work; its output is shown when it is waited for.
./scripts/schemathesis.sh >"$hostile_log" 2>&1 &
hostile_pid=$!
run_tests() {
    "$with_pg" -- cargo test --workspace --locked 2>&1 | tee "$test_log"
}
phase "cargo test (unit, API, OpenAPI drift, end-to-end, README walkthrough)" run_tests
wait_hostile() {
    local rc=0
    wait "$hostile_pid" || rc=$?
    hostile_pid=""
    cat "$hostile_log"
    return "$rc"
}
# Its generated cases are counted in its own summary, not with the tests below.
phase "hostile input (schemathesis over the served OpenAPI document; ran beside the cargo tests)" wait_hostile
run_python_sdk() {
    ./scripts/python-sdk.sh 2>&1 | tee -a "$test_log"
}
phase "python SDK (maturin build, pytest against a local stack)" run_python_sdk
run_airflow() {
    ./scripts/airflow.sh 2>&1 | tee -a "$test_log"
}
phase "airflow provider and dashboard (real Airflow 3.3, headless Chromium, one local stack)" run_airflow
run_prefect() {
    ./scripts/prefect.sh 2>&1 | tee -a "$test_log"
}
phase "shims and prefect integration (generator drift, real Prefect 3.9 server against a local stack)" run_prefect
phase "bench smoke (no speed assertions)" "$with_pg" -- "$CARGO_TARGET_DIR/debug/rh-bench" --smoke

echo
echo "phase durations:"
printf '%s\n' "${summary[@]}"
passed=$(grep -Eo '[0-9]+ passed' "$test_log" | awk '{s+=$1} END {print s+0}')
failed=$(grep -Eo '[0-9]+ failed' "$test_log" | awk '{s+=$1} END {print s+0}')
echo "total: $((SECONDS))s"
echo
echo "tests: $passed passed, $failed failed"
