#!/usr/bin/env bash
# Three quicmesh nodes in three network namespaces on one host, finding each other through DNS
# SRV records served by dnsmasq. Nothing touches the host's own network: the namespaces hang
# off a bridge inside a fourth namespace, which also runs dnsmasq.
#
#   deploy/netns-mesh.sh up      # start it and print how to talk to it
#   deploy/netns-mesh.sh check   # start it, prove the mesh formed through SRV, tear it down
#   deploy/netns-mesh.sh down    # tear it down
#
# Needs root and `ip netns`. Installs dnsmasq (the dnsmasq-base package) if it is missing.
# QUICMESH_BIN names the binary (default: target/release/quicmesh, then `quicmesh` on PATH);
# QM_PREFIX prefixes every namespace and interface (default qm), QM_STATE is where certificates,
# configs and logs go (default /tmp/$QM_PREFIX-netns).
set -euo pipefail

PREFIX=${QM_PREFIX:-qm}
STATE=${QM_STATE:-/tmp/$PREFIX-netns}
NET=10.77.0
HUB=$PREFIX-hub
ZONE=mesh.test
SRV=_quicmesh._udp.$ZONE
NODES=(alpha bravo charlie)
TTL=5

say() { printf '%s\n' "netns-mesh: $*" >&2; }
die() { say "error: $*"; exit 1; }

find_bin() {
    if [[ -n ${QUICMESH_BIN:-} ]]; then echo "$QUICMESH_BIN"; return; fi
    local here
    here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
    if [[ -x $here/target/release/quicmesh ]]; then echo "$here/target/release/quicmesh"; return; fi
    command -v quicmesh || die "no quicmesh binary: build it (cargo build --release) or set QUICMESH_BIN"
}

preflight() {
    [[ $(id -u) == 0 ]] || die "needs root (network namespaces)"
    command -v ip >/dev/null || die "needs iproute2 (ip)"
    ip netns list >/dev/null 2>&1 || die "ip netns is not usable here"
    if ! command -v dnsmasq >/dev/null; then
        say "installing dnsmasq-base"
        command -v apt-get >/dev/null || die "dnsmasq is missing and there is no apt-get to install it"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dnsmasq-base >/dev/null \
            || { apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dnsmasq-base >/dev/null; } \
            || die "cannot install dnsmasq-base"
    fi
}

ip_of() { # node index (0-based) -> address
    echo "$NET.$((11 + $1))"
}

down() {
    local pids=()
    for pidfile in "$STATE"/*.pid; do
        [[ -e $pidfile ]] || continue
        pids+=("$(cat "$pidfile")")
        rm -f "$pidfile"
    done
    # All at once: each node takes a moment to say goodbye and drain.
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    done
    for n in "${NODES[@]}" hub; do
        ip netns del "$PREFIX-$n" 2>/dev/null || true
    done
}

up() {
    preflight
    local bin
    bin=$(find_bin)
    down
    mkdir -p "$STATE"
    say "state in $STATE, binary $bin"

    # Certificates: a CA for the mesh, one per node, one client.
    if [[ ! -e $STATE/certs/ca.crt ]]; then
        "$bin" certs init --trust-domain netns.quicmesh --out "$STATE/certs" >/dev/null
        for n in "${NODES[@]}"; do "$bin" certs node "$n" --ca "$STATE/certs" --out "$STATE/certs" >/dev/null; done
        "$bin" certs client ops --ca "$STATE/certs" --out "$STATE/certs" >/dev/null
    fi

    # The hub: a bridge, and dnsmasq on it.
    ip netns add "$HUB"
    ip -n "$HUB" link set lo up
    ip -n "$HUB" link add br0 type bridge
    ip -n "$HUB" addr add "$NET.1/24" dev br0
    ip -n "$HUB" link set br0 up

    local dns_args=()
    for i in "${!NODES[@]}"; do
        local n=${NODES[$i]}
        local ns=$PREFIX-$n
        ip netns add "$ns"
        ip -n "$ns" link set lo up
        ip link add "$PREFIX-$n-v" netns "$ns" type veth peer name "$n" netns "$HUB"
        ip -n "$ns" link set "$PREFIX-$n-v" name eth0
        ip -n "$ns" addr add "$(ip_of "$i")/24" dev eth0
        ip -n "$ns" link set eth0 up
        ip -n "$HUB" link set "$n" master br0
        ip -n "$HUB" link set "$n" up
        # Priority 10 for alpha and bravo (weights 3:1), 20 for charlie: clients prefer the first two.
        local prio=10 weight=1
        [[ $n == alpha ]] && weight=3
        [[ $n == charlie ]] && prio=20
        dns_args+=(--srv-host="$SRV,$n.$ZONE,7400,$prio,$weight" --host-record="$n.$ZONE,$(ip_of "$i")")
    done
    ip netns exec "$HUB" dnsmasq --conf-file=/dev/null --no-resolv --no-hosts --bind-interfaces \
        --listen-address="$NET.1" --port=53 --local-ttl="$TTL" --local="/$ZONE/" \
        --pid-file="$STATE/dnsmasq.pid" --log-queries --log-facility="$STATE/dnsmasq.log" \
        "${dns_args[@]}"

    # The nodes: each knows only the SRV name and the name server.
    for i in "${!NODES[@]}"; do
        local n=${NODES[$i]}
        cat >"$STATE/$n.toml" <<EOF
name = "$n"
listen = "$(ip_of "$i"):7400"
discovery = ["srv:$SRV"]

[dns]
servers = ["$NET.1"]

[tls]
ca = "$STATE/certs/ca.crt"
cert = "$STATE/certs/node-$n.crt"
key = "$STATE/certs/node-$n.key"
EOF
        ip netns exec "$PREFIX-$n" "$bin" node --config "$STATE/$n.toml" >"$STATE/$n.log" 2>&1 &
        echo $! >"$STATE/$n.pid"
    done
    say "up: nodes ${NODES[*]} on $NET.11-13:7400, dnsmasq on $NET.1:53 serving $SRV"
}

client() { # run a client command from alpha's namespace
    local bin
    bin=$(find_bin)
    ip netns exec "$PREFIX-alpha" "$bin" "$@" --ca "$STATE/certs/ca.crt" \
        --cert "$STATE/certs/client-ops.crt" --cert-key "$STATE/certs/client-ops.key"
}

check() {
    trap down EXIT
    up
    local deadline=$((SECONDS + 30))
    # Each node must see the other two with a live link.
    for i in "${!NODES[@]}"; do
        local entry
        entry="$(ip_of "$i"):7400"
        until out=$(client status --entry "$entry" 2>&1) && [[ $(grep -c ' up *$' <<<"$out") == 2 ]]; do
            if ((SECONDS > deadline)); then
                printf '%s\n' "$out" >&2
                for n in "${NODES[@]}"; do say "--- $n.log"; tail -n 20 "$STATE/$n.log" >&2; done
                die "the mesh did not form within 30s (seen from ${NODES[$i]})"
            fi
            sleep 0.2
        done
        say "${NODES[$i]} sees both peers up"
    done
    # A client that knows only the SRV name enters through priority 10 (alpha or bravo).
    out=$(client status --discovery "srv:$SRV" --dns-server "$NET.1")
    printf '%s\n' "$out"
    grep -q "SRV" "$STATE/dnsmasq.log" || die "dnsmasq saw no SRV query"
    # Every node found the others through DNS: none was given a peer.
    for n in "${NODES[@]}"; do
        grep -q 'dialled' "$STATE/$n.log" || grep -q 'peer connected' "$STATE/$n.log" \
            || die "$n logged no connection"
    done
    # Stop cleanly: SIGTERM to all, each exits 0.
    local n pid
    for n in "${NODES[@]}"; do kill -TERM "$(cat "$STATE/$n.pid")"; done
    for n in "${NODES[@]}"; do
        pid=$(cat "$STATE/$n.pid")
        rm -f "$STATE/$n.pid"
        wait "$pid" || die "$n exited with status $? after SIGTERM"
    done
    say "check passed: 3 nodes in 3 namespaces formed a full mesh from dnsmasq's SRV records"
}

case ${1:-} in
up) up ;;
down) down; say "down" ;;
check) check ;;
*) echo "usage: $0 up|down|check" >&2; exit 2 ;;
esac
