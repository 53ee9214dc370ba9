#!/usr/bin/env bash
# Local test services for RKMS, on loopback only.
#
#   scripts/services.sh install   install what tests and builds need (apt, PyPI) if missing
#   scripts/services.sh start     install, start the services, write .test-services/env
#   scripts/services.sh stop      stop the services this script started
#
# Services, each skipped when its variable is already set in the environment:
#   RKMS_TEST_POSTGRES_URL       PostgreSQL 127.0.0.1:5432 (started if down), database rkms_test
#   RKMS_TEST_REDIS_URL          redis-server on 127.0.0.1:25620 with AOF fsynced on every write
#                                (appendfsync always), throwaway data dir
#   RKMS_TEST_ETCD_ENDPOINTS     etcd (Debian etcd-server) on 127.0.0.1:23790, throwaway data dir
#   RKMS_TEST_DYNAMODB_ENDPOINT  moto on 127.0.0.1:25610 (DynamoDB API), one request at a time
#                                (scripts/moto_serial.py: conditional writes atomic, as in DynamoDB)
#   RKMS_TEST_KMS_REGIONS / RKMS_TEST_KMS_ENDPOINTS
#                                one moto_server per emulated KMS region on 127.0.0.1:25601..,
#                                each with a symmetric key and alias/rkms-<region>
# Tests read them after `source .test-services/env`.
set -euo pipefail
cd "$(dirname "$0")/.."

STATE=.test-services
KMS_REGIONS=(us-east-1 us-east-2 us-west-1)
# Every port below the kernel's range for outgoing connections (require_free).
KMS_BASE_PORT=${RKMS_KMS_BASE_PORT:-25601}
DYNAMODB_PORT=${RKMS_DYNAMODB_PORT:-25610}
REDIS_PORT=${RKMS_REDIS_PORT:-25620}
ETCD_PORT=${RKMS_ETCD_PORT:-23790}
ETCD_PEER_PORT=$((ETCD_PORT + 10))

log() { printf '[services] %s\n' "$*"; }

port_open() { python3 -c 'import socket,sys; s=socket.socket(); s.settimeout(0.5); sys.exit(s.connect_ex(("127.0.0.1", int(sys.argv[1]))))' "$1"; }

wait_for_port() {
    local port=$1 name=$2
    for _ in $(seq 1 150); do
        port_open "$port" && return 0
        sleep 0.2
    done
    echo "[services] $name did not open port $port; see $STATE/$name.log" >&2
    return 1
}

# The ports the kernel hands to outgoing connections: a service listening on one of them fails
# to start whenever a client connection happens to hold it ("Address already in use" with
# nothing listening).
read -r EPHEMERAL_LOW EPHEMERAL_HIGH </proc/sys/net/ipv4/ip_local_port_range

require_free() {
    if [ "$1" -ge "$EPHEMERAL_LOW" ] && [ "$1" -le "$EPHEMERAL_HIGH" ]; then
        echo "[services] port $1 is in the kernel's range for outgoing connections" \
            "($EPHEMERAL_LOW-$EPHEMERAL_HIGH), where a client connection can hold it; choose" \
            "another with RKMS_KMS_BASE_PORT, RKMS_DYNAMODB_PORT, RKMS_REDIS_PORT or RKMS_ETCD_PORT" >&2
        return 1
    fi
    if port_open "$1"; then
        echo "[services] port $1 is already in use; run scripts/services.sh stop, or free the port" >&2
        return 1
    fi
}

APT_UPDATED=no
apt_install() {
    if [ "$APT_UPDATED" = no ]; then
        log "apt-get update"
        apt-get update -qq
        APT_UPDATED=yes
    fi
    log "installing $* from Debian"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# promtool (for the alert rules) comes only with Debian's prometheus package: install it
# without its recommendations, and with service starts refused, so that no Prometheus or node
# exporter is left running.
install_promtool() {
    local policy=/usr/sbin/policy-rc.d added=""
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && added=yes
    fi
    apt_install --no-install-recommends prometheus
    [ -z "$added" ] || rm -f "$policy"
}

install() {
    command -v protoc >/dev/null || apt_install protobuf-compiler   # etcd-client's build
    command -v etcd >/dev/null || apt_install etcd-server
    command -v redis-server >/dev/null || apt_install redis-server
    command -v pg_ctlcluster >/dev/null || apt_install postgresql
    command -v promtool >/dev/null || install_promtool
    command -v systemd-analyze >/dev/null || apt_install systemd   # verifies the systemd unit
    if ! python3 -c 'import moto.server, boto3' 2>/dev/null; then
        log "installing moto[server] from PyPI"
        python3 -m pip install --quiet --disable-pip-version-check 'moto[server]>=5,<6'
    fi
    if ! python3 -c 'import schemathesis, yaml, grpc_reflection, helm_python, kubernetes_validate' 2>/dev/null; then
        log "installing schemathesis, grpcio-reflection, helm-python-sdk and kubernetes-validate from PyPI (the OpenAPI, gRPC and chart checks)"
        python3 -m pip install --quiet --disable-pip-version-check 'schemathesis>=4,<5' \
            'grpcio-reflection>=1.60,<2' 'helm-python-sdk>=0.2,<0.3' 'kubernetes-validate>=1.30,<2'
    fi
    command -v openssl >/dev/null || apt_install openssl   # the chart test's throwaway certificates
    command -v make >/dev/null || apt_install make         # make chart-test
}

# Runs a command in the background, recording its pid for stop.
spawn() {
    local name=$1
    shift
    "$@" >"$STATE/$name.log" 2>&1 &
    echo $! >"$STATE/$name.pid"
}

env_line() { echo "export $1=$2" >>"$STATE/env"; }

start_postgres() {
    if [ -n "${RKMS_TEST_POSTGRES_URL:-}" ]; then env_line RKMS_TEST_POSTGRES_URL "$RKMS_TEST_POSTGRES_URL"; return; fi
    if ! pg_isready -q -h 127.0.0.1 -p 5432; then
        log "starting PostgreSQL"
        pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n 1)" main start
        wait_for_port 5432 postgres
    fi
    # A fresh database per run: tests leave their schemas behind.
    dropdb -h 127.0.0.1 -U postgres --if-exists --force rkms_test
    createdb -h 127.0.0.1 -U postgres rkms_test
    env_line RKMS_TEST_POSTGRES_URL "postgres://postgres@127.0.0.1:5432/rkms_test"
}

# RKMS refuses a Redis that can lose acknowledged writes (the machine's own Redis keeps no AOF),
# so the suite gets one of its own, durable as production must be.
start_redis() {
    if [ -n "${RKMS_TEST_REDIS_URL:-}" ]; then env_line RKMS_TEST_REDIS_URL "$RKMS_TEST_REDIS_URL"; return; fi
    require_free "$REDIS_PORT"
    rm -rf "$STATE/redis-data"
    mkdir -p "$STATE/redis-data"
    spawn redis redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save "" \
        --appendonly yes --appendfsync always --dir "$PWD/$STATE/redis-data"
    wait_for_port "$REDIS_PORT" redis
    env_line RKMS_TEST_REDIS_URL "redis://127.0.0.1:$REDIS_PORT/"
}

start_etcd() {
    if [ -n "${RKMS_TEST_ETCD_ENDPOINTS:-}" ]; then env_line RKMS_TEST_ETCD_ENDPOINTS "$RKMS_TEST_ETCD_ENDPOINTS"; return; fi
    require_free "$ETCD_PORT"
    rm -rf "$STATE/etcd-data"
    spawn etcd etcd --name rkms-test --data-dir "$STATE/etcd-data" \
        --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
        --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
        --initial-cluster "rkms-test=http://127.0.0.1:$ETCD_PEER_PORT"
    wait_for_port "$ETCD_PORT" etcd
    env_line RKMS_TEST_ETCD_ENDPOINTS "http://127.0.0.1:$ETCD_PORT"
}

start_dynamodb() {
    if [ -n "${RKMS_TEST_DYNAMODB_ENDPOINT:-}" ]; then env_line RKMS_TEST_DYNAMODB_ENDPOINT "$RKMS_TEST_DYNAMODB_ENDPOINT"; return; fi
    require_free "$DYNAMODB_PORT"
    # One request at a time: threaded moto can let two conditional writes to one item both pass.
    spawn dynamodb python3 scripts/moto_serial.py 127.0.0.1 "$DYNAMODB_PORT"
    wait_for_port "$DYNAMODB_PORT" dynamodb
    env_line RKMS_TEST_DYNAMODB_ENDPOINT "http://127.0.0.1:$DYNAMODB_PORT"
}

start_kms_regions() {
    local endpoints=() port i
    for i in "${!KMS_REGIONS[@]}"; do
        port=$((KMS_BASE_PORT + i))
        require_free "$port"
        spawn "kms-${KMS_REGIONS[$i]}" python3 -m moto.server -H 127.0.0.1 -p "$port"
        endpoints+=("http://127.0.0.1:$port")
    done
    for i in "${!KMS_REGIONS[@]}"; do
        wait_for_port $((KMS_BASE_PORT + i)) "kms-${KMS_REGIONS[$i]}"
    done
    local regions_csv endpoints_csv
    regions_csv=$(IFS=,; echo "${KMS_REGIONS[*]}")
    endpoints_csv=$(IFS=,; echo "${endpoints[*]}")
    AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test python3 scripts/kms_setup.py "$regions_csv" "$endpoints_csv"
    env_line RKMS_TEST_KMS_REGIONS "$regions_csv"
    env_line RKMS_TEST_KMS_ENDPOINTS "$endpoints_csv"
}

start() {
    stop
    install
    mkdir -p "$STATE"
    # Static credentials: the AWS SDK must never fall through to instance metadata in tests.
    cat >"$STATE/env" <<ENV
export AWS_ACCESS_KEY_ID=test
export AWS_SECRET_ACCESS_KEY=test
export AWS_EC2_METADATA_DISABLED=true
ENV
    start_postgres
    start_redis
    start_etcd
    start_dynamodb
    start_kms_regions
    log "ready; source $STATE/env"
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
    install) install ;;
    start) start ;;
    stop) stop; log "stopped" ;;
    *) echo "usage: $0 install|start|stop" >&2; exit 2 ;;
esac
