#!/usr/bin/env bash
# The first run on a GPU, in one command (docs/gpu.md, "The first GPU run").
#
#   scripts/gpu-check.sh --pack   where the project builds (no GPU needed): builds the CUDA
#                                 build (as scripts/test.sh does) and packs m3embed, the GPU
#                                 tests and the benchmark binaries with their non-CUDA shared
#                                 libraries into gpu-pack/m3embed-gpu.tar.xz (at most 64 MiB).
#   scripts/gpu-check.sh          on the GPU machine, from a checkout holding gpu-pack/: the
#                                 GPU tests (ctest -L gpu, serially); CUDA fp16 and bf16 against
#                                 CPU fp32 on a 2-layer full-width random model (written here by
#                                 bench/make_stdlib_model.py, Python standard library only);
#                                 bench/gpu_peers.py on W1, W4 and mix plus the device-memory
#                                 soak. One results file: $OUT/DATE-gpu-check.md when $OUT is
#                                 set, else bench/results/. About 10 minutes at most.
#
# The CUDA libraries (cuBLASLt) come from the GPU machine's own toolkit, found through the
# loader, /usr/local/cuda*/lib64 or a pip nvidia-cublas wheel; the runtime is linked in
# statically. Without a GPU it stops at once, saying why in one line.
set -uo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
bundle=gpu-pack/m3embed-gpu.tar.xz
max_bundle_bytes=$((64 * 1024 * 1024))
binaries=(m3embed m3bench-workload m3bench-soak tests/test_cuda_backend tests/test_backend_ops_cuda)

pack() {
  local nvcc_path
  nvcc_path=$(command -v nvcc || true)
  [ -z "$nvcc_path" ] && [ -x /usr/local/cuda/bin/nvcc ] && nvcc_path=/usr/local/cuda/bin/nvcc
  [ -n "$nvcc_path" ] || { echo "gpu-check --pack: nvcc not found: the CUDA toolkit is needed to build" >&2; return 1; }
  scripts/setup.sh || return 1
  cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DM3_CUDA=ON -DCMAKE_CUDA_COMPILER="$nvcc_path" >/dev/null || return 1
  local targets=()
  for b in "${binaries[@]}"; do targets+=("$(basename "$b")"); done
  cmake --build build -j"$(nproc)" --target "${targets[@]}" || return 1

  local stage
  stage=$(mktemp -d)/m3embed-gpu
  mkdir -p "$stage/bin" "$stage/lib"
  for b in "${binaries[@]}"; do strip --strip-unneeded -o "$stage/bin/$(basename "$b")" "build/$b" || return 1; done
  # Every shared library the binaries load, except the C runtime the GPU machine has and
  # CUDA's own (the driver; cuBLASLt is opened at run time from the machine's toolkit).
  ldd "$stage"/bin/* | awk '/=>/ && $3 ~ /^\// {print $3}' | sort -u | while read -r lib; do
    case "$(basename "$lib")" in
      libc.so*|libm.so*|libpthread.so*|libdl.so*|librt.so*|ld-linux*|libcuda.so*|libcudart*|libcublas*) ;;
      *) cp -L "$lib" "$stage/lib/" ;;
    esac
  done
  mkdir -p gpu-pack
  tar -C "$(dirname "$stage")" -cJf "$bundle" m3embed-gpu || return 1
  rm -rf "$(dirname "$stage")"
  local bytes
  bytes=$(stat -c %s "$bundle")
  if [ "$bytes" -gt "$max_bundle_bytes" ]; then
    echo "gpu-check --pack: $bundle is $((bytes / 1048576)) MiB, over the 64 MiB a device run can carry" >&2
    return 1
  fi
  echo "gpu-check --pack: $bundle, $((bytes / 1048576)) MiB ($(git rev-parse --short HEAD 2>/dev/null || echo '?'))"
}

case "${1:-}" in
  --pack) pack; exit $? ;;
  -h|--help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  "") ;;
  *) echo "gpu-check: unknown option '$1' (see --help)" >&2; exit 2 ;;
esac

# 1. A GPU, or one line saying why not.
why=""
if ! command -v nvidia-smi >/dev/null 2>&1; then
  why="nvidia-smi is not installed, so there is no NVIDIA driver"
elif ! gpus=$(nvidia-smi -L 2>&1) || ! grep -q '^GPU ' <<<"$gpus"; then
  why="nvidia-smi lists no GPU: $(head -n 1 <<<"$gpus")"
fi
if [ -n "$why" ]; then
  echo "gpu-check: no GPU here ($why); nothing was run" >&2
  exit 1
fi
if [ ! -f "$bundle" ]; then
  echo "gpu-check: $bundle is missing: run 'scripts/gpu-check.sh --pack' where the project builds and bring gpu-pack/ along" >&2
  exit 1
fi

started=$(date +%s)
out=${OUT:-$root/bench/results}
mkdir -p "$out"
results="$out/$(date -u +%Y-%m-%d)-gpu-check.md"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
tar -C "$work" -xJf "$bundle"
pack_root="$work/m3embed-gpu"

cuda_lib=""
for dir in $(ldconfig -p 2>/dev/null | awk '/libcublasLt\.so/ {print $NF}' | xargs -r -n1 dirname) \
           /usr/local/cuda/lib64 /usr/local/cuda-*/lib64 /usr/local/cuda*/targets/x86_64-linux/lib \
           $(python3 -c 'import nvidia.cublas, os; print(os.path.join(os.path.dirname(nvidia.cublas.__file__), "lib"))' 2>/dev/null); do
  if ls "$dir"/libcublasLt.so.* >/dev/null 2>&1; then cuda_lib=$dir; break; fi
done
export LD_LIBRARY_PATH="$pack_root/lib${cuda_lib:+:$cuda_lib}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export M3_FIXTURES_DIR="$root/tests/fixtures" M3_BINARY="$pack_root/bin/m3embed"
m3="$pack_root/bin/m3embed"

say() { printf '%s\n' "$*" >>"$results"; }
# Runs a step under a time limit, its output into the work dir; records its status.
status_line=()
step() {
  local name=$1 limit=$2
  shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" >"$work/$name.log" 2>&1
  local rc=$?
  local verdict=ok
  [ $rc -eq 124 ] && verdict="timed out after ${limit} s"
  [ $rc -ne 0 ] && [ $rc -ne 124 ] && verdict="failed (exit $rc)"
  status_line+=("| $name | $verdict | $((SECONDS - t0)) s |")
  echo "gpu-check: $name: $verdict ($((SECONDS - t0)) s)"
  return $rc
}

{
  echo "# GPU check, $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo
  echo "Command: \`scripts/gpu-check.sh\` (bundle $(tar -tJf "$bundle" >/dev/null && stat -c %s "$bundle") bytes, checkout $(git rev-parse --short HEAD 2>/dev/null || echo '?'))"
  echo
  echo '```'
  nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used,clocks.max.sm --format=csv 2>&1
  echo "host: $(nproc) CPUs, $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo); load $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "cuBLASLt from: ${cuda_lib:-not found (the CUDA steps will say so)}"
  "$m3" --version 2>&1 | head -n 1
  echo '```'
} >"$results"

# 2. The GPU tests, serially (they read device-wide free memory): ctest -L gpu over the
# packed test binaries, or each binary directly where ctest is not installed.
tests_dir="$work/ctest"
mkdir -p "$tests_dir"
for t in test_cuda_backend test_backend_ops_cuda; do
  printf 'add_test(%s "%s")\nset_tests_properties(%s PROPERTIES LABELS gpu TIMEOUT 170)\n' \
    "$t" "$pack_root/bin/$t" "$t" >>"$tests_dir/CTestTestfile.cmake"
done
if command -v ctest >/dev/null 2>&1; then
  step gpu-tests 200 ctest --test-dir "$tests_dir" -L gpu -j1 -V
else
  step gpu-tests 200 bash -c "for t in test_cuda_backend test_backend_ops_cuda; do '$pack_root/bin/'\$t || exit 1; done"
fi
say ""
say "## GPU tests (ctest -L gpu, serially)"
say ""
say '```'
grep -E '\[  (PASSED  |SKIPPED )\] [0-9]+ test|\[  FAILED  \]|tests passed|Test +#[0-9]+:|on GPU:|worst error' "$work/gpu-tests.log" | sed 's/^[0-9]*: //' | tail -n 150 >>"$results"
say '```'

# 3. CUDA fp16/bf16 against CPU fp32 on a 2-layer, full-width random model.
model="$work/bge-m3-random-L2"
step model 120 python3 bench/make_stdlib_model.py --layers 2 --out "$model"
python3 - "$work/texts.txt" <<'PY'
import random, sys
rng = random.Random(7)
words = "the of and to in is that for it as was with be by on not he this are or his from at which but have an they".split()
with open(sys.argv[1], "w") as f:
    for n in [1, 3, 7, 15, 31, 63, 127, 255, 511, 1023, 2047, 4000] + [rng.randint(5, 300) for _ in range(52)]:
        f.write(" ".join(rng.choice(words) for _ in range(n)) + "\n")
PY
encode_args=(encode --model "$model" --input "$work/texts.txt" --dense --sparse --colbert)
say ""
say "## CUDA against CPU fp32, 2-layer full-width random model (64 texts, 1 to ~4000 words)"
say ""
if step encode-cpu-fp32 150 "$m3" "${encode_args[@]}" --device cpu --dtype fp32 --output "$work/cpu-fp32.jsonl"; then
  for dtype in fp16 bf16; do
    if step "encode-cuda-$dtype" 90 "$m3" "${encode_args[@]}" --device cuda --dtype "$dtype" --output "$work/cuda-$dtype.jsonl"; then
      say "- cuda $dtype: $(python3 bench/compare_encodings.py "$work/cpu-fp32.jsonl" "$work/cuda-$dtype.jsonl")"
      say "  $(grep -E 'warm-up|peak' "$work/encode-cuda-$dtype.log" | tr '\n' ' ' | cut -c1-400)"
    else
      say "- cuda $dtype: encode failed: $(tail -n 3 "$work/encode-cuda-$dtype.log" | tr '\n' ' ')"
    fi
  done
else
  say "- the CPU reference failed: $(tail -n 3 "$work/encode-cpu-fp32.log" | tr '\n' ' ')"
fi

# 4. Speed and device memory: bench/gpu_peers.py (transformers too where torch has CUDA).
engines=m3embed
if python3 -c 'import torch, transformers; assert torch.cuda.is_available()' >/dev/null 2>&1; then
  engines=m3embed,transformers
fi
step gpu-peers 260 python3 bench/gpu_peers.py --model "$model" --workloads W1,W4,mix --engines "$engines" \
  --binary "$pack_root/bin/m3bench-workload" --soak --soak-requests 2000 --repeat 2 --warmup 1 --budget-s 60 \
  --quiet-timeout-s 0 --label gpu-check-L2 --out-dir "$work/peers"
say ""
say "## bench/gpu_peers.py on the 2-layer model: W1, W4, mix and the soak (engines: $engines)"
say ""
if ls "$work"/peers/*.md >/dev/null 2>&1; then
  sed -n '/^### /,$p' "$work"/peers/*.md >>"$results"
  cp "$work"/peers/*.json "$out/" 2>/dev/null
else
  say '```'
  tail -n 15 "$work/gpu-peers.log" >>"$results"
  say '```'
fi

say ""
say "## Steps"
say ""
say "| step | result | time |"
say "| --- | --- | ---: |"
for line in "${status_line[@]}"; do say "$line"; done
say ""
say "Total $(( $(date +%s) - started )) s."
[ -n "${OUT:-}" ] && cp "$work"/*.log "$out/" 2>/dev/null
echo "gpu-check: results in $results"
