#include "m3/backend/cpu/cpu_backend.h"

#include <omp.h>

#include "m3/core/error.h"

namespace m3 {
namespace {

using dnnl::memory;
using tag = memory::format_tag;
using dt = memory::data_type;

class CpuLinear final : public PreparedLinear {
 public:
  CpuLinear(const LinearWeights& w, Epilogue epilogue, const dnnl::engine& engine) : weights(w) {
    const memory::dim k = w.in, n = w.out;
    // Rows are a run-time dimension, so one primitive serves every batch size.
    const memory::desc src_md({DNNL_RUNTIME_DIM_VAL, k}, dt::f32, {k, 1});
    const memory::desc wei_md({k, n}, dt::f32, {1, k});  // W^T of PyTorch's [out, in]
    const memory::desc bias_md({1, n}, dt::f32, {n, 1});
    const memory::desc dst_md({DNNL_RUNTIME_DIM_VAL, n}, dt::f32, {n, 1});
    dnnl::post_ops post_ops;
    if (epilogue == Epilogue::kAccumulate) post_ops.append_sum(1.0f);
    if (epilogue == Epilogue::kGelu) post_ops.append_eltwise(1.0f, dnnl::algorithm::eltwise_gelu_erf, 0.f, 0.f);
    dnnl::primitive_attr attr;
    attr.set_post_ops(post_ops);
    const dnnl::matmul::desc desc(src_md, wei_md, bias_md, dst_md);
    primitive_desc = dnnl::matmul::primitive_desc(desc, attr, engine);
    primitive = dnnl::matmul(primitive_desc);
    weight_memory = memory(wei_md, engine, const_cast<float*>(w.weight.data()));
    bias_memory = memory(bias_md, engine, const_cast<float*>(w.bias.data()));
  }

  const LinearWeights& weights;
  dnnl::matmul::primitive_desc primitive_desc;
  dnnl::matmul primitive;
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

CpuBackend::CpuBackend(CpuBackendOptions options)
    : options_(options), engine_(dnnl::engine::kind::cpu, 0), stream_(engine_) {
  if (options_.threads > 0) omp_set_num_threads(options_.threads);
  threads_ = omp_get_max_threads();
  score_scratch_.resize(threads_);
}

std::unique_ptr<PreparedLinear> CpuBackend::prepare_linear(const LinearWeights& weights, Epilogue epilogue) {
  return std::make_unique<CpuLinear>(weights, epilogue, engine_);
}

void CpuBackend::linear(const PreparedLinear& prepared, const float* x, int64_t rows, float* y) {
  if (rows == 0) return;
  const auto& op = static_cast<const CpuLinear&>(prepared);
  const memory src({{rows, op.weights.in}, dt::f32, tag::ab}, engine_, const_cast<float*>(x));
  const memory dst({{rows, op.weights.out}, dt::f32, tag::ab}, engine_, y);
  op.primitive.execute(stream_, {{DNNL_ARG_SRC, src},
                                 {DNNL_ARG_WEIGHTS, op.weight_memory},
                                 {DNNL_ARG_BIAS, op.bias_memory},
                                 {DNNL_ARG_DST, dst}});
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

  // Every (sequence, head, query tile) is an independent task.
  struct Task {
    int32_t seq;
    int32_t head;
    int32_t q0;
  };
  std::vector<Task> tasks;
  for (int32_t s = 0; s < batch.sequences(); ++s) {
    for (int32_t h = 0; h < heads; ++h) {
      for (int32_t q0 = 0; q0 < batch.seq_len(s); q0 += static_cast<int32_t>(tile)) tasks.push_back({s, h, q0});
    }
  }
  for (auto& scratch : score_scratch_) {
    if (scratch.size() < size_t(tile) * batch.max_seq_len) scratch.resize(size_t(tile) * batch.max_seq_len);
  }

#pragma omp parallel for schedule(dynamic, 1)
  for (size_t i = 0; i < tasks.size(); ++i) {
    const Task task = tasks[i];
    const int64_t begin = batch.seq_begin(task.seq);
    const int64_t len = batch.seq_len(task.seq);
    const int64_t rows = std::min<int64_t>(tile, len - task.q0);
    const float* q = qkv + (begin + task.q0) * stride + task.head * head_dim;
    const float* k = qkv + begin * stride + hidden + task.head * head_dim;
    const float* v = qkv + begin * stride + 2 * hidden + task.head * head_dim;
    float* scores = score_scratch_[omp_get_thread_num()].data();

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
    float* o = out + (begin + task.q0) * hidden + task.head * head_dim;
    dnnl_sgemm('N', 'N', rows, head_dim, len, 1.f, scores, len, v, stride, 0.f, o, hidden);
  }
}

}  // namespace m3
