#include "m3/backend/cpu/cpu_backend.h"

#include <omp.h>

#include "m3/core/error.h"
#include "m3/memory/gemm_row_blocks.h"

namespace m3 {
namespace {

using dnnl::memory;
using tag = memory::format_tag;
using dt = memory::data_type;

dnnl::matmul::primitive_desc gemm_desc(const dnnl::engine& engine, int64_t rows, int64_t out, int64_t in,
                                       Epilogue epilogue) {
  const memory::desc src_md({rows, in}, dt::f32, tag::ab);
  const memory::desc wei_md({in, out}, dt::f32, tag::ba);  // W^T of PyTorch's [out, in]
  const memory::desc bias_md({1, out}, dt::f32, tag::ab);
  const memory::desc dst_md({rows, out}, dt::f32, tag::ab);
  dnnl::post_ops post_ops;
  if (epilogue == Epilogue::kAccumulate) post_ops.append_sum(1.0f);
  if (epilogue == Epilogue::kGelu) post_ops.append_eltwise(1.0f, dnnl::algorithm::eltwise_gelu_erf, 0.f, 0.f);
  dnnl::primitive_attr attr;
  attr.set_post_ops(post_ops);
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);  // the arena holds it
  return dnnl::matmul::primitive_desc(dnnl::matmul::desc(src_md, wei_md, bias_md, dst_md), attr, engine);
}

class CpuLinear final : public PreparedLinear {
 public:
  CpuLinear(const LinearWeights& w, CpuBackend::RowBlockKernels& k, const dnnl::engine& engine)
      : weights(w),
        kernels(k),
        weight_memory(memory::desc({w.in, w.out}, dt::f32, tag::ba), engine, const_cast<float*>(w.weight.data())),
        bias_memory(memory::desc({1, w.out}, dt::f32, tag::ab), engine, const_cast<float*>(w.bias.data())) {}

  const LinearWeights& weights;
  CpuBackend::RowBlockKernels& kernels;
  memory weight_memory;
  memory bias_memory;
};

void normalize_row(float* x, int64_t n, const float* gamma, const float* beta, float eps) {
  float mean = 0.f;
  for (int64_t i = 0; i < n; ++i) mean += x[i];
  mean /= static_cast<float>(n);
  float var = 0.f;
  for (int64_t i = 0; i < n; ++i) {
    const float d = x[i] - mean;
    var += d * d;
  }
  var /= static_cast<float>(n);
  const float inv = 1.0f / std::sqrt(var + eps);
  for (int64_t i = 0; i < n; ++i) x[i] = (x[i] - mean) * inv * gamma[i] + beta[i];
}

}  // namespace

int CpuBackend::default_threads() { return omp_get_max_threads(); }

CpuBackend::CpuBackend(CpuBackendOptions options)
    : options_(options), engine_(dnnl::engine::kind::cpu, 0), stream_(engine_) {
  threads_ = options_.threads > 0 ? options_.threads : default_threads();
}

void CpuBackend::attach_thread() { omp_set_num_threads(threads_); }

uint64_t CpuBackend::library_workspace_bytes(const ModelConfig& c, int64_t max_rows) {
  const dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  const int64_t h = c.hidden_size, ffn = c.intermediate_size;
  const std::tuple<int64_t, int64_t, Epilogue> shapes[] = {
      {3 * h, h, Epilogue::kStore}, {h, h, Epilogue::kAccumulate}, {ffn, h, Epilogue::kGelu},
      {h, ffn, Epilogue::kAccumulate}, {h, h, Epilogue::kStore}, {1, h, Epilogue::kStore}};
  uint64_t most = 0;
  for (const auto& [out, in, epilogue] : shapes) {
    for (int64_t rows : gemm_block_sizes(max_rows)) {
      most = std::max<uint64_t>(most, gemm_desc(engine, rows, out, in, epilogue).scratchpad_desc().get_size());
    }
  }
  return most;
}

CpuBackend::RowBlockKernels& CpuBackend::kernels_for(int64_t out, int64_t in, Epilogue epilogue) {
  auto [it, inserted] = kernels_.try_emplace({out, in, epilogue});
  RowBlockKernels& k = it->second;
  if (!inserted) return k;
  for (int64_t rows : gemm_block_sizes(options_.max_rows)) {
    const auto pd = gemm_desc(engine_, rows, out, in, epilogue);
    k.index[rows] = k.primitives.size();
    if (pd.scratchpad_desc().get_size() > workspace_.library_bytes) {
      fail("oneDNN needs a {}-byte scratchpad for a {}x{}x{} GEMM, more than the {} planned", pd.scratchpad_desc().get_size(),
           rows, out, in, workspace_.library_bytes);
    }
    k.primitives.emplace_back(pd);
    k.src.emplace_back(pd.src_desc(), engine_, static_cast<void*>(DNNL_MEMORY_NONE));
    k.dst.emplace_back(pd.dst_desc(), engine_, static_cast<void*>(DNNL_MEMORY_NONE));
    k.scratchpad.emplace_back(pd.scratchpad_desc(), engine_, workspace_.library);
  }
  return k;
}

std::unique_ptr<PreparedLinear> CpuBackend::prepare_linear(const LinearWeights& weights, Epilogue epilogue) {
  return std::make_unique<CpuLinear>(weights, kernels_for(weights.out, weights.in, epilogue), engine_);
}

void CpuBackend::linear(const PreparedLinear& prepared, const float* x, int64_t rows, float* y) {
  if (rows <= 0) return;
  if (rows > options_.max_rows) fail("a batch of {} rows exceeds the planned {}", rows, options_.max_rows);
  const auto& op = static_cast<const CpuLinear&>(prepared);
  for_each_gemm_chunk(rows, [&](int64_t first, int64_t chunk) {
    const size_t k = op.kernels.index.at(chunk);
    memory& src = op.kernels.src[k];
    memory& dst = op.kernels.dst[k];
    src.set_data_handle(const_cast<float*>(x + first * op.weights.in));
    dst.set_data_handle(y + first * op.weights.out);
    // The C API takes the arguments as a plain array: nothing is built per call.
    const dnnl_exec_arg_t args[] = {{DNNL_ARG_SRC, src.get()},
                                    {DNNL_ARG_WEIGHTS, op.weight_memory.get()},
                                    {DNNL_ARG_BIAS, op.bias_memory.get()},
                                    {DNNL_ARG_DST, dst.get()},
                                    {DNNL_ARG_SCRATCHPAD, op.kernels.scratchpad[k].get()}};
    if (dnnl_primitive_execute(op.kernels.primitives[k].get(), stream_.get(), 5, args) != dnnl_success) {
      fail("oneDNN GEMM failed ({} rows, {} -> {})", chunk, op.weights.in, op.weights.out);
    }
  });
  stream_.wait();
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
  // Every (sequence, head) is a task; each walks its query tiles with one scratch block.
  const int64_t tasks = int64_t(batch.sequences()) * heads;
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t task = 0; task < tasks; ++task) {
    const int32_t seq = static_cast<int32_t>(task / heads);
    const int64_t head = task % heads;
    const int64_t begin = batch.seq_begin(seq);
    const int64_t len = batch.seq_len(seq);
    const float* k = qkv + begin * stride + hidden + head * head_dim;
    const float* v = qkv + begin * stride + 2 * hidden + head * head_dim;
    float* scores = workspace_.attention_scratch + int64_t(omp_get_thread_num()) * tile * workspace_.max_seq_len;
    for (int64_t q0 = 0; q0 < len; q0 += tile) {
      const int64_t rows = std::min<int64_t>(tile, len - q0);
      const float* q = qkv + (begin + q0) * stride + head * head_dim;
      // scores[rows, len] = scale * Q K^T
      dnnl_sgemm('N', 'T', rows, len, head_dim, scale, q, stride, k, stride, 0.f, scores, len);
      for (int64_t r = 0; r < rows; ++r) {
        float* row = scores + r * len;
        float max = row[0];
        for (int64_t j = 1; j < len; ++j) max = std::max(max, row[j]);
        float sum = 0.f;
        for (int64_t j = 0; j < len; ++j) {
          row[j] = std::exp(row[j] - max);
          sum += row[j];
        }
        const float inv = 1.0f / sum;
        for (int64_t j = 0; j < len; ++j) row[j] *= inv;
      }
      // out[rows, head_dim] = P V
      float* o = out + (begin + q0) * hidden + head * head_dim;
      dnnl_sgemm('N', 'N', rows, head_dim, len, 1.f, scores, len, v, stride, 0.f, o, hidden);
    }
  }
}

}  // namespace m3
