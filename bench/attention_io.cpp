// m3bench-attention-io: CpuBackend::attention over BGE-M3's heads (16 of 64) with float32
// Q, K, V and output (the path --dtype int8 takes, and bf16 took before its activations
// were bf16) and with bf16 ones (--dtype bf16), both through the bf16 kernels, alternating
// in one process so that a VM's drift from one minute to the next cancels out.
//
//   m3bench-attention-io [w4|w2] [rounds]
//     w4: one 8192-token sequence (bench/workloads.py W4); w2: 64 sequences of 16..512
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "m3/backend/cpu/cpu_backend.h"
#include "m3/backend/cpu/gemm_inputs.h"
#include "m3/memory/memory_plan.h"

using namespace m3;

int main(int argc, char** argv) {
  const std::string shape = argc > 1 ? argv[1] : "w4";
  const int rounds = argc > 2 ? std::max(1, std::atoi(argv[2])) : 5;
  const int64_t heads = 16, head_dim = 64, hidden = heads * head_dim;
  std::vector<int32_t> lengths = {8192};
  if (shape == "w2") {
    std::mt19937 pick(1);
    lengths.clear();
    for (int i = 0; i < 64; ++i) lengths.push_back(16 + static_cast<int32_t>(pick() % 497));
  }
  PackedBatch batch;
  for (int32_t len : lengths) batch.add(std::vector<int32_t>(len, 5), 1);
  const int64_t t = batch.tokens();

  PlanInputs in;
  in.config.vocab_size = 8;
  in.config.hidden_size = hidden;
  in.config.num_layers = 1;
  in.config.num_heads = heads;
  in.config.intermediate_size = 4;
  in.config.max_position_embeddings = 8194;
  in.max_seq_len = 8192;
  in.max_batch_tokens = std::max<int64_t>(t, 8192);
  in.threads = 2;
  in.precision = DType::BF16;
  CpuBackend backend(plan_memory(in), in.threads);
  backend.attach_thread();

  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.f, 1.f);
  std::vector<float> qkv(t * 3 * hidden), out(t * hidden);
  for (float& x : qkv) x = normal(rng);
  std::vector<uint16_t> qkv16(qkv.size()), out16(out.size());
  round_rows_to_bf16(qkv.data(), 1, static_cast<int64_t>(qkv.size()), qkv16.data());
  auto view = [](void* data, DType dtype, int64_t rows, int64_t cols) {
    TensorView v;
    v.data = data;
    v.dtype = dtype;
    v.rows = rows;
    v.cols = cols;
    return v;
  };
  const BatchView staged = backend.stage(batch, 0);
  double total[2] = {0, 0}, best[2] = {1e30, 1e30};
  for (int round = 0; round < rounds; ++round) {
    for (int side = 0; side < 2; ++side) {
      const auto start = std::chrono::steady_clock::now();
      if (side == 0) {
        backend.attention(staged, view(qkv.data(), DType::F32, t, 3 * hidden), {}, heads, head_dim,
                          view(out.data(), DType::F32, t, hidden));
      } else {
        backend.attention(staged, view(qkv16.data(), DType::BF16, t, 3 * hidden), {}, heads, head_dim,
                          view(out16.data(), DType::BF16, t, hidden));
      }
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      total[side] += s;
      best[side] = std::min(best[side], s);
    }
  }
  std::printf("%s (%lld tokens, %d rounds): float32 I/O mean %.1f ms (best %.1f), bf16 I/O mean %.1f ms (best %.1f): "
              "%.3fx\n",
              shape.c_str(), static_cast<long long>(t), rounds, total[0] / rounds * 1e3, best[0] * 1e3,
              total[1] / rounds * 1e3, best[1] * 1e3, total[0] / total[1]);
}
