#include "m3/graph/m3_heads.h"

#include "m3/core/error.h"
#include "m3/graph/arena_view.h"
#include "m3/tokenizer/xlmr_tokenizer.h"

namespace m3 {
namespace {

// Token ids that never get a lexical weight (M3-SPEC: the special tokens).
constexpr int32_t kNotLexical[] = {XlmrTokenizer::kCls, XlmrTokenizer::kEos, XlmrTokenizer::kPad,
                                   XlmrTokenizer::kUnk};

}  // namespace

M3Heads::M3Heads(const ModelConfig& config, const MemoryPlan& plan, const std::vector<WeightView>& weights,
                 Backend& backend, const TensorView& arena, std::filesystem::path model_dir, Pooling pooling)
    : hidden_size_(config.hidden_size), backend_(backend), model_dir_(std::move(model_dir)), pooling_(pooling) {
  const int64_t rows = plan.rows, h = config.hidden_size;
  const WeightTable& t = plan.table;
  const bool colbert = t.has("colbert_linear.weight"), sparse = t.has("sparse_linear.weight");
  slots_.resize(static_cast<size_t>(backend.traits().slots));
  for (int s = 0; s < backend.traits().slots; ++s) {
    Outputs& o = slots_[static_cast<size_t>(s)];
    o.dense = arena_view(arena, plan.buffer("dense", s), DType::F32, rows / 2, h);
    o.dense_norms = arena_view(arena, plan.buffer("dense_norms", s), DType::F32, rows / 2, 1);
    o.lexical = arena_view(arena, plan.buffer("lexical", s), DType::F32, rows, 1);
    if (colbert) o.colbert = arena_view(arena, plan.buffer("colbert", s), DType::F32, rows, h);
    if (sparse) o.sparse = arena_view(arena, plan.buffer("sparse", s), DType::F32, rows, 1);
  }
  if (colbert) {
    const LinearRef linear = linear_ref(t, weights, "colbert_linear");
    colbert_op_ = backend.prepare_linear(linear, t.specs[t.index("colbert_linear.weight")].epilogue, DType::F32);
    colbert_reads_f32_ = linear.weight.tensor.dtype != plan.activation;
  }
  if (sparse) {
    sparse_op_ = backend.prepare_linear(linear_ref(t, weights, "sparse_linear"),
                                        t.specs[t.index("sparse_linear.weight")].epilogue, DType::F32);
  }
}

void M3Heads::check(const OutputRequest& request) const {
  if ((request.sparse || request.token_weights) && !sparse_op_) {
    fail("sparse output needs {}, which is missing", (model_dir_ / "sparse_linear.pt").string());
  }
  if (request.colbert && !colbert_op_) {
    fail("ColBERT output needs {}, which is missing", (model_dir_ / "colbert_linear.pt").string());
  }
}

M3Heads::Fetched M3Heads::forward(const BatchView& batch, const XlmrEncoder::Hidden& hidden,
                                  const OutputRequest& request) {
  check(request);
  const int64_t t = batch.tokens();
  const int32_t s = batch.sequences();
  const Outputs& o = slots_.at(static_cast<size_t>(batch.slot));
  Fetched f;
  if (request.dense) {
    const TensorView dense = o.dense.slice_rows(0, s), norms = o.dense_norms.slice_rows(0, s);
    backend_.pool(batch, hidden.f32, pooling_, dense, norms);
    f.dense = static_cast<const float*>(backend_.fetch(dense, batch.slot));
    f.dense_norms = static_cast<const float*>(backend_.fetch(norms, batch.slot));
  }
  if (request.sparse || request.token_weights) {
    // The sparse head reads the float32 hidden state: one dot product per token.
    backend_.linear(*sparse_op_, hidden.f32, t, o.sparse);
    if (request.sparse) {
      backend_.max_per_token_id(batch, o.sparse, kNotLexical, o.lexical);
      f.lexical = static_cast<const float*>(backend_.fetch(o.lexical.slice_rows(0, t), batch.slot));
    }
    if (request.token_weights) {
      f.token_weights = static_cast<const float*>(backend_.fetch(o.sparse.slice_rows(0, t), batch.slot));
    }
  }
  if (request.colbert) {
    backend_.linear(*colbert_op_, colbert_input(hidden), t, o.colbert);
    backend_.normalize_rows(o.colbert, t);
    f.colbert = static_cast<const float*>(backend_.fetch(o.colbert.slice_rows(0, t), batch.slot));
  }
  return f;
}

void M3Heads::extract(const PackedBatch& batch, const Fetched& f, const OutputRequest& request,
                      std::vector<M3Output>& outputs) const {
  const int64_t h = hidden_size_;
  outputs.resize(batch.sequences());
  for (int32_t s = 0; s < batch.sequences(); ++s) {
    M3Output& out = outputs[s];
    const int64_t begin = batch.seq_begin(s), len = batch.seq_len(s);
    out.tokens = len;
    if (request.dense) {
      out.dense.assign(f.dense + s * h, f.dense + (s + 1) * h);
      out.dense_norm = f.dense_norms[s];
    }
    if (request.sparse) {
      // Positive maxima sit at each id's first position: token order is first-occurrence order.
      out.lexical.clear();
      for (int64_t i = begin; i < begin + len; ++i) {
        if (f.lexical[i] > 0.f) out.lexical.emplace_back(batch.token_ids[i], f.lexical[i]);
      }
    }
    if (request.colbert) {
      out.colbert_rows = len - 1;  // every token after CLS, the final </s> included
      out.colbert.assign(f.colbert + (begin + 1) * h, f.colbert + (begin + len) * h);
    }
    if (request.token_weights) out.token_weights.assign(f.token_weights + begin, f.token_weights + begin + len);
  }
}

void M3Heads::warm_up(const XlmrEncoder::Hidden& hidden) {
  if (sparse_op_) backend_.warm_up(*sparse_op_, hidden.f32, slots_[0].sparse);
  if (colbert_op_) backend_.warm_up(*colbert_op_, colbert_input(hidden), slots_[0].colbert);
}

}  // namespace m3
