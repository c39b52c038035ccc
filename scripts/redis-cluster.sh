#!/usr/bin/env bash
# A local Redis Cluster for trying sidecache's shared tier: 3 masters and 3
# replicas on 127.0.0.1, ports BASE..BASE+5 (default 7000; each node also
# uses port+10000 for the cluster bus). State and PID files live in
# target/redis-cluster/; `stop` stops only the processes listed there.
#
#   scripts/redis-cluster.sh start [BASE]   start and create the cluster
#   scripts/redis-cluster.sh status         cluster_state and nodes
#   scripts/redis-cluster.sh stop           stop the nodes this script started
#
# Matching proxy.toml:  [redis]  nodes = ["127.0.0.1:7000", "127.0.0.1:7001", "127.0.0.1:7002"]
set -euo pipefail
cd "$(dirname "$0")/.."
dir="$(pwd)/target/redis-cluster"
base=${2:-7000}

ports() { cat "$dir/ports"; }

start() {
    command -v redis-server >/dev/null || { echo "redis-server not found (scripts/test installs it)" >&2; exit 1; }
    if [ -f "$dir/ports" ]; then
        echo "already started (ports $(ports | tr '\n' ' ')); run stop first" >&2
        exit 1
    fi
    mkdir -p "$dir"
    seq "$base" $((base + 5)) > "$dir/ports"
    for port in $(ports); do
        mkdir -p "$dir/$port"
        redis-server --port "$port" --bind 127.0.0.1 --dir "$dir/$port" \
            --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 2000 \
            --save "" --appendonly no --daemonize no --logfile "$dir/$port/redis.log" &
        echo $! > "$dir/$port/pid"
    done
    for port in $(ports); do
        for _ in $(seq 50); do
            redis-cli -p "$port" ping >/dev/null 2>&1 && break
            sleep 0.1
        done
    done
    redis-cli --cluster create $(ports | sed 's/^/127.0.0.1:/') --cluster-replicas 1 --cluster-yes >/dev/null
    for _ in $(seq 100); do
        redis-cli -p "$base" cluster info | grep -q "cluster_state:ok" && { status; return; }
        sleep 0.1
    done
    echo "cluster did not become ok" >&2
    exit 1
}

status() {
    [ -f "$dir/ports" ] || { echo "not started"; return; }
    first=$(head -n 1 "$dir/ports")
    redis-cli -p "$first" cluster info | grep cluster_state || echo "node $first not answering"
    redis-cli -p "$first" cluster nodes | awk '{print $2, $3, $9}'
}

stop() {
    [ -f "$dir/ports" ] || { echo "not started"; return; }
    for port in $(ports); do
        if [ -f "$dir/$port/pid" ]; then
            kill "$(cat "$dir/$port/pid")" 2>/dev/null || true
        fi
    done
    rm -rf "$dir"
    echo "stopped"
}

case "${1:-}" in
    start) start ;;
    status) status ;;
    stop) stop ;;
    *) echo "usage: $0 start [BASE]|status|stop" >&2; exit 64 ;;
esac
