#!/usr/bin/env bash
# Runs the fuzz targets (proptest) far longer than the test suite does, within a time bound.
#
#   scripts/fuzz.sh [CASES] [SECONDS]     defaults: 100000 cases per target, at most 1800 s per crate
#
# Targets: record decoding and the protocol over hostile records (rkms-core, tests/fuzz.rs);
# any request through the API and any bytes through the connection loop (rkms-server,
# tests/fuzz.rs); the envelope decoder over changed envelopes and garbage (rkms-envelope,
# tests/envelope.rs, fuzz_the_decoder). The test suite runs the same targets with 256 cases each. A failure prints
# the shrunk input; add it as a regular test when fixing it.
set -euo pipefail
cd "$(dirname "$0")/.."
cases="${1:-100000}"
seconds="${2:-1800}"
core=(cargo test --release --locked -p rkms-core --test fuzz)
server=(cargo test --release --locked -p rkms-server --all-features --test fuzz)
envelope=(cargo test --release --locked -p rkms-envelope --test envelope fuzz_the_decoder)
# Build first, so that the time bound is spent fuzzing.
"${core[@]}" --no-run
"${server[@]}" --no-run
"${envelope[@]}" --no-run
export RKMS_FUZZ_CASES="$cases"
timeout --foreground "$seconds" "${core[@]}"
timeout --foreground "$seconds" "${server[@]}"
timeout --foreground "$seconds" "${envelope[@]}"
echo "fuzz: $cases cases per target passed"
