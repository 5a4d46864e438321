#include "m3/graph/xlmr_encoder.h"

#include "m3/core/error.h"
#include "m3/graph/arena_view.h"

namespace m3 {

LinearRef linear_ref(const WeightTable& table, const std::vector<WeightView>& weights, const std::string& name) {
  return {weights[table.index(name + ".weight")], weights[table.index(name + ".bias")].tensor};
}

NormRef norm_ref(const WeightTable& table, const std::vector<WeightView>& weights, const std::string& name) {
  return {weights[table.index(name + ".weight")].tensor, weights[table.index(name + ".bias")].tensor};
}

XlmrEncoder::XlmrEncoder(const ModelConfig& config, const MemoryPlan& plan, const std::vector<WeightView>& weights,
                         Backend& backend, const TensorView& arena)
    : config_(config), backend_(backend), traits_(backend.traits()), max_seq_len_(plan.inputs.max_seq_len) {
  const WeightTable& t = plan.table;
  const int64_t rows = plan.rows, h = config.hidden_size;
  const DType act = plan.activation;
  hidden_.f32 = arena_view(arena, plan.buffer("hidden"), DType::F32, rows, h);
  hidden_.in = arena_view(arena, plan.buffer("hidden_in"), act, rows, h);
  qkv_ = arena_view(arena, plan.buffer("qkv"), act, rows, 3 * h);
  context_ = arena_view(arena, plan.buffer("context"), act, rows, h);
  ffn_ = arena_view(arena, plan.buffer("ffn"), plan.gemm_operand, rows, config.intermediate_size);

  word_ = weights[t.index("embeddings.word_embeddings")];
  position_ = weights[t.index("embeddings.position_embeddings")];
  token_type_ = weights[t.index("embeddings.token_type_embeddings[0]")].tensor;
  embedding_norm_ = norm_ref(t, weights, "embeddings.LayerNorm");
  for (int64_t i = 0; i < config.num_layers; ++i) {
    const std::string l = "encoder.layer." + std::to_string(i) + ".";
    Layer layer;
    layer.qkv = linear_ref(t, weights, l + "attention.self.qkv");
    layer.attention_out = linear_ref(t, weights, l + "attention.output.dense");
    layer.intermediate = linear_ref(t, weights, l + "intermediate.dense");
    layer.output = linear_ref(t, weights, l + "output.dense");
    layer.attention_norm = norm_ref(t, weights, l + "attention.output.LayerNorm");
    layer.output_norm = norm_ref(t, weights, l + "output.LayerNorm");
    LinearRef qkv_gemm = layer.qkv;
    if (traits_.attention_adds_qkv_bias) qkv_gemm.bias = {};
    // Each linear with the epilogue the weight table declares for it; the residual ones add
    // into the float32 stream, the others write the type of the buffer they write.
    auto prepare = [&](const LinearRef& linear, const std::string& name, DType out) {
      const Epilogue e = t.specs[t.index(name + ".weight")].epilogue;
      return backend.prepare_linear(linear, e, e == Epilogue::kResidual ? DType::F32 : out);
    };
    layer.qkv_op = prepare(qkv_gemm, l + "attention.self.qkv", act);  // its bias where the backend wants it
    layer.attention_out_op = prepare(layer.attention_out, l + "attention.output.dense", act);
    layer.intermediate_op = prepare(layer.intermediate, l + "intermediate.dense", plan.gemm_operand);
    layer.output_op = prepare(layer.output, l + "output.dense", act);
    layers_.push_back(std::move(layer));
  }
}

XlmrEncoder::Hidden XlmrEncoder::forward(const BatchView& batch, int layers) {
  const PackedBatch& b = *batch.host;
  const int64_t t = b.tokens();
  if (t > hidden_.f32.rows) fail("batch of {} tokens exceeds the planned {} tokens", t, hidden_.f32.rows);
  if (b.max_seq_len > max_seq_len_) fail("sequence of {} tokens exceeds the planned {}", b.max_seq_len, max_seq_len_);
  const auto eps = static_cast<float>(config_.layer_norm_eps);
  const int64_t heads = config_.num_heads, head_dim = config_.head_dim();

  backend_.embed(batch, word_, position_, token_type_, embedding_norm_, eps, hidden_.f32, hidden_.in);
  const size_t count = layers < 0 ? layers_.size() : std::min(layers_.size(), static_cast<size_t>(layers));
  for (size_t i = 0; i < count; ++i) {
    const Layer& l = layers_[i];
    backend_.linear(*l.qkv_op, hidden_.in, t, qkv_);
    backend_.attention(batch, qkv_, traits_.attention_adds_qkv_bias ? l.qkv.bias : TensorView{}, heads, head_dim,
                       context_);
    backend_.linear(*l.attention_out_op, context_, t, hidden_.f32);  // hidden += attention
    backend_.layer_norm(hidden_.f32, t, l.attention_norm, eps, hidden_.in);
    backend_.linear(*l.intermediate_op, hidden_.in, t, ffn_);
    backend_.linear(*l.output_op, ffn_, t, hidden_.f32);  // hidden += FFN
    backend_.layer_norm(hidden_.f32, t, l.output_norm, eps, hidden_.in);
  }
  return hidden_;
}

void XlmrEncoder::warm_up() {
  for (const Layer& l : layers_) {
    backend_.warm_up(*l.qkv_op, hidden_.in, qkv_);
    backend_.warm_up(*l.attention_out_op, context_, hidden_.f32);
    backend_.warm_up(*l.intermediate_op, hidden_.in, ffn_);
    backend_.warm_up(*l.output_op, ffn_, hidden_.f32);
  }
}

}  // namespace m3
