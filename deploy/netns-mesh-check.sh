#!/usr/bin/env bash
# mDNS discovery and admission across network namespaces (needs root and iproute2):
# 3 namespaces on one bridge (egress shaped to 1 Gbit/s); nodes 1 and 2 share the join secret,
# node 3 has another. Nodes 1 and 2 must find each other by mDNS alone (no --peer), exchange
# capabilities and echo a frame over QUIC; node 3 must be admitted by nobody.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p dwarfstar-mesh --example mesh_node
BIN="$(pwd)/target/release/examples/mesh_node"
STATE="$(mktemp -d /tmp/netns-mesh-check.XXXXXX)"
trap 'rm -rf "$STATE"' EXIT
export BIN STATE
deploy/netns-lan.sh -n 3 --rate 1gbit -- '
  if [ "$NS_INDEX" = 3 ]; then
    DWARFSTAR_SECRET=not-the-mesh-secret-000 "$BIN" --state "$STATE/n$NS_INDEX" \
      --listen /ip4/$NS_IP/tcp/7000 --quic $NS_IP:7001 --expect-peers 1 --timeout 8
    rc=$?
    if [ $rc = 1 ]; then echo "PASS: wrong-secret node admitted by nobody"; exit 0; fi
    echo "FAIL: wrong-secret node exited with $rc"; exit 1
  fi
  DWARFSTAR_SECRET=the-mesh-secret-0123456789 "$BIN" --state "$STATE/n$NS_INDEX" \
    --listen /ip4/$NS_IP/tcp/7000 --quic $NS_IP:7001 --expect-peers 1 --timeout 30 --linger 3'
echo "netns-mesh-check: PASS"
