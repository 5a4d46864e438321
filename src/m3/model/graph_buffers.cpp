#include "m3/model/graph_buffers.h"

namespace m3 {

std::vector<BufferSpec> xlmr_m3_buffers(const ModelConfig& c, bool sparse_head, bool colbert_head) {
  const int64_t h = c.hidden_size;
  using T = BufferType;
  std::vector<BufferSpec> b = {
      {"hidden", "hidden (residual stream)", h, T::kF32, BufferRows::kTokens, "", ""},
      {"hidden_in", "hidden as GEMM input", h, T::kActivation, BufferRows::kTokens, "hidden", ""},
      {"qkv", "qkv / per-id sparse maxima", 3 * h, T::kActivation, BufferRows::kTokens, "", ""},
      {"context", "attention output / dense vectors", h, T::kActivation, BufferRows::kTokens, "", ""},
      {"ffn", "FFN intermediate / head outputs", c.intermediate_size, T::kGemmOperand, BufferRows::kTokens, "", ""},
  };
  // After the last layer, the heads' outputs: ColBERT rows and sparse weights in the FFN
  // buffer, the per-id maxima in qkv, one dense vector per sequence in the attention output
  // (or, where the plan gives outputs memory per pipeline slot, each in its own). A
  // classifier fetches only its logits: the embedding heads' buffers stay inside for it.
  const bool classifier = c.architecture == Architecture::kSequenceClassification;
  const bool embeds = !classifier;
  if (colbert_head) b.push_back({"colbert", "ColBERT rows", h, T::kF32, BufferRows::kTokens, "", "ffn", embeds});
  if (sparse_head) b.push_back({"sparse", "sparse weights", 1, T::kF32, BufferRows::kTokens, "", "ffn", embeds});
  b.push_back({"lexical", "per-id sparse maxima", 1, T::kF32, BufferRows::kTokens, "", "qkv", embeds});
  b.push_back({"dense", "dense vectors", h, T::kF32, BufferRows::kSequences, "", "context", embeds});
  b.push_back({"dense_norms", "CLS norms (TEI's normalize=false)", 1, T::kF32, BufferRows::kSequences, "", "context",
               embeds});
  if (classifier) {
    // The classifier's GEMMs run over whole row chunks (gemm_row_blocks.h): token rows.
    b.push_back({"classifier_in", "classifier input (<s> rows)", h, T::kF32, BufferRows::kTokens, "", "ffn"});
    b.push_back({"classifier_hidden", "classifier tanh layer", h, T::kF32, BufferRows::kTokens, "", "ffn"});
    b.push_back({"logits", "classifier logits", c.num_labels, T::kF32, BufferRows::kTokens, "", "ffn", true});
  }
  return b;
}

}  // namespace m3
