#!/usr/bin/env bash
# The hostile-input phase of `make test`: schemathesis (pinned, in a venv
# cached by its pin) generates requests for every operation of the served
# OpenAPI document, against `rh-gateway dev` in a scratch folder. It passes
# with 0 server errors and 0 responses that break the document (status
# codes, content types, schemas, including every server-sent event).
set -euo pipefail
cd "$(dirname "$0")/.."

cache="${CACHE:-$HOME/.cache/runhouse-gateway}"
bin="${CARGO_TARGET_DIR:-$cache/target}/debug"
pin="schemathesis==4.32.5"
venv="$cache/venvs/schemathesis-$(echo "$pin" | sha256sum | cut -c1-12)"
if [ ! -x "$venv/bin/schemathesis" ]; then
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "$pin"
fi

unset DATABASE_URL RH_GATEWAY_DATABASE__URL
work="$(mktemp -d)"
chmod 755 "$work" # as root, the postgres user must reach .rh/pg
port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
# Long-polls are capped at 2 s so generated waits return quickly.
(cd "$work" && RH_GATEWAY_HTTP__MAX_WAIT_S=2 exec "$bin/rh-gateway" dev --listen "127.0.0.1:$port" >"$work/dev.log" 2>&1) &
dev=$!
runner=""
stop() {
    if [ -n "$runner" ]; then kill "$runner" 2>/dev/null || true; fi
    kill -INT "$dev" 2>/dev/null || true
    wait "$dev" 2>/dev/null || true
    rm -rf "$work"
}
trap stop EXIT
trap 'exit 1' INT TERM # so the EXIT trap stops the gateway when this is stopped
for _ in $(seq 1 600); do
    if curl -sf "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && [ -s "$work/.rh/admin-token" ]; then
        break
    fi
    sleep 0.1
done
token="$(cat "$work/.rh/admin-token")"

# The coverage phase is left out: on this Python it trips an internal error
# in hypothesis (an AST recursion check), which is not about the API.
PYTHONPATH="$PWD/tests/schemathesis" SCHEMATHESIS_HOOKS=hooks "$venv/bin/schemathesis" run \
    "http://127.0.0.1:$port/openapi.json" \
    -H "Authorization: Bearer $token" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
    --phases examples,fuzzing,stateful \
    --max-examples 30 --max-time 90 --request-timeout 10 --workers 2 \
    --seed 20261202 \
    --suppress-health-check all "$@" &
# Waited for, not run in the foreground, so a TERM stops it at once.
runner=$!
wait "$runner"
