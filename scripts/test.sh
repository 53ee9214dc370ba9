#!/usr/bin/env bash
# The whole RKMS test suite, on a fresh machine: checks the toolchain, installs and starts the
# local test services (scripts/services.sh: PostgreSQL, Redis, etcd, DynamoDB and three KMS
# regions emulated by moto, all on loopback), lints and tests every crate, and stops the
# services it started on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "toolchain"
for tool in cargo rustc cargo-clippy rustfmt; do
    command -v "$tool" >/dev/null || { echo "missing $tool: install the Rust toolchain with clippy and rustfmt (rustup)" >&2; exit 1; }
done
cargo --version

step "prerequisites"
scripts/services.sh install

step "format"
cargo fmt --all --check

step "lints"
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings

step "test services"
trap 'scripts/services.sh stop' EXIT
scripts/services.sh start
# shellcheck source=/dev/null
source .test-services/env

step "tests"
cargo test --workspace --all-targets --all-features --locked
cargo test --workspace --doc --all-features --locked
# A server built without optional backends refuses them by feature name.
cargo test -p rkms-server --no-default-features --lib --locked

step "OpenAPI description (every route and status, then schemathesis) against the built server"
target_dir=$(cargo metadata --format-version 1 --no-deps --locked | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
python3 scripts/openapi_check.py "$target_dir/debug/rkms-server"

step "README's gRPC flow, through server reflection alone (as grpcurl)"
python3 scripts/grpc_reflection_flow.py "$target_dir/debug/rkms-server"

step "Helm chart: lint, render, validate, check-config on every rendered configuration"
make chart-test SERVER="$target_dir/debug/rkms-server"

step "Prometheus rules, Grafana dashboard and systemd unit, against the built server's metrics"
python3 scripts/observability_test.py "$target_dir/debug/rkms-server"

step "envelope test vectors (Python's cryptography, independent of the Rust crate)"
python3 scripts/envelope_vectors.py --check

step "embedding example"
cargo run --quiet --locked -p rkms-core --example embed
