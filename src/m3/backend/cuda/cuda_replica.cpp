// CudaReplica: the whole model on one GPU. One cudaMalloc holds the weights (converted
// to the GEMM type at upload), the arena and the cuBLASLt workspace at the MemoryPlan's
// offsets; one pinned host block, in two slots, stages batch inputs up and outputs down.
// Everything runs on the replica's stream. The replica is pipelined: while one batch
// computes, the host stages the next in the other slot (serve_batches), and waits only
// for a batch's outputs, on that slot's event.
#include "m3/backend/cuda/cuda_replica.h"

#include <immintrin.h>

#include <chrono>
#include <cstring>

#include <spdlog/spdlog.h>

#include "m3/backend/cuda/cublaslt_linear.h"
#include "m3/backend/cuda/cuda_check.h"
#include "m3/backend/cuda/cuda_kernels.h"
#include "m3/backend/cuda/cuda_runtime_info.h"
#include "m3/core/process_memory.h"
#include "m3/model/m3_heads.h"
#include "m3/tokenizer/xlmr_tokenizer.h"

namespace m3 {
namespace {

using cuda::CublasLtLinear;
using cuda::GemmType;

constexpr uint64_t kDeviceAlignment = 256;  // as cuda_memory_plan.cpp places tensors

GemmType gemm_type(Precision p) {
  switch (p) {
    case Precision::kFp32: return GemmType::kF32;
    case Precision::kFp16: return GemmType::kF16;
    case Precision::kBf16: return GemmType::kBF16;
    case Precision::kInt8: break;
  }
  fail("--dtype int8 is CPU only; on CUDA use fp16, bf16 or fp32");
}

uint64_t gemm_bytes(GemmType t) { return t == GemmType::kF32 ? 4 : 2; }

uint16_t to_bf16(float x) {  // round to nearest even, NaN kept quiet
  uint32_t bits;
  std::memcpy(&bits, &x, 4);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40);
  return static_cast<uint16_t>((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
}

uint16_t to_fp16(float x) { return _cvtss_sh(x, _MM_FROUND_TO_NEAREST_INT); }  // F16C, in x86-64-v3

// Places float32 host tensors in the weight region, each 256-byte aligned, converting
// the GEMM-typed ones on the way through the pinned block.
class WeightUploader {
 public:
  WeightUploader(std::byte* device, uint64_t capacity, std::byte* pinned, uint64_t pinned_bytes, GemmType type,
                 cudaStream_t stream)
      : device_(device), capacity_(capacity), pinned_(pinned), pinned_bytes_(pinned_bytes), type_(type),
        stream_(stream) {}

  // Returns the tensor's device address.
  void* put(const std::vector<float>& host, bool gemm_typed) { return put(host, gemm_typed ? type_ : GemmType::kF32); }
  void* put(const std::vector<float>& host, GemmType type) {
    const uint64_t element = gemm_bytes(type);
    const uint64_t bytes = host.size() * element;
    std::byte* dst = device_ + cursor_;
    cursor_ += (bytes + kDeviceAlignment - 1) / kDeviceAlignment * kDeviceAlignment;
    if (cursor_ > capacity_) fail("internal: the weights need more than the planned {} bytes", capacity_);
    const uint64_t per_chunk = pinned_bytes_ / element;
    for (uint64_t first = 0; first < host.size(); first += per_chunk) {
      const uint64_t n = std::min<uint64_t>(per_chunk, host.size() - first);
      const float* src = host.data() + first;
      if (element == 4) {
        std::memcpy(pinned_, src, n * 4);
      } else {
        auto* out = reinterpret_cast<uint16_t*>(pinned_);
        if (type == GemmType::kBF16) {
          for (uint64_t i = 0; i < n; ++i) out[i] = to_bf16(src[i]);
        } else {
          for (uint64_t i = 0; i < n; ++i) out[i] = to_fp16(src[i]);
        }
      }
      cuda::check(cudaMemcpyAsync(dst + first * element, pinned_, n * element, cudaMemcpyHostToDevice, stream_),
            "cudaMemcpyAsync (weights)");
      cuda::check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize (weights)");  // the pinned block is reused
    }
    return dst;
  }
  uint64_t used() const { return cursor_; }

 private:
  std::byte* device_;
  uint64_t capacity_, cursor_ = 0;
  std::byte* pinned_;
  uint64_t pinned_bytes_;
  GemmType type_;
  cudaStream_t stream_;
};

struct DeviceLinear {
  const void* weight = nullptr;
  const float* bias = nullptr;
};

struct DeviceLayer {
  DeviceLinear qkv, attention_out, intermediate, output;
  const float *attention_gamma = nullptr, *attention_beta = nullptr, *output_gamma = nullptr, *output_beta = nullptr;
  std::unique_ptr<CublasLtLinear> qkv_gemm, attention_out_gemm, intermediate_gemm, output_gemm;
};

class CudaReplica final : public Replica {
 public:
  CudaReplica(int index, const SharedModel& model, const MemoryPlan& plan, Device device)
      : index_(index), model_(model), plan_(plan), device_(device), type_(gemm_type(plan.inputs.precision)) {
    const ModelConfig& c = model.config;
    if (!cuda::supported_attention_head_dim(c.head_dim())) {
      fail("the CUDA attention kernel has no variant for head size {} (8, 16, 32, 64, 80, 96, 128)", c.head_dim());
    }
    attach_thread();
    try {
      acquire();
    } catch (...) {
      release();  // a replica that failed to load leaves nothing behind on the device
      throw;
    }
  }

  ~CudaReplica() override { release(); }

 private:
  void acquire() {
    const MemoryPlan& plan = plan_;
    cuda::check(cudaFree(nullptr), "creating the CUDA context");
    cuda::check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate");
    for (cudaEvent_t& event : done_) cuda::check(cudaEventCreateWithFlags(&event, cudaEventDisableTiming), "cudaEventCreate");
    cuda::check(cublasLtCreate(&handle_), "cublasLtCreate");
    memory_before_ = cuda_memory_info(device_.index);
    if (plan.device_bytes > memory_before_.free) {
      fail("{} has {} free but the plan needs {} ({} weights + {} arena); lower --max-batch-tokens, set "
           "--memory-limit or --gpu-memory-fraction, or use --dtype fp16",
           device_.name(), format_bytes(memory_before_.free), format_bytes(plan.device_bytes),
           format_bytes(plan.weight_bytes), format_bytes(plan.arena_bytes));
    }
    void* base = nullptr;
    cuda::check(cudaMalloc(&base, plan.device_bytes), "cudaMalloc (the replica's planned memory)");
    base_ = static_cast<std::byte*>(base);
    void* pinned = nullptr;
    cuda::check(cudaHostAlloc(&pinned, plan.pinned_bytes, cudaHostAllocDefault), "cudaHostAlloc (pinned staging)");
    pinned_ = static_cast<std::byte*>(pinned);
    arena_ = base_ + plan.cuda.weight_bytes;
    upload_weights();
    build_linears();
    spdlog::info("replica {} on {}: {}; one allocation of {} ({} weights + {} arena and workspace), {} pinned",
                 index_, device_.name(), cuda_device_description(device_.index), format_bytes(plan.device_bytes),
                 format_bytes(plan.weight_bytes), format_bytes(plan.arena_bytes), format_bytes(plan.pinned_bytes));
  }

  void release() noexcept {
    cudaSetDevice(device_.index);
    if (stream_) cudaStreamSynchronize(stream_);
    layers_.clear();
    colbert_gemm_.reset();
    if (handle_) cublasLtDestroy(handle_);
    if (pinned_) cudaFreeHost(pinned_);
    if (base_) cudaFree(base_);
    for (cudaEvent_t& event : done_) {
      if (event) cudaEventDestroy(event);
      event = nullptr;
    }
    if (stream_) cudaStreamDestroy(stream_);
    handle_ = nullptr;
    pinned_ = base_ = nullptr;
    stream_ = nullptr;
  }

 public:
  int index() const override { return index_; }
  std::string device_name() const override { return device_.name(); }
  std::string backend_name() const override { return "cuda-cublaslt"; }
  void attach_thread() override { cuda::check(cudaSetDevice(device_.index), "cudaSetDevice"); }
  void check(const OutputRequest& request) const override {
    check_head_files(model_.heads, model_.model_dir, request);
  }

  WarmupReport warm_up() override {
    const auto start = std::chrono::steady_clock::now();
    attach_thread();
    WarmupReport report;
    report.rss_before = current_rss_bytes();
    reset_peak_rss();
    report.device = true;
    report.device_index = device_.index;
    report.device_total = memory_before_.total;
    report.device_free_before = memory_before_.free;
    report.device_planned = plan_.device_bytes;
    cuda::check(cudaMemsetAsync(arena_, 0, plan_.arena_bytes, stream_), "cudaMemsetAsync (arena)");
    // Every GEMM at every row bucket, so each cuBLASLt kernel is loaded now, not later.
    const auto& l = plan_.cuda;
    for (auto& layer : layers_) {
      layer.qkv_gemm->warm_up(arena(l.hidden_gemm), arena(l.qkv), stream_);
      layer.attention_out_gemm->warm_up(arena(l.context), arena(l.projection), stream_);
      layer.intermediate_gemm->warm_up(arena(l.hidden_gemm), arena(l.intermediate), stream_);
      layer.output_gemm->warm_up(arena(l.intermediate), arena(l.projection), stream_);
    }
    if (colbert_gemm_) colbert_gemm_->warm_up(arena(l.hidden_gemm), arena(l.colbert), stream_);
    const OutputRequest all{true, bool(model_.heads.sparse), bool(model_.heads.colbert)};
    std::vector<M3Output> outputs;
    for (const PackedBatch& batch : warmup_batches(plan_.inputs.max_seq_len, plan_.inputs.max_batch_tokens,
                                                   static_cast<int32_t>(model_.config.pad_token_id))) {
      run(batch, all, outputs);
    }
    outputs.clear();
    cuda::check(cudaStreamSynchronize(stream_), "warm-up");
    report.device_free_after = cuda_memory_info(device_.index).free;
    report.rss_after = current_rss_bytes();
    report.peak_rss = peak_rss_bytes();
    report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    return report;
  }

  void run(const PackedBatch& batch, const OutputRequest& request, std::vector<M3Output>& outputs) override {
    begin(batch, request, 0);
    end(batch, request, outputs, 0);
  }

  bool pipelined() const override { return true; }

  // Waits for the slot's batch, then copies its outputs out of the pinned block.
  void end(const PackedBatch& batch, const OutputRequest& request, std::vector<M3Output>& outputs,
           int slot) override {
    cuda::check(cudaEventSynchronize(done_[slot]), "the batch");
    cuda::check(cudaGetLastError(), "a kernel launch");
    extract(batch, request, outputs, slot);
  }

  // Stages the batch in `slot` and queues all of its work; returns without waiting.
  void begin(const PackedBatch& batch, const OutputRequest& request, int slot) override {
    check(request);
    const ModelConfig& c = model_.config;
    const auto& l = plan_.cuda;
    const int64_t tokens = batch.tokens(), sequences = batch.sequences(), h = c.hidden_size;
    if (tokens > plan_.rows) fail("batch of {} tokens exceeds the planned {} tokens", tokens, plan_.rows);
    if (sequences > l.max_sequences) fail("batch of {} sequences exceeds the planned {}", sequences, l.max_sequences);
    if (batch.max_seq_len > plan_.inputs.max_seq_len) {
      fail("sequence of {} tokens exceeds the planned {}", batch.max_seq_len, plan_.inputs.max_seq_len);
    }
    for (int32_t id : batch.token_ids) {
      if (id < 0 || id >= c.vocab_size) fail("token id {} is outside the vocabulary of {}", id, c.vocab_size);
    }
    const int64_t tiles = stage_inputs(batch, slot);
    const auto eps = static_cast<float>(c.layer_norm_eps);
    auto* hidden = arena<float>(l.hidden_f32);
    auto* projection = arena<float>(l.projection);
    const auto* ids = arena<int32_t>(l.token_ids);
    const auto* cu = arena<int32_t>(l.cu_seqlens);

    cuda::embed_layer_norm(type_, embedding_type_, ids, arena<int32_t>(l.positions), tokens, word_, position_, token_type_,
                           embedding_gamma_, embedding_beta_, eps, h, hidden, arena(l.hidden_gemm), stream_);
    for (auto& layer : layers_) {
      layer.qkv_gemm->run(arena(l.hidden_gemm), tokens, arena(l.qkv), stream_);
      cuda::attention(type_, arena(l.qkv), layer.qkv.bias, cu, arena<int32_t>(l.attention_tiles), tiles,
                      c.num_heads, c.head_dim(), arena(l.context), stream_);
      layer.attention_out_gemm->run(arena(l.context), tokens, projection, stream_);
      cuda::residual_layer_norm(type_, projection,
                                layer.attention_out_gemm->bias_fused() ? nullptr : layer.attention_out.bias, tokens,
                                layer.attention_gamma, layer.attention_beta, eps, h, hidden, arena(l.hidden_gemm),
                                stream_);
      layer.intermediate_gemm->run(arena(l.hidden_gemm), tokens, arena(l.intermediate), stream_);
      cuda::bias_gelu(type_, arena(l.intermediate), layer.intermediate.bias, tokens, c.intermediate_size, stream_);
      layer.output_gemm->run(arena(l.intermediate), tokens, projection, stream_);
      cuda::residual_layer_norm(type_, projection, layer.output_gemm->bias_fused() ? nullptr : layer.output.bias,
                                tokens, layer.output_gamma, layer.output_beta, eps, h, hidden, arena(l.hidden_gemm),
                                stream_);
    }
    // Heads, then the outputs down to the pinned block.
    const auto f32 = sizeof(float);
    if (request.dense) {
      cuda::cls_normalize(hidden, cu, sequences, h, arena<float>(l.dense), stream_);
      download(slot, l.staging_dense, l.dense, sequences * h * f32);
    }
    if (request.sparse) {
      cuda::sparse_weights(hidden, sparse_.weight_f32, sparse_.bias, tokens, h, arena<float>(l.sparse), stream_);
      cuda::lexical_max_per_id(arena<float>(l.sparse), ids, cu, sequences, tokens,
                               {{XlmrTokenizer::kCls, XlmrTokenizer::kEos, XlmrTokenizer::kPad, XlmrTokenizer::kUnk}},
                               arena<float>(l.lexical), stream_);
      download(slot, l.staging_lexical, l.lexical, tokens * f32);
    }
    if (request.colbert) {
      colbert_gemm_->run(arena(l.hidden_gemm), tokens, arena(l.colbert), stream_);
      cuda::normalize_rows(arena<float>(l.colbert), colbert_gemm_->bias_fused() ? nullptr : colbert_.bias, tokens, h,
                           stream_);
      download(slot, l.staging_colbert, l.colbert, tokens * h * f32);
    }
    cuda::check(cudaGetLastError(), "a kernel launch");
    cuda::check(cudaEventRecord(done_[slot], stream_), "cudaEventRecord");
  }

 private:
  struct SparseHead {
    const float* weight_f32 = nullptr;
    const float* bias = nullptr;
  };

  template <typename T = void>
  T* arena(uint64_t offset) const {
    return reinterpret_cast<T*>(arena_ + offset);
  }
  // The pinned block has two slots: one batch staged while the other computes.
  template <typename T = std::byte>
  T* staging(int slot, uint64_t offset) const {
    return reinterpret_cast<T*>(pinned_ + static_cast<uint64_t>(slot) * plan_.cuda.staging_slot_bytes + offset);
  }

  // Queued after the batch's kernels, so the next batch cannot overwrite them first.
  void download(int slot, uint64_t staging_offset, uint64_t arena_offset, uint64_t bytes) {
    cuda::check(cudaMemcpyAsync(staging(slot, staging_offset), arena_ + arena_offset, bytes, cudaMemcpyDeviceToHost,
                                stream_),
                "cudaMemcpyAsync (outputs)");
  }

  // Ids, positions, sequence starts and attention tiles into the slot's pinned block and
  // up (the device copies are queued after the previous batch's kernels, which read the
  // same device buffers); returns the number of tiles.
  int64_t stage_inputs(const PackedBatch& batch, int slot) {
    const auto& l = plan_.cuda;
    const int64_t tokens = batch.tokens(), sequences = batch.sequences();
    std::memcpy(staging(slot, l.staging_ids), batch.token_ids.data(), tokens * 4);
    std::memcpy(staging(slot, l.staging_positions), batch.positions.data(), tokens * 4);
    std::memcpy(staging(slot, l.staging_cu_seqlens), batch.cu_seqlens.data(), (sequences + 1) * 4);
    int32_t* tiles = staging<int32_t>(slot, l.staging_tiles);
    int64_t count = 0;
    for (int32_t s = 0; s < sequences; ++s) {
      for (int32_t q = 0; q < batch.seq_len(s); q += cuda::kAttentionQueryTile) {
        if (count >= l.max_attention_tiles) fail("internal: more attention tiles than planned");
        tiles[2 * count] = s;
        tiles[2 * count + 1] = q;
        ++count;
      }
    }
    auto up = [&](uint64_t arena_offset, uint64_t staging_offset, uint64_t bytes) {
      cuda::check(cudaMemcpyAsync(arena_ + arena_offset, staging(slot, staging_offset), bytes, cudaMemcpyHostToDevice,
                                  stream_),
                  "cudaMemcpyAsync (batch inputs)");
    };
    up(l.token_ids, l.staging_ids, tokens * 4);
    up(l.positions, l.staging_positions, tokens * 4);
    up(l.cu_seqlens, l.staging_cu_seqlens, (sequences + 1) * 4);
    up(l.attention_tiles, l.staging_tiles, count * 2 * 4);
    return count;
  }

  // From the pinned block into each sequence's M3Output (the host copy callers keep).
  void extract(const PackedBatch& batch, const OutputRequest& request, std::vector<M3Output>& outputs,
               int slot) const {
    const auto& l = plan_.cuda;
    const int64_t h = model_.config.hidden_size;
    outputs.resize(batch.sequences());
    for (int32_t s = 0; s < batch.sequences(); ++s) {
      M3Output& out = outputs[s];
      const int64_t begin = batch.seq_begin(s), len = batch.seq_len(s);
      out.tokens = len;
      if (request.dense) {
        const float* dense = staging<float>(slot, l.staging_dense) + s * h;
        out.dense.assign(dense, dense + h);
      }
      if (request.sparse) {
        out.lexical.clear();
        const float* lexical = staging<float>(slot, l.staging_lexical);
        for (int64_t t = begin; t < begin + len; ++t) {
          if (lexical[t] > 0.f) out.lexical.emplace_back(batch.token_ids[t], lexical[t]);
        }
      }
      if (request.colbert) {
        const float* rows = staging<float>(slot, l.staging_colbert);
        out.colbert_rows = len - 1;  // every token after CLS
        out.colbert.assign(rows + (begin + 1) * h, rows + (begin + len) * h);
      }
    }
  }

  void upload_weights() {
    const EncoderWeights& e = model_.encoder;
    WeightUploader up(base_, plan_.cuda.weight_bytes, pinned_, plan_.pinned_bytes, type_, stream_);
    word_ = up.put(e.word_embeddings, embedding_type_);
    position_ = up.put(e.position_embeddings, embedding_type_);
    token_type_ = static_cast<const float*>(up.put(e.token_type_embedding, false));
    embedding_gamma_ = static_cast<const float*>(up.put(e.embedding_norm.gamma, false));
    embedding_beta_ = static_cast<const float*>(up.put(e.embedding_norm.beta, false));
    auto linear = [&](const LinearWeights& w) {
      if (w.weight.empty()) fail("internal: {}x{} linear has no float32 weights to upload", w.out, w.in);
      return DeviceLinear{up.put(w.weight, true), static_cast<const float*>(up.put(w.bias, false))};
    };
    auto f32 = [&](const std::vector<float>& v) { return static_cast<const float*>(up.put(v, false)); };
    layers_.resize(e.layers.size());
    for (size_t i = 0; i < e.layers.size(); ++i) {
      const auto& w = e.layers[i];
      DeviceLayer& d = layers_[i];
      d.qkv = linear(w.qkv);
      d.attention_out = linear(w.attention_out);
      d.intermediate = linear(w.intermediate);
      d.output = linear(w.output);
      d.attention_gamma = f32(w.attention_norm.gamma);
      d.attention_beta = f32(w.attention_norm.beta);
      d.output_gamma = f32(w.output_norm.gamma);
      d.output_beta = f32(w.output_norm.beta);
    }
    if (model_.heads.colbert) colbert_ = linear(*model_.heads.colbert);
    if (model_.heads.sparse) sparse_ = {f32(model_.heads.sparse->weight), f32(model_.heads.sparse->bias)};
    if (up.used() != plan_.cuda.weight_bytes) {
      fail("internal: the weights took {} bytes on the device, the plan says {}", up.used(), plan_.cuda.weight_bytes);
    }
  }

  void build_linears() {
    const ModelConfig& c = model_.config;
    const auto& l = plan_.cuda;
    void* workspace = arena(l.workspace);
    const int64_t rows = plan_.rows, h = c.hidden_size, ffn = c.intermediate_size;
    auto gemm = [&](const DeviceLinear& w, int64_t out, int64_t in, GemmType output, bool bias_epilogue) {
      return std::make_unique<CublasLtLinear>(handle_, out, in, rows, type_, output, w.weight, w.bias, bias_epilogue,
                                              workspace, l.workspace_bytes);
    };
    for (auto& d : layers_) {
      d.qkv_gemm = gemm(d.qkv, 3 * h, h, type_, false);  // its bias is added by the attention kernel
      d.attention_out_gemm = gemm(d.attention_out, h, h, GemmType::kF32, true);
      d.intermediate_gemm = gemm(d.intermediate, ffn, h, type_, false);  // bias + GELU-erf: our kernel
      d.output_gemm = gemm(d.output, h, ffn, GemmType::kF32, true);
    }
    if (colbert_.weight) colbert_gemm_ = gemm(colbert_, h, h, GemmType::kF32, true);
  }

  int index_;
  const SharedModel& model_;
  MemoryPlan plan_;
  Device device_;
  GemmType type_;
  // Embedding tables: float16 in both 16-bit modes. Their values are small (well inside
  // float16's range) and float16 keeps 3 more mantissa bits than bfloat16, for the same bytes.
  GemmType embedding_type_ = type_ == GemmType::kF32 ? GemmType::kF32 : GemmType::kF16;
  cudaStream_t stream_ = nullptr;
  cublasLtHandle_t handle_ = nullptr;
  std::byte* base_ = nullptr;
  std::byte* arena_ = nullptr;
  std::byte* pinned_ = nullptr;
  cudaEvent_t done_[2] = {nullptr, nullptr};  // recorded after each slot's output copies
  DeviceMemoryInfo memory_before_;
  const void *word_ = nullptr, *position_ = nullptr;
  const float *token_type_ = nullptr, *embedding_gamma_ = nullptr, *embedding_beta_ = nullptr;
  std::vector<DeviceLayer> layers_;
  DeviceLinear colbert_;
  SparseHead sparse_;
  std::unique_ptr<CublasLtLinear> colbert_gemm_;
};

}  // namespace

std::unique_ptr<Replica> make_cuda_replica(int index, const SharedModel& model, const MemoryPlan& plan,
                                           Device device) {
  return std::make_unique<CudaReplica>(index, model, plan, device);
}

}  // namespace m3
