#!/usr/bin/env bash
# DwarfStar's main job: a small mesh serving the default model. Fetches SmolLM2-135M-Instruct Q4_1 if
# missing, builds, starts two daemons on loopback that admit each other with a fresh join secret,
# splits the model into two pipeline stages across them, shows `meshctl status`, and serves the
# OpenAI-compatible API and chat page from node 1 until interrupted (Ctrl-C), then stops both.
# Node 1 uses the default ports: HTTP 8080, gRPC 7070, mesh 7000 (TCP), QUIC 7001 (UDP).
# Env: DWARFSTAR_HTTP_ADDR (default 127.0.0.1:8080), DWARFSTAR_THREADS (per daemon, default 1).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
models=${DWARFSTAR_MODELS_DIR:-$here/models}
addr=${DWARFSTAR_HTTP_ADDR:-127.0.0.1:8080}
threads=${DWARFSTAR_THREADS:-1}
model="$models/SmolLM2-135M-Instruct-Q4_1.gguf"
"$here/deploy/fetch-models.sh" smollm2 >/dev/null
cargo build --release --quiet --manifest-path "$here/Cargo.toml" -p dwarfstar -p meshctl
bin="$here/target/release"

run=$(mktemp -d "${TMPDIR:-/tmp}/dwarfstar-mesh.XXXXXX")
pids=()
cleanup() {
  trap - EXIT INT TERM
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$run"
}
trap cleanup EXIT INT TERM
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$run/secret"
mkdir -p "$run/node1" "$run/node2"

# Node 2: a worker on its own ports, waiting for a plan; its API (127.0.0.1:8180) answers once a
# `meshctl --addr http://127.0.0.1:7170 load -m MODEL` makes it a coordinator.
"$bin/dwarfstar" serve --secret-file "$run/secret" --state-dir "$run/node2" --no-mdns \
  --mesh-addr 127.0.0.1:7100 --quic-addr 127.0.0.1:7101 --grpc-listen 127.0.0.1:7170 \
  --http-addr 127.0.0.1:8180 --models-dir "$models" --threads "$threads" > "$run/node2.log" 2>&1 &
pids+=($!)
# Node 1: coordinates the model over both nodes and serves the API.
"$bin/dwarfstar" serve --secret-file "$run/secret" --state-dir "$run/node1" --no-mdns \
  --mesh-addr 127.0.0.1:7000 --quic-addr 127.0.0.1:7001 --grpc-listen 127.0.0.1:7070 \
  --peer 127.0.0.1:7100 --mesh-nodes 2 --stages 2 --model "$model" \
  --http-addr "$addr" --threads "$threads" "$@" > "$run/node1.log" 2>&1 &
pids+=($!)

for _ in $(seq 1 600); do
  grep -q "listening on http://" "$run/node1.log" && break
  if ! kill -0 "${pids[1]}" 2>/dev/null; then
    echo "node 1 stopped:" >&2; cat "$run/node1.log" >&2; exit 1
  fi
  sleep 0.2
done
grep "dwarfstar mesh: plan" "$run/node1.log" || true
"$bin/meshctl" --addr http://127.0.0.1:7070 status || true
echo "API: http://$addr/v1"
echo "Chat page: http://$addr/"
echo "Try: curl http://$addr/v1/chat/completions -H 'Content-Type: application/json' \\"
echo "       -d '{\"model\":\"SmolLM2-135M-Instruct-Q4_1\",\"messages\":[{\"role\":\"user\",\"content\":\"Hi!\"}]}'"
echo "Ctrl-C stops both nodes. Logs: $run/node1.log, $run/node2.log"
wait "${pids[1]}"
