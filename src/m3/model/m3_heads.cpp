#include "m3/model/m3_heads.h"

#include <algorithm>
#include <cmath>
#include <unordered_map>

#include "m3/core/error.h"
#include "m3/tokenizer/xlmr_tokenizer.h"

namespace m3 {

void l2_normalize(float* x, int64_t n) {
  float sum = 0.f;
  for (int64_t i = 0; i < n; ++i) sum += x[i] * x[i];
  const float norm = std::max(std::sqrt(sum), 1e-12f);
  for (int64_t i = 0; i < n; ++i) x[i] /= norm;
}

M3Heads::M3Heads(const ModelConfig& config, const HeadWeights& weights, Backend& backend, const MemoryPlan& plan,
                 Arena& arena, std::filesystem::path model_dir)
    : hidden_size_(config.hidden_size),
      weights_(weights),
      backend_(backend),
      model_dir_(std::move(model_dir)),
      colbert_buffer_(arena.at<float>(plan.colbert_offset)),
      sparse_buffer_(arena.at<float>(plan.sparse_offset)) {
  if (weights_.colbert) colbert_ = backend_.prepare_linear(*weights_.colbert, Epilogue::kStore);
  if (weights_.sparse) sparse_ = backend_.prepare_linear(*weights_.sparse, Epilogue::kStore);
}

void check_head_files(const HeadWeights& weights, const std::filesystem::path& model_dir,
                      const OutputRequest& request) {
  if (request.sparse && !weights.sparse) {
    fail("sparse output needs {}, which is missing", (model_dir / "sparse_linear.pt").string());
  }
  if (request.colbert && !weights.colbert) {
    fail("ColBERT output needs {}, which is missing", (model_dir / "colbert_linear.pt").string());
  }
}

void M3Heads::check(const OutputRequest& request) const { check_head_files(weights_, model_dir_, request); }

void M3Heads::forward(const PackedBatch& batch, const float* hidden, const OutputRequest& request) {
  check(request);
  if (request.sparse) backend_.linear(*sparse_, hidden, batch.tokens(), sparse_buffer_);
  if (request.colbert) backend_.linear(*colbert_, hidden, batch.tokens(), colbert_buffer_);
}

void M3Heads::extract(const PackedBatch& batch, int32_t s, const float* hidden, const OutputRequest& request,
                      M3Output& out) const {
  const int64_t h = hidden_size_;
  const int64_t begin = batch.seq_begin(s);
  const int64_t len = batch.seq_len(s);
  out.tokens = len;
  if (request.dense) {
    out.dense.assign(hidden + begin * h, hidden + (begin + 1) * h);
    l2_normalize(out.dense.data(), h);
  }
  if (request.sparse) {
    out.lexical.clear();
    std::unordered_map<int32_t, size_t> slot;  // token id -> index in out.lexical
    for (int64_t i = 0; i < len; ++i) {
      const int32_t id = batch.token_ids[begin + i];
      const float w = std::max(sparse_buffer_[begin + i], 0.f);
      if (id == XlmrTokenizer::kCls || id == XlmrTokenizer::kEos || id == XlmrTokenizer::kPad ||
          id == XlmrTokenizer::kUnk || !(w > 0.f)) {
        continue;
      }
      const auto [it, inserted] = slot.try_emplace(id, out.lexical.size());
      if (inserted) {
        out.lexical.emplace_back(id, w);
      } else if (w > out.lexical[it->second].second) {
        out.lexical[it->second].second = w;
      }
    }
  }
  if (request.colbert) {
    // Every token after CLS, the final </s> included.
    out.colbert_rows = len - 1;
    out.colbert.assign(colbert_buffer_ + (begin + 1) * h, colbert_buffer_ + (begin + len) * h);
    for (int64_t r = 0; r < out.colbert_rows; ++r) l2_normalize(out.colbert.data() + r * h, h);
  }
}

}  // namespace m3
