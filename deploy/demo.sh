#!/usr/bin/env bash
# DwarfStar's main job: fetch the default model (SmolLM2-135M-Instruct Q4_1) if missing, build the release
# binary, and serve it: the OpenAI-compatible API and the chat page, until interrupted (Ctrl-C).
# Env: DWARFSTAR_HTTP_ADDR (default 127.0.0.1:8080), DWARFSTAR_THREADS (default: all cores).
# Extra arguments go to `dwarfstar serve`.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
models=${DWARFSTAR_MODELS_DIR:-$here/models}
addr=${DWARFSTAR_HTTP_ADDR:-127.0.0.1:8080}
"$here/deploy/fetch-models.sh" smollm2 >/dev/null
cargo build --release --quiet --manifest-path "$here/Cargo.toml" -p dwarfstar
threads=()
[ -n "${DWARFSTAR_THREADS:-}" ] && threads=(--threads "$DWARFSTAR_THREADS")
echo "API: http://$addr/v1"
echo "Chat page: http://$addr/"
echo "Try: curl http://$addr/v1/chat/completions -H 'Content-Type: application/json' \\"
echo "       -d '{\"model\":\"SmolLM2-135M-Instruct-Q4_1\",\"messages\":[{\"role\":\"user\",\"content\":\"Hi!\"}]}'"
exec "$here/target/release/dwarfstar" serve --model "$models/SmolLM2-135M-Instruct-Q4_1.gguf" \
  --http-addr "$addr" "${threads[@]}" "$@"
