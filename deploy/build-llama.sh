#!/usr/bin/env bash
# Builds llama.cpp's CPU tools (llama-bench and friends) from the llama.cpp tree vendored in the
# llama-cpp-python source package on PyPI, for side-by-side comparisons. Reuses an existing build.
# Env: LLAMA_DIR (default ~/.cache/dwarfstar/llama.cpp), LLAMA_CPP_PYTHON_VERSION (default 0.3.36),
#      LLAMA_TARGETS (default: llama-bench llama-completion llama-quantize llama-tokenize), JOBS.
# Prints the bin directory on its last line.
set -euo pipefail
dir=${LLAMA_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/dwarfstar/llama.cpp}
ver=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
targets=${LLAMA_TARGETS:-"llama-bench llama-completion llama-quantize llama-tokenize"}
jobs=${JOBS:-$(nproc)}
py=${PYTHON:-python3}
mkdir -p "$dir"
have_all=1
for t in $targets; do [ -x "$dir/build/bin/$t" ] || have_all=0; done
if [ $have_all = 1 ]; then echo "$dir/build/bin"; exit 0; fi
if ! command -v cmake >/dev/null || ! command -v ninja >/dev/null; then
  [ -x "$dir/tools/bin/python" ] || "$py" -m venv "$dir/tools"
  "$dir/tools/bin/python" -m pip install -q cmake ninja
  export PATH=$dir/tools/bin:$PATH
fi
if [ ! -f "$dir/src/CMakeLists.txt" ]; then
  "$py" -m pip download -q --no-deps --no-binary llama-cpp-python "llama-cpp-python==$ver" -d "$dir/dl"
  tmp=$(mktemp -d)
  tar -xzf "$dir/dl/llama_cpp_python-$ver.tar.gz" -C "$tmp"
  rm -rf "$dir/src"
  mv "$tmp/llama_cpp_python-$ver/vendor/llama.cpp" "$dir/src"
  rm -rf "$tmp"
fi
cmake -S "$dir/src" -B "$dir/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
  -DLLAMA_CURL=OFF -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
  -DLLAMA_BUILD_SERVER=OFF >/dev/null
# shellcheck disable=SC2086
cmake --build "$dir/build" -j "$jobs" --target $targets >/dev/null
echo "$dir/build/bin"
