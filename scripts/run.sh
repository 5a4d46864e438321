#!/usr/bin/env bash
# Builds m3embed and runs its main job. With no arguments: embeds examples/sample.txt
# with BAAI/bge-m3 (from the Hugging Face cache, or downloaded), writing dense, sparse
# and ColBERT outputs to out.jsonl. Offline and not cached, it says so and uses the
# bundled demo model (random weights) so the command still shows what it does.
# With arguments: they are passed to m3embed (e.g. scripts/run.sh score --help).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --no-venv
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DM3_BUILD_TESTS=OFF >/dev/null
cmake --build build -j"$(nproc)" --target m3embed
export M3_FALLBACK_MODEL="${M3_FALLBACK_MODEL:-$PWD/examples/demo-model}"
if [ "$#" -gt 0 ]; then
  exec build/m3embed "$@"
fi
build/m3embed encode --model "${M3_MODEL:-BAAI/bge-m3}" --input examples/sample.txt --output out.jsonl \
  --dense --sparse --colbert
echo "wrote out.jsonl ($(wc -l < out.jsonl) lines: dense_vecs, lexical_weights, colbert_vecs per text)"
