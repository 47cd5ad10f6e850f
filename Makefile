# The two commands: `make run` brings up the local stack, `make test` checks everything.

export CACHE ?= $(HOME)/.cache/runhouse-gateway
export CARGO_TARGET_DIR ?= $(CACHE)/target

.PHONY: run test bench bench-sdk screenshots openapi shims sqlx-prepare fmt lint

## Run the local stack: private Postgres under ./.rh/, the gateway on 127.0.0.1:8080, one local node.
run:
	cargo build --locked -p gateway -p node
	$(CARGO_TARGET_DIR)/debug/rh-gateway dev

## Everything CI runs: fmt, build, clippy, sqlx prepare --check, all tests.
test:
	./scripts/test.sh

## The benchmark suite (release build, durable commits): prints a table, writes bench/results/latest.json.
bench:
	cargo build --locked --release -p gateway -p node -p runhouse-gateway -p e2e --bins
	$(CARGO_TARGET_DIR)/release/rh-bench
	RH_SDK_RELEASE=1 RH_BIN_DIR=$(CARGO_TARGET_DIR)/release ./scripts/python-sdk.sh -s tests/python/bench_sdk.py
	RH_BIN_DIR=$(CARGO_TARGET_DIR)/release ./scripts/prefect.sh -s tests/prefect/bench_prefect.py

## Only the Python SDK figures (release builds): call latency, calls/s from 8 threads, unchanged-code .to() time.
bench-sdk:
	cargo build --locked --release -p gateway -p node
	RH_SDK_RELEASE=1 RH_BIN_DIR=$(CARGO_TARGET_DIR)/release ./scripts/python-sdk.sh -s tests/python/bench_sdk.py

## Regenerate the dashboard's screenshots in docs/screenshots/ (the browser tests, and the ML pipeline DAG for its Gantt chart).
screenshots:
	cargo build --locked -p gateway -p node
	./scripts/python-sdk.sh --collect-only -q tests/python >/dev/null
	RH_SCREENSHOTS=$(CURDIR)/docs/screenshots ./scripts/airflow.sh tests/dashboard \
	  tests/airflow/test_examples.py::test_the_dag_runs_gantt_and_each_tasks_extra_link_open_in_the_dashboard

## Regenerate the committed OpenAPI document after an API change.
openapi:
	cargo run --locked -q -p gateway --bin rh-gateway -- openapi > openapi/gateway.json

## Regenerate the orchestrator packages' parameter layer from providers/shims.toml and the OpenAPI document.
shims:
	python3 scripts/gen_shims.py

## Regenerate .sqlx/ after a query change (needs sqlx-cli; `make test` installs it).
sqlx-prepare:
	PATH="$(CACHE)/tools/sqlx-cli-0.8.6/bin:$$PATH" $(CARGO_TARGET_DIR)/debug/rh-with-postgres -- sh -c \
	  'sqlx migrate run --source migrations >/dev/null && cargo sqlx prepare --workspace -- --all-targets'

fmt:
	cargo fmt --all

lint:
	cargo clippy --workspace --all-targets -- -D warnings
