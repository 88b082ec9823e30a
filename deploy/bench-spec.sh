#!/usr/bin/env bash
# Speculative decoding against plain decoding, through `dwarfstar serve`:
# greedy decode tokens/s of one request (the time of 16+N tokens less that
# of 16, best of three), plain, with a draft model (drafting while it pays),
# and with --spec-always, at 1 and 2 threads, and the acceptance rate the
# server counted. The draft is made from the model with
# `dwarfstar quantize` (recipe DRAFT_RECIPE, dwarf-q2 by default) unless
# DRAFT names a file.
#
#   deploy/bench-spec.sh [MODEL]     (default: models/SmolLM2-135M-Instruct-Q4_1.gguf)
#   env: N (tokens, 128), SPEC_TOKENS (3), THREADS ("1 2"), DRAFT, DRAFT_RECIPE
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bin=${DWARFSTAR_BIN:-$here/target/release/dwarfstar}
model=${1:-$here/models/SmolLM2-135M-Instruct-Q4_1.gguf}
n=${N:-128}
k=${SPEC_TOKENS:-3}
recipe=${DRAFT_RECIPE:-dwarf-q2}
[ -x "$bin" ] || (cd "$here" && cargo build --release)
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
draft=${DRAFT:-$work/draft-$recipe.gguf}
if [ ! -f "$draft" ]; then
  "$bin" quantize "$model" "$draft" --recipe "$recipe" --allow-requantize >/dev/null 2>&1
fi
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "model: $(basename "$model") ($(du -h "$model" | cut -f1)), draft: $recipe ($(du -h "$draft" | cut -f1)), $n tokens, up to $k drafts a step"
printf '%-8s %-10s %10s %12s\n' threads mode tok/s acceptance
for t in ${THREADS:-1 2}; do
  for mode in plain draft always; do
    extra=()
    [ "$mode" = draft ] && extra=(--draft-model "$draft" --spec-tokens "$k")
    [ "$mode" = always ] && extra=(--draft-model "$draft" --spec-tokens "$k" --spec-always)
    "$bin" serve --model "$model" --threads "$t" --http-addr 127.0.0.1:0 --grpc-listen off \
      "${extra[@]}" >"$work/out" 2>"$work/err" &
    pid=$!
    for _ in $(seq 1 300); do grep -q 'http://' "$work/out" 2>/dev/null && break; sleep 0.1; done
    base=$(grep -o 'http://[0-9.:]*' "$work/out" | head -1)
    [ -n "$base" ] || { cat "$work/err"; exit 1; }
    read -r rate acc < <(python3 "$here/deploy/decode-rate.py" "$base" "$n")
    [ "$mode" = plain ] && acc=-
    printf '%-8s %-10s %10.1f %12s\n' "$t" "$mode" "$rate" "$acc"
    kill $pid; wait $pid 2>/dev/null || true
  done
done
