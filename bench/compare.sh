#!/usr/bin/env bash
# sidecache beside nginx 1.22 in one run, on loopback, for every path a
# sidecar carries (issue 11): req/s, p50/p99 latency and the server's CPU
# time per request, as ratios. On a shared, noisy machine absolute req/s
# drift from minute to minute, but two cells measured back to back drift
# together; so each path runs both servers next to each other, the order is
# rotated every round, and the median of the rounds is reported.
#
#   bench/compare.sh [--quick] [--rounds N] [SECONDS]
#     SECONDS     wrk duration per cell (default 10, or BENCH_SECONDS)
#     --rounds N  rounds over all cells (default 3, or BENCH_ROUNDS)
#     --quick     3 s cells, 1 s warm-ups, one round: a smoke run
#
# Cells: pass-through 1 KiB (sidecache `cache = false` vs nginx proxy_pass),
# memory hits 1/16/256 KiB (vs nginx proxy_cache), Redis hit 1 KiB with L1
# off (vs redis-benchmark GET on the same Redis), cacheable miss 1 KiB with a
# new URL per request (vs nginx proxy_cache); and, in the pass-through cell,
# the floor: examples/relay_floor.rs, a relay that copies bytes between each
# client connection and an origin connection of its own and does no HTTP
# (what the kernel and the runtime cost a proxy on this machine). It writes
# bench/results/compare-<date>.md, .csv, .cells.tsv (what was measured) and
# the chart bench/results/compare.svg (a --quick run writes
# compare-<date>-quick.* and leaves the chart the README shows alone),
# through bench/compare-report.py. Installs nginx, wrk and
# redis-server with apt-get when missing. Everything it starts is stopped by
# PID on exit, Ctrl-C included.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh

seconds=${BENCH_SECONDS:-}
rounds=${BENCH_ROUNDS:-}
quick=""
while [ $# -gt 0 ]; do
    case $1 in
        --quick) quick=1 ;;
        --rounds) rounds=${2:-}; shift ;;
        -h | --help) awk 'NR > 1 && !/^#/ { exit } NR > 1' "$0"; exit 0 ;;
        *) seconds=$1 ;;
    esac
    shift
done
if [ -n "$quick" ]; then
    seconds=${seconds:-3} rounds=${rounds:-1} warmup=1
else
    seconds=${seconds:-10} rounds=${rounds:-3} warmup=2
fi
[[ $seconds =~ ^[1-9][0-9]*$ && $rounds =~ ^[1-9][0-9]*$ ]] ||
    { echo "usage: bench/compare.sh [--quick] [--rounds N] [SECONDS]" >&2; exit 64; }
command_line="bench/compare.sh${quick:+ --quick} --rounds $rounds $seconds"

# wrk's load, the same for every HTTP cell: two client threads (the
# machine's cores) and 64 connections.
threads=2
connections=64

# Distinct high ports, away from the tests' (free ports below the ephemeral
# range) and from bench/l2-latency.sh's.
origin_port=23400       # nginx serving static files: the origin of every proxy
nginx_pass_port=23410   # nginx proxy_pass, upstream keepalive
nginx_cache_port=23411  # nginx proxy_cache (same nginx instance)
relay_port=23412        # examples/relay_floor: bytes relayed, no HTTP
sc_port=23420           # sidecache, memory tier: pass-through, hit and fill routes
sc_redis_port=23422     # sidecache, L1 off, on the standalone Redis
redis_port=23430        # redis-server, no persistence
# (each sidecache's admin port is its port + 1)

install_missing() {
    install_for nginx:nginx wrk:wrk redis-server:redis-server redis-benchmark:redis-tools redis-cli:redis-tools
}

check_ports_free() {
    local port
    for port in $origin_port $nginx_pass_port $nginx_cache_port $relay_port $sc_port $((sc_port + 1)) \
        $sc_redis_port $((sc_redis_port + 1)) $redis_port; do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "port $port is in use; is another bench/compare.sh running?" >&2
            exit 1
        fi
    done
}

work=""
pids=()
cleanup() {
    local pid
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    # Wait for them, so nothing is still writing into $work as it goes.
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    [ -z "$work" ] || rm -rf "$work"
}

# Lines every nginx here shares: logs and temp files in its own directory
# (the packaged defaults under /var are not ours), no access log, the
# settings a production nginx runs with (sendfile), and keep-alive
# connections that are not closed every 1000 requests (nginx's default
# would make wrk reconnect, which sidecache never asks it to).
nginx_http_common() { # DIR
    cat <<NGINX
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    client_body_temp_path $1/body;
    proxy_temp_path $1/proxy;
    fastcgi_temp_path $1/fastcgi;
    uwsgi_temp_path $1/uwsgi;
    scgi_temp_path $1/scgi;
NGINX
}

start_nginx() { # NAME
    local dir=$work/$1
    # daemon off: the PID we record is the master's; it stops its workers.
    nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" -g 'daemon off;' >"$work/$1.log" 2>&1 &
    pids+=("$!")
}

# The origin: nginx serving static files, so that the pass-through and fill
# cells measure the proxies and not a slow app. Every file says
# max-age=3600; /nginx_status counts the requests that reached it.
start_origin() {
    local dir=$work/origin
    mkdir -p "$dir/files/pass" "$dir/files/cache" "$dir/files/fill"
    head -c 1024 /dev/zero | tr '\0' a >"$dir/files/pass/1k"
    head -c 1024 /dev/zero | tr '\0' b >"$dir/files/cache/1k"
    head -c 16384 /dev/zero | tr '\0' c >"$dir/files/cache/16k"
    head -c 262144 /dev/zero | tr '\0' d >"$dir/files/cache/256k"
    head -c 1024 /dev/zero | tr '\0' e >"$dir/files/fill/1k"
    cat >"$dir/nginx.conf" <<NGINX
worker_processes 2;
pid $dir/nginx.pid;
events { worker_connections 4096; }
http {
$(nginx_http_common "$dir")
    server {
        listen 127.0.0.1:$origin_port;
        root $dir/files;
        location / { add_header Cache-Control "max-age=3600"; }
        location = /nginx_status { stub_status; }
    }
}
NGINX
    start_nginx origin
    origin_pid=${pids[-1]}
    wait_for_port $origin_port origin "$origin_pid"
}

# nginx as the proxy under comparison: proxy_pass with an upstream
# keep-alive pool on one port, proxy_cache on another; two workers, one per
# core.
start_nginx_proxy() {
    local dir=$work/nginx
    mkdir -p "$dir"
    cat >"$dir/nginx.conf" <<NGINX
worker_processes 2;
worker_rlimit_nofile 16384;
pid $dir/nginx.pid;
events { worker_connections 8192; }
http {
$(nginx_http_common "$dir")
    upstream origin {
        server 127.0.0.1:$origin_port;
        keepalive 64;
        keepalive_requests 1000000;
    }
    # The same 1 GiB budget as sidecache's L1 (each counts its own way:
    # nginx in file blocks, about 250k files here), keys for four times as
    # many (about 8000 per MiB). The fill cells add 30k+ entries a second;
    # nginx's cache manager removes at most manager_files per pass (100 by
    # default, about 2000 a second), so with the default the cache outgrows
    # max_size, fills the keys zone and answers 500s; an operator with this
    # churn raises it, and the manager's CPU counts as nginx's.
    proxy_cache_path $dir/cache levels=1:2 keys_zone=bench:128m max_size=1g inactive=1h
        manager_files=10000 manager_threshold=500ms use_temp_path=off;
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    server {
        listen 127.0.0.1:$nginx_pass_port;
        location / { proxy_pass http://origin; }
    }
    server {
        listen 127.0.0.1:$nginx_cache_port;
        location / {
            proxy_pass http://origin;
            proxy_cache bench;
            proxy_cache_valid 200 10m;
            proxy_cache_lock on;
            add_header X-Cache-Status \$upstream_cache_status;
        }
    }
}
NGINX
    start_nginx nginx
    nginx_pid=${pids[-1]}
    wait_for_port $nginx_pass_port nginx "$nginx_pid"
    wait_for_port $nginx_cache_port nginx "$nginx_pid"
}

# The floor of the pass-through cell, two workers like the other servers.
start_relay_floor() {
    target/release/examples/relay_floor "127.0.0.1:$relay_port" "127.0.0.1:$origin_port" 2 \
        >"$work/relay.log" 2>&1 &
    pids+=("$!")
    relay_pid=$!
    wait_for_port $relay_port relay "$relay_pid"
}

start_redis() {
    mkdir -p "$work/redis"
    redis-server --bind 127.0.0.1 --port $redis_port --save "" --appendonly no \
        --dir "$work/redis" --daemonize no >"$work/redis.log" 2>&1 &
    pids+=("$!")
    redis_pid=$!
    wait_for_port $redis_port redis "$redis_pid"
}

# sidecache with the access log filtered out (RUST_LOG=warn), as nginx's is
# off; its config is checked with --check first.
start_sidecache() { # NAME PORT
    local config=$work/$1.toml
    target/release/sidecache --config "$config" --check >/dev/null
    RUST_LOG=warn target/release/sidecache --config "$config" >"$work/$1.log" 2>&1 &
    pids+=("$!")
    wait_for_port "$2" "$1" "$!"
}

# The memory-tier sidecache: one route per path kind, and the same 1 GiB
# budget as nginx's cache.
start_sidecache_memory() {
    cat >"$work/sidecache.toml" <<TOML
[server]
listen = "127.0.0.1:$sc_port"
admin_listen = "127.0.0.1:$((sc_port + 1))"
shutdown_grace = "1s"
[origin]
url = "http://127.0.0.1:$origin_port"
[cache.memory]
capacity = "1GiB"
[[routes]]
name = "pass"
path = "/pass/**"
cache = false
[[routes]]
name = "cache"
path = "/cache/**"
ttl = "10m"
[[routes]]
name = "fill"
path = "/fill/**"
ttl = "10m"
TOML
    start_sidecache sidecache $sc_port
    sc_pid=${pids[-1]}
}

# The Redis sidecache: L1 off, so every hit is a GET on the standalone Redis.
start_sidecache_redis() {
    cat >"$work/sidecache-redis.toml" <<TOML
[server]
listen = "127.0.0.1:$sc_redis_port"
admin_listen = "127.0.0.1:$((sc_redis_port + 1))"
shutdown_grace = "1s"
[origin]
url = "http://127.0.0.1:$origin_port"
[cache.memory]
capacity = "0"
[redis]
mode = "standalone"
nodes = ["127.0.0.1:$redis_port"]
[[routes]]
name = "cache"
path = "/cache/**"
ttl = "10m"
TOML
    start_sidecache sidecache-redis $sc_redis_port
    sc_redis_pid=${pids[-1]}
}

# A new URL per request, unique across wrk's threads and across cells (the
# prefix, wrk's argument after --), so that every request is a cacheable
# miss: the fill path.
write_fill_script() {
    fill_lua=$work/fill.lua
    cat >"$fill_lua" <<'LUA'
local threads = 0
function setup(thread)
    threads = threads + 1
    thread:set("id", threads)
end
local prefix, counter = "", 0
function init(args)
    prefix = (args[1] or "") .. id .. "-"
end
function request()
    counter = counter + 1
    return wrk.format(nil, "/fill/1k?n=" .. prefix .. counter)
end
LUA
}

# The headers of the second of two GETs of URL: the first stores, the
# second must be a hit.
second_response() { # URL
    curl -sf -o /dev/null "$1"
    curl -sf -D - -o /dev/null "$1"
}

# Stores every hit cell's entry before the first round, and fails unless the
# next request is answered from the cache; the fill and pass-through routes
# are checked too (a fill that stored nothing would measure the wrong path).
prime_and_check() {
    local size url
    for size in 1k 16k 256k; do
        url=http://127.0.0.1:$sc_port/cache/$size
        second_response "$url" | grep -qi '^cache-status:.*; *hit' ||
            { echo "sidecache did not answer $url from memory" >&2; exit 1; }
        url=http://127.0.0.1:$nginx_cache_port/cache/$size
        second_response "$url" | grep -qi '^x-cache-status: *hit' ||
            { echo "nginx did not answer $url from its cache" >&2; exit 1; }
    done
    # L2 writes leave through a queue, off the response path: poll.
    url=http://127.0.0.1:$sc_redis_port/cache/1k
    local _
    for _ in $(seq 50); do
        second_response "$url" | grep -qi '^cache-status:.*; *hit' && break
        sleep 0.1
    done
    second_response "$url" | grep -qi '^cache-status:.*; *hit' ||
        { echo "sidecache did not answer $url from Redis" >&2; exit 1; }
    url="http://127.0.0.1:$sc_port/fill/1k?n=check"
    second_response "$url" | grep -qi '^cache-status:.*; *hit' ||
        { echo "sidecache did not store $url" >&2; exit 1; }
    url="http://127.0.0.1:$nginx_cache_port/fill/1k?n=check"
    second_response "$url" | grep -qi '^x-cache-status: *hit' ||
        { echo "nginx did not store $url" >&2; exit 1; }
    curl -sf -o /dev/null "http://127.0.0.1:$sc_port/pass/1k"
    curl -sf -o /dev/null "http://127.0.0.1:$nginx_pass_port/pass/1k"
    curl -sf -o /dev/null "http://127.0.0.1:$relay_port/pass/1k"
    # redis-benchmark GETs the key "key:__rand_int__" (without -r it is not
    # substituted); -d sizes only SET values, so store the 1 KiB value first
    # or every GET answers nil.
    head -c 1024 /dev/zero | tr '\0' r | redis-cli -p $redis_port -x SET key:__rand_int__ >/dev/null
    [ "$(redis-cli -p $redis_port STRLEN key:__rand_int__)" = 1024 ]
}

# Clock ticks of user + system time of PID and of its children (nginx: the
# master, its workers and the cache manager; a process's own figure covers
# all its threads), then of user time alone.
cpu_ticks() { # PID
    local pid total=0 user=0 stat fields
    for pid in "$1" $(cat /proc/"$1"/task/*/children 2>/dev/null); do
        stat=$(cat "/proc/$pid/stat" 2>/dev/null) || continue
        # After "pid (comm) ": utime and stime are the 12th and 13th fields.
        read -ra fields <<<"${stat##*) }"
        total=$((total + fields[11] + fields[12]))
        user=$((user + fields[11]))
    done
    echo "$total $user"
}

# Connections the origin has accepted and requests it has answered so far
# (stub_status): tells hits from fetches in each cell, and whether a proxy
# reuses its upstream connections.
origin_counters() {
    curl -sf "http://127.0.0.1:$origin_port/nginx_status" | awk 'NR == 3 { print $1, $3 }'
}

# One HTTP cell: a warm-up, then the measured wrk run with the server's CPU
# time (and the backend's: origin or Redis) sampled around it. Appends a
# line to $raw.
http_cell() { # ROUND PATH SERVER
    local round=$1 path=$2 server=$3 port pid backend=$origin_pid url_path script=()
    case $server in
        sidecache) port=$sc_port; pid=$sc_pid ;;
        nginx) port=$nginx_cache_port; pid=$nginx_pid ;;
        relay) port=$relay_port; pid=$relay_pid ;;
    esac
    case $path in
        pass) url_path=/pass/1k; [ "$server" != nginx ] || port=$nginx_pass_port ;;
        hit1k) url_path=/cache/1k ;;
        hit16k) url_path=/cache/16k ;;
        hit256k) url_path=/cache/256k ;;
        redis) url_path=/cache/1k; port=$sc_redis_port; pid=$sc_redis_pid; backend=$redis_pid ;;
        fill) url_path=/fill/1k; script=(-s "$fill_lua") ;;
    esac
    local url=http://127.0.0.1:$port$url_path
    local load=(wrk -t"$threads" -c"$connections" "${script[@]}")
    local fill_args=()
    [ "$path" != fill ] || fill_args=(-- "w$round$server")
    "${load[@]}" -d"${warmup}s" "$url" "${fill_args[@]}" >/dev/null
    [ "$path" != fill ] || fill_args=(-- "r$round$server")

    local cpu0 user0 backend0 cpu1 user1 backend1 conns0 fetched0 conns1 fetched1 out
    read -r cpu0 user0 < <(cpu_ticks "$pid"); read -r backend0 _ < <(cpu_ticks "$backend")
    read -r conns0 fetched0 < <(origin_counters)
    out=$("${load[@]}" -d"${seconds}s" --latency "$url" "${fill_args[@]}")
    read -r cpu1 user1 < <(cpu_ticks "$pid"); read -r backend1 _ < <(cpu_ticks "$backend")
    local cpu=$((cpu1 - cpu0)) user=$((user1 - user0)) backend_cpu=$((backend1 - backend0))
    read -r conns1 fetched1 < <(origin_counters)
    # Less our own status request, and its connection.
    local conns=$((conns1 - conns0 - 1)) fetched=$((fetched1 - fetched0 - 1))
    echo "$out" | awk -v round="$round" -v path="$path" -v server="$server" \
        -v cpu="$cpu" -v user="$user" -v backend="$backend_cpu" -v fetched="$fetched" -v conns="$conns" '
        / requests in / { requests = $1 }
        /^Requests\/sec:/ { rps = $2 }
        /^ +50% / { p50 = $2 }
        /^ +99% / { p99 = $2 }
        /Non-2xx or 3xx responses:/ { bad = $NF }
        /Socket errors:/ { sub(/^ *Socket errors: */, ""); errors = $0 }
        END {
            OFS = "\t"
            print round, path, server, rps, p50, p99, requests, cpu, backend, fetched, conns, bad + 0, errors == "" ? "-" : errors, user
        }' >>"$raw"
    report_cell
}

# The ceiling for Redis hits: redis-benchmark GET of the same 1 KiB value on
# the same Redis, 64 clients. It counts requests, not seconds: a warm-up
# measures the rate, and the run is sized to last about $seconds.
redis_benchmark_cell() { # ROUND
    local bench=(redis-benchmark -h 127.0.0.1 -p "$redis_port" -t get -c "$connections" -d 1024 --csv)
    local rate requests cpu0 user0 cpu1 user1 out
    rate=$("${bench[@]}" -n $((warmup * 50000)) | awk -F'"' 'NR == 2 { print int($4) }')
    requests=$((rate * seconds))
    read -r cpu0 user0 < <(cpu_ticks "$redis_pid")
    out=$("${bench[@]}" -n "$requests")
    read -r cpu1 user1 < <(cpu_ticks "$redis_pid")
    # CSV: test, rps, avg, min, p50, p95, p99, max (latencies in ms)
    echo "$out" | awk -F'"' -v round="$1" -v requests="$requests" -v cpu=$((cpu1 - cpu0)) -v user=$((user1 - user0)) '
        NR == 2 { OFS = "\t"; print round, "redis", "redis-benchmark", $4, $10 "ms", $14 "ms", requests, cpu, 0, 0, 0, 0, "-", user }' >>"$raw"
    report_cell
}

# A line per cell as it finishes, so a long run shows where it is.
report_cell() {
    awk -F'\t' 'END { printf "   %-8s %-16s %10s req/s  p50 %-9s p99 %-9s\n", $2, $3, $4, $5, $6 }' "$raw"
}

# The cells of one round. The paths start at a different one each round,
# and on even rounds nginx (or redis-benchmark) runs before sidecache, so
# neither server always runs first or always after the same neighbour; the
# pass-through cell's three servers rotate.
run_round() { # ROUND
    local round=$1 paths=(pass hit1k hit16k hit256k redis fill) i path server other order
    local offset=$(((round - 1) * ${#paths[@]} / rounds))
    echo "== round $round of $rounds"
    for i in "${!paths[@]}"; do
        path=${paths[$(((i + offset) % ${#paths[@]}))]}
        other=nginx
        [ "$path" != redis ] || other=redis-benchmark
        order=(sidecache "$other")
        ((round % 2)) || order=("$other" sidecache)
        if [ "$path" = pass ]; then
            order=(sidecache nginx relay sidecache nginx)
            order=("${order[@]:$((round % 3)):3}")
        fi
        for server in "${order[@]}"; do
            if [ "$server" = redis-benchmark ]; then
                redis_benchmark_cell "$round"
            else
                http_cell "$round" "$path" "$server"
            fi
        done
    done
}

# What the report names as the machine and the versions measured.
write_meta() {
    local commit dirty=""
    # The last commit that changed what is measured, not the bench's own.
    commit=$(git log -1 --format=%h -- src Cargo.toml Cargo.lock)
    git diff --quiet HEAD -- src Cargo.toml Cargo.lock || dirty=" (with uncommitted changes)"
    {
        printf 'command\t%s\n' "$command_line"
        printf 'date\t%s\n' "$(date -u '+%Y-%m-%d %H:%M UTC')"
        printf 'cpus\t%s\n' "$(nproc)"
        printf 'cpu_model\t%s\n' "$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
        printf 'kernel\t%s\n' "$(uname -r)"
        printf 'nginx\t%s\n' "$(nginx -v 2>&1 | sed 's/.*nginx\///')"
        printf 'wrk\t%s\n' "$(wrk --version 2>&1 | awk 'NR == 1 { print $2 }')"
        printf 'redis\t%s\n' "$(redis-server --version | sed 's/.* v=\([^ ]*\).*/\1/')"
        printf 'sidecache\t%s%s\n' "$commit" "$dirty"
        printf 'seconds\t%s\n' "$seconds"
        printf 'warmup\t%s\n' "$warmup"
        printf 'rounds\t%s\n' "$rounds"
        printf 'load\twrk -t%s -c%s\n' "$threads" "$connections"
        printf 'clk_tck\t%s\n' "$(getconf CLK_TCK)"
    } >"$work/meta.tsv"
}

main() {
    PATH=$PATH:/usr/sbin # nginx lives there, outside a user's PATH
    install_missing
    check_ports_free
    echo "== cargo build --release"
    cargo build --release --quiet --bin sidecache --example relay_floor

    trap cleanup EXIT
    trap 'exit 130' INT TERM
    # On tmpfs when there is one, so that nginx's proxy_cache, which is
    # files, is in memory like sidecache's and the fill cells measure nginx
    # rather than the disk (on this VM's disk its first fill ran 3-5x slower).
    local base=${TMPDIR:-/tmp}
    [ ! -w /dev/shm ] || base=/dev/shm
    work=$(mktemp -d "$base/sidecache-compare.XXXXXX")
    # Started by root, nginx's workers run as nobody and must reach the files.
    chmod 755 "$work"
    raw=$work/raw.tsv
    : >"$raw"

    start_origin
    start_nginx_proxy
    start_relay_floor
    start_redis
    start_sidecache_memory
    start_sidecache_redis
    write_fill_script
    prime_and_check

    local cells=13 estimate
    estimate=$((cells * rounds * (seconds + warmup + 1)))
    echo "== $cells cells x $rounds rounds x (${seconds}s + ${warmup}s warm-up): about $((estimate / 60)) min $((estimate % 60)) s"
    local round
    for round in $(seq "$rounds"); do run_round "$round"; done

    write_meta
    local stamp results=bench/results svg
    stamp=$(date '+%Y-%m-%d-%H%M')${quick:+-quick}
    svg=$results/compare${quick:+-$stamp}.svg
    mkdir -p "$results"
    # The cells as measured, kept beside the report so that it can be
    # rendered again without running again.
    cp "$raw" "$results/compare-$stamp.cells.tsv"
    cp "$work/meta.tsv" "$results/compare-$stamp.meta.tsv"
    python3 bench/compare-report.py "$raw" "$work/meta.tsv" \
        "$results/compare-$stamp.md" "$results/compare-$stamp.csv" "$svg"
    echo "== wrote $results/compare-$stamp.md, .csv, .cells.tsv, .meta.tsv and $svg"
}

main
