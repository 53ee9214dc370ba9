#!/usr/bin/env bash
# Runs the fuzz targets (proptest) far longer than the test suite does, within a time bound.
#
#   scripts/fuzz.sh [CASES] [SECONDS]     defaults: 100000 cases per target, at most 1800 s per crate
#
# Targets: record decoding and the protocol over hostile records (rkms-core, tests/fuzz.rs);
# any request through the API and any bytes through the connection loop (rkms-server,
# tests/fuzz.rs). The test suite runs the same targets with 256 cases each. A failure prints
# the shrunk input; add it as a regular test when fixing it.
set -euo pipefail
cd "$(dirname "$0")/.."
cases="${1:-100000}"
seconds="${2:-1800}"
cargo build --release --locked -p rkms-core -p rkms-server --all-features --tests
export RKMS_FUZZ_CASES="$cases"
timeout --foreground "$seconds" cargo test --release --locked -p rkms-core --test fuzz
timeout --foreground "$seconds" cargo test --release --locked -p rkms-server --all-features --test fuzz
echo "fuzz: $cases cases per target passed"
