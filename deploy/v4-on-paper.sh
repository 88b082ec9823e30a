#!/usr/bin/env bash
# "V4 Flash on paper": the simulator's predictions for DeepSeek V4 Flash dwarf-q2 on 2 and 4
# machines of each profile in deploy/hardware/, over 1, 2.5 and 10 GbE, as a Markdown table
# (the README's). Needs a built dwarfstar (cargo build --release) and python3.
#   ./deploy/v4-on-paper.sh [MODEL]      (default deepseek-v4-flash:dwarf-q2)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${DWARFSTAR_BIN:-./target/release/dwarfstar}
MODEL=${1:-deepseek-v4-flash:dwarf-q2}
[ -x "$BIN" ] || { echo "no $BIN: run cargo build --release first" >&2; exit 1; }
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

hw() { # PROFILE N LINK -> hardware file
    local f="$TMP/$1-$2-$3.toml"
    { echo "all_links = { profile = \"$3\" }"
      for i in $(seq 1 "$2"); do printf '[[node]]\nid = "n%d"\nprofile = "%s"\n' "$i" "$1"; done
    } > "$f"
    echo "$f"
}

echo "| machines | link | plan | tok/s | per token: compute / paging / hops / expert RT / fixed (ms) | all machines, experts spread: tok/s | + heads split | TTFT 512 (s) | 16 streams tok/s |"
echo "|---|---|---|---:|---|---:|---:|---:|---:|"
for prof in apple-m4-pro-64 apple-m3-max-128 amd-ryzen-ai-max-395-128 ddr5-desktop-64; do
    for n in 2 4; do
        for link in 1gbe 2_5gbe 10gbe; do
            f=$(hw "$prof" "$n" "$link")
            "$BIN" plan --simulate "$f" -m "$MODEL" --head-parallel --json > "$TMP/best.json"
            "$BIN" plan --simulate "$f" -m "$MODEL" --head-parallel --expert-parallel --json > "$TMP/ep.json"
            python3 - "$prof" "$n" "$link" "$TMP/best.json" "$TMP/ep.json" <<'PY'
import json, sys
prof, n, link, best, ep = sys.argv[1:]
b, e = json.load(open(best)), json.load(open(ep))
p, s = b["prediction"], b["prediction"]["decode"]
nodes = sorted({st["node"] for st in b["plan"]["stages"]} | {x["node"] for x in b["plan"]["experts"]})
kind = f'{len(b["plan"]["stages"])} stage(s)'
if any(x["node"] != st["node"] for st in b["plan"]["stages"] for x in b["plan"]["experts"]
       if st["layers"]["start"] <= x["layer"] < st["layers"]["end"]):
    kind += ", experts spread"
kind += f', {len(nodes)} node(s) used'
ms = lambda v: f"{v*1e3:.1f}"
split = " / ".join(ms(s[k]) for k in ["compute", "paging", "hops", "expert_round_trips", "overhead"])
hp = e["prediction"]["head_parallel"]["tokens_per_s"]
agg = {x["streams"]: x["tokens_per_s"] for x in p["streams"]}
print(f'| {n}× {prof} | {link.replace("_", ".")} | {kind} | {p["tokens_per_s"]:.1f} | {split} | '
      f'{e["prediction"]["tokens_per_s"]:.1f} | {hp:.1f} | {p["ttft_s"]:.1f} | {agg.get(16, 0):.1f} |')
PY
        done
    done
done
