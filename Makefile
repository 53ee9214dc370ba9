# Thin wrappers over cargo and scripts/: each target says what it runs. `make help` lists them.

# The built server, wherever cargo puts it (CARGO_TARGET_DIR included).
SERVER ?= $(shell cargo metadata --format-version 1 --no-deps | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')/debug/rkms-server

.PHONY: help build test run bench fuzz lint chart-test deploy-test docker

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{ printf "  make %-12s %s\n", $$1, $$2 }'

build: ## Release build of rkms-server (SQLite and AWS KMS) and the rkms command; no protoc needed
	cargo build --release --locked -p rkms-server -p rkms-cli

test: ## The whole test suite with its local services (the README's test command)
	scripts/test.sh

run: ## The server in its development default on 127.0.0.1:8080 (data in ./rkms-data)
	cargo run --locked -p rkms-server

bench: ## Criterion benchmarks, rkms encrypt/decrypt on 1 GiB, the hot GET against a bare server
	cargo bench --locked -p rkms-core -p rkms-envelope
	scripts/bench_files.sh
	scripts/bench.sh

fuzz: ## The fuzz targets, long runs (the suite runs them short)
	scripts/fuzz.sh

lint: ## Formatting and clippy, as the suite checks them
	cargo fmt --all --check
	cargo clippy --workspace --all-targets --all-features --locked -- -D warnings

chart-test: ## Render, lint and validate the Helm chart; check its config.toml with check-config
	cargo build --locked -p rkms-server --all-features
	python3 scripts/chart_test.py $(SERVER)

deploy-test: chart-test ## chart-test, then the Prometheus rules, dashboard and systemd unit
	python3 scripts/observability_test.py $(SERVER)

docker: ## The container image (needs a container engine; none runs on the CI machine)
	docker build -t rkms:dev .
