#!/usr/bin/env bash
# A LAN of N network namespaces on one bridge, to run mesh nodes as if on separate machines.
#
#   deploy/netns-lan.sh [-n N] [--rate RATE] [--delay DELAY] [--logs DIR] -- COMMAND [ARGS...]
#
# Each namespace gets one interface, eth0, with 10.213.0.<i>/24 on a shared bridge (no host
# address, no default route: traffic never leaves the bridge), loopback up, and a multicast route
# so mDNS (224.0.0.251) reaches every namespace (bridge multicast snooping off: multicast floods).
# --rate shapes each namespace's egress with `tc qdisc ... tbf rate RATE` (e.g. 1gbit),
# --delay adds a netem delay (e.g. 1ms); both together stack netem under tbf.
#
# COMMAND runs once in every namespace (through bash -c, so it may be a small script), in
# parallel, with these variables set: NS_INDEX (1..N), NS_COUNT, NS_NAME, NS_IP, NS_PEERS (the
# other namespaces' IPs, space-separated). Output goes to <logs>/ns<i>.log, printed when all
# commands have ended. The script exits with the first non-zero status of the commands (0 when all succeed),
# and always removes the namespaces, veths and bridge it made (trap on EXIT/INT/TERM).
#
# Example (mDNS discovery between 2 namespaces, no static peers):
#   cargo build --release -p dwarfstar-mesh --example mesh_node
#   DWARFSTAR_SECRET=s3cret deploy/netns-lan.sh -n 2 -- \
#     'target/release/examples/mesh_node --state /tmp/ns$NS_INDEX --listen /ip4/$NS_IP/tcp/7000 \
#        --quic $NS_IP:7001 --expect-peers $((NS_COUNT-1)) --timeout 30 --linger 3'
# Needs root (ip netns, veth, bridge) and iproute2; tc only with --rate/--delay.
set -euo pipefail

N=2
RATE=""
DELAY=""
LOGS=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        -n) N="$2"; shift 2 ;;
        --rate) RATE="$2"; shift 2 ;;
        --delay) DELAY="$2"; shift 2 ;;
        --logs) LOGS="$2"; shift 2 ;;
        --) shift; break ;;
        -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
        *) echo "netns-lan: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
[[ $# -gt 0 ]] || { echo "netns-lan: no command given (see --help)" >&2; exit 2; }
[[ "$N" =~ ^[0-9]+$ && "$N" -ge 1 && "$N" -le 250 ]] || { echo "netns-lan: -n must be 1..250" >&2; exit 2; }
[[ $(id -u) -eq 0 ]] || { echo "netns-lan: needs root" >&2; exit 2; }
command -v ip >/dev/null || { echo "netns-lan: iproute2 (ip) is required" >&2; exit 2; }
if [[ -n "$RATE$DELAY" ]] && ! command -v tc >/dev/null; then
    echo "netns-lan: tc (iproute2) is required for --rate/--delay" >&2; exit 2
fi
CMD="$*"
TAG="dsl$$"                 # unique per run; interface names stay <= 15 characters
BR="br$TAG"
SUBNET="10.213.0"
LOGS="${LOGS:-$(mktemp -d /tmp/netns-lan.XXXXXX)}"
mkdir -p "$LOGS"
PIDS=()

cleanup() {
    set +e
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null; done
    for i in $(seq 1 "$N"); do
        ip netns pids "$TAG-$i" 2>/dev/null | xargs -r kill 2>/dev/null
        ip netns del "$TAG-$i" 2>/dev/null
        ip link del "h$TAG-$i" 2>/dev/null
    done
    ip link del "$BR" 2>/dev/null
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ip link add "$BR" type bridge
ip link set "$BR" type bridge mcast_snooping 0 2>/dev/null || true
ip link set "$BR" up

PEERS_ALL=""
for i in $(seq 1 "$N"); do PEERS_ALL="$PEERS_ALL $SUBNET.$i"; done

for i in $(seq 1 "$N"); do
    ns="$TAG-$i"
    ip netns add "$ns"
    ip link add "h$TAG-$i" type veth peer name "e$TAG-$i"
    ip link set "h$TAG-$i" master "$BR" up
    ip link set "e$TAG-$i" netns "$ns"
    ip -n "$ns" link set "e$TAG-$i" name eth0
    ip -n "$ns" link set lo up
    ip -n "$ns" addr add "$SUBNET.$i/24" dev eth0
    ip -n "$ns" link set eth0 up multicast on
    ip -n "$ns" route add 224.0.0.0/4 dev eth0
    if [[ -n "$DELAY" && -n "$RATE" ]]; then
        ip netns exec "$ns" tc qdisc add dev eth0 root handle 1: netem delay "$DELAY"
        ip netns exec "$ns" tc qdisc add dev eth0 parent 1: handle 2: tbf rate "$RATE" burst 256kb latency 50ms
    elif [[ -n "$DELAY" ]]; then
        ip netns exec "$ns" tc qdisc add dev eth0 root netem delay "$DELAY"
    elif [[ -n "$RATE" ]]; then
        ip netns exec "$ns" tc qdisc add dev eth0 root tbf rate "$RATE" burst 256kb latency 50ms
    fi
done
echo "netns-lan: $N namespaces ($TAG-1..$TAG-$N) on $BR, $SUBNET.1-$N${RATE:+, rate $RATE}${DELAY:+, delay $DELAY}; logs in $LOGS"

for i in $(seq 1 "$N"); do
    ns="$TAG-$i"
    peers=$(echo "$PEERS_ALL" | tr ' ' '\n' | grep -vx "$SUBNET.$i" | grep . | tr '\n' ' ' | sed 's/ $//')
    (
        ip netns exec "$ns" env NS_INDEX="$i" NS_COUNT="$N" NS_NAME="$ns" NS_IP="$SUBNET.$i" \
            NS_PEERS="$peers" bash -c "$CMD" >"$LOGS/ns$i.log" 2>&1
    ) &
    PIDS+=("$!")
done
status=0
for idx in "${!PIDS[@]}"; do
    rc=0
    wait "${PIDS[$idx]}" || rc=$?
    if [[ $rc -ne 0 ]]; then
        echo "netns-lan: ns$((idx + 1)) exited with $rc" >&2
        [[ $status -ne 0 ]] || status=$rc
    fi
done
PIDS=()
for i in $(seq 1 "$N"); do echo "---- ns$i ($SUBNET.$i)"; cat "$LOGS/ns$i.log"; done
exit "$status"
