#!/usr/bin/env bash
# DeepSeek V4 at scale, against llama.cpp on the same file in the same run (see README, "Performance").
#   deploy/bench-v4.sh MODEL.gguf       (a synthetic V4: dwarfstar synth --arch deepseek4 ..., >= 4 GiB)
# Prints, on this machine's CPU:
#   1. resident, THREADS threads: pp$PP and decode tokens/s, ours and llama-bench's, and decode as a
#      share of the bandwidth bound (active bytes per token from `inspect` / membw's read GB/s);
#   2. under a cgroup v1 memory cap of CAP (default 0.5) of the file: decode as a fraction of resident,
#      expert hit rate, bytes read per token; llama-bench under the same cap;
#   3. two daemons x 1 thread, each capped at MESH_CAP (default 0.4) of the file, as a 2-stage pipeline
#      and as expert parallel: decode tokens/s of an API request against one daemon resident (2
#      threads), and whether the tokens are equal.
# Env: THREADS (2), PP (64), TG (16), REPS (2), CAP, MESH_CAP, LLAMA_BIN (llama.cpp's bin folder;
# default: build it with deploy/build-llama.sh), SKIP (space-separated part numbers to skip).
# Needs root for the cgroups (parts 2 and 3).
set -euo pipefail
model=${1:?usage: $0 MODEL.gguf}
here=$(cd "$(dirname "$0")/.." && pwd)
threads=${THREADS:-2}; pp=${PP:-64}; tg=${TG:-16}; reps=${REPS:-2}
cap=${CAP:-0.5}; mesh_cap=${MESH_CAP:-0.4}; skip=" ${SKIP:-} "
bin=${LLAMA_BIN:-$("$here/deploy/build-llama.sh" | tail -n 1)}
ours=$here/target/release/dwarfstar
[ -x "$ours" ] || cargo build --release --quiet --manifest-path "$here/Cargo.toml" -p dwarfstar
size=$(stat -c %s "$model")
cg_root=/sys/fs/cgroup/memory
work=$(mktemp -d "${TMPDIR:-/tmp}/dwarfstar-bench-v4.XXXXXX")
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  for c in "$cg_root"/dwarfstar-bench-v4-$$-*; do [ -d "$c" ] && rmdir "$c" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT INT TERM
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }
# llama.cpp's default (weights repacked for its AVX kernels), unless LLAMA_REPACK=0 (its V4 graph
# fails to load repacked Q8_0 attn_output_a: GGML_ASSERT(*cur_backend_id != -1)).
llama_args=()
if [ "${LLAMA_REPACK:-1}" = 0 ]; then llama_args=(--repack 0); fi
# LD_PRELOAD shim where llama.cpp faults on AMX (see llama-noamx.c).
preload=
if ! ( "$bin/llama-bench" -m "$model" -t 1 -p 1 -n 0 -r 1 "${llama_args[@]}" ) >/dev/null 2>&1; then
  preload=$work/noamx.so
  gcc -O2 -shared -fPIC "$here/deploy/llama-noamx.c" -o "$preload"
  echo "(llama-bench runs with AMX hidden: it faults on this machine)"
fi
llama() { LD_PRELOAD=$preload "$@"; }
# Runs "$@" inside a fresh v1 memory cgroup capped at $1 bytes, in place of the calling shell: call
# it in a subshell (`&` or `$(...)`).
in_cgroup() {
  local limit=$1; shift
  local cg=$cg_root/dwarfstar-bench-v4-$$-$RANDOM
  mkdir "$cg"; echo "$limit" > "$cg/memory.limit_in_bytes"
  exec sh -c 'echo $$ > "$1/cgroup.procs"; shift; exec "$@"' sh "$cg" "$@"
}
cpu=$(grep -m1 "model name" /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')
echo "CPU: $cpu, $(nproc) cores; model $(basename "$model"), $((size >> 20)) MiB"
active=$("$ours" inspect --json "$model" | json 'd["active_bytes_per_token"]')
gcc -O3 -pthread "$here/deploy/membw.c" -o "$work/membw"
bw=$("$work/membw" "$threads" 2>/dev/null)
echo "active bytes per token: $((active >> 20)) MiB; read bandwidth ($threads threads): $bw GB/s; bound: $(python3 -c "print(f'{$bw*1e9/$active:.2f}')") tokens/s"

llama_bench() { # prints "pp tg"
  llama "$bin/llama-bench" -m "$model" -t "$threads" -p "$pp" -n "$tg" -r "$reps" "${llama_args[@]}" -o json 2>/dev/null |
    json '" ".join(str([r["avg_ts"] for r in d if r[k]>0][0]) for k in ("n_prompt","n_gen"))'
}
ours_bench() { "$ours" bench --model "$model" --threads "$threads" -p "$pp" -n "$tg" -r "$reps" --json "$@"; }

if [[ $skip != *" 1 "* ]]; then
  echo "== 1. resident, $threads threads"
  o=$(ours_bench --mem-budget none)
  read -r lpp ltg < <(llama_bench)
  opp=$(echo "$o" | json 'd["prompt_tokens_per_s"]'); otg=$(echo "$o" | json 'd["decode_tokens_per_s"]')
  python3 - "$opp" "$lpp" "$otg" "$ltg" "$bw" "$active" <<'PY'
import sys
opp, lpp, otg, ltg, bw, active = map(float, sys.argv[1:])
bound = bw * 1e9 / active
print(f"pp: ours {opp:.2f} t/s, llama.cpp {lpp:.2f} t/s, ratio {opp/lpp:.2f}x")
print(f"decode: ours {otg:.2f} t/s, llama.cpp {ltg:.2f} t/s, ratio {otg/ltg:.2f}x; "
      f"{100*otg/bound:.0f}% of the bandwidth bound (llama.cpp {100*ltg/bound:.0f}%)")
PY
  echo "$otg" > "$work/resident_tg"
fi

if [[ $skip != *" 2 "* ]]; then
  limit=$(python3 -c "print(int($size*$cap))")
  echo "== 2. under a cgroup cap of $cap of the file ($((limit >> 20)) MiB)"
  o=$(in_cgroup "$limit" "$ours" bench --model "$model" --threads "$threads" -p 8 -n "$tg" -r 1 --json)
  echo "$o" | json '"ours: decode %.2f t/s, pp8 %.2f t/s, paged %s, budget %d MiB, expert hit rate %.3f, %.1f MiB read per token, I/O stall %.1f s" % (d["decode_tokens_per_s"], d["prompt_tokens_per_s"], d["paged"], d["budget_bytes"]>>20, d["expert_hit_rate"], d["bytes_read_per_token"]/2**20, d["io_stall_s"])'
  if [ -f "$work/resident_tg" ]; then
    python3 -c "print(f'decode under the cap: {$(echo "$o" | json 'd["decode_tokens_per_s"]')/$(cat "$work/resident_tg"):.2f} of resident')"
  fi
  l=$(in_cgroup "$limit" env LD_PRELOAD="$preload" "$bin/llama-bench" -m "$model" -t "$threads" -p 8 -n "$tg" -r 1 "${llama_args[@]}" -o json 2>/dev/null || true)
  if [ -n "$l" ]; then
    echo "$l" | json '"llama.cpp under the same cap: decode %.2f t/s, pp8 %.2f t/s" % ([r["avg_ts"] for r in d if r["n_gen"]>0][0], [r["avg_ts"] for r in d if r["n_prompt"]>0][0])'
  else
    echo "llama.cpp under the same cap: failed (killed or out of memory)"
  fi
fi

if [[ $skip != *" 3 "* ]]; then
  limit=$(python3 -c "print(int($size*$mesh_cap))")
  dir=$(dirname "$model"); name=$(basename "$model" .gguf)
  head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$work/secret"
  prompt="The history of the mesh begins"
  req() { # $1 = http addr; prints "seconds tokens text"
    python3 - "$1" "$name" "$prompt" "$tg" <<'PY'
import json, sys, time, urllib.request
addr, model, prompt, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
body = json.dumps({"model": model, "prompt": prompt, "max_tokens": n, "temperature": 0,
                   "ignore_eos": True}).encode()
def go():
    t0 = time.time()
    r = urllib.request.urlopen(urllib.request.Request(f"http://{addr}/v1/completions", body,
                                {"Content-Type": "application/json"}), timeout=3600)
    d = json.load(r)
    return time.time() - t0, d
go()  # warm-up: pages in what the plan holds
dt, d = go()
print(f"{dt:.3f}", d["usage"]["completion_tokens"], json.dumps(d["choices"][0]["text"]))
PY
  }
  wait_http() { # $1 log
    for _ in $(seq 1 3000); do grep -q "listening on http://" "$1" && return 0; sleep 0.2; done
    echo "no API after 10 minutes:" >&2; tail -20 "$1" >&2; return 1
  }
  echo "== 3. two daemons x 1 thread, each capped at $mesh_cap of the file ($((limit >> 20)) MiB)"
  mkdir -p "$work/one"
  "$ours" serve --secret-file "$work/secret" --state-dir "$work/one" --no-mdns --mesh-addr 127.0.0.1:0 \
    --quic-addr 127.0.0.1:0 --grpc-listen off --http-addr 127.0.0.1:18380 --model "$model" \
    --threads "$threads" --mem-budget none --ctx-size 256 > "$work/one.log" 2>&1 &
  pids+=($!); wait_http "$work/one.log"
  read -r t1 n1 text1 < <(req 127.0.0.1:18380)
  kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true
  echo "one daemon resident, $threads threads: $n1 tokens in ${t1}s ($(python3 -c "print(f'{$n1/$t1:.2f}')") t/s incl. prompt)"
  for mode in "--stages 2" "--stages 1 --expert-parallel"; do
    mkdir -p "$work/w" "$work/c"; rm -rf "$work/w"/* "$work/c"/*
    in_cgroup "$limit" "$ours" serve --secret-file "$work/secret" --state-dir "$work/w" --no-mdns \
      --mesh-addr 127.0.0.1:18400 --quic-addr 127.0.0.1:18401 --grpc-listen off --http-addr 127.0.0.1:18480 \
      --models-dir "$dir" --threads 1 --ctx-size 256 > "$work/w.log" 2>&1 &
    pids+=($!)
    # shellcheck disable=SC2086
    in_cgroup "$limit" "$ours" serve --secret-file "$work/secret" --state-dir "$work/c" --no-mdns \
      --mesh-addr 127.0.0.1:18500 --quic-addr 127.0.0.1:18501 --grpc-listen off --http-addr 127.0.0.1:18580 \
      --peer 127.0.0.1:18400 --mesh-nodes 2 $mode --model "$model" --threads 1 --ctx-size 256 > "$work/c.log" 2>&1 &
    pids+=($!)
    wait_http "$work/c.log"
    grep -m1 "dwarfstar mesh: plan" "$work/c.log" || true
    read -r t2 n2 text2 < <(req 127.0.0.1:18580)
    same=$([ "$text1" = "$text2" ] && echo "equal tokens" || echo "DIFFERENT tokens: $text2 vs $text1")
    echo "two daemons ($mode): $n2 tokens in ${t2}s ($(python3 -c "print(f'{$n2/$t2:.2f}')") t/s), $(python3 -c "print(f'{$t1/$t2:.2f}')")x one daemon resident; $same"
    kill "${pids[-1]}" "${pids[-2]}"; wait "${pids[-1]}" "${pids[-2]}" 2>/dev/null || true
  done
fi
