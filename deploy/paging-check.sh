#!/usr/bin/env bash
# Runs a model under a cgroup v1 memory limit of half its file size and
# checks that greedy generation gives the same tokens as an unlimited run.
# Inside the limit DwarfStar's default memory budget follows the cgroup
# (75% of its headroom), so the weights are paged from disk.
#
#   deploy/paging-check.sh MODEL.gguf [N_TOKENS]
#
# Environment: DWARFSTAR (the binary; default target/release/dwarfstar),
# PROMPT, FRACTION (the limit as a fraction of the file size, default 0.5),
# COLD=1 (drop the page cache before each run; root only, as is the
# cgroup). Exit status: 0 same tokens, 1 different or failed, 2 no writable
# cgroup v1 memory hierarchy.
set -euo pipefail

model=${1:?usage: $0 MODEL.gguf [N_TOKENS]}
n=${2:-32}
here=$(cd "$(dirname "$0")/.." && pwd)
bin=${DWARFSTAR:-$here/target/release/dwarfstar}
prompt=${PROMPT:-The capital of France is}
fraction=${FRACTION:-0.5}
root=/sys/fs/cgroup/memory

if [ ! -e "$root/memory.limit_in_bytes" ] || [ ! -w "$root" ]; then
    echo "no writable cgroup v1 memory hierarchy at $root" >&2
    exit 2
fi
[ -x "$bin" ] || { echo "$bin not found: cargo build --release" >&2; exit 1; }

size=$(stat -c %s "$model")
limit=$(python3 -c "print(int($size * $fraction))")
cg=$root/dwarfstar-paging-check-$$
work=$(mktemp -d)
cleanup() {
    # The group empties when its process exits; the kernel may lag a bit.
    for _ in 1 2 3 4 5 6 7 8 9 10; do
        [ -d "$cg" ] || break
        rmdir "$cg" 2>/dev/null && break
        sleep 0.5
    done
    rm -rf "$work"
}
trap cleanup EXIT
mkdir "$cg"
echo "$limit" > "$cg/memory.limit_in_bytes"
if [ -e "$cg/memory.memsw.limit_in_bytes" ]; then
    echo "$limit" > "$cg/memory.memsw.limit_in_bytes"
fi

cold() {
    if [ "${COLD:-0}" = 1 ]; then
        sync
        echo 3 > /proc/sys/vm/drop_caches
    fi
}
args=(run -m "$model" -p "$prompt" -n "$n" --temp 0 --ignore-eos -c "$((n + 64))" --json)
tokens() { grep -o '"tokens":\[[^]]*\]' "$1"; }

cold
start=$(date +%s.%N)
"$bin" "${args[@]}" --mem-budget none > "$work/free.json" 2> "$work/free.err" || {
    cat "$work/free.err" >&2
    exit 1
}
t_free=$(python3 -c "print(f'{$(date +%s.%N) - $start:.1f}')")

cold
start=$(date +%s.%N)
status=0
sh -c 'echo $$ > "$0/cgroup.procs" && exec "$@"' "$cg" "$bin" "${args[@]}" \
    > "$work/capped.json" 2> "$work/capped.err" || status=$?
t_capped=$(python3 -c "print(f'{$(date +%s.%N) - $start:.1f}')")
peak=$(cat "$cg/memory.max_usage_in_bytes")
ooms=$(awk '/^oom_kill /{print $2}' "$cg/memory.oom_control")

mib() { python3 -c "print(f'{$1 / 2**20:.1f} MiB')"; }
echo "model:   $model ($(mib "$size"))"
echo "limit:   $(mib "$limit") (cgroup $cg), peak usage $(mib "$peak"), OOM kills ${ooms:-0}"
grep -h "paged within" "$work/capped.err" | sed 's/^/budget:  /' || true
echo "runs:    unlimited ${t_free}s, limited ${t_capped}s, $n tokens each"
if [ "$status" != 0 ]; then
    echo "FAIL: the limited run exited with status $status" >&2
    tail -5 "$work/capped.err" >&2
    exit 1
fi
if [ "$(tokens "$work/free.json")" != "$(tokens "$work/capped.json")" ]; then
    echo "FAIL: different tokens" >&2
    echo "  unlimited: $(tokens "$work/free.json")" >&2
    echo "  limited:   $(tokens "$work/capped.json")" >&2
    exit 1
fi
echo "OK: the same $n tokens under the limit"
