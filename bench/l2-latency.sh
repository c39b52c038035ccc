#!/usr/bin/env bash
# Hit latency through the proxy, from each tier: L2 (a local Redis Cluster,
# memory tier off) and L1 (memory), with wrk on loopback. Everything it
# starts it stops by PID on exit.
#
#   bench/l2-latency.sh [SECONDS] [CONNECTIONS]     (needs wrk: apt-get install wrk)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-10}
connections=${2:-16}
command -v wrk >/dev/null || { echo "wrk not found: apt-get install wrk" >&2; exit 1; }

cargo build --release --quiet --bin sidecache --example origin
work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    scripts/redis-cluster.sh stop >/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

scripts/redis-cluster.sh start 23100 >/dev/null
target/release/examples/origin --listen 127.0.0.1:3300 >/dev/null &
pids+=($!)

proxy() { # NAME PORT MEMORY_CAPACITY
    cat > "$work/$1.toml" <<TOML
[server]
listen = "127.0.0.1:$2"
admin_listen = "127.0.0.1:$(($2 + 1000))"
[origin]
url = "http://127.0.0.1:3300"
[cache.memory]
capacity = "$3"
[redis]
nodes = ["127.0.0.1:23100", "127.0.0.1:23101", "127.0.0.1:23102"]
[[routes]]
path = "/users/*"
ttl = "10m"
TOML
    RUST_LOG=warn target/release/sidecache --config "$work/$1.toml" &
    pids+=($!)
}
proxy l2 8380 0
proxy l1 8381 64MiB
sleep 1

for port in 8380 8381; do
    curl -s -o /dev/null "http://127.0.0.1:$port/users/1"   # the one miss: 1 s at the origin
done
sleep 0.5
echo "L2 check: $(curl -s -D - -o /dev/null http://127.0.0.1:8380/users/1 | grep -i cache-status)"
echo "L1 check: $(curl -s -D - -o /dev/null http://127.0.0.1:8381/users/1 | grep -i cache-status)"

for tier in l2:8380 l1:8381; do
    echo "== ${tier%%:*} hits: wrk -t2 -c$connections -d${seconds}s"
    wrk -t2 -c"$connections" -d"${seconds}s" --latency "http://127.0.0.1:${tier##*:}/users/1" |
        grep -E "Latency|50%|90%|99%|Requests/sec|Non-2xx"
done
