#!/usr/bin/env bash
# Purge of a tag on 100,000 entries: time to effect on every pod (issue 13,
# item 1). Two sidecache pods (release build) on one 3 masters + 3 replicas
# Redis Cluster on loopback; examples/tag_purge.rs is the origin and the
# driver: it fills ENTRIES tagged 1 KiB entries through pod 0 (memory and
# Redis), then through pod 1 (Redis hits copied into its memory), checks
# that both answer a sample from memory, purges the tag through pod 0's
# admin port, and prints for each pod the time until every sampled entry
# is answered by a copy fetched after the purge.
#
#   bench/tag-purge.sh [ENTRIES]     (default 100000)
#
# Installs redis-server, redis-cli and curl with apt-get when missing. Everything
# it starts is stopped by PID on exit, Ctrl-C included.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh

entries=${1:-100000}
[[ $entries =~ ^[1-9][0-9]*$ ]] || { echo "usage: bench/tag-purge.sh [ENTRIES]" >&2; exit 64; }

# Away from the tests' ports and the other bench scripts' (see bench/soak.sh).
origin_port=24600
pod_ports=(24610 24620) # each one's admin port is its port + 1
redis_ports=(22650 22651 22652 22653 22654 22655)

work=""
pids=()
redis_pids=()
cleanup() {
    local pid
    for pid in "${pids[@]}" "${redis_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}" "${redis_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    [ -z "$work" ] || rm -rf "$work"
}

main() {
    install_for redis-server:redis-server redis-cli:redis-tools curl:curl
    echo "== cargo build --release"
    cargo build --release --quiet --bin sidecache --example tag_purge

    trap cleanup EXIT
    trap 'exit 130' INT TERM
    work=$(mktemp -d "${TMPDIR:-/tmp}/sidecache-tag-purge.XXXXXX")

    echo "== a 3+3 Redis Cluster on ${redis_ports[0]}-${redis_ports[-1]}, two pods on ${pod_ports[*]}"
    local i port nodes=""
    start_cluster
    for port in "${redis_ports[@]}"; do
        nodes+="\"127.0.0.1:$port\", "
    done

    for i in "${!pod_ports[@]}"; do
        port=${pod_ports[$i]}
        cat >"$work/pod-$i.toml" <<TOML
[server]
listen = "127.0.0.1:$port"
admin_listen = "127.0.0.1:$((port + 1))"
[origin]
url = "http://127.0.0.1:$origin_port"
[cache]
host = "bench.test"
[cache.memory]
capacity = "512MiB"
[redis]
nodes = [${nodes%, }]
write_queue = 200000
[[routes]]
path = "/tagged/*"
TOML
        RUST_LOG=warn target/release/sidecache --config "$work/pod-$i.toml" >"$work/pod-$i.log" 2>&1 &
        pids+=("$!")
        wait_for_port "$port" "pod-$i" "$!"
    done
    for port in "${pod_ports[@]}"; do
        for _ in $(seq 100); do
            curl -sf "http://127.0.0.1:$((port + 1))/metrics" | grep -q '^sidecache_redis_connected 1' && break
            sleep 0.1
        done
    done
    sleep 1 # the invalidation subscriber connects alongside

    echo "== $entries tagged 1 KiB entries, purged by tag through pod 0"
    target/release/examples/tag_purge --origin "127.0.0.1:$origin_port" \
        --pods "127.0.0.1:${pod_ports[0]},127.0.0.1:${pod_ports[1]}" \
        --admins "127.0.0.1:$((pod_ports[0] + 1)),127.0.0.1:$((pod_ports[1] + 1))" \
        --entries "$entries"
}

main
