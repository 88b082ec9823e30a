#!/usr/bin/env bash
# Speculative decoding through a 2-stage pipeline mesh: greedy decode tokens/s of one request (the
# time of 16+N tokens less that of 16, best of three), for one daemon and for a 2-stage mesh, each
# plain and with a draft model drafting on every step (--spec-always), the acceptance rate, and the
# hop cost per emitted token (the mesh's time per token less one daemon's).
# The mesh runs on loopback, or with --tbf across two network namespaces on a bridge whose egress
# is shaped to 1 Gbit/s with tc tbf (needs root and iproute2; see deploy/netns-lan.sh).
#
#   deploy/bench-spec-mesh.sh [--tbf] [MODEL]   (default: models/SmolLM2-135M-Instruct-Q4_1.gguf)
#   env: N (tokens, 128), SPEC_TOKENS (3), THREADS (per daemon, 1), DRAFT, DRAFT_RECIPE (dwarf-q2)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
tbf=0
if [ "${1:-}" = --tbf ]; then tbf=1; shift; fi
bin=${DWARFSTAR_BIN:-$here/target/release/dwarfstar}
model=$(realpath "${1:-$here/models/SmolLM2-135M-Instruct-Q4_1.gguf}")
n=${N:-128}; k=${SPEC_TOKENS:-3}; t=${THREADS:-1}; recipe=${DRAFT_RECIPE:-dwarf-q2}
[ -x "$bin" ] || (cd "$here" && cargo build --release -p dwarfstar)
work=$(mktemp -d /tmp/bench-spec-mesh.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
draft=${DRAFT:-$work/draft-$recipe.gguf}
[ -f "$draft" ] || "$bin" quantize "$model" "$draft" --recipe "$recipe" --allow-requantize >/dev/null 2>&1
echo -n "the-bench-mesh-secret-0123456789" > "$work/secret"
export bin model n k t draft work here
# wait_for FILE TEXT: until FILE has a line with TEXT; prints that line.
wait_for() {
  for _ in $(seq 1 600); do
    if grep -q "$2" "$1" 2>/dev/null; then grep -m1 "$2" "$1"; return 0; fi
    sleep 0.1
  done
  echo "timed out waiting for '$2' in $1" >&2; cat "$1" >&2; return 1
}
export -f wait_for
spec_flags() { [ "$1" = spec ] && echo "--draft-model $draft --spec-tokens $k --spec-always" || true; }
export -f spec_flags
# One daemon alone.
one() {
  "$bin" serve --model "$model" --threads "$t" --http-addr 127.0.0.1:0 --grpc-listen off \
    $(spec_flags "$1") >"$work/one.out" 2>"$work/one.err" &
  local pid=$!
  local base; base=$(wait_for "$work/one.out" 'http://' | grep -o 'http://[0-9.:]*' | head -1)
  python3 "$here/deploy/decode-rate.py" "$base" "$n"
  kill $pid; wait $pid 2>/dev/null || true
}
# node ROLE IP MODE TAG: a mesh daemon (worker, or coordinator of the model in 2 stages).
node() {
  local role=$1 ip=$2 mode=$3 tag=$4 extra=()
  if [ "$role" = coord ]; then
    extra=(--model "$model" --http-addr 127.0.0.1:0 --mesh-nodes 2 --stages 2 --peer "$PEER")
  fi
  "$bin" serve --threads "$t" --no-mdns --grpc-listen 127.0.0.1:0 --mesh-addr "$ip:${MESH_PORT:-0}" \
    --quic-addr "$ip:${QUIC_PORT:-0}" --state-dir "$work/state-$tag" --secret-file "$work/secret" \
    --models-dir "$(dirname "$model")" "${extra[@]}" $(spec_flags "$mode") \
    >"$work/$tag.out" 2>"$work/$tag.err" &
}
export -f node
mesh_loopback() {
  rm -rf "$work"/state-*
  node worker 127.0.0.1 "$1" w; local w=$!
  PEER=$(wait_for "$work/w.out" 'dwarfstar mesh: node' | grep -o '/ip4/127.0.0.1/tcp/[0-9]*' | head -1 | sed 's|/ip4/\(.*\)/tcp/|\1:|')
  export PEER
  node coord 127.0.0.1 "$1" c; local c=$!
  local base; base=$(wait_for "$work/c.out" 'listening on http://' | grep -o 'http://[0-9.:]*' | head -1)
  python3 "$here/deploy/decode-rate.py" "$base" "$n"
  kill $c $w; wait $c $w 2>/dev/null || true
}
mesh_tbf() {
  rm -rf "$work"/state-* "$work/done" "$work/result"
  MODE=$1 "$here/deploy/netns-lan.sh" -n 2 --rate 1gbit --logs "$work/ns" -- '
    export MESH_PORT=7000 QUIC_PORT=7001
    if [ "$NS_INDEX" = 2 ]; then
      node worker "$NS_IP" "$MODE" w; w=$!
      for _ in $(seq 1 1200); do [ -f "$work/done" ] && break; sleep 0.5; done
      kill $w; wait $w 2>/dev/null; exit 0
    fi
    export PEER=${NS_PEERS%% *}:7000
    wait_for "$work/w.out" "mesh worker ready" >/dev/null || { touch "$work/done"; exit 1; }
    node coord "$NS_IP" "$MODE" c; c=$!
    base=$(wait_for "$work/c.out" "listening on http://" | grep -o "http://[0-9.:]*" | head -1)
    python3 "$here/deploy/decode-rate.py" "$base" "$n" > "$work/result"; rc=$?
    touch "$work/done"; kill $c; wait $c 2>/dev/null; exit $rc' >"$work/netns.out" 2>&1 ||
    { cat "$work/netns.out" "$work"/*.err >&2; return 1; }
  cat "$work/result"
}
link=loopback; [ $tbf = 1 ] && link="1 Gbit/s tbf"
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $t thread(s) per daemon"
echo "model: $(basename "$model"), draft: $(basename "$draft"), $n tokens, up to $k drafts a step, mesh link: $link"
printf '%-6s %10s %10s %10s %10s %12s %10s\n' mode "one tok/s" "accepted" "mesh tok/s" "accepted" "hop ms/tok" "mesh/one"
for mode in ${MODES:-plain spec}; do
  read -r r1 acc1 < <(one "$mode")
  if [ $tbf = 1 ]; then read -r r2 acc2 < <(mesh_tbf "$mode"); else read -r r2 acc2 < <(mesh_loopback "$mode"); fi
  python3 -c "
import sys; m, r1, a1, r2, a2 = sys.argv[1], float(sys.argv[2]), sys.argv[3], float(sys.argv[4]), sys.argv[5]
if m == 'plain': a1 = a2 = '-'
print(f'{m:<6} {r1:10.1f} {a1:>10} {r2:10.1f} {a2:>10} {1000/r2 - 1000/r1:12.2f} {r2/r1:10.2f}')" \
    "$mode" "$r1" "$acc1" "$r2" "$acc2"
done
