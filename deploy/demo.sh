#!/usr/bin/env bash
# DwarfStar's main job on one machine: fetch the default model (SmolLM2-135M-Instruct Q4_1) if missing,
# build the release binary, and chat with it. Extra arguments go to `dwarfstar run`.
# Usage: deploy/demo.sh [--prompt TEXT] [other dwarfstar run flags]
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
models=${DWARFSTAR_MODELS_DIR:-$here/models}
"$here/deploy/fetch-models.sh" smollm2 >/dev/null
cargo build --release --quiet --manifest-path "$here/Cargo.toml" -p dwarfstar
args=("$@")
if [ ${#args[@]} -eq 0 ]; then
  args=(--prompt "What is the capital of France? Answer in one sentence.")
fi
exec "$here/target/release/dwarfstar" run --model "$models/SmolLM2-135M-Instruct-Q4_1.gguf" \
  --chat --temp 0 -n 96 "${args[@]}"
