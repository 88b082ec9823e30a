#!/usr/bin/env bash
# Benchmarks DwarfStar against llama.cpp on the same model and thread count, in one run, and prints
# the ratios. Builds llama-bench (deploy/build-llama.sh) if needed.
# Usage: deploy/bench-vs-llama.sh [MODEL.gguf ...]   (default: the SmolLM2 and Gemma-3 test models)
# Env: THREADS (default 2), PP (default 64), TG (default 32), REPS (default 3).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
models_dir=${DWARFSTAR_MODELS_DIR:-$here/models}
threads=${THREADS:-2}; pp=${PP:-64}; tg=${TG:-32}; reps=${REPS:-3}
bin=$("$here/deploy/build-llama.sh" | tail -n 1)
cargo build --release --quiet --manifest-path "$here/Cargo.toml" -p dwarfstar
ours=$here/target/release/dwarfstar
models=("$@")
if [ ${#models[@]} -eq 0 ]; then
  "$here/deploy/fetch-models.sh" all >/dev/null
  models=("$models_dir/SmolLM2-135M-Instruct-Q4_1.gguf" "$models_dir/gemma-3-270m-q4_k_m.gguf")
fi
# Some VMs report AMX in CPUID but fault on it: then run llama-bench with AMX hidden (see llama-noamx.c).
preload=
if ! ( "$bin/llama-bench" -m "${models[0]}" -t 1 -p 8 -n 0 -r 1 ) >/dev/null 2>&1; then
  shim=$bin/../llama-noamx.so
  [ -f "$shim" ] || gcc -O2 -shared -fPIC "$here/deploy/llama-noamx.c" -o "$shim"
  preload=$shim
  echo "(llama-bench runs with AMX hidden: it faults on this machine)"
fi
printf '%-34s %8s %10s %10s %7s %10s %10s %7s\n' model threads "pp ours" "pp llama" ratio "tg ours" "tg llama" ratio
for m in "${models[@]}"; do
  lj=$(LD_PRELOAD=$preload "$bin/llama-bench" -m "$m" -t "$threads" -p "$pp" -n "$tg" -r "$reps" -o json 2>/dev/null)
  lpp=$(echo "$lj" | python3 -c 'import json,sys; d=json.load(sys.stdin); print([r["avg_ts"] for r in d if r["n_prompt"]>0][0])')
  ltg=$(echo "$lj" | python3 -c 'import json,sys; d=json.load(sys.stdin); print([r["avg_ts"] for r in d if r["n_gen"]>0][0])')
  oj=$("$ours" bench --model "$m" --threads "$threads" -p "$pp" -n "$tg" -r "$reps" --json)
  opp=$(echo "$oj" | python3 -c 'import json,sys; print(json.load(sys.stdin)["prompt_tokens_per_s"])')
  otg=$(echo "$oj" | python3 -c 'import json,sys; print(json.load(sys.stdin)["decode_tokens_per_s"])')
  python3 - "$(basename "$m")" "$threads" "$opp" "$lpp" "$otg" "$ltg" <<'PY'
import sys
m, t, opp, lpp, otg, ltg = sys.argv[1], sys.argv[2], *map(float, sys.argv[3:])
print(f"{m[:34]:<34} {t:>8} {opp:>10.1f} {lpp:>10.1f} {opp/lpp:>6.2f}x {otg:>10.1f} {ltg:>10.1f} {otg/ltg:>6.2f}x")
PY
done
