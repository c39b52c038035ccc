#!/usr/bin/env bash
# A chaos soak on loopback (issue 12, item 5): three sidecache pods (release
# build, memory tier on) on one 3 masters + 3 replicas Redis Cluster, mixed
# traffic through them for N minutes (hits, misses, conditional GETs, POST
# invalidations, admin purges), while Redis nodes are killed and restarted,
# frozen (SIGSTOP) and thawed, and the pods' config is reloaded (SIGHUP, and
# the file rewritten). examples/soak.rs is the origin, the load and the
# checker: every body is checked against the versions the origin has made
# current, and it prints requests, failures, wrong bodies and the
# stale-after-purge windows.
#
#   bench/soak.sh [--quick] [--bound SECONDS] [MINUTES]
#     MINUTES        how long to drive traffic (default 10, or SOAK_MINUTES)
#     --quick        one minute: a smoke run
#     --bound S      how long after a purge an older version may still be
#                    served before it counts as stale (default 2)
#
# SOAK_RATE (reads/s, default 800), SOAK_CONCURRENCY (reads in flight,
# default 32) and SOAK_CHAOS_EVERY (seconds between chaos steps, default 15)
# size it; the defaults suit a 2-core machine shared with the Redis nodes
# and the pods. SOAK_LOG is the pods' RUST_LOG (default warn) and SOAK_KEEP
# a directory to copy the pods' and Redis nodes' logs to at the end: to
# trace a stale window (chaos lines carry the UTC time the pods' logs use). Exits 0 when no request failed and no body was wrong (stale
# windows are reported, not judged). Installs redis-server, redis-cli and
# curl with apt-get when missing. Everything it starts is stopped by PID on exit,
# Ctrl-C included; a frozen node is thawed first.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh

minutes=${SOAK_MINUTES:-}
bound=2
while [ $# -gt 0 ]; do
    case $1 in
        --quick) minutes=1 ;;
        --bound) bound=${2:-}; shift ;;
        -h | --help) awk 'NR > 1 && !/^#/ { exit } NR > 1' "$0"; exit 0 ;;
        *) minutes=$1 ;;
    esac
    shift
done
minutes=${minutes:-10}
rate=${SOAK_RATE:-800}
concurrency=${SOAK_CONCURRENCY:-32}
chaos_every=${SOAK_CHAOS_EVERY:-15}
pod_log=${SOAK_LOG:-warn}
keep=${SOAK_KEEP:-}
[[ $minutes =~ ^[1-9][0-9]*$ && $bound =~ ^[0-9]+(\.[0-9]+)?$ && $rate =~ ^[1-9][0-9]*$ &&
    $concurrency =~ ^[1-9][0-9]*$ && $chaos_every =~ ^[1-9][0-9]*$ ]] ||
    { echo "usage: bench/soak.sh [--quick] [--bound SECONDS] [MINUTES]" >&2; exit 64; }

# Distinct high ports, away from the tests' (free ports picked at random
# below the ephemeral range: hence the check below), bench/compare.sh's
# (234xx) and bench/l2-latency.sh's (838x). Redis cluster buses are at
# port + 10000, 3255x, still below the ephemeral range (32768+).
origin_port=24500              # examples/soak.rs: origin, load and checker
pod_ports=(24510 24520 24530)  # sidecache pods; each one's admin port is its port + 1
redis_ports=(22550 22551 22552 22553 22554 22555)

# Redis Cluster: failover after 2 s without an answer, so a 1 s freeze is
# latency only and a 5 s freeze promotes the replica.
cluster_node_timeout=2000
short_freeze=1
long_freeze=5
down_for=5 # how long a killed node stays down before it is restarted

install_missing() {
    install_for redis-server:redis-server redis-cli:redis-tools curl:curl
}

check_ports_free() {
    local port ports=("$origin_port")
    for port in "${pod_ports[@]}"; do ports+=("$port" $((port + 1))); done
    for port in "${redis_ports[@]}"; do ports+=("$port" $((port + 10000))); done
    for port in "${ports[@]}"; do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "port $port is in use; is another bench/soak.sh running?" >&2
            exit 1
        fi
    done
}

work=""
pids=()          # the pods and the soak example
redis_pids=()    # by node index; a restarted node gets a new PID here
frozen=""        # index of the node under SIGSTOP, if any
cleanup() {
    local pid
    # A stopped process does not act on SIGTERM until it runs again.
    [ -z "$frozen" ] || kill -CONT "${redis_pids[$frozen]}" 2>/dev/null || true
    for pid in "${pids[@]}" "${redis_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    # Wait for them, so nothing is still writing into $work as it goes.
    for pid in "${pids[@]}" "${redis_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [ -n "$keep" ] && [ -n "$work" ]; then
        mkdir -p "$keep" && cp "$work"/*.log "$keep"/ 2>/dev/null || true
    fi
    [ -z "$work" ] || rm -rf "$work"
}

# A line of the chaos log, stamped with the seconds since the load began.
say() {
    printf 'chaos: %4ds  %s  %s\n' $((SECONDS - load_started)) "$(date -u +%T.%3N)" "$*"
}

# The index of a node that is a master (ROLE master) or a replica, the
# Nth such in port order (N wraps around).
node_with_role() { # ROLE N
    local i candidates=()
    for i in "${!redis_ports[@]}"; do
        redis-cli -p "${redis_ports[$i]}" role 2>/dev/null | head -n 1 | grep -qx "$1" && candidates+=("$i")
    done
    [ ${#candidates[@]} -gt 0 ] || return 1
    echo "${candidates[$(($2 % ${#candidates[@]}))]}"
}

# A pod's config; VARIANT 1 or 2 differ only in settings a reload applies
# and the checker cannot see (the lock timeout), so every rewrite is a real
# reload with the same answers.
write_pod_config() { # POD VARIANT
    local port=${pod_ports[$1]} lock_timeout=5s nodes="" p
    [ "$2" = 1 ] || lock_timeout=4s
    for p in "${redis_ports[@]}"; do nodes+="\"127.0.0.1:$p\", "; done
    mkdir -p "$work/pod-$1"
    # Written beside and renamed, as a ConfigMap update is: the pod never
    # reads half a file.
    cat >"$work/pod-$1/sidecache.toml.new" <<TOML
[server]
listen = "127.0.0.1:$port"
admin_listen = "127.0.0.1:$((port + 1))"
shutdown_grace = "1s"
[origin]
url = "http://127.0.0.1:$origin_port"
# The origin answers at once; a frozen Redis node must cost latency, not
# a 504.
timeout = "10s"
[cache]
# Every pod keys under one host, so one purge URL names the entry in all.
host = "soak.test"
[cache.memory]
capacity = "64MiB"
[redis]
nodes = [${nodes%, }]
# One deadline per call: a frozen node costs each request at most a few of
# these, far below the soak's 15 s per-request deadline.
command_timeout = "50ms"
connect_timeout = "500ms"
[[routes]]
name = "soak"
path = "/soak/*"
methods = ["GET", "HEAD"]
lock_timeout = "$lock_timeout"
TOML
    mv "$work/pod-$1/sidecache.toml.new" "$work/pod-$1/sidecache.toml"
}

start_pods() {
    local i config
    for i in "${!pod_ports[@]}"; do
        write_pod_config "$i" 1
        config=$work/pod-$i/sidecache.toml
        target/release/sidecache --config "$config" --check >/dev/null
        RUST_LOG=$pod_log target/release/sidecache --config "$config" >"$work/pod-$i.log" 2>&1 &
        pids+=("$!")
        wait_for_port "${pod_ports[$i]}" "pod-$i" "$!"
    done
    # Load before a pod has reached Redis would count its first missed
    # purges as chaos; its invalidation subscriber connects alongside, and
    # has no gauge of its own: hence the extra second.
    local _ port
    for port in "${pod_ports[@]}"; do
        for _ in $(seq 100); do
            curl -sf "http://127.0.0.1:$((port + 1))/metrics" | grep -q '^sidecache_redis_connected 1' && break
            sleep 0.1
        done
    done
    sleep 1
}

# Sleeps S seconds, or less if the soak has finished.
pause() { # S
    local _
    for _ in $(seq $(($1 * 10))); do
        kill -0 "$soak_pid" 2>/dev/null || return 1
        sleep 0.1
    done
}

# The chaos steps, in turn, one every $chaos_every seconds until the load
# ends; each waits for the cluster to be whole again before the next.
# Kills node I (a ROLE: master or replica) and restarts it after down_for.
kill_and_restart() { # I ROLE
    say "kill -9 $2 redis-$1 (:${redis_ports[$1]}), restart in ${down_for}s"
    kill -KILL "${redis_pids[$1]}"
    wait "${redis_pids[$1]}" 2>/dev/null || true
    pause "$down_for" || true
    start_redis_node "$1"
}

# Stops master I (SIGSTOP) for SECONDS; NOTE ends the chaos line.
freeze() { # I SECONDS NOTE
    say "freeze master redis-$1 (:${redis_ports[$1]}) for ${2}s$3"
    frozen=$1
    kill -STOP "${redis_pids[$1]}"
    sleep "$2"
    kill -CONT "${redis_pids[$1]}"
    frozen=""
}

chaos() {
    local step=0 i variant=1
    while pause "$chaos_every"; do
        case $((step % 6)) in
            0)
                i=$(node_with_role master "$step") || { say "no master found"; continue; }
                kill_and_restart "$i" master
                ;;
            1)
                say "SIGHUP to the pods"
                for i in "${!pod_ports[@]}"; do kill -HUP "${pids[$i]}"; done
                ;;
            2)
                i=$(node_with_role master "$step") || { say "no master found"; continue; }
                freeze "$i" "$long_freeze" " (fails over)"
                ;;
            3)
                variant=$((3 - variant))
                say "rewrite the pods' config (variant $variant)"
                for i in "${!pod_ports[@]}"; do write_pod_config "$i" "$variant"; done
                ;;
            4)
                i=$(node_with_role master "$step") || { say "no master found"; continue; }
                freeze "$i" "$short_freeze" ""
                ;;
            5)
                i=$(node_with_role slave "$step") || { say "no replica found"; continue; }
                kill_and_restart "$i" replica
                ;;
        esac
        step=$((step + 1))
        local waited=$SECONDS
        if wait_cluster_whole; then
            say "cluster whole again after $((SECONDS - waited))s"
        else
            say "cluster not whole after 30s; going on"
        fi
    done
}

main() {
    install_missing
    check_ports_free
    echo "== cargo build --release"
    cargo build --release --quiet --bin sidecache --example soak

    trap cleanup EXIT
    trap 'exit 130' INT TERM
    work=$(mktemp -d "${TMPDIR:-/tmp}/sidecache-soak.XXXXXX")

    echo "== a 3+3 Redis Cluster on ${redis_ports[0]}-${redis_ports[-1]}, three pods on ${pod_ports[*]}"
    start_cluster
    start_pods

    local pod_list="" admin_list="" port
    for port in "${pod_ports[@]}"; do
        pod_list+=${pod_list:+,}127.0.0.1:$port
        admin_list+=${admin_list:+,}127.0.0.1:$((port + 1))
    done
    echo "== $minutes min of load ($rate reads/s, $concurrency in flight, 10 changes/s), a chaos step every ${chaos_every}s"
    load_started=$SECONDS
    target/release/examples/soak --origin "127.0.0.1:$origin_port" \
        --pods "$pod_list" --admins "$admin_list" --seconds $((minutes * 60)) \
        --rate "$rate" --concurrency "$concurrency" --bound "$bound" &
    soak_pid=$!
    pids+=("$soak_pid")
    chaos
    local status=0
    wait "$soak_pid" || status=$?
    local i
    for i in "${!pod_ports[@]}"; do
        kill -0 "${pids[$i]}" 2>/dev/null || { echo "pod-$i died; its log:" >&2; tail -n 20 "$work/pod-$i.log" >&2; status=1; }
    done
    # What the pods logged (warnings and errors only), colours dropped and
    # numbers, times and client names masked so that repeats count together: where a failure or a stale
    # window came from.
    for i in "${!pod_ports[@]}"; do
        echo "== pod-$i: $(grep -c . "$work/pod-$i.log" || true) log lines ($pod_log); the most frequent:"
        sed -E 's/\x1b\[[0-9;]*m//g' "$work/pod-$i.log" | cut -d' ' -f2- |
            sed -E 's/fred-[A-Za-z0-9]+/fred-X/g; s/[0-9]+/N/g' | sort | uniq -c | sort -rn | head -n 5
    done
    if [ "$status" -eq 0 ]; then echo "== soak passed"; else echo "== soak FAILED"; fi
    return "$status"
}

main
