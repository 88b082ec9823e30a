#!/usr/bin/env bash
# Writes a synthetic DeepSeek-style MoE GGUF (deepseek2: MLA, dense lead layers, a shared
# expert, stacked routed experts with Zipf-like popularity; or with `--arch deepseek4`, V4
# Flash's structure in ds4's dwarf-q2 types) with SmolLM2's real tokenizer, then checks that
# DwarfStar runs it and, when llama.cpp is built, that llama.cpp does too.
#   deploy/make-synth.sh [OUT.gguf] [SIZE] [extra `dwarfstar synth` flags...]
#   e.g. deploy/make-synth.sh /tmp/ds-4g.gguf 4GiB --type q4_k --skew 1.0
#        deploy/make-synth.sh /tmp/v4-1g.gguf 1GiB --arch deepseek4
# Env: DWARFSTAR_MODELS_DIR (tokenizer source, default <repo>/models; fetched if missing),
#      LLAMA_BIN (llama.cpp bin dir, default ~/.cache/dwarfstar-ref/llama.cpp-build/bin).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$here/models/synth-deepseek2.gguf}
size=${2:-256MiB}
shift $(( $# > 2 ? 2 : $# )) || true
export DWARFSTAR_MODELS_DIR=${DWARFSTAR_MODELS_DIR:-$here/models}
[ -f "$DWARFSTAR_MODELS_DIR/SmolLM2-135M-Instruct-Q4_1.gguf" ] || "$here/deploy/fetch-models.sh" smollm2
bin=$here/target/release/dwarfstar
[ -x "$bin" ] || (cd "$here" && cargo build --release -p dwarfstar)
mkdir -p "$(dirname "$out")"

# llama.cpp's CPU weight repacking cannot place a V4 file's Q8_0 attn_output_a, so V4 runs
# there without it.
llama_extra=()
if [[ " $* " == *" deepseek4 "* || " $* " == *"--arch=deepseek4"* ]]; then
  llama_extra=(--no-repack)
fi
"$bin" synth "$out" --size "$size" --probe-tokens 96 "$@"
echo "--- dwarfstar run (greedy, 16 tokens)"
"$bin" run -m "$out" -p "Once upon a time" -n 16 --temp 0

llama=${LLAMA_BIN:-$HOME/.cache/dwarfstar-ref/llama.cpp-build/bin}
if [ -x "$llama/llama-completion" ]; then
  # llama.cpp's AMX path faults on some VMs; the shim turns it off.
  shim=$(mktemp -d)/noamx.so
  gcc -shared -fPIC -o "$shim" "$here/deploy/llama-noamx.c"
  echo "--- llama.cpp (greedy, f32 KV cache, no flash attention: the arithmetic DwarfStar uses)"
  LD_PRELOAD=$shim "$llama/llama-completion" -m "$out" -p "Once upon a time" -n 16 --top-k 1 \
    -c 512 -ctk f32 -ctv f32 -fa off -no-cnv "${llama_extra[@]}" 2>/dev/null
  echo
else
  echo "(llama.cpp not found in $llama: skipped its check)"
fi
