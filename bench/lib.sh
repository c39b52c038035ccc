# shellcheck shell=bash
# Shell helpers the bench scripts share (sourced, not run). A script sets
# $work (its scratch directory, where each process NAME logs to NAME.log)
# before it calls wait_for_port.

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
