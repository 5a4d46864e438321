#!/usr/bin/env bash
# Creates the benchmark virtualenv: requirements-test.txt (torch, transformers,
# FlagEmbedding) plus requirements-bench.txt (onnxruntime, ctranslate2, matplotlib, ...),
# separate from the test virtualenv so that the peers never touch CI's .venv.
# It lives in ~/.cache/m3embed/venv-bench-<hash of both files> and is linked as bench/.venv-bench
# (ignored by bench/.gitignore).
# Optional: M3_BENCH_LLAMA=1 also builds llama-cpp-python from source (CPU only; ~15 min
# on 2 cores) and unpacks its llama.cpp sources (convert_hf_to_gguf.py, gguf-py) next to it.
# Usage: bench/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."

hash=$(cat requirements-test.txt requirements-bench.txt | sha256sum | cut -c1-12)
venv="${M3_BENCH_VENV_DIR:-$HOME/.cache/m3embed/venv-bench-$hash}"
if [ ! -x "$venv/bin/python" ] || [ ! -f "$venv/.complete" ]; then
  echo "bench/setup.sh: creating the benchmark virtualenv in $venv (torch and the peers: a few minutes once)"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip
  "$venv/bin/pip" install -q -r requirements-test.txt -r requirements-bench.txt
  touch "$venv/.complete"
fi
if [ "$(readlink bench/.venv-bench 2>/dev/null)" != "$venv" ]; then
  rm -rf bench/.venv-bench
  ln -s "$venv" bench/.venv-bench
fi

# The optional llama.cpp peer: its pins are the commented lines of requirements-bench.txt.
llama_req=$(sed -n 's/^# *\(llama-cpp-python==[0-9.]*\).*/\1/p' requirements-bench.txt)
diskcache_req=$(sed -n 's/^# *\(diskcache==[0-9.]*\).*/\1/p' requirements-bench.txt)
if [ "${M3_BENCH_LLAMA:-0}" = 1 ] && [ ! -f "$venv/.llama-complete" ]; then
  echo "bench/setup.sh: building $llama_req from source (CPU only; ~15 min on 2 cores)"
  src="$venv/llama-src"
  rm -rf "$src" && mkdir -p "$src"
  "$venv/bin/pip" download -q --no-deps --no-binary :all: "$llama_req" -d "$src"
  tar -xzf "$src"/llama_cpp_python-*.tar.gz -C "$src"
  CMAKE_ARGS="-DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_BLAS=OFF -DGGML_NATIVE=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_CURL=OFF -DLLAVA_BUILD=OFF" \
    CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}" \
    nice -n 10 "$venv/bin/pip" install -q "$src"/llama_cpp_python-*.tar.gz "$diskcache_req" \
    || { echo "bench/setup.sh: llama-cpp-python did not build (the llama.cpp peer will be reported unavailable)"; exit 0; }
  touch "$venv/.llama-complete"
fi
echo "bench/setup.sh: done (virtualenv: bench/.venv-bench -> $venv)"
