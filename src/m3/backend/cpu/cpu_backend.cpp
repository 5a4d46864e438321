#include "m3/backend/cpu/cpu_backend.h"

#include <omp.h>

#include "m3/backend/cpu/attention_kernels.h"
#include "m3/backend/cpu/attention_softmax.h"
#include "m3/backend/cpu/gemm_inputs.h"
#include "m3/backend/cpu/packed_linear_weights.h"
#include "m3/core/cpu_quota.h"
#include "m3/core/error.h"
#include "m3/memory/gemm_row_blocks.h"

namespace m3 {
namespace {

using dnnl::memory;
using tag = memory::format_tag;
using dt = memory::data_type;

Precision precision_of(const LinearWeights& w) {
  return w.packed ? static_cast<const CpuPackedWeights&>(*w.packed).precision : Precision::kFp32;
}

// fp32 and bf16: y (epilogue)= x W^T + b in one primitive. int8: the raw accumulators
// only (x and W are quantized), int8_epilogue applies the scales, bias and epilogue.
dnnl::matmul::primitive_desc gemm_desc(const dnnl::engine& engine, int64_t rows, int64_t out, int64_t in,
                                       Epilogue epilogue, Precision precision) {
  const memory::desc dst_md({rows, out}, dt::f32, tag::ab);
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);  // the arena holds it
  if (precision == Precision::kInt8) {
    const memory::desc src_md({rows, in}, dt::s8, tag::ab);
    const memory::desc wei_md = packed_weights_desc(engine, precision, out, in);
    return dnnl::matmul::primitive_desc(dnnl::matmul::desc(src_md, wei_md, dst_md), attr, engine);
  }
  const bool bf16 = precision == Precision::kBf16;
  const memory::desc src_md({rows, in}, bf16 ? dt::bf16 : dt::f32, tag::ab);
  // fp32 keeps PyTorch's [out, in] in place (format ba of W^T); bf16 uses the packed layout.
  const memory::desc wei_md =
      bf16 ? packed_weights_desc(engine, precision, out, in) : memory::desc({in, out}, dt::f32, tag::ba);
  const memory::desc bias_md({1, out}, dt::f32, tag::ab);
  dnnl::post_ops post_ops;
  if (epilogue == Epilogue::kAccumulate) post_ops.append_sum(1.0f);
  if (epilogue == Epilogue::kGelu) post_ops.append_eltwise(1.0f, dnnl::algorithm::eltwise_gelu_erf, 0.f, 0.f);
  attr.set_post_ops(post_ops);
  return dnnl::matmul::primitive_desc(dnnl::matmul::desc(src_md, wei_md, bias_md, dst_md), attr, engine);
}

class CpuLinear final : public PreparedLinear {
 public:
  CpuLinear(const LinearWeights& w, CpuBackend::RowBlockKernels& k, Epilogue e, const dnnl::engine& engine)
      : weights(w), kernels(k), epilogue(e), precision(precision_of(w)), bias_memory(memory::desc({1, w.out}, dt::f32, tag::ab), engine, const_cast<float*>(w.bias.data())) {
    if (w.packed) {
      const auto& packed = static_cast<const CpuPackedWeights&>(*w.packed);
      weight_memory = memory(packed.desc, engine, packed.data.get());
      channel_scales = packed.channel_scales.data();
    } else {
      weight_memory = memory(memory::desc({w.in, w.out}, dt::f32, tag::ba), engine, const_cast<float*>(w.weight.data()));
    }
  }

  const LinearWeights& weights;
  CpuBackend::RowBlockKernels& kernels;
  Epilogue epilogue;
  Precision precision;
  memory weight_memory;
  memory bias_memory;
  const float* channel_scales = nullptr;  // int8
};

// Layer norm of one row, two passes over it (it is in L1 by then): mean, then variance
// of the centred values, as PyTorch computes it; the simd reductions let the compiler
// vectorize the sums (float addition is not associative, so it would not otherwise).
void normalize_row(float* x, int64_t n, const float* gamma, const float* beta, float eps) {
  float sum = 0.f;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < n; ++i) sum += x[i];
  const float mean = sum / static_cast<float>(n);
  float squares = 0.f;
#pragma omp simd reduction(+ : squares)
  for (int64_t i = 0; i < n; ++i) squares += (x[i] - mean) * (x[i] - mean);
  const float inv = 1.0f / std::sqrt(squares / static_cast<float>(n) + eps);
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) x[i] = (x[i] - mean) * inv * gamma[i] + beta[i];
}

}  // namespace

// OpenMP's count already follows OMP_NUM_THREADS and the CPU affinity mask; a cgroup
// quota lowers it further.
int CpuBackend::default_threads() {
  const int visible = omp_get_max_threads();
  const int quota = cgroup_cpu_limit();
  return quota > 0 ? std::min(visible, quota) : visible;
}

CpuBackend::CpuBackend(CpuBackendOptions options)
    : options_(options), engine_(dnnl::engine::kind::cpu, 0), stream_(engine_) {
  if (options_.query_tile < 1 || options_.query_tile > kMaxQueryTile) {
    fail("attention query tile {} is outside 1..{}", options_.query_tile, kMaxQueryTile);
  }
  threads_ = options_.threads > 0 ? options_.threads : default_threads();
}

void CpuBackend::attach_thread() { omp_set_num_threads(threads_); }

uint64_t CpuBackend::library_workspace_bytes(const ModelConfig& c, int64_t max_rows, Precision precision) {
  const dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  const int64_t h = c.hidden_size, ffn = c.intermediate_size;
  const std::tuple<int64_t, int64_t, Epilogue, Precision> shapes[] = {
      {3 * h, h, Epilogue::kStore, precision}, {h, h, Epilogue::kAccumulate, precision},
      {ffn, h, Epilogue::kGelu, precision},    {h, ffn, Epilogue::kAccumulate, precision},
      {h, h, Epilogue::kStore, Precision::kFp32}, {1, h, Epilogue::kStore, Precision::kFp32}};
  uint64_t most = 0;
  for (const auto& [out, in, epilogue, p] : shapes) {
    for (int64_t rows : gemm_block_sizes(max_rows)) {
      most = std::max<uint64_t>(most, gemm_desc(engine, rows, out, in, epilogue, p).scratchpad_desc().get_size());
    }
  }
  return most;
}

CpuBackend::RowBlockKernels& CpuBackend::kernels_for(const LinearWeights& w, Epilogue epilogue) {
  const Precision precision = precision_of(w);
  auto [it, inserted] = kernels_.try_emplace({w.out, w.in, epilogue, precision});
  RowBlockKernels& k = it->second;
  if (!inserted) return k;
  for (int64_t rows : gemm_block_sizes(options_.max_rows)) {
    const auto pd = gemm_desc(engine_, rows, w.out, w.in, epilogue, precision);
    k.index[rows] = k.primitives.size();
    if (pd.scratchpad_desc().get_size() > workspace_.library_bytes) {
      fail("oneDNN needs a {}-byte scratchpad for a {}x{}x{} GEMM, more than the {} planned", pd.scratchpad_desc().get_size(),
           rows, w.out, w.in, workspace_.library_bytes);
    }
    k.primitives.emplace_back(pd);
    k.src.emplace_back(pd.src_desc(), engine_, static_cast<void*>(DNNL_MEMORY_NONE));
    k.dst.emplace_back(pd.dst_desc(), engine_, static_cast<void*>(DNNL_MEMORY_NONE));
    k.scratchpad.emplace_back(pd.scratchpad_desc(), engine_, workspace_.library);
  }
  return k;
}

std::unique_ptr<PreparedLinear> CpuBackend::prepare_linear(const LinearWeights& weights, Epilogue epilogue) {
  const Precision precision = precision_of(weights);
  if (precision != Precision::kFp32) {
    const uint64_t need = static_cast<uint64_t>(options_.max_rows + kRowGranularity) * weights.in *
                          (precision == Precision::kBf16 ? 2 : 1);
    if (workspace_.gemm_input == nullptr || workspace_.gemm_input_bytes < need) {
      fail("a {} GEMM with {} inputs needs a planned {}-byte input buffer", precision_name(precision), weights.in, need);
    }
    if (precision == Precision::kInt8 && (workspace_.row_scales == nullptr ||
                                          (epilogue == Epilogue::kAccumulate && workspace_.int8_accumulator == nullptr))) {
      fail("an int8 GEMM needs planned row scales and accumulators");
    }
  }
  return std::make_unique<CpuLinear>(weights, kernels_for(weights, epilogue), epilogue, engine_);
}

void CpuBackend::linear(const PreparedLinear& prepared, const float* x, int64_t rows, float* y) {
  if (rows <= 0) return;
  if (rows > options_.max_rows) fail("a batch of {} rows exceeds the planned {}", rows, options_.max_rows);
  const auto& op = static_cast<const CpuLinear&>(prepared);
  const int64_t in = op.weights.in, out = op.weights.out;
  const int64_t covered = padded_rows(rows);
  // The GEMM's own input and output: x and y (fp32), x rounded (bf16), x quantized and
  // raw accumulators (int8; the residual linears accumulate aside, then add).
  const void* src = x;
  size_t src_element = sizeof(float);
  float* dst = y;
  if (op.precision == Precision::kBf16) {
    round_rows_to_bf16(x, covered, in, static_cast<uint16_t*>(workspace_.gemm_input));
    src = workspace_.gemm_input;
    src_element = 2;
  } else if (op.precision == Precision::kInt8) {
    quantize_rows_to_int8(x, covered, in, static_cast<int8_t*>(workspace_.gemm_input), workspace_.row_scales);
    src = workspace_.gemm_input;
    src_element = 1;
    if (op.epilogue == Epilogue::kAccumulate) dst = workspace_.int8_accumulator;
  }
  const dnnl_memory_t bias = op.precision == Precision::kInt8 ? nullptr : op.bias_memory.get();
  for_each_gemm_chunk(rows, [&](int64_t first, int64_t chunk) {
    const size_t k = op.kernels.index.at(chunk);
    memory& src_memory = op.kernels.src[k];
    memory& dst_memory = op.kernels.dst[k];
    src_memory.set_data_handle(const_cast<char*>(static_cast<const char*>(src)) + first * in * src_element);
    dst_memory.set_data_handle(dst + first * out);
    // The C API takes the arguments as a plain array: nothing is built per call.
    const dnnl_exec_arg_t args[] = {{DNNL_ARG_SRC, src_memory.get()},
                                    {DNNL_ARG_WEIGHTS, op.weight_memory.get()},
                                    {DNNL_ARG_DST, dst_memory.get()},
                                    {DNNL_ARG_SCRATCHPAD, op.kernels.scratchpad[k].get()},
                                    {DNNL_ARG_BIAS, bias}};
    if (dnnl_primitive_execute(op.kernels.primitives[k].get(), stream_.get(), bias ? 5 : 4, args) != dnnl_success) {
      fail("oneDNN GEMM failed ({} rows, {} -> {})", chunk, in, out);
    }
  });
  stream_.wait();
  if (op.precision == Precision::kInt8) {
    int8_epilogue(dst, rows, out, workspace_.row_scales, op.channel_scales, op.weights.bias.data(), op.epilogue, y);
  }
}

void CpuBackend::layer_norm(float* x, int64_t rows, const LayerNormWeights& w, float eps) {
  const int64_t n = static_cast<int64_t>(w.gamma.size());
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) normalize_row(x + r * n, n, w.gamma.data(), w.beta.data(), eps);
}

void CpuBackend::embed(const PackedBatch& batch, const EncoderWeights& w, float eps, int64_t hidden, float* out) {
  const int64_t rows = batch.tokens();
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < rows; ++t) {
    const float* word = w.word_embeddings.data() + int64_t(batch.token_ids[t]) * hidden;
    const float* position = w.position_embeddings.data() + int64_t(batch.positions[t]) * hidden;
    float* row = out + t * hidden;
    // Same association as PyTorch: (word + token_type) + position.
    for (int64_t i = 0; i < hidden; ++i) row[i] = (word[i] + w.token_type_embedding[i]) + position[i];
    normalize_row(row, hidden, w.embedding_norm.gamma.data(), w.embedding_norm.beta.data(), eps);
  }
}

void CpuBackend::attention(const PackedBatch& batch, const float* qkv, int64_t heads, int64_t head_dim,
                           float* out) {
  const int64_t hidden = heads * head_dim;
  const int64_t stride = 3 * hidden;
  const int64_t tile = options_.query_tile;
  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  if (batch.max_seq_len > workspace_.max_seq_len) {
    fail("a {}-token sequence exceeds the planned {}", batch.max_seq_len, workspace_.max_seq_len);
  }
  // Each thread's planned scratch (tile x max_seq_len floats) holds this head's K of the
  // sequence, transposed block by block (head_dim x block each: rows 1 KB apart, not a
  // multiple of 4 KB, which thrashed L1) for the float32 AVX-512 kernels; or its K and V
  // in bf16 pair layouts for the bf16 kernels; or, with neither, the score block of
  // oneDNN's sgemm. The kernels keep their 64 x 256 score block on the stack.
  const int64_t max_len = workspace_.max_seq_len;
  const int64_t per_thread = tile * max_len;
  const Kernels preferred = !attention_kernels_supported(head_dim) ? Kernels::kSgemm
                            : options_.precision == Precision::kBf16 && bf16_attention_kernels_supported(head_dim)
                                ? Kernels::kBf16
                                : Kernels::kFp32;
  const int64_t block = std::min(kKeyBlock, max_len);
  const int64_t p_ld = (block + 1) / 2 * 2;

  // Every (sequence, head) is a task, walking its query tiles; each tile meets the keys
  // block by block with a running max and sum per query (flash-style online softmax),
  // its output rows rescaled when the max grows. No score row is ever L long.
  const int64_t tasks = int64_t(batch.sequences()) * heads;
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t task = 0; task < tasks; ++task) {
    const int32_t seq = static_cast<int32_t>(task / heads);
    const int64_t head = task % heads;
    const int64_t begin = batch.seq_begin(seq);
    const int64_t len = batch.seq_len(seq);
    const float* k = qkv + begin * stride + hidden + head * head_dim;
    const float* v = qkv + begin * stride + 2 * hidden + head * head_dim;
    float* thread_scratch = workspace_.attention_scratch + int64_t(omp_get_thread_num()) * per_thread;
    // The kernels' K (and V) layouts take head_dim x len rounded up to 16: that fits
    // unless len is within 15 of a max_seq_len that is not a multiple of 16.
    const bool fits = head_dim * ((len + 15) / 16 * 16) <= per_thread;
    const Kernels kernels = fits ? preferred : Kernels::kSgemm;
    alignas(64) float block_scores[kMaxQueryTile * kKeyBlock];
    alignas(64) uint16_t block_p[kMaxQueryTile * kKeyBlock];
    alignas(64) uint16_t tile_q[kMaxQueryTile * 64];
    float* scores = kernels == Kernels::kSgemm ? thread_scratch : block_scores;
    auto* kt2 = reinterpret_cast<uint16_t*>(thread_scratch);
    uint16_t* vt2 = kt2 + head_dim * ((len + 15) / 16 * 16);
    auto kt_ld = [&](int64_t keys) { return keys == block ? block : (keys + 15) / 16 * 16; };
    for (int64_t k0 = 0; k0 < len; k0 += block) {
      const int64_t keys = std::min<int64_t>(block, len - k0);
      if (kernels == Kernels::kFp32) {
        transpose_keys(k + k0 * stride, stride, keys, head_dim, thread_scratch + k0 * head_dim, kt_ld(keys));
      } else if (kernels == Kernels::kBf16) {
        pack_keys_bf16(k + k0 * stride, stride, keys, head_dim, kt2 + k0 * head_dim);
        pack_values_bf16(v + k0 * stride, stride, keys, head_dim, vt2 + k0 * head_dim);
      }
    }
    float running_max[kMaxQueryTile], running_sum[kMaxQueryTile];
    for (int64_t q0 = 0; q0 < len; q0 += tile) {
      const int64_t rows = std::min<int64_t>(tile, len - q0);
      const float* q = qkv + (begin + q0) * stride + head * head_dim;
      float* o = out + (begin + q0) * hidden + head * head_dim;
      if (kernels == Kernels::kBf16) {
        for (int64_t r = 0; r < rows; ++r) round_row_to_bf16(q + r * stride, head_dim, tile_q + r * head_dim);
      }
      for (int64_t k0 = 0; k0 < len; k0 += block) {
        const int64_t keys = std::min<int64_t>(block, len - k0);
        switch (kernels) {
          case Kernels::kBf16:
            attention_scores_bf16(tile_q, head_dim, kt2 + k0 * head_dim, rows, keys, head_dim, scale, scores, block);
            break;
          case Kernels::kFp32:
            attention_scores(q, stride, thread_scratch + k0 * head_dim, kt_ld(keys), rows, keys, head_dim, scale,
                             scores, block);
            break;
          case Kernels::kSgemm:
            dnnl_sgemm('N', 'T', rows, keys, head_dim, scale, q, stride, k + k0 * stride, stride, 0.f, scores, block);
            break;
        }
        for (int64_t r = 0; r < rows; ++r) {
          float* row = scores + r * block;
          const float block_max = row_max(row, keys);
          if (k0 == 0) {
            running_max[r] = block_max;
            running_sum[r] = exp_row_minus(row, keys, block_max);
          } else {
            const float new_max = std::max(running_max[r], block_max);
            const float rescale = exp_nonpositive(running_max[r] - new_max);
            running_sum[r] = running_sum[r] * rescale + exp_row_minus(row, keys, new_max);
            running_max[r] = new_max;
            if (rescale != 1.0f) {
              for (int64_t d = 0; d < head_dim; ++d) o[r * hidden + d] *= rescale;
            }
          }
          if (kernels == Kernels::kBf16) {
            uint16_t* p = block_p + r * p_ld;
            round_row_to_bf16(row, keys, p);
            if (keys % 2 != 0) p[keys] = 0;
          }
        }
        switch (kernels) {
          case Kernels::kBf16:
            attention_values_bf16(block_p, p_ld, rows, keys, vt2 + k0 * head_dim, head_dim, o, hidden, k0 > 0);
            break;
          case Kernels::kFp32:
            attention_values(scores, block, rows, keys, v + k0 * stride, stride, head_dim, o, hidden, k0 > 0);
            break;
          case Kernels::kSgemm:
            dnnl_sgemm('N', 'N', rows, head_dim, keys, 1.f, scores, block, v + k0 * stride, stride,
                       k0 == 0 ? 0.f : 1.f, o, hidden);
            break;
        }
      }
      for (int64_t r = 0; r < rows; ++r) {
        const float inverse = 1.0f / running_sum[r];
        for (int64_t d = 0; d < head_dim; ++d) o[r * hidden + d] *= inverse;
      }
    }
  }
}

}  // namespace m3
