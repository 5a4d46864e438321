// CudaBackend: the ops on one GPU. One cudaMalloc holds the weights (converted to their
// CUDA storage type at upload), the arena and the cuBLASLt workspace at the MemoryPlan's
// offsets; one pinned host block, in two slots, stages batch inputs up and outputs down.
// Two streams. The compute stream runs a slot's input uploads and the graph's ops; the
// copy stream, once the compute stream has passed the slot's last op, copies the slot's
// outputs down and records the event finish() waits on. So the host stages the next batch
// in the other slot while this one computes, and the next batch's layers run while this
// one's outputs come down: the outputs live in memory of their own per slot (the plan
// gives each slot a copy, MemoryPlan::buffer(name, slot)), which no other batch writes.
#include "m3/backend/cuda_devices.h"

#include <immintrin.h>

#include <cstring>

#include <spdlog/spdlog.h>

#include "m3/backend/cuda/cublaslt_linear.h"
#include "m3/backend/cuda/cuda_check.h"
#include "m3/backend/cuda/cuda_kernels.h"
#include "m3/memory/plan_rules.h"

namespace m3 {
namespace {

using cuda::CublasLtLinear;

constexpr uint64_t kDeviceAlignment = 256;  // as cuda_plan_rules.cpp places tensors
// Free device memory a replica leaves beyond its plan at start: CUDA loads modules lazily,
// so m3embed's kernels and the cuBLASLt kernels its GEMMs pick take device memory at
// warm-up, outside any allocation of ours (docs/gpu.md, "Memory"). An estimate until a
// GPU run measures it (scripts/gpu-check.sh records free memory before and after warm-up).
constexpr uint64_t kDeviceHeadroom = uint64_t{512} << 20;

uint64_t align_device(uint64_t n) { return (n + kDeviceAlignment - 1) / kDeviceAlignment * kDeviceAlignment; }

uint16_t to_bf16(float x) {  // round to nearest even, NaN kept quiet
  uint32_t bits;
  std::memcpy(&bits, &x, 4);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40);
  return static_cast<uint16_t>((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
}

uint16_t to_fp16(float x) { return _cvtss_sh(x, _MM_FROUND_TO_NEAREST_INT); }  // F16C, in x86-64-v3

TensorView device_view(const void* data, DType dtype, int64_t rows, int64_t cols) {
  return tensor_view(data, dtype, rows, cols, DeviceKind::kCuda);
}

class CudaLinear final : public PreparedLinear {
 public:
  std::unique_ptr<CublasLtLinear> gemm;  // null: a one-row float32 weight, run as dot products
  const void* weight = nullptr;
  const float* bias = nullptr;
  int64_t out = 0, in = 0;
  Epilogue epilogue = Epilogue::kStore;
  DType output = DType::F32;
  // What runs after the GEMM: the bias when cuBLASLt did not fuse it, GELU-erf (cuBLASLt's
  // GELU epilogue is the tanh approximation), relu.
  cuda::Activation activation = cuda::Activation::kNone;
  const float* late_bias = nullptr;
};

class CudaBackend final : public Backend {
 public:
  CudaBackend(const MemoryPlan& plan, Device device) : plan_(plan), device_(device) {
    const ModelConfig& c = plan.inputs.config;
    if (!cuda::supported_attention_head_dim(c.head_dim())) {
      fail("the CUDA attention kernel has no variant for head size {} (8, 16, 32, 64, 80, 96, 128)", c.head_dim());
    }
    attach_thread();
    try {
      acquire();
    } catch (...) {
      release();  // a backend that failed to start leaves nothing behind on the device
      throw;
    }
  }
  ~CudaBackend() override { release(); }

  std::string name() const override { return "cuda-cublaslt"; }
  std::string device_name() const override { return device_.name(); }
  BackendTraits traits() const override { return {DeviceKind::kCuda, plan_.activation, true, kCudaPipelineSlots}; }
  void attach_thread() override { cuda::check(cudaSetDevice(device_.index), "cudaSetDevice"); }

  TensorView arena() override { return device_view(arena_, DType::I8, static_cast<int64_t>(plan_.arena_bytes), 1); }
  void touch_arena() override {
    cuda::check(cudaMemsetAsync(arena_, 0, plan_.arena_bytes, stream_), "cudaMemsetAsync (arena)");
  }

  // Walks the weight table once, placing each tensor 256-byte aligned in the weight
  // region, converted to its CUDA storage type through the pinned block.
  std::vector<WeightView> place_weights(const HostWeights& w) override {
    std::vector<WeightView> views;
    uint64_t cursor = 0;
    for (size_t i = 0; i < w.table.specs.size(); ++i) {
      const WeightSpec& spec = w.table.specs[i];
      const DType type = cuda_weight_dtype(spec, plan_.inputs.precision);
      const std::vector<float>& host = w.data[i];
      if (host.size() != spec.elements()) fail("internal: {} has no float32 host copy to upload", spec.name);
      std::byte* dst = base_ + cursor;
      cursor += align_device(spec.elements() * dtype_size(type));
      if (cursor > plan_.cuda.weight_bytes) fail("internal: the weights need more than the planned {} bytes", plan_.cuda.weight_bytes);
      upload(host, type, dst);
      views.push_back({device_view(dst, type, spec.rows, spec.cols), nullptr});
    }
    if (cursor != plan_.cuda.weight_bytes) {
      fail("internal: the weights took {} bytes on the device, the plan says {}", cursor, plan_.cuda.weight_bytes);
    }
    return views;
  }

  // Ids, positions, sequence starts and attention tiles into the slot's pinned block and
  // up (queued after the previous batch's kernels, which read the same device buffers).
  // The slot's pinned block is free again: the caller finished its previous batch.
  BatchView stage(const PackedBatch& batch, int slot) override {
    const auto& l = plan_.cuda;
    const ModelConfig& c = plan_.inputs.config;
    const int64_t tokens = batch.tokens(), sequences = batch.sequences();
    if (tokens > plan_.rows) fail("batch of {} tokens exceeds the planned {} tokens", tokens, plan_.rows);
    if (sequences > l.max_sequences) fail("batch of {} sequences exceeds the planned {}", sequences, l.max_sequences);
    if (batch.max_seq_len > plan_.inputs.max_seq_len) {
      fail("sequence of {} tokens exceeds the planned {}", batch.max_seq_len, plan_.inputs.max_seq_len);
    }
    for (int32_t id : batch.token_ids) {
      if (id < 0 || id >= c.vocab_size) fail("token id {} is outside the vocabulary of {}", id, c.vocab_size);
    }
    std::memcpy(staging(slot, l.staging_ids), batch.token_ids.data(), tokens * 4);
    std::memcpy(staging(slot, l.staging_positions), batch.positions.data(), tokens * 4);
    std::memcpy(staging(slot, l.staging_cu_seqlens), batch.cu_seqlens.data(), (sequences + 1) * 4);
    auto* tiles = reinterpret_cast<int32_t*>(staging(slot, l.staging_tiles));
    int64_t count = 0;
    for (int32_t s = 0; s < sequences; ++s) {
      for (int32_t q = 0; q < batch.seq_len(s); q += cuda::kAttentionQueryTile) {
        if (count >= l.max_attention_tiles) fail("internal: more attention tiles than planned");
        tiles[2 * count] = s;
        tiles[2 * count + 1] = q;
        ++count;
      }
    }
    up(l.token_ids, slot, l.staging_ids, tokens * 4);
    up(l.positions, slot, l.staging_positions, tokens * 4);
    up(l.cu_seqlens, slot, l.staging_cu_seqlens, (sequences + 1) * 4);
    up(l.attention_tiles, slot, l.staging_tiles, count * 2 * 4);
    tile_count_ = count;
    fetch_cursor_[slot] = l.staging_outputs;  // the slot's outputs follow its inputs
    copies_[slot].clear();
    // This batch's ops write the slot's output buffers again: not before the copy stream
    // has read them for the slot's previous batch. (A caller that finished that batch
    // before staging this one, as Replica's order has it, already waited for those copies;
    // the device keeps the order on its own all the same.)
    cuda::check(cudaStreamWaitEvent(stream_, done_[slot], 0), "cudaStreamWaitEvent (the slot's last copies)");
    BatchView v;
    v.host = &batch;
    v.slot = slot;
    v.token_ids = device_view(arena_ + l.token_ids, DType::I32, tokens, 1);
    v.positions = device_view(arena_ + l.positions, DType::I32, tokens, 1);
    v.cu_seqlens = device_view(arena_ + l.cu_seqlens, DType::I32, sequences + 1, 1);
    return v;
  }

  // The copy is queued at submit(), on the copy stream, after the slot's last op.
  const void* fetch(const TensorView& tensor, int slot) override {
    uint64_t& cursor = fetch_cursor_[slot];
    if (cursor + tensor.bytes() > plan_.cuda.staging_slot_bytes) {
      fail("internal: outputs of {} bytes exceed the planned pinned staging", tensor.bytes());
    }
    std::byte* host = staging(slot, cursor);
    copies_[slot].add({host, tensor.data, tensor.bytes()});
    cursor += align_device(tensor.bytes());
    return host;
  }

  // The compute stream marks the end of the slot's ops; the copy stream waits for that
  // mark, copies the slot's outputs down and records done_[slot].
  void submit(int slot) override {
    cuda::check(cudaGetLastError(), "a kernel launch");
    cuda::check(cudaEventRecord(computed_, stream_), "cudaEventRecord (the batch's ops)");
    cuda::check(cudaStreamWaitEvent(copy_stream_, computed_, 0), "cudaStreamWaitEvent (the batch's ops)");
    for (const Copy& c : copies_[slot]) {
      cuda::check(cudaMemcpyAsync(c.host, c.device, c.bytes, cudaMemcpyDeviceToHost, copy_stream_),
                  "cudaMemcpyAsync (outputs)");
    }
    copies_[slot].clear();
    cuda::check(cudaEventRecord(done_[slot], copy_stream_), "cudaEventRecord (the batch's outputs)");
  }

  // A sticky error on either stream (the context's) is returned here: DeviceFault.
  void finish(int slot) override {
    cuda::check(cudaEventSynchronize(done_[slot]), "the batch");
    cuda::check(cudaGetLastError(), "a kernel launch");
  }

  DeviceMemory device_memory() const override {
    DeviceMemory m;
    m.device = true;
    m.index = device_.index;
    m.total = memory_before_.total;
    m.free_before = memory_before_.free;
    m.free = cuda_memory_info(device_.index).free;
    m.planned = plan_.device_bytes;
    return m;
  }

  // --- ops
  std::unique_ptr<PreparedLinear> prepare_linear(const LinearRef& l, Epilogue epilogue, DType out) override {
    auto op = std::make_unique<CudaLinear>();
    op->weight = l.weight.tensor.data;
    op->bias = l.bias.empty() ? nullptr : l.bias.as<const float>();
    op->out = l.weight.tensor.rows;
    op->in = l.weight.tensor.cols;
    op->epilogue = epilogue;
    op->output = out;
    if (epilogue == Epilogue::kResidual && out != DType::F32) fail("internal: a residual linear writes float32");
    if (op->out == 1 && l.weight.tensor.dtype == DType::F32 && epilogue == Epilogue::kRelu && out == DType::F32) {
      return op;  // a one-output float32 linear: one dot product per row (dot_relu_rows)
    }
    // The bias goes into cuBLASLt's epilogue where the output is float32 (the epilogue reads
    // the bias in the output's type); GELU and relu run after the GEMM, in our kernel, which
    // adds the bias in float32 before rounding when it was not fused.
    const bool fuse_bias =
        op->bias && out == DType::F32 && (epilogue == Epilogue::kStore || epilogue == Epilogue::kResidual);
    op->gemm = std::make_unique<CublasLtLinear>(handle_, op->out, op->in, plan_.rows, l.weight.tensor.dtype, out,
                                                op->weight, op->bias, fuse_bias, arena_ + plan_.cuda.workspace,
                                                plan_.cuda.workspace_bytes);
    if (epilogue == Epilogue::kGelu) op->activation = cuda::Activation::kGelu;
    if (epilogue == Epilogue::kRelu) op->activation = cuda::Activation::kRelu;
    if (epilogue == Epilogue::kTanh) op->activation = cuda::Activation::kTanh;
    if (op->bias && !op->gemm->bias_fused()) op->late_bias = op->bias;
    return op;
  }

  void linear(const PreparedLinear& prepared, const TensorView& x, int64_t rows, const TensorView& y) override {
    const auto& op = static_cast<const CudaLinear&>(prepared);
    if (!op.gemm) {
      cuda::dot_relu_rows(x.as<const float>(), static_cast<const float*>(op.weight), op.bias, rows, op.in,
                           y.as<float>(), stream_);
      return;
    }
    op.gemm->run(x.data, rows, y.data, stream_, op.epilogue == Epilogue::kResidual);
    if (op.late_bias || op.activation != cuda::Activation::kNone) {
      cuda::bias_activation(op.output, y.data, op.late_bias, rows, op.out, op.activation, stream_);
    }
  }

  void warm_up(const PreparedLinear& prepared, const TensorView& x, const TensorView& y) override {
    const auto& op = static_cast<const CudaLinear&>(prepared);
    if (op.gemm) op.gemm->warm_up(x.data, y.data, stream_, op.epilogue == Epilogue::kResidual);
  }

  void layer_norm(const TensorView& x, int64_t rows, const NormRef& norm, float eps, const TensorView& copy) override {
    const TensorView& out = copy.empty() ? x : copy;
    cuda::residual_layer_norm(out.dtype, nullptr, nullptr, rows, norm.gamma.as<const float>(),
                              norm.beta.as<const float>(), eps, x.cols, x.as<float>(), out.data, stream_);
  }

  void embed(const BatchView& batch, const WeightView& word, const WeightView& position, const TensorView& token_type,
             const NormRef& norm, float eps, const TensorView& hidden, const TensorView& copy) override {
    const TensorView& out = copy.empty() ? hidden : copy;
    if (word.tensor.dtype != position.tensor.dtype) fail("internal: the embedding tables differ in type");
    cuda::embed_layer_norm(out.dtype, word.tensor.dtype, batch.token_ids.as<const int32_t>(),
                           batch.positions.as<const int32_t>(), batch.tokens(), word.tensor.data, position.tensor.data,
                           token_type.as<const float>(), norm.gamma.as<const float>(), norm.beta.as<const float>(), eps,
                           hidden.cols, hidden.as<float>(), out.data, stream_);
  }

  void attention(const BatchView& batch, const TensorView& qkv, const TensorView& qkv_bias, int64_t heads,
                 int64_t head_dim, const TensorView& context) override {
    if (qkv.dtype != context.dtype) fail("internal: attention reads and writes one type");
    cuda::attention(qkv.dtype, qkv.data, qkv_bias.empty() ? nullptr : qkv_bias.as<const float>(),
                    batch.cu_seqlens.as<const int32_t>(),
                    reinterpret_cast<const int32_t*>(arena_ + plan_.cuda.attention_tiles), tile_count_, heads,
                    head_dim, context.data, stream_);
  }

  void pool(const BatchView& batch, const TensorView& x, Pooling pooling, const TensorView& out,
            const TensorView& norms) override {
    cuda::pool(x.as<const float>(), batch.cu_seqlens.as<const int32_t>(), batch.sequences(), x.cols,
               pooling == Pooling::kMean, out.as<float>(), norms.empty() ? nullptr : norms.as<float>(), stream_);
  }

  void normalize_rows(const TensorView& x, int64_t rows) override {
    cuda::normalize_rows(x.as<float>(), nullptr, rows, x.cols, stream_);
  }

  void max_per_token_id(const BatchView& batch, const TensorView& weights, std::span<const int32_t> skip,
                         const TensorView& out) override {
    cuda::SkipIds skip_ids{{-1, -1, -1, -1}};
    if (skip.size() > 4) fail("internal: at most 4 ids can be skipped on CUDA, not {}", skip.size());
    for (size_t i = 0; i < skip.size(); ++i) skip_ids.id[i] = skip[i];
    cuda::max_per_token_id(weights.as<const float>(), batch.token_ids.as<const int32_t>(),
                             batch.cu_seqlens.as<const int32_t>(), batch.sequences(), batch.tokens(), skip_ids,
                             out.as<float>(), stream_);
  }

 private:
  void acquire() {
    cuda::check(cudaFree(nullptr), "creating the CUDA context");
    cuda::check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate (compute)");
    cuda::check(cudaStreamCreateWithFlags(&copy_stream_, cudaStreamNonBlocking), "cudaStreamCreate (copies)");
    // Blocking sync: a replica thread waiting for its batch sleeps instead of spinning a core
    // that the tokenizer and the HTTP threads need.
    for (cudaEvent_t& event : done_) {
      cuda::check(cudaEventCreateWithFlags(&event, cudaEventDisableTiming | cudaEventBlockingSync), "cudaEventCreate");
    }
    cuda::check(cudaEventCreateWithFlags(&computed_, cudaEventDisableTiming), "cudaEventCreate");
    cuda::check(cublasLtCreate(&handle_), "cublasLtCreate");
    memory_before_ = cuda_memory_info(device_.index);
    if (plan_.device_bytes + kDeviceHeadroom > memory_before_.free) {
      fail("{} has {} free but the plan needs {} ({} weights + {} arena) and {} more must stay free for the kernels "
           "CUDA loads as they first run; lower --max-batch-tokens, set --memory-limit or --gpu-memory-fraction, or "
           "use --dtype fp16",
           device_.name(), format_bytes(memory_before_.free), format_bytes(plan_.device_bytes),
           format_bytes(plan_.weight_bytes), format_bytes(plan_.arena_bytes), format_bytes(kDeviceHeadroom));
    }
    void* base = nullptr;
    cuda::check(cudaMalloc(&base, plan_.device_bytes), "cudaMalloc (the replica's planned memory)");
    base_ = static_cast<std::byte*>(base);
    void* pinned = nullptr;
    cuda::check(cudaHostAlloc(&pinned, plan_.pinned_bytes, cudaHostAllocDefault), "cudaHostAlloc (pinned staging)");
    pinned_ = static_cast<std::byte*>(pinned);
    arena_ = base_ + plan_.cuda.weight_bytes;
    spdlog::info("{}: {}; one allocation of {} ({} weights + {} arena and workspace), {} pinned", device_.name(),
                 cuda_device_description(device_.index), format_bytes(plan_.device_bytes),
                 format_bytes(plan_.weight_bytes), format_bytes(plan_.arena_bytes), format_bytes(plan_.pinned_bytes));
  }

  // Both streams are drained before the memory they use goes (errors are ignored: after a
  // device fault every call returns it).
  void release() noexcept {
    cudaSetDevice(device_.index);
    for (cudaStream_t stream : {stream_, copy_stream_}) {
      if (stream) cudaStreamSynchronize(stream);
    }
    if (handle_) cublasLtDestroy(handle_);
    if (pinned_) cudaFreeHost(pinned_);
    if (base_) cudaFree(base_);
    for (cudaEvent_t& event : done_) {
      if (event) cudaEventDestroy(event);
      event = nullptr;
    }
    if (computed_) cudaEventDestroy(computed_);
    computed_ = nullptr;
    for (cudaStream_t* stream : {&stream_, &copy_stream_}) {
      if (*stream) cudaStreamDestroy(*stream);
      *stream = nullptr;
    }
    handle_ = nullptr;
    pinned_ = base_ = nullptr;
  }

  // The pinned block has two slots: one batch staged while the other computes.
  std::byte* staging(int slot, uint64_t offset) const {
    return pinned_ + static_cast<uint64_t>(slot) * plan_.cuda.staging_slot_bytes + offset;
  }

  void up(uint64_t arena_offset, int slot, uint64_t staging_offset, uint64_t bytes) {
    cuda::check(cudaMemcpyAsync(arena_ + arena_offset, staging(slot, staging_offset), bytes, cudaMemcpyHostToDevice,
                                stream_),
                "cudaMemcpyAsync (batch inputs)");
  }

  // float32 host values to `type` at `dst`, through the pinned block in chunks.
  void upload(const std::vector<float>& host, DType type, std::byte* dst) {
    const uint64_t element = dtype_size(type);
    const uint64_t per_chunk = plan_.pinned_bytes / element;
    for (uint64_t first = 0; first < host.size(); first += per_chunk) {
      const uint64_t n = std::min<uint64_t>(per_chunk, host.size() - first);
      const float* src = host.data() + first;
      if (type == DType::F32) {
        std::memcpy(pinned_, src, n * 4);
      } else {
        auto* out = reinterpret_cast<uint16_t*>(pinned_);
        if (type == DType::BF16) {
          for (uint64_t i = 0; i < n; ++i) out[i] = to_bf16(src[i]);
        } else {
          for (uint64_t i = 0; i < n; ++i) out[i] = to_fp16(src[i]);
        }
      }
      cuda::check(cudaMemcpyAsync(dst + first * element, pinned_, n * element, cudaMemcpyHostToDevice, stream_),
                  "cudaMemcpyAsync (weights)");
      cuda::check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize (weights)");  // the pinned block is reused
    }
  }

  // A slot's fetched tensors, copied down at submit(): a fixed few per batch, held without
  // allocating (the forward pass allocates nothing).
  struct Copy {
    void* host;
    const void* device;
    uint64_t bytes;
  };
  class Copies {
   public:
    void add(const Copy& c) {
      if (count_ == kMax) fail("internal: more than {} tensors fetched in one batch", kMax);
      items_[count_++] = c;
    }
    void clear() { count_ = 0; }
    const Copy* begin() const { return items_; }
    const Copy* end() const { return items_ + count_; }

   private:
    static constexpr size_t kMax = 16;
    Copy items_[kMax] = {};
    size_t count_ = 0;
  };

  MemoryPlan plan_;
  Device device_;
  cudaStream_t stream_ = nullptr;       // compute: uploads and the graph's ops
  cudaStream_t copy_stream_ = nullptr;  // outputs down, after the compute stream's `computed_`
  cublasLtHandle_t handle_ = nullptr;
  std::byte* base_ = nullptr;
  std::byte* arena_ = nullptr;
  std::byte* pinned_ = nullptr;
  cudaEvent_t computed_ = nullptr;  // on the compute stream: the submitted batch's last op
  cudaEvent_t done_[kCudaPipelineSlots] = {};  // on the copy stream: after each slot's output copies
  Copies copies_[kCudaPipelineSlots];
  uint64_t fetch_cursor_[kCudaPipelineSlots] = {};
  int64_t tile_count_ = 0;  // attention tiles of the batch staged last
  DeviceMemoryInfo memory_before_;
};

}  // namespace

std::unique_ptr<Backend> make_cuda_backend_on_device(const MemoryPlan& plan, Device device) {
  return std::make_unique<CudaBackend>(plan, device);
}

}  // namespace m3
