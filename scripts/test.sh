#!/usr/bin/env bash
# Builds m3embed and runs the whole test suite (C++ unit tests, CLI tests, Python oracle
# and client tests) through ctest. This is the command .ci/run calls.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
jobs=$(nproc)
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release
cmake --build build -j"$jobs"
cd build
ctest --output-on-failure -j"$jobs" "$@"
