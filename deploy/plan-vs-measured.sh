#!/usr/bin/env bash
# Predicted against measured decode tokens/s on this machine, one node: the simulator
# (`dwarfstar plan --simulate` with deploy/hardware/this-machine.toml, its budget and expert
# skew set to the run's) against `dwarfstar bench` at 1 thread (as the profile's figures were
# measured). Rows: SmolLM2, Gemma 3 270M, and a synthetic DeepSeek V4 (768 MiB, Zipf(1)
# routing) resident and at a 50% memory budget. The issue's mesh rows (2/3-stage loopback,
# netns link, expert parallel, 16 streams) are not here yet, nor a CI mode. On a shared
# machine the measured side moves by ±25% between runs. Needs a release build and the
# models of deploy/fetch-models.sh.
#   ./deploy/plan-vs-measured.sh            prints a Markdown table
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${DWARFSTAR_BIN:-./target/release/dwarfstar}
MODELS=${DWARFSTAR_MODELS_DIR:-$PWD/models}
THREADS=${DWARFSTAR_THREADS:-1}
[ -x "$BIN" ] || { echo "no $BIN: run cargo build --release first" >&2; exit 1; }
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
export DWARFSTAR_MODELS_DIR="$MODELS"

"$BIN" synth --arch deepseek4 --size 768MiB --no-mtp --skew 1 "$TMP/v4.gguf" > /dev/null 2>&1

row() { # NAME MODEL BUDGET_BYTES|none SKEW
    local name=$1 model=$2 budget=$3 skew=$4 flag=() hw="$TMP/hw.toml"
    { echo "expert_skew = $skew"
      printf '[[node]]\nid = "here"\nprofile = "this-machine"\nthreads = %s\n' "$THREADS"
      [ "$budget" = none ] || echo "mem_budget_gb = $(python3 -c "print($budget/1e9)")"
    } > "$hw"
    [ "$budget" = none ] || flag=(--mem-budget "$budget")
    local pred meas
    pred=$("$BIN" plan --simulate "$hw" -m "$model" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["prediction"]["tokens_per_s"])')
    meas=$("$BIN" bench -m "$model" -t "$THREADS" -p 32 -n 32 -r 3 "${flag[@]}" --json 2>/dev/null \
        | python3 -c 'import json,sys; print(json.load(sys.stdin)["decode_tokens_per_s"])')
    python3 -c "p,m=$pred,$meas; print(f'| $name | {p:.2f} | {m:.2f} | {p/m:.2f} |')"
}

size() { stat -c %s "$1"; }
echo "| row ($THREADS threads) | predicted tok/s | measured tok/s | ratio |"
echo "|---|---:|---:|---:|"
row "SmolLM2-135M Q4_1, 1 node" "$MODELS/SmolLM2-135M-Instruct-Q4_1.gguf" none 0
row "Gemma 3 270M Q4_K_M, 1 node" "$MODELS/gemma-3-270m-q4_k_m.gguf" none 0
row "synthetic V4 768 MiB, resident" "$TMP/v4.gguf" none 1
row "synthetic V4 768 MiB, 50% budget" "$TMP/v4.gguf" $(( $(size "$TMP/v4.gguf") / 2 )) 1
