#!/usr/bin/env bash
# The hot path against the machine's ceiling, as BENCHMARKS.md reports it:
#  1. RKMS's cached GET of one hot id (bearer token, audit log with sync = "os") against the
#     baseline example (the same connection loop and HTTP stack answering the same bytes),
#     under the same wrk load, alternately, ROUNDS rounds each: requests/s, p50, p99, ratio;
#     and the baseline appending a line as long as RKMS's audit line to a file before each
#     answer (one O_APPEND write(2) a request, uncoordinated): the ceiling for a server that
#     hands the operating system one line a request that way; and the baseline recording RKMS's
#     own audit line through RKMS's audit log (`--audit`): the line's whole cost, alone. Each run
#     also prints the CPU time (user + system) a request took in the server and in wrk: the two
#     share the machine's cores, so requests/s is what both together leave;
#  2. resident memory with 100,000 keys cached, and bytes per cached key;
#  3. instructions per cached GET under callgrind (repeatable on a noisy machine).
#
# Usage: scripts/bench.sh [ROUNDS] [SECONDS] [CONNECTIONS]   (defaults 4, 8, 64; a multiple of
# four rounds runs every server in every place)
# Installs wrk and valgrind from Debian when missing; builds both servers in release.
set -euo pipefail
shopt -s inherit_errexit
# `times` writes its seconds with the locale's decimal point; the parsing below wants a dot.
export LC_ALL=C
cd "$(dirname "$0")/.."
rounds=${1:-4}
seconds=${2:-8}
connections=${3:-64}
token=rkms_bench-token-0123456789abcdefghijklmnop

for tool in wrk valgrind; do
    command -v "$tool" >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$tool" >/dev/null
done
cargo build --release --locked -p rkms-server --bin rkms-server --example baseline
work=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -rf "$work"' EXIT

hash=$(printf '%s' "$token" | sha256sum | cut -d' ' -f1)
cat >"$work/rkms.toml" <<EOF
[kms]
provider = "local"
regions = ["local-1", "local-2", "local-3"]
[audit]
sync = "os"
[[principals]]
name = "bench"
token_sha256 = ["$hash"]
metrics = true
# The rate limiter stays in the path, at a rate this load never reaches.
rate_limit_per_second = 1000000
allow = [{ ids = ["*"], operations = ["get", "create"] }]
EOF

# Starts a server in the background, its log in $work/$1.log; sets $addr and $pid.
start() {
    local name=$1
    shift
    "$@" >/dev/null 2>"$work/$name.log" &
    pid=$!
    pids+=("$pid")
    addr=""
    for _ in $(seq 600); do
        addr=$(grep -o 'listening.*addr=[0-9.:]*' "$work/$name.log" | grep -o '[0-9.]*:[0-9]*$' | head -1 || true)
        [ -n "$addr" ] && return
        sleep 0.1
    done
    echo "$name did not start:" >&2
    cat "$work/$name.log" >&2
    exit 1
}

rkms_server() {
    exec target/release/rkms-server --config "$work/rkms.toml" --data-dir "$work/${1:-data}" --listen 127.0.0.1:0
}

# CPU time (user + system) of a process so far, in clock ticks.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

# One wrk run against URL, served by process PID: prints "requests/s p50_ms p99_ms server_us
# wrk_us", the last two the CPU time a request took in the server and in wrk. wrk's is read
# with the shell's `times`, so it needs no other tool: in the subshell that runs wrk, its second
# line is the subshell's children's CPU time, wrk's alone.
load() {
    local url=$1 server=$2 before after run
    before=$(cpu_ticks "$server")
    run=$({
        wrk -t2 -c"$connections" -d"${seconds}s" --latency -H "Authorization: Bearer $token" "$url"
        times
    } | awk '
            function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; if (v ~ /s$/) return v * 1000; return v }
            function seconds(v, m) { m = v; sub(/m.*/, "", m); sub(/^[0-9]+m/, "", v); sub(/s$/, "", v); return m * 60 + v }
            /^ +50%/ { p50 = ms($2) }
            /^ +99%/ { p99 = ms($2) }
            /^Requests\/sec/ { rps = $2 }
            / requests in / { requests = $1 }
            /Non-2xx/ { bad = $NF }
            /Socket errors/ { errors = $0 }
            /^[0-9]+m[0-9.]+s [0-9]+m[0-9.]+s$/ { times++; if (times == 2) children = seconds($1) + seconds($2) }
            END {
                if (bad) { print "non-2xx answers: " bad > "/dev/stderr"; exit 1 }
                if (errors) { print errors > "/dev/stderr"; exit 1 }
                if (!rps || !requests) { print "wrk printed no Requests/sec" > "/dev/stderr"; exit 1 }
                if (children == "") { print "no CPU time of wrk from times" > "/dev/stderr"; exit 1 }
                printf "%.0f %.2f %.2f %d %f\n", rps, p50, p99, requests, children }')
    after=$(cpu_ticks "$server")
    awk -v run="$run" -v ticks="$(getconf CLK_TCK)" -v used=$((after - before)) 'BEGIN {
        split(run, r, " ")
        printf "%s %s %s %.2f %.2f\n", r[1], r[2], r[3], used / ticks * 1e6 / r[4], r[5] * 1e6 / r[4] }'
}

start rkms rkms_server
rkms_url="http://$addr/api/v1/key?id=hot"
rkms_pid=$pid
curl -sf -H "Authorization: Bearer $token" "$rkms_url" >/dev/null
curl -sf -H "Authorization: Bearer $token" "$rkms_url" >/dev/null
line_bytes=$(tail -n 1 "$work/data/audit.log" | wc -c)
start baseline target/release/examples/baseline
baseline_url="http://$addr/api/v1/key?id=hot"
baseline_pid=$pid
start append target/release/examples/baseline 127.0.0.1:0 --append "$work/append.log" --line-bytes "$line_bytes"
append_url="http://$addr/api/v1/key?id=hot"
append_pid=$pid
start audit target/release/examples/baseline 127.0.0.1:0 --audit "$work/audit.log"
audit_url="http://$addr/api/v1/key?id=hot"
audit_pid=$pid
for url in "$baseline_url" "$append_url" "$audit_url" "$rkms_url"; do
    wrk -t2 -c"$connections" -d2s -H "Authorization: Bearer $token" "$url" >/dev/null
done

echo "| run | server | requests/s | p50 ms | p99 ms | server CPU µs/request | wrk CPU µs/request |"
echo "| --- | --- | --- | --- | --- | --- | --- |"
declare -A sum=([baseline]=0 [append]=0 [audit]=0 [rkms]=0)
servers=(baseline append audit rkms)
# Each round starts one server further along, so that over four rounds every server runs in every
# place and after every other one; dirty pages are written back before each run, so that no run
# pays for the file another one wrote.
for round in $(seq "$rounds"); do
    first=$(((round - 1) % ${#servers[@]}))
    order=("${servers[@]:first}" "${servers[@]:0:first}")
    for server in "${order[@]}"; do
        sync
        case $server in
        baseline) url=$baseline_url pid=$baseline_pid label=baseline ;;
        append) url=$append_url pid=$append_pid label="baseline + one appended line" ;;
        audit) url=$audit_url pid=$audit_pid label="baseline + RKMS's audit line" ;;
        rkms) url=$rkms_url pid=$rkms_pid label=rkms ;;
        esac
        result=$(load "$url" "$pid")
        read -r rps p50 p99 server_us wrk_us <<<"$result"
        echo "| $round | $label | $rps | $p50 | $p99 | $server_us | $wrk_us |"
        sum[$server]=$((sum[$server] + rps))
    done
done
awk -v r="${sum[rkms]}" -v a="${sum[append]}" -v l="${sum[audit]}" -v b="${sum[baseline]}" 'BEGIN {
    printf "ratio (rkms / baseline requests/s): %.2f\n", r / b
    printf "ceiling with one appended line a request (baseline + line / baseline): %.2f\n", a / b
    printf "ceiling with RKMS audit line a request (baseline + audit line / baseline): %.2f\n", l / b }'

# Memory: 100,000 distinct ids created and cached (the default max_entries).
rss_kib() { awk '/^VmRSS/ { print $2 }' "/proc/$1/status"; }
before=$(rss_kib "$rkms_pid")
cat >"$work/fill.lua" <<'EOF'
-- Ids unique across threads and runs: the run's number (an argument) and the thread's.
local threads = 0
setup = function(thread)
  threads = threads + 1
  thread:set("tid", tostring(threads))
end
local n = 0
init = function(args) run = args[1] end
request = function()
  n = n + 1
  return wrk.format("GET", "/api/v1/key?id=fill-" .. run .. "-" .. tid .. "-" .. n)
end
EOF
created() {
    curl -s "${rkms_url%%/api*}/metrics" -H "Authorization: Bearer $token" |
        awk '/^rkms_keys_created_total/ { s += $NF } END { print s + 0 }'
}
for run in $(seq 120); do
    [ "$(created)" -ge 100001 ] && break
    wrk -t2 -c16 -d2s -s "$work/fill.lua" -H "Authorization: Bearer $token" "${rkms_url%%\?*}" -- "$run" >/dev/null
done
[ "$(created)" -ge 100001 ] || { echo "the fill did not reach 100,000 keys" >&2; exit 1; }
after=$(rss_kib "$rkms_pid")
awk -v a="$after" -v b="$before" 'BEGIN {
    printf "RSS with 100,000 keys cached: %.1f MiB (%.1f MiB before the fill; %.0f bytes per cached key)\n",
        a / 1024, b / 1024, (a - b) * 1024 / 100000 }'

# Instructions per GET: two runs under callgrind, FEW and MANY GETs of the hot id over one
# keep-alive connection; the difference of their totals over MANY - FEW leaves out start-up and
# shutdown. (callgrind_control's instrumentation toggle counted nothing here.) Valgrind's CPU
# has no SHA extensions: RKMS's SHA-256 (the token, the audit chain) counts in software here.
# Left out of each total: the calibration of quanta's clock (used by the metrics recorder and
# the rate limiter), which loops for a span of wall time, not a number of rounds, so under
# valgrind it counted 4 to 22 million instructions from run to run (up to 10,000 a GET in the
# difference). RKMS's count fails when that function cannot be found in its profile.
instructions() {
    local name=$1 count=$2
    local dir=$work/cg-$name-$count
    mkdir -p "$dir"
    if [ "$name" = rkms ]; then
        start "cg-$name-$count" valgrind --tool=callgrind --callgrind-out-file="$dir/callgrind.out" \
            target/release/rkms-server --config "$work/rkms.toml" --data-dir "$dir/data" --listen 127.0.0.1:0
    else
        start "cg-$name-$count" valgrind --tool=callgrind --callgrind-out-file="$dir/callgrind.out" \
            target/release/examples/baseline
    fi
    python3 - "$addr" "$token" "$count" <<'EOF2' || { kill "$pid"; wait "$pid" || true; return 1; }
import http.client, sys
addr, token, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
c = http.client.HTTPConnection(addr, timeout=300)
for _ in range(n):
    c.request("GET", "/api/v1/key?id=hot", headers={"Authorization": "Bearer " + token})
    answer = c.getresponse()
    assert answer.status == 200, answer.status
    answer.read()
EOF2
    kill -INT "$pid"
    wait "$pid" || true
    local total calibration=0
    total=$(awk '/^summary:/ { print $2 }' "$dir/callgrind.out")
    [[ $total =~ ^[0-9]+$ ]] || { echo "no instruction total in $dir/callgrind.out" >&2; return 1; }
    if [ "$name" = rkms ]; then
        calibration=$(callgrind_annotate --inclusive=yes "$dir/callgrind.out" |
            awk '!found && /quanta.*Calibration.*calibrate/ { found = 1; gsub(",", "", $1); print $1 }')
        [[ $calibration =~ ^[0-9]+$ ]] || { echo "quanta's calibration not found in RKMS's profile" >&2; return 1; }
    fi
    echo $((total - calibration))
}
for name in baseline rkms; do
    few=$(instructions "$name" 200)
    many=$(instructions "$name" 1200)
    awk -v n="$name" -v f="$few" -v m="$many" 'BEGIN {
        printf "instructions per GET, %s (callgrind, one keep-alive connection): %.0f\n", n, (m - f) / 1000 }'
done
