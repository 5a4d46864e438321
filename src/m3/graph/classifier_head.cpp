#include "m3/graph/classifier_head.h"

#include "m3/graph/arena_view.h"

namespace m3 {

ClassifierHead::ClassifierHead(const ModelConfig& config, const MemoryPlan& plan,
                               const std::vector<WeightView>& weights, Backend& backend, const TensorView& arena)
    : labels_(config.num_labels), backend_(backend) {
  const int64_t rows = plan.rows, h = config.hidden_size;
  input_ = arena_view(arena, plan.buffer("classifier_in"), DType::F32, rows, h);
  hidden_ = arena_view(arena, plan.buffer("classifier_hidden"), DType::F32, rows, h);
  for (int s = 0; s < backend.traits().slots; ++s) {
    logits_.push_back(arena_view(arena, plan.buffer("logits", s), DType::F32, rows, labels_));
  }
  const WeightTable& t = plan.table;
  dense_op_ = backend.prepare_linear(linear_ref(t, weights, "classifier.dense"), Epilogue::kTanh, DType::F32);
  out_op_ = backend.prepare_linear(linear_ref(t, weights, "classifier.out_proj"), Epilogue::kStore, DType::F32);
}

const float* ClassifierHead::forward(const BatchView& batch, const XlmrEncoder::Hidden& hidden) {
  const int32_t s = batch.sequences();
  backend_.pool(batch, hidden.f32, Pooling::kCls, input_, TensorView{});  // the <s> rows as they are
  backend_.linear(*dense_op_, input_, s, hidden_);
  const TensorView& logits = logits_.at(static_cast<size_t>(batch.slot));
  backend_.linear(*out_op_, hidden_, s, logits);
  return static_cast<const float*>(backend_.fetch(logits.slice_rows(0, s), batch.slot));
}

void ClassifierHead::extract(const PackedBatch& batch, const float* logits, std::vector<M3Output>& outputs) const {
  outputs.resize(batch.sequences());
  for (int32_t s = 0; s < batch.sequences(); ++s) {
    outputs[s].tokens = batch.seq_len(s);
    outputs[s].scores.assign(logits + s * labels_, logits + (s + 1) * labels_);
  }
}

void ClassifierHead::warm_up() {
  backend_.warm_up(*dense_op_, input_, hidden_);
  backend_.warm_up(*out_op_, hidden_, logits_[0]);
}

}  // namespace m3
