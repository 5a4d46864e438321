#!/usr/bin/env bash
# Builds m3embed and its Python module, then runs the whole test suite (C++ unit tests, CLI
# tests, Python oracle, module and client tests) through ctest. This is the command .ci/run calls.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
jobs=$(nproc)
# The CUDA backend is built and linked on every run, GPU or not (its tests skip, saying
# why, where no GPU can be used). M3_CUDA=OFF turns it off for a machine without nvcc.
cuda_flags=()
nvcc_path=$(command -v nvcc || true)
[ -z "$nvcc_path" ] && [ -x /usr/local/cuda/bin/nvcc ] && nvcc_path=/usr/local/cuda/bin/nvcc
if [ "${M3_CUDA:-ON}" = "OFF" ]; then
  cuda_flags=(-DM3_CUDA=OFF)
elif [ -n "$nvcc_path" ]; then
  cuda_flags=(-DM3_CUDA=ON -DCMAKE_CUDA_COMPILER="$nvcc_path")
else
  echo "scripts/test.sh: nvcc not found: the CUDA toolkit is needed to build the CUDA backend" \
       "(or run with M3_CUDA=OFF)" >&2
  exit 1
fi
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release "${cuda_flags[@]}"
cmake --build build -j"$jobs"
# The Python module (docs/python.md) into the test virtualenv, built as `pip install .`
# builds it (its build tools are pinned in requirements-test.txt; build-python/ keeps the
# build between runs).
CMAKE_BUILD_PARALLEL_LEVEL="$jobs" .venv/bin/pip install -q --no-build-isolation .
cd build
ctest --output-on-failure -j"$jobs" "$@"
