#!/usr/bin/env bash
# Local test services for RKMS, on loopback only.
#
#   scripts/services.sh start   install what is missing, start the services, write .test-services/env
#   scripts/services.sh stop    stop everything this script started
#
# Emulated KMS regions: one moto_server process per region (moto keeps its state in memory,
# so each region is its own process), with a symmetric key and alias/rkms-<region> created
# through the AWS API. Tests read the endpoints from .test-services/env:
#   source .test-services/env
set -euo pipefail
cd "$(dirname "$0")/.."

STATE=.test-services
KMS_REGIONS=(us-east-1 us-east-2 us-west-1)
KMS_BASE_PORT=${RKMS_KMS_BASE_PORT:-45601}

log() { printf '[services] %s\n' "$*"; }

port_open() { python3 -c 'import socket,sys; s=socket.socket(); s.settimeout(0.5); sys.exit(s.connect_ex(("127.0.0.1", int(sys.argv[1]))))' "$1"; }

wait_for_port() {
    local port=$1 name=$2
    for _ in $(seq 1 100); do
        port_open "$port" && return 0
        sleep 0.2
    done
    echo "[services] $name did not open port $port; see $STATE/$name.log" >&2
    return 1
}

install_moto() {
    if ! python3 -c 'import moto.server, boto3' 2>/dev/null; then
        log "installing moto[server] from PyPI"
        python3 -m pip install --quiet --disable-pip-version-check 'moto[server]>=5,<6'
    fi
}

start_kms_regions() {
    local endpoints=() port i
    for i in "${!KMS_REGIONS[@]}"; do
        port=$((KMS_BASE_PORT + i))
        if port_open "$port"; then
            echo "[services] port $port is already in use; stop the old services (scripts/services.sh stop) or set RKMS_KMS_BASE_PORT" >&2
            return 1
        fi
        python3 -m moto.server -H 127.0.0.1 -p "$port" >"$STATE/kms-${KMS_REGIONS[$i]}.log" 2>&1 &
        echo $! >"$STATE/kms-${KMS_REGIONS[$i]}.pid"
        endpoints+=("http://127.0.0.1:$port")
    done
    for i in "${!KMS_REGIONS[@]}"; do
        wait_for_port $((KMS_BASE_PORT + i)) "kms-${KMS_REGIONS[$i]}"
    done
    local regions_csv endpoints_csv
    regions_csv=$(IFS=,; echo "${KMS_REGIONS[*]}")
    endpoints_csv=$(IFS=,; echo "${endpoints[*]}")
    AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test python3 scripts/kms_setup.py "$regions_csv" "$endpoints_csv"
    cat >>"$STATE/env" <<ENV
export RKMS_TEST_KMS_REGIONS=$regions_csv
export RKMS_TEST_KMS_ENDPOINTS=$endpoints_csv
ENV
    log "KMS regions ${KMS_REGIONS[*]} on ports $KMS_BASE_PORT.. with alias/rkms-<region>"
}

start() {
    stop
    mkdir -p "$STATE"
    # Static credentials: the SDK must never fall through to instance metadata in tests.
    cat >"$STATE/env" <<ENV
export AWS_ACCESS_KEY_ID=test
export AWS_SECRET_ACCESS_KEY=test
export AWS_EC2_METADATA_DISABLED=true
ENV
    install_moto
    start_kms_regions
}

stop() {
    [ -d "$STATE" ] || return 0
    local pidfile pid
    for pidfile in "$STATE"/*.pid; do
        [ -e "$pidfile" ] || continue
        pid=$(cat "$pidfile")
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
        rm -f "$pidfile"
    done
}

case "${1:-}" in
    start) start ;;
    stop) stop; log "stopped" ;;
    *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
