// Backend: the ops the one graph (graph/xlmr_encoder.h, graph/m3_heads.h) is written
// against, on typed tensor views, plus the few hooks in which devices differ (where the
// weights and the arena live, how a batch's inputs get to the device and its outputs
// back). A backend knows no layer count and no head semantics: the graph calls its ops
// in order; the CPU runs each at once, CUDA queues it on the replica's compute stream.
// After set-up a backend computes only in memory it was planned (memory_plan.h).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "m3/core/tensor.h"
#include "m3/memory/memory_plan.h"
#include "m3/model/weights.h"
#include "m3/model/packed_batch.h"
#include "m3/model/pooling_config.h"

namespace m3 {

// A weight as a backend placed it: a view (host or device memory) and, when the backend
// packed it into its own GEMM layout at load, that form.
struct WeightView {
  TensorView tensor;
  const PackedWeights* packed = nullptr;
};

struct LinearRef {
  WeightView weight;  // [out, in]
  TensorView bias;    // [1, out] float32; empty: no bias
};

struct NormRef {
  TensorView gamma, beta;  // [1, width] float32
};

// A linear layer prepared for one backend (weights bound, kernels chosen).
class PreparedLinear {
 public:
  virtual ~PreparedLinear() = default;
};

// A packed batch where the backend computes: token ids, positions [T, 1] and sequence
// starts cu_seqlens [S + 1, 1] (int32), beside the host batch they came from.
struct BatchView {
  const PackedBatch* host = nullptr;
  TensorView token_ids, positions, cu_seqlens;
  int slot = 0;  // the pipeline slot the batch was staged in
  int64_t tokens() const { return host->tokens(); }
  int32_t sequences() const { return host->sequences(); }
};

// What the graph must know of a backend to lay out its calls.
struct BackendTraits {
  DeviceKind device = DeviceKind::kCpu;
  // GEMM inputs between ops (hidden copy, qkv, attention output): CUDA stores them in the
  // GEMM precision, the CPU in bf16 with --dtype bf16 (cpu_bf16_activations), else float32
  // (its int8 GEMMs quantize their inputs themselves).
  DType activation = DType::F32;
  // The QKV bias is added by attention (in float32, before the activation rounding) rather
  // than by the QKV GEMM.
  bool attention_adds_qkv_bias = false;
  // Batches in flight at once (2: staged while the previous one computes).
  int slots = 1;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;  // "cpu-onednn", "cuda-cublaslt"
  virtual std::string device_name() const = 0;  // "cpu", "cuda:0"
  virtual BackendTraits traits() const = 0;
  // Call on the thread that will run this backend's operations.
  virtual void attach_thread() = 0;

  // --- memory and data movement (the per-device hooks)
  // The replica's arena (MemoryPlan::arena_bytes, allocated once), on this device.
  virtual TensorView arena() = 0;
  // Makes the whole arena resident before traffic (CPU: writes every page; CUDA: zeroes it).
  virtual void touch_arena() = 0;
  // Every table entry, where the ops read it (index i = weights.table.specs[i]). The CPU
  // shares the host tensors; CUDA uploads them into its planned weight region.
  virtual std::vector<WeightView> place_weights(const HostWeights& weights) = 0;
  // Puts the batch's inputs where the ops read them, in `slot`; checks it fits the plan.
  // The slot's previous batch must be finished (its staging memory is reused).
  virtual BatchView stage(const PackedBatch& batch, int slot) = 0;
  // A copy of `tensor` in host memory of `slot`, readable after finish(slot). CUDA copies it
  // after submit(slot), on a copy stream, while the next batch may already compute: so
  // `tensor` must be memory only this slot's batches write (a graph output at the slot's
  // offset, MemoryPlan::buffer(name, slot)).
  virtual const void* fetch(const TensorView& tensor, int slot) = 0;
  // Marks the end of the slot's work (nothing more is queued for it); its copies follow.
  virtual void submit(int slot) = 0;
  // Waits until the slot's work and copies are done; throws m3::Error on a device fault.
  virtual void finish(int slot) = 0;
  // The device's memory (cudaMemGetInfo) for warm-up reports; {} on the CPU.
  struct DeviceMemory {
    bool device = false;
    int index = 0;
    uint64_t total = 0;
    uint64_t free_before = 0;  // before the backend allocated (its context created)
    uint64_t free = 0;         // now
    uint64_t planned = 0;      // the backend's single allocation
  };
  virtual DeviceMemory device_memory() const = 0;

  // --- ops
  // Output dtype `out` (float32, the activation type, or the GEMM operand type for a
  // buffer only the next GEMM reads); kResidual needs float32.
  virtual std::unique_ptr<PreparedLinear> prepare_linear(const LinearRef& linear, Epilogue epilogue, DType out) = 0;
  // y[rows, out] (epilogue) x[rows, in] W^T + b for the first `rows` rows of x and y.
  // x is float32, the activation type or the GEMM operand type; the CPU may compute whole row chunks
  // (gemm_row_blocks.h), so x and y must have plan.rows rows there.
  virtual void linear(const PreparedLinear& op, const TensorView& x, int64_t rows, const TensorView& y) = 0;
  // Runs every kernel variant `op` may choose once (CUDA loads them now, not under traffic).
  virtual void warm_up(const PreparedLinear& op, const TensorView& x, const TensorView& y) = 0;
  // x = LayerNorm(x) over the first `rows` rows of the float32 x; when `copy` is not x,
  // also writes the result there in its dtype.
  virtual void layer_norm(const TensorView& x, int64_t rows, const NormRef& norm, float eps,
                          const TensorView& copy) = 0;
  // hidden[t] = LayerNorm((word[ids[t]] + token_type) + position[positions[t]]), float32,
  // and into `copy` as layer_norm does.
  virtual void embed(const BatchView& batch, const WeightView& word, const WeightView& position,
                     const TensorView& token_type, const NormRef& norm, float eps, const TensorView& hidden,
                     const TensorView& copy) = 0;
  // Self-attention of each packed sequence over itself, never L x L. qkv: [T, 3*heads*
  // head_dim] (query | key | value); `qkv_bias` [1, 3*heads*head_dim] is added here when
  // not empty. context: [T, heads*head_dim].
  virtual void attention(const BatchView& batch, const TensorView& qkv, const TensorView& qkv_bias, int64_t heads,
                         int64_t head_dim, const TensorView& context) = 0;
  // out[s] = each sequence's pooled row of the float32 x: its first row (kCls) or the mean
  // of its rows (kMean). When `norms` is not empty, out[s] is divided by norms[s] =
  // max(||out[s]||, 1e-12) (so out * norm gives the pooled row back: TEI's normalize=false);
  // else it is left as pooled.
  virtual void pool(const BatchView& batch, const TensorView& x, Pooling pooling, const TensorView& out,
                    const TensorView& norms) = 0;
  // Each of the first `rows` rows of the float32 x divided by max(its norm, 1e-12), in place.
  virtual void normalize_rows(const TensorView& x, int64_t rows) = 0;
  // out[t] = the largest weight of token ids[t] within its sequence when t is that id's
  // first position with a positive weight and the id is not in `skip`; else 0.
  virtual void max_per_token_id(const BatchView& batch, const TensorView& weights, std::span<const int32_t> skip,
                                 const TensorView& out) = 0;
};

}  // namespace m3
