// WeightTable: every weight tensor of a model, listed once. The loader reads the
// checkpoint by it, the memory plan sizes the weights by it (with each backend's storage
// rule), and a backend places them (shares host memory, packs, or uploads to a device) by
// it, so the four can never disagree about what a model holds.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "m3/model/model_config.h"

namespace m3 {

// What a tensor is for decides how each backend stores it (memory_plan.h: WeightRules).
enum class WeightRole {
  kEmbedding,      // a lookup table [rows, hidden]
  kEncoderLinear,  // an encoder GEMM weight [out, in]: stored at --dtype
  kHeadLinear,     // a head's weight [out, in]
  kFloatHeadLinear,  // a head's weight [out, in] kept in float32 everywhere (a classifier: a few rows a batch)
  kVector,         // biases, layer norms, the token-type row: float32 everywhere
};

// What happens to x W^T (+ b) before it is stored in y: how the graph uses a linear.
enum class Epilogue {
  kStore,     // y = x W^T + b
  kGelu,      // y = gelu_erf(x W^T + b)
  kRelu,      // y = max(x W^T + b, 0)
  kTanh,      // y = tanh(x W^T + b)   (a sequence classifier's dense layer)
  kResidual,  // y += x W^T + b   (y is the float32 residual stream)
};

struct WeightSpec {
  std::string name;  // e.g. "encoder.layer.3.attention.self.qkv.weight"
  int64_t rows = 0;
  int64_t cols = 0;
  WeightRole role = WeightRole::kVector;
  std::string file;  // "" for the encoder checkpoint, else the head's own file (colbert_linear.pt)
  // Checkpoint tensors (without the checkpoint's prefix) stacked by rows into this one
  // (query, key, value), or one name, each of source_shape; take_rows > 0 keeps only
  // that many leading rows (the token-type table's first row).
  std::vector<std::string> sources;
  std::vector<int64_t> source_shape;
  int64_t take_rows = 0;
  // In the encoder's file but outside the encoder (a classifier's "classifier.*"): read
  // without the encoder's prefix ("roberta.").
  bool beside_encoder = false;
  Epilogue epilogue = Epilogue::kStore;  // a linear's weight: what the graph fuses after its GEMM

  uint64_t elements() const { return static_cast<uint64_t>(rows) * static_cast<uint64_t>(cols); }
};

struct WeightTable {
  std::vector<WeightSpec> specs;

  // Index of the tensor called `name`; throws m3::Error when there is none.
  size_t index(std::string_view name) const;
  bool has(std::string_view name) const;
};

// XLM-RoBERTa's encoder (Q, K and V stacked into one [3*hidden, hidden] GEMM) plus BGE-M3's
// sparse and ColBERT heads when their files are present, and a sequence classifier's head
// (classifier.dense, tanh, classifier.out_proj) when the config's architecture has one.
WeightTable xlmr_m3_weight_table(const ModelConfig& config, bool sparse_head, bool colbert_head);

// "encoder.layer.*.attention.output.dense.weight" for any layer number: the plan groups
// the per-layer tensors under this name.
std::string weight_group_name(std::string_view name);

}  // namespace m3
