#!/usr/bin/env bash
# Builds m3embed and runs its main job. With no arguments: serves BAAI/bge-m3 (from the
# Hugging Face cache, or downloaded) on http://127.0.0.1:8080 (OpenAI /v1/embeddings, TEI
# /embed..., native /m3/encode and /m3/score; docs/API.md) until Ctrl-C. Offline and not
# cached, it says so and serves the bundled demo model (random weights) so the command
# still shows what it does. M3_MODEL, M3_PORT and the other M3_* variables change it.
# With arguments: they are passed to m3embed (e.g. scripts/run.sh encode --help).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --no-venv
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DM3_BUILD_TESTS=OFF >/dev/null
cmake --build build -j"$(nproc)" --target m3embed
export M3_FALLBACK_MODEL="${M3_FALLBACK_MODEL:-$PWD/examples/demo-model}"
if [ "$#" -gt 0 ]; then
  exec build/m3embed "$@"
fi
exec build/m3embed serve --model "${M3_MODEL:-BAAI/bge-m3}" --host "${M3_HOST:-127.0.0.1}" --port "${M3_PORT:-8080}"
