# shellcheck shell=bash
# Shell helpers the bench scripts share (sourced, not run). A script sets
# $work (its scratch directory, where each process NAME logs to NAME.log)
# before it calls wait_for_port; for a Redis Cluster, also redis_ports (six
# ports: 3 masters, 3 replicas) and, if it wants failovers faster than
# Redis's 15 s default, cluster_node_timeout (ms). The nodes' PIDs go to
# redis_pids, by node.

# Installs Debian packages, without letting them start system-wide services
# of their own (a policy-rc.d that says "no", as scripts/test does).
apt_install() { # PACKAGE...
    [ $# -gt 0 ] || return 0
    echo "== installing $*"
    local sudo="" policy=/usr/sbin/policy-rc.d made_policy=""
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
        $sudo chmod +x "$policy"
        made_policy=1
    fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
    [ -z "$made_policy" ] || $sudo rm -f "$policy"
}

# Installs, with apt_install, the PACKAGE of every COMMAND that is missing
# (in PATH or /usr/sbin, where nginx lives), each package once.
install_for() { # COMMAND:PACKAGE...
    local wanted command package packages=()
    for wanted in "$@"; do
        command=${wanted%%:*} package=${wanted#*:}
        command -v "$command" >/dev/null || [ -x "/usr/sbin/$command" ] && continue
        [[ " ${packages[*]} " == *" $package "* ]] || packages+=("$package")
    done
    apt_install "${packages[@]}"
}

# Waits until PORT accepts connections; fails with NAME's log if the process
# died first.
wait_for_port() { # PORT NAME PID
    local _
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        if ! kill -0 "$3" 2>/dev/null; then
            echo "$2 exited before listening on $1; its log:" >&2
            cat "${work:?}/$2.log" >&2
            exit 1
        fi
        sleep 0.1
    done
    echo "$2 did not listen on $1 within 10 s" >&2
    exit 1
}

# Starts (or restarts) cluster node I of redis_ports; its nodes.conf in its
# own directory is what lets a restarted node rejoin with its old identity.
# shellcheck disable=SC2154,SC2034 # redis_ports in, redis_pids out: the caller's
start_redis_node() { # I
    local port=${redis_ports[$1]} dir=$work/redis-$1
    mkdir -p "$dir"
    redis-server --bind 127.0.0.1 --port "$port" --dir "$dir" \
        --cluster-enabled yes --cluster-config-file nodes.conf \
        --cluster-node-timeout "${cluster_node_timeout:-15000}" \
        --save "" --appendonly no --daemonize no >>"$work/redis-$1.log" 2>&1 &
    redis_pids[$1]=$!
    wait_for_port "$port" "redis-$1" "$!"
}

# Starts every node of redis_ports and makes them one cluster, a replica per
# master; fails unless it is whole within 30 s.
# shellcheck disable=SC2154 # redis_ports: the caller's
start_cluster() {
    local i addresses=()
    for i in "${!redis_ports[@]}"; do
        start_redis_node "$i"
        addresses+=("127.0.0.1:${redis_ports[$i]}")
    done
    redis-cli --cluster create "${addresses[@]}" --cluster-replicas 1 --cluster-yes >"$work/cluster-create.log"
    wait_cluster_whole || { echo "the cluster did not come up; see $work/cluster-create.log" >&2; exit 1; }
}

# True once every node answers, says cluster_state:ok and sees no node
# failing (after a chaos step: whole again). Up to 30 s.
# shellcheck disable=SC2154 # redis_ports: the caller's
wait_cluster_whole() {
    local _ port whole
    for _ in $(seq 150); do
        whole=1
        for port in "${redis_ports[@]}"; do
            redis-cli -p "$port" cluster info 2>/dev/null | grep -q '^cluster_state:ok' || { whole=""; break; }
            ! redis-cli -p "$port" cluster nodes 2>/dev/null | grep -q 'fail' || { whole=""; break; }
        done
        [ -z "$whole" ] || return 0
        sleep 0.2
    done
    return 1
}
