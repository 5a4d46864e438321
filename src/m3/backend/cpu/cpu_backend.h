// CpuBackend: GEMMs are oneDNN matmul primitives compiled at start for the row chunks of
// gemm_row_blocks.h (a batch runs as a few chunks), so a forward pass creates nothing.
// A linear whose weights are float32 runs in float32 with the bias, GELU and residual
// fused as post-ops; one whose weights were packed at load (packed_linear_weights.h)
// runs in bf16 (same post-ops, inputs rounded first) or int8 (inputs quantized per
// token, then int8_epilogue). The rows a batch leaves in its last GEMM chunk are zeroed
// by the ops that start a pass (embed, attention). Attention is tiled over queries so its scratch is
// threads x q_tile x max_seq_len floats, never L x L for a batch.
#pragma once

#include <map>
#include <memory>
#include <tuple>
#include <vector>

#include <oneapi/dnnl/dnnl.hpp>

#include "m3/backend/backend.h"
#include "m3/core/precision.h"
#include "m3/memory/arena.h"
#include "m3/memory/memory_plan.h"
#include "m3/model/model_config.h"

namespace m3 {

inline constexpr int64_t kMaxQueryTile = 64;
// Keys per attention block of oneDNN's sgemm path: a 64 x 256 score block and the K and V
// rows it uses stay in L2 between the score GEMM, the softmax and the value GEMM.
inline constexpr int64_t kKeyBlock = 256;
// Keys per block of the float32-score kernels (--dtype fp32 and int8): 64 and 256 were
// both slower on W4 int8 (2-layer model, Zen 4: 2,300 and 2,350 against 2,500 tokens/s).
inline constexpr int64_t kFp32KeyBlock = 128;
// Keys per block of the bf16 kernels: the block's K and V in bf16 (32 KiB at head_dim 64)
// and a row group's scores stay in L1 from the scores through the softmax to P V.
inline constexpr int64_t kBf16KeyBlock = 128;

class CpuBackend final : public Backend {
 public:
  // Allocates the replica's arena (plan.arena_bytes; pages are touched at warm-up) and
  // computes with `threads` OpenMP threads (0: default_threads()).
  CpuBackend(const MemoryPlan& plan, int threads);
  std::string name() const override { return "cpu-onednn"; }
  std::string device_name() const override { return "cpu"; }
  BackendTraits traits() const override { return {DeviceKind::kCpu, activation_, false, 1}; }

  // The largest oneDNN scratchpad any GEMM of the table's linears needs up to max_rows
  // rows, stored as the CPU stores them at `precision` (cpu_weight_dtype).
  // oneDNN sizes its scratchpad by the threads that will run the GEMM: asked with `threads`
  // (a replica's), whatever the calling thread's OpenMP setting is.
  static uint64_t library_workspace_bytes(const WeightTable& table, int64_t max_rows, DType precision, int threads);
  static int default_threads();
  // A warning when the environment tells OpenMP to spin without end while its threads
  // wait (OMP_WAIT_POLICY=ACTIVE, GOMP_SPINCOUNT=infinite); empty otherwise. libgomp's
  // default spins a short while, then sleeps.
  static std::string spin_wait_warning();

  void attach_thread() override;
  TensorView arena() override;
  // Host tensors are shared, not copied: every CPU replica reads the same weights.
  std::vector<WeightView> place_weights(const HostWeights& weights) override;
  BatchView stage(const PackedBatch& batch, int slot) override;
  const void* fetch(const TensorView& tensor, int) override { return tensor.data; }
  void submit(int) override {}
  void finish(int) override {}
  DeviceMemory device_memory() const override { return {}; }
  void touch_arena() override { arena_.touch(); }

  std::unique_ptr<PreparedLinear> prepare_linear(const LinearRef& linear, Epilogue epilogue, DType out) override;
  void linear(const PreparedLinear& op, const TensorView& x, int64_t rows, const TensorView& y) override;
  void warm_up(const PreparedLinear&, const TensorView&, const TensorView&) override {}  // compiled at prepare
  void layer_norm(const TensorView& x, int64_t rows, const NormRef& norm, float eps, const TensorView& copy) override;
  void embed(const BatchView& batch, const WeightView& word, const WeightView& position, const TensorView& token_type,
             const NormRef& norm, float eps, const TensorView& hidden, const TensorView& copy) override;
  void attention(const BatchView& batch, const TensorView& qkv, const TensorView& qkv_bias, int64_t heads,
                 int64_t head_dim, const TensorView& context) override;
  void pool(const BatchView& batch, const TensorView& x, Pooling pooling, const TensorView& out,
                     const TensorView& norms) override;
  void normalize_rows(const TensorView& x, int64_t rows) override;
  void max_per_token_id(const BatchView& batch, const TensorView& weights, std::span<const int32_t> skip,
                         const TensorView& out) override;

  int threads() const { return threads_; }
  int64_t query_tile() const { return query_tile_; }

  // One compiled GEMM per row block for one (out, in, epilogue, bias, output type) shape, shared by
  // every layer; source and destination memory objects are re-pointed per call.
  struct RowBlockKernels {
    std::map<int64_t, size_t> index;  // chunk rows -> position in the vectors below
    std::vector<dnnl::matmul> primitives;
    std::vector<dnnl::memory> src, dst, scratchpad;
  };

 private:
  enum class Kernels { kInt8, kBf16, kFp32, kSgemm };  // which attention path runs (attention_kernels.h)
  void attention_sgemm(const float* q, const float* k, const float* v, int64_t stride, int64_t len, int64_t head_dim,
                       float scale, float* scores, float* o, int64_t o_stride) const;
  RowBlockKernels& kernels_for(int64_t out, int64_t in, Epilogue epilogue, DType precision, bool bias, DType dst);
  // Rows past a batch up to its last GEMM chunk start from zeros, so they stay finite.
  void zero_chunk_tail(const TensorView& x, int64_t rows) const;

  int64_t query_tile_ = 64;
  int64_t max_rows_ = 0;     // the largest batch, in tokens
  int64_t max_seq_len_ = 0;
  DType precision_ = DType::F32;
  DType activation_ = DType::F32;  // the plan's: bf16 with --dtype bf16 (cpu_bf16_activations)
  int threads_ = 1;
  Arena arena_;
  dnnl::engine engine_;
  dnnl::stream stream_;
  // Carved from the arena: attention scratch (threads x cpu_attention_scratch_floats),
  // the oneDNN scratchpad, and for int8 (and bf16 with float32 activations) the quantized
  // or rounded GEMM inputs, the int8 row scales, row minima and accumulators.
  float* attention_scratch_ = nullptr;
  int64_t scratch_floats_per_thread_ = 0;
  void* library_ = nullptr;
  uint64_t library_bytes_ = 0;
  void* gemm_input_ = nullptr;
  uint64_t gemm_input_bytes_ = 0;
  float* row_scales_ = nullptr;
  float* row_minima_ = nullptr;
  float* int8_accumulator_ = nullptr;
  std::map<std::tuple<int64_t, int64_t, Epilogue, DType, bool, DType>, RowBlockKernels> kernels_;
};

}  // namespace m3
