#!/usr/bin/env bash
# `rkms encrypt` and `rkms decrypt` on files as a user runs them: the release `rkms` against a
# development server on loopback, files in /dev/shm (so the disk does not bound the figure),
# three runs each of a 1 GiB file, and one run of a 64 MiB file to show that memory does not
# grow with the file. Prints GiB/s (wall time, one key request included) and peak RSS.
#
# Usage: scripts/bench_files.sh   (builds what it needs; needs /usr/bin/time)
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --locked -p rkms-cli -p rkms-server --bin rkms --bin rkms-server
work=$(mktemp -d /dev/shm/rkms-bench.XXXXXX)
trap 'kill "$server" 2>/dev/null || true; rm -rf "$work"' EXIT

target/release/rkms-server --data-dir "$work/data" --listen 127.0.0.1:0 2>"$work/server.log" &
server=$!
for _ in $(seq 100); do
    addr=$(grep -o 'addr=[0-9.:]*' "$work/server.log" | head -1 | cut -d= -f2 || true)
    [ -n "$addr" ] && break
    sleep 0.1
done
export RKMS_URL="http://$addr"
rkms=target/release/rkms
"$rkms" key get --id bench >/dev/null

head -c 1G /dev/urandom >"$work/big"
head -c 64M /dev/urandom >"$work/small"

# Prints "<seconds> <peak RSS KiB>" of one run.
timed() { /usr/bin/time -f '%e %M' "$@" 2>&1 >/dev/null | tail -1; }

report() {
    local what=$1 size=$2 seconds=$3 rss=$4
    awk -v w="$what" -v b="$size" -v s="$seconds" -v r="$rss" \
        'BEGIN { printf "%-24s %6.2f s  %5.2f GiB/s  peak RSS %5.1f MiB\n", w, s, b / 1073741824 / s, r / 1024 }'
}

for run in 1 2 3; do
    read -r s rss < <(timed "$rkms" encrypt --id bench -i "$work/big" -o "$work/big.rkms")
    report "encrypt 1 GiB (run $run)" 1073741824 "$s" "$rss"
    read -r s rss < <(timed "$rkms" decrypt -i "$work/big.rkms" -o "$work/big.back")
    report "decrypt 1 GiB (run $run)" 1073741824 "$s" "$rss"
done
cmp "$work/big" "$work/big.back"
read -r s rss < <(timed "$rkms" encrypt --id bench -i "$work/small" -o "$work/small.rkms")
report "encrypt 64 MiB" 67108864 "$s" "$rss"
read -r s rss < <(timed "$rkms" decrypt -i "$work/small.rkms" -o "$work/small.back")
report "decrypt 64 MiB" 67108864 "$s" "$rss"
cmp "$work/small" "$work/small.back"
