// The op-parity suite: every Backend op (backend/backend.h) against op_reference.h, on
// random inputs with fixed seeds, for tiny shapes and BGE-M3's. One body for
// every device: an executable includes this header once and instantiates OpParity with
// its Target (how to make its backend, how to move tensors to and from its memory):
//   tests/unit/test_backend_ops.cpp        the CPU (fp32, bf16, int8)
//   tests/gpu/test_backend_ops_cuda.cpp    CUDA, or its CPU emulation (fp32, fp16, bf16)
// The weights are the model's own table (one layer), placed by the backend as the graph
// places them, so each linear runs with the storage and packing it has in production.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "m3/backend/backend.h"
#include "m3/backend/cpu/attention_kernels.h"
#include "m3/backend/cpu/cpu_backend.h"
#include "m3/backend/cpu/packed_linear_weights.h"
#include "m3/memory/memory_plan.h"
#include "m3/memory/plan_rules.h"
#include "m3/model/weight_table.h"
#include "op_reference.h"

namespace m3::test {

// A device the suite runs on.
struct Target {
  std::string name;  // "cpu", "cuda"
  DeviceKind device = DeviceKind::kCpu;
  std::function<std::unique_ptr<Backend>(const MemoryPlan&)> make_backend;
  // Memory the backend's ops read and write: raw bytes, copied synchronously.
  std::function<void*(uint64_t bytes)> allocate;
  std::function<void(void*)> release;
  std::function<void(void* device, const void* host, uint64_t bytes)> upload;
  std::function<void(void* host, const void* device, uint64_t bytes)> download;
  // Why `precision` cannot run here ("" when it can): the case is skipped, saying so.
  std::function<std::string(DType precision)> unavailable;
};

struct Shape {
  std::string name;
  int64_t hidden = 0, heads = 0, ffn = 0;
  std::vector<int32_t> lengths;  // the packed batch's sequences
  int64_t ffn_rows = 0;          // rows of the two FFN-wide linears (0: every token)
};

// Tiny: hidden 32, 2 heads of 16, FFN 64, three sequences (one of a single token).
// BGE-M3: hidden 1024, 16 heads of 64, FFN 4096.
inline Shape tiny_shape() { return {"tiny", 32, 2, 64, {5, 17, 1}}; }
inline Shape bge_m3_shape(std::vector<int32_t> lengths, int64_t ffn_rows = 0) {
  return {"bge_m3", 1024, 16, 4096, std::move(lengths), ffn_rows};
}

struct OpCase {
  std::shared_ptr<const Target> target;
  DType precision = DType::F32;
  Shape shape;
};

inline std::string op_case_name(const ::testing::TestParamInfo<OpCase>& info) {
  return info.param.target->name + "_" + std::string(precision_name(info.param.precision)) + "_" + info.param.shape.name;
}

inline void PrintTo(const OpCase& c, std::ostream* os) { *os << c.target->name << " " << precision_name(c.precision) << " " << c.shape.name; }

// --- tolerances

// The worst error an op may show, by the type its result was computed or stored in,
// measured as |got - want| / (|want| + rms(want)) (relative, floored at the tensor's RMS
// so that values near zero are judged on the tensor's scale). The references see the
// inputs as the backend holds them (rounded to their storage type), so what is left is
// float32 accumulation and the rounding of results:
//   fp32 2e-5: float32 sums over up to 4096 products (the CUDA emulation's GEMM adds
//              them in order: 3.3e-6 measured, a random walk of 4096 roundings);
//   fp16 4e-3, bf16 2e-2: a 16-bit result is rounded by up to u = 2^-11 (fp16) or 2^-9
//              (bf16) of itself, and a GELU linear rounds twice: the GEMM's output, then
//              the activation's. The first error is relative to the pre-activation value,
//              which can be several times the result where the bias cancels it: a
//              simulation of the 4096-wide GELU linear gives 1.8 u (fp16) and 3.6 u (bf16);
//              the bounds are about 8 u and 10 u (the CPU's bf16 attention also rounds
//              its softmax numerators);
//   int8 3e-2 of max|want| (the output's scale): per-token and per-channel quantization,
//              which the reference does not model, moves results by up to 1.2e-2 of it
//              (simulated for every linear shape here).
// A wrong op misses by far more: a dropped bias (N(0, 0.5)) by ~0.3 or more, a wrong
// epilogue or an off-by-one row by about 1.
struct Tolerance {
  double worst;
  bool of_max;  // the error is measured against max|want| (int8), not |want| + rms
};

inline Tolerance tolerance(DType computed_in) {
  switch (computed_in) {
    case DType::F32: return {2e-5, false};
    case DType::F16: return {4e-3, false};
    case DType::BF16: return {2e-2, false};
    case DType::I8: return {3e-2, true};
    case DType::I32: break;
  }
  return {0, false};
}

// The less precise of two types (int8 < bf16 < fp16 < fp32).
inline DType coarser(DType a, DType b) {
  auto rank = [](DType t) { return t == DType::I8 ? 3 : t == DType::BF16 ? 2 : t == DType::F16 ? 1 : 0; };
  return rank(a) >= rank(b) ? a : b;
}

// got [rows, cols] against want, within the tolerance of `computed_in`; prints the worst
// error (what the tolerance table is checked against) and fails naming its element.
inline ::testing::AssertionResult close_to(const std::string& what, const std::vector<float>& got,
                                           const std::vector<double>& want, int64_t cols, DType computed_in) {
  if (got.size() != want.size()) {
    return ::testing::AssertionFailure() << what << ": " << got.size() << " values, expected " << want.size();
  }
  const Tolerance t = tolerance(computed_in);
  double squares = 0, most = 0;
  for (double w : want) {
    squares += w * w;
    most = std::max(most, std::abs(w));
  }
  const double rms = std::sqrt(squares / std::max<size_t>(want.size(), 1));
  double worst = 0;
  size_t at = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    const double scale = std::max(t.of_max ? most : std::abs(want[i]) + rms, 1e-30);
    const double error = std::isfinite(got[i]) ? std::abs(got[i] - want[i]) / scale : INFINITY;
    if (error > worst) {
      worst = error;
      at = i;
    }
  }
  std::printf("    %-44s worst error %.2e, allowed %.0e (%s)\n", what.c_str(), worst, t.worst,
              std::string(precision_name(computed_in)).c_str());
  if (worst <= t.worst) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << what << ": worst error " << worst << " > " << t.worst << " ("
                                       << precision_name(computed_in) << ") at [" << at / cols << ", " << at % cols
                                       << "]: got " << got[at] << ", expected " << want[at] << " (rms "
                                       << rms << ", max " << most << ")";
}

// --- the model the ops run on: one layer of the model's weight table, random

struct ModelData {
  ModelConfig config;
  std::vector<std::vector<float>> weights;  // per table entry (xlmr_m3_weight_table, both heads)
  PackedBatch batch;   // ids over the vocabulary, CLS first and </s> last, one <pad> inside
  PackedBatch sparse;  // the same lengths over 8 ids only, so ids repeat within sequences
};

constexpr int32_t kPad = 1;
constexpr int64_t kVocab = 64;

inline ModelConfig op_config(const Shape& s) {
  ModelConfig c;
  c.vocab_size = kVocab;
  c.hidden_size = s.hidden;
  c.num_layers = 1;
  c.num_heads = s.heads;
  c.intermediate_size = s.ffn;
  c.max_position_embeddings = 260;  // positions up to 258: max_seq_len 256 below
  c.pad_token_id = kPad;
  return c;
}

// Made once per shape (BGE-M3's layer is 13M floats) and shared by every test.
inline const ModelData& model_data(const Shape& s) {
  static std::map<std::string, std::unique_ptr<ModelData>> cache;
  std::string key = s.name;
  for (int32_t len : s.lengths) key += "," + std::to_string(len);
  auto& slot = cache[key];
  if (slot) return *slot;
  auto d = std::make_unique<ModelData>();
  d->config = op_config(s);
  const WeightTable table = xlmr_m3_weight_table(d->config, true, true);
  std::mt19937 rng(20240611);
  std::normal_distribution<float> normal(0.f, 1.f);
  for (const WeightSpec& spec : table.specs) {
    const bool norm = spec.name.find("LayerNorm") != std::string::npos;
    const bool bias = spec.name.ends_with(".bias");
    float mean = 0.f, sd = 1.f;  // embedding tables: N(0, 1)
    if (spec.role == WeightRole::kEncoderLinear || spec.role == WeightRole::kHeadLinear) {
      sd = 1.f / std::sqrt(float(spec.cols));  // outputs ~N(0, 1) for N(0, 1) inputs
    } else if (norm) {
      mean = bias ? 0.f : 1.f;
      sd = bias ? 0.3f : 0.2f;
    } else if (spec.role == WeightRole::kVector) {
      sd = 0.5f;  // linear biases and the token-type row
    }
    std::vector<float> v(spec.elements());
    for (float& x : v) x = mean + sd * normal(rng);
    d->weights.push_back(std::move(v));
  }
  std::uniform_int_distribution<int32_t> id(4, kVocab - 1), small(0, 7);
  for (int32_t len : s.lengths) {
    std::vector<int32_t> ids(len), few(len);
    for (int32_t& i : ids) i = id(rng);
    for (int32_t& i : few) i = small(rng);
    ids.front() = 0;
    if (len > 1) ids.back() = 2;
    if (len > 4) ids[len / 2] = kPad;  // a <pad> typed in a text: its position is pad_id itself
    d->batch.add(ids, kPad);
    d->sparse.add(few, kPad);
  }
  slot = std::move(d);
  return *slot;
}

// --- the fixture

class OpParity : public ::testing::TestWithParam<OpCase> {
 protected:
  void SetUp() override {
    const OpCase& c = GetParam();
    target_ = c.target.get();
    if (const std::string why = target_->unavailable(c.precision); !why.empty()) GTEST_SKIP() << why;
    data_ = &model_data(c.shape);
    PlanInputs in;
    in.config = data_->config;
    in.max_batch_tokens = 256;
    in.max_seq_len = 256;
    in.threads = 2;
    in.precision = c.precision;
    in.device = target_->device;
    if (in.device == DeviceKind::kCpu) {
      in.library_workspace_bytes = CpuBackend::library_workspace_bytes(
          xlmr_m3_weight_table(in.config, in.sparse_head, in.colbert_head), in.max_batch_tokens, c.precision,
          in.threads);
    }
    plan_ = plan_memory(in);
    ASSERT_EQ(plan_.table.specs.size(), data_->weights.size());
    backend_ = target_->make_backend(plan_);
    backend_->attach_thread();
    traits_ = backend_->traits();

    // The weights as the runtime hands them over: float32, or on a low-precision CPU
    // replica the encoder's linears packed (embedder.cpp does the same at load).
    host_.table = plan_.table;
    host_.data = data_->weights;
    host_.packed.resize(plan_.table.specs.size());
    const bool pack = in.device == DeviceKind::kCpu && c.precision != DType::F32;
    for (size_t i = 0; pack && i < plan_.table.specs.size(); ++i) {
      const WeightSpec& spec = plan_.table.specs[i];
      if (spec.role != WeightRole::kEncoderLinear) continue;
      host_.packed[i] = pack_linear_weights(host_.data[i], spec.rows, spec.cols, c.precision);
      std::vector<float>().swap(host_.data[i]);
    }
    views_ = backend_->place_weights(host_);
    ASSERT_EQ(views_.size(), plan_.table.specs.size());
    batch_ = backend_->stage(data_->batch, 0);
  }

  void TearDown() override {
    for (void* p : allocations_) target_->release(p);
    allocations_.clear();
  }

  // --- tensors on the target

  // A [rows, cols] tensor of `type`, holding `values` (converted) and zeros after them.
  TensorView tensor(DType type, int64_t rows, int64_t cols, const std::vector<float>& values = {}) {
    TensorView v;
    v.dtype = type;
    v.rows = rows;
    v.cols = cols;
    v.device = target_->device;
    v.data = target_->allocate(v.bytes());
    allocations_.push_back(v.data);
    std::vector<float> full(static_cast<size_t>(rows * cols), 0.f);
    std::copy(values.begin(), values.begin() + std::min(values.size(), full.size()), full.begin());
    const std::vector<unsigned char> bytes = reference::encode(type, full);
    target_->upload(v.data, bytes.data(), bytes.size());
    return v;
  }

  // The first `rows` rows of t, as float32.
  std::vector<float> read(const TensorView& t, int64_t rows) {
    const TensorView part = t.slice_rows(0, rows);
    std::vector<unsigned char> bytes(part.bytes());
    target_->download(bytes.data(), part.data, bytes.size());
    std::vector<float> values(static_cast<size_t>(part.elements()));
    convert_to_f32(t.dtype, bytes.data(), values.data(), values.size());
    return values;
  }

  // Waits for what was queued (CUDA runs the ops on its stream).
  void sync() {
    backend_->submit(0);
    backend_->finish(0);
  }

  std::vector<float> random(int64_t count, float sd, uint32_t seed, float mean = 0.f) const {
    std::mt19937 rng(seed);
    std::normal_distribution<float> normal(mean, sd);
    std::vector<float> v(static_cast<size_t>(count));
    for (float& x : v) x = normal(rng);
    return v;
  }

  // --- the weights

  size_t index(const std::string& name) const { return plan_.table.index(name); }
  const std::vector<float>& weight(const std::string& name) const { return data_->weights[index(name)]; }
  const WeightView& placed(const std::string& name) const { return views_[index(name)]; }
  // How the backend stores the entry (the plan's rules): the reference rounds to it.
  DType stored(const std::string& name) const {
    const WeightSpec& spec = plan_.table.specs[index(name)];
    if (plan_.inputs.device == DeviceKind::kCuda) return cuda_weight_dtype(spec, plan_.inputs.precision);
    return cpu_weight_dtype(spec, plan_.inputs.precision);
  }
  std::vector<float> weight_as_stored(const std::string& name) const {
    return reference::round_to(stored(name), weight(name));
  }
  NormRef norm(const std::string& name) const {
    return {placed(name + ".weight").tensor, placed(name + ".bias").tensor};
  }

  const ModelConfig& config() const { return data_->config; }
  int64_t tokens() const { return data_->batch.tokens(); }

  // Checks one linear of the table: `name` with `epilogue` over `rows` rows, written as
  // the activation type or float32, with or without its bias. `ffn`: it writes (with
  // activation_out) or reads the FFN intermediate, which is the plan's GEMM operand type.
  void check_linear(const std::string& name, Epilogue epilogue, bool activation_out, bool with_bias, int64_t rows,
                    bool ffn = false) {
    const WeightView& w = placed(name + ".weight");
    const int64_t out = w.tensor.rows, in = w.tensor.cols;
    const DType weight_type = stored(name + ".weight");
    // The GEMM's input: on the CPU the activation type (bf16 with --dtype bf16, else float32,
    // which int8 GEMMs quantize themselves), float32 for the float32 heads, and the FFN
    // intermediate in the plan's GEMM operand type; on CUDA the weight's type (the
    // activation, or float32 for the sparse head).
    const DType x_type = target_->device == DeviceKind::kCuda ? weight_type
                         : ffn && !activation_out          ? plan_.gemm_operand
                         : weight_type == DType::F32       ? DType::F32
                                                           : plan_.activation;
    const DType y_type = !activation_out ? DType::F32 : ffn ? plan_.gemm_operand : plan_.activation;
    const std::vector<float> x = random(rows * in, 1.f, 11);
    const std::vector<float> y_before = random(rows * out, 1.f, 12);
    LinearRef ref{w, with_bias ? placed(name + ".bias").tensor : TensorView{}};
    auto op = backend_->prepare_linear(ref, epilogue, y_type);
    ASSERT_NE(op, nullptr);
    const TensorView x_view = tensor(x_type, plan_.rows, in, x);
    const TensorView y_view = tensor(y_type, plan_.rows, out, epilogue == Epilogue::kResidual ? y_before : std::vector<float>{});
    if (config().hidden_size <= 64) {
      // Every kernel variant once, on buffers of their own, before the real call: it must
      // leave nothing behind that changes the result (tiny shapes only: it runs each row bucket).
      backend_->warm_up(*op, tensor(x_type, plan_.rows, in), tensor(y_type, plan_.rows, out));
    }
    backend_->linear(*op, x_view, rows, y_view);
    sync();

    // The reference sees x and W as the GEMM does: rounded to a 16-bit type where the GEMM
    // computes in one (int8 is left to the tolerance).
    const std::vector<float> x_held = reference::round_to(weight_type, x);
    const std::vector<float> w_held = weight_as_stored(name + ".weight");
    const std::vector<float> no_bias;
    const std::vector<double> want =
        reference::linear(x_held, rows, in, w_held, out, with_bias ? weight(name + ".bias") : no_bias, epilogue, y_before);
    EXPECT_TRUE(close_to(name + (with_bias ? "" : " (no bias)"), read(y_view, rows), want, out,
                         coarser(weight_type, y_type)));
  }

  // pool() with norms (normalized rows, fetched as the heads fetch them) and without (the
  // pooled rows as they are); the last sequence's rows are zero, so its CLS row and mean are.
  void check_pool(Pooling pooling) {
    const int64_t h = config().hidden_size;
    const int32_t sequences = data_->batch.sequences();
    std::vector<float> x = random(plan_.rows * h, 1.f, 41);
    const PackedBatch& b = data_->batch;
    std::fill(x.begin() + b.seq_begin(sequences - 1) * h, x.begin() + (b.seq_begin(sequences - 1) + b.seq_len(sequences - 1)) * h, 0.f);
    const TensorView x_view = tensor(DType::F32, plan_.rows, h, x);
    const TensorView dense = tensor(DType::F32, sequences, h), raw = tensor(DType::F32, sequences, h);
    const TensorView norms = tensor(DType::F32, sequences, 1);
    backend_->pool(batch_, x_view, pooling, dense, norms);
    backend_->pool(batch_, x_view, pooling, raw, TensorView{});
    const auto* fetched = static_cast<const float*>(backend_->fetch(dense, 0));
    sync();
    const std::string what = std::string("pool ") + pooling_name(pooling);
    const std::vector<double> pooled = reference::pool(b, x, h, pooling == Pooling::kMean);
    const std::vector<double> want_norms = reference::row_norms(pooled, h);
    const std::vector<double> want = reference::divided(pooled, want_norms, h);
    EXPECT_TRUE(close_to(what + " (fetched)", {fetched, fetched + sequences * h}, want, h, DType::F32));
    EXPECT_TRUE(close_to(what, read(dense, sequences), want, h, DType::F32));
    EXPECT_TRUE(close_to(what + " norms", read(norms, sequences), want_norms, 1, DType::F32));
    EXPECT_TRUE(close_to(what + " raw", read(raw, sequences), pooled, h, DType::F32));
  }

  // The embedding of the staged batch, from the tables as the backend stores them.
  std::vector<double> embed_reference() const {
    return reference::embed(data_->batch, weight_as_stored("embeddings.word_embeddings"),
                            weight_as_stored("embeddings.position_embeddings"),
                            weight("embeddings.token_type_embeddings[0]"), weight("embeddings.LayerNorm.weight"),
                            weight("embeddings.LayerNorm.bias"), 1e-5, config().hidden_size);
  }

  // Rows of the linears that read or write the FFN's width.
  int64_t ffn_rows() const { return GetParam().shape.ffn_rows > 0 ? GetParam().shape.ffn_rows : tokens(); }

  // Checks attention over the staged batch, with or without the QKV bias.
  void check_attention(bool with_bias) {
    const int64_t heads = config().num_heads, head_dim = config().head_dim(), h = config().hidden_size;
    const DType act = plan_.activation;
    // Scores about N(0, 1), as a trained model's (twice that, and the float32 rounding of
    // scores near 15 alone moves the output by 1e-5); the running max still moves from
    // key block to key block.
    const std::vector<float> qkv = reference::round_to(act, random(tokens() * 3 * h, 1.f, 21));
    const std::string bias_name = "encoder.layer.0.attention.self.qkv.bias";
    const TensorView qkv_view = tensor(act, plan_.rows, 3 * h, qkv);
    const TensorView context = tensor(act, plan_.rows, h);
    backend_->attention(batch_, qkv_view, with_bias ? placed(bias_name).tensor : TensorView{}, heads, head_dim, context);
    sync();

    // The bias is added in float32 to Q, K and V as stored; the CPU's bf16 kernels then
    // round them to bfloat16, and the softmax numerators too; its int8 kernels put each
    // head's Q and K on an int8 grid and round V and the numerators to bfloat16 (CUDA
    // computes in float32 from the stored type).
    const bool cpu = target_->device == DeviceKind::kCpu;
    const DType precision = plan_.inputs.precision;
    const DType operands = cpu && precision != DType::F32 ? DType::BF16 : DType::F32;
    std::vector<float> held = qkv;
    if (with_bias) {
      const std::vector<float>& bias = weight(bias_name);
      for (size_t i = 0; i < held.size(); ++i) held[i] += bias[i % bias.size()];
    }
    if (cpu && precision == DType::I8 && int8_attention_kernels_supported(head_dim)) {
      reference::to_int8_attention_operands(held, heads, head_dim);
    } else if (cpu && precision != DType::F32) {
      held = reference::round_to(DType::BF16, held);
    }
    const std::vector<double> want = reference::attention(data_->batch, held, heads, head_dim);
    EXPECT_TRUE(close_to(std::string("attention") + (with_bias ? " + qkv bias" : ""), read(context, tokens()), want, h,
                         coarser(act, operands)));
  }

  const Target* target_ = nullptr;
  const ModelData* data_ = nullptr;
  MemoryPlan plan_;
  std::unique_ptr<Backend> backend_;
  BackendTraits traits_;
  HostWeights host_;
  std::vector<WeightView> views_;
  BatchView batch_;
  std::vector<void*> allocations_;
};

// --- the tests

// The graph lays out its calls from traits() and the plan: they must agree.
TEST_P(OpParity, TraitsMatchThePlan) {
  EXPECT_EQ(traits_.device, target_->device);
  EXPECT_EQ(traits_.activation, plan_.activation);
  EXPECT_GE(traits_.slots, 1);
  EXPECT_LE(traits_.slots, 2);  // the staging is planned for two slots at most
  EXPECT_GE(backend_->arena().bytes(), plan_.arena_bytes);
}

// QKV: y = x W^T + b, stored in the activation type.
TEST_P(OpParity, LinearStoresWithBias) {
  check_linear("encoder.layer.0.attention.self.qkv", Epilogue::kStore, true, true, tokens());
}

// QKV as the graph runs it where attention adds the bias: the GEMM without one.
TEST_P(OpParity, LinearStoresWithoutBias) {
  check_linear("encoder.layer.0.attention.self.qkv", Epilogue::kStore, true, false, tokens());
}

// The attention output projection: hidden += x W^T + b.
TEST_P(OpParity, LinearResidualAddsToTheStream) {
  check_linear("encoder.layer.0.attention.output.dense", Epilogue::kResidual, false, true, tokens());
}

// The FFN up-projection: gelu_erf(x W^T + b), hidden -> ffn (in bf16 on CPU bf16).
TEST_P(OpParity, LinearGelu) {
  check_linear("encoder.layer.0.intermediate.dense", Epilogue::kGelu, true, true, ffn_rows(), true);
}

// The FFN down-projection: hidden += x W^T + b, ffn -> hidden (reading bf16 on CPU bf16).
TEST_P(OpParity, LinearResidualFromTheFfnWidth) {
  check_linear("encoder.layer.0.output.dense", Epilogue::kResidual, false, true, ffn_rows(), true);
}

// The ColBERT head: x W^T + b in float32.
TEST_P(OpParity, LinearHeadStoresFloat32) {
  check_linear("colbert_linear", Epilogue::kStore, false, true, tokens());
}

// The sparse head: relu(x w + b), one output per token.
TEST_P(OpParity, LinearReluOneOutput) {
  check_linear("sparse_linear", Epilogue::kRelu, false, true, tokens());
}

// x = LayerNorm(x) in place (copy is x), over the first `rows` rows only.
TEST_P(OpParity, LayerNormInPlace) {
  const int64_t h = config().hidden_size, rows = tokens();
  const std::string name = "encoder.layer.0.attention.output.LayerNorm";
  const std::vector<float> x = random(plan_.rows * h, 2.f, 31, 0.5f);  // rows past `rows` too
  const TensorView view = tensor(DType::F32, plan_.rows, h, x);
  backend_->layer_norm(view, rows, norm(name), 1e-5f, view);
  sync();
  const std::vector<float> got = read(view, plan_.rows);
  const std::vector<double> want = reference::layer_norm(x, rows, h, weight(name + ".weight"), weight(name + ".bias"), 1e-5);
  EXPECT_TRUE(close_to("layer_norm", {got.begin(), got.begin() + rows * h}, want, h, DType::F32));
  for (int64_t i = rows * h; i < plan_.rows * h; ++i) {
    ASSERT_EQ(got[i], x[i]) << "row " << i / h << " is past the " << rows << " rows asked for";
  }
}

// x = LayerNorm(x), and the result also in `copy` of the activation type.
TEST_P(OpParity, LayerNormWithCopy) {
  const int64_t h = config().hidden_size, rows = tokens();
  const std::string name = "encoder.layer.0.output.LayerNorm";
  const std::vector<float> x = random(plan_.rows * h, 2.f, 32, -0.5f);
  const TensorView view = tensor(DType::F32, plan_.rows, h, x);
  const std::vector<float> copy_before(plan_.rows * h, 0.25f);
  const TensorView copy = tensor(plan_.activation, plan_.rows, h, copy_before);
  backend_->layer_norm(view, rows, norm(name), 1e-5f, copy);
  sync();
  const std::vector<double> want = reference::layer_norm(x, rows, h, weight(name + ".weight"), weight(name + ".bias"), 1e-5);
  EXPECT_TRUE(close_to("layer_norm: x", read(view, rows), want, h, DType::F32));
  EXPECT_TRUE(close_to("layer_norm: copy", read(copy, rows), want, h, plan_.activation));
  const std::vector<float> copy_after = read(copy, plan_.rows);
  for (int64_t i = rows * h; i < plan_.rows * h; ++i) {
    ASSERT_EQ(copy_after[i], 0.25f) << "copy row " << i / h << " is past the " << rows << " rows asked for";
  }
}

// hidden = LayerNorm((word[id] + token_type) + position[pos]), the result written over
// itself as the copy (float32 activations) or into a copy of the activation type.
TEST_P(OpParity, EmbedLooksUpAndNormalizes) {
  const int64_t h = config().hidden_size;
  const TensorView hidden = tensor(DType::F32, plan_.rows, h);
  backend_->embed(batch_, placed("embeddings.word_embeddings"), placed("embeddings.position_embeddings"),
                  placed("embeddings.token_type_embeddings[0]").tensor, norm("embeddings.LayerNorm"), 1e-5f, hidden,
                  hidden);
  sync();
  const std::vector<double> want = embed_reference();
  EXPECT_TRUE(close_to("embed", read(hidden, tokens()), want, h, DType::F32));
}

TEST_P(OpParity, EmbedWithCopy) {
  const int64_t h = config().hidden_size;
  const TensorView hidden = tensor(DType::F32, plan_.rows, h);
  const TensorView copy = tensor(plan_.activation, plan_.rows, h);
  backend_->embed(batch_, placed("embeddings.word_embeddings"), placed("embeddings.position_embeddings"),
                  placed("embeddings.token_type_embeddings[0]").tensor, norm("embeddings.LayerNorm"), 1e-5f, hidden,
                  copy);
  sync();
  const std::vector<double> want = embed_reference();
  EXPECT_TRUE(close_to("embed: hidden", read(hidden, tokens()), want, h, DType::F32));
  EXPECT_TRUE(close_to("embed: copy", read(copy, tokens()), want, h, plan_.activation));
}

TEST_P(OpParity, AttentionWithoutBias) { check_attention(false); }

TEST_P(OpParity, AttentionAddsTheQkvBias) { check_attention(true); }

// A classifier's dense layer (bge-reranker): tanh(x W^T + b), hidden -> hidden in float32.
TEST_P(OpParity, LinearTanh) {
  check_linear("colbert_linear", Epilogue::kTanh, false, true, tokens());
}

// A classifier's output projection with one label: x w + b, no activation.
TEST_P(OpParity, LinearStoresOneOutput) {
  check_linear("sparse_linear", Epilogue::kStore, false, true, tokens());
}

// dense[s] = normalize(pool(x over s)), read back through fetch as the heads do, with the
// norms; without norms the pooled rows as they are. A zero CLS row stays zero (the norm is
// floored at 1e-12, not divided by 0).
TEST_P(OpParity, PoolClsNormalized) { check_pool(Pooling::kCls); }
TEST_P(OpParity, PoolMeanNormalized) { check_pool(Pooling::kMean); }

// Each of the first `rows` rows divided by its norm, in place; a zero row stays zero.
TEST_P(OpParity, NormalizeRows) {
  const int64_t h = config().hidden_size, rows = tokens();
  std::vector<float> x = random(plan_.rows * h, 1.f, 51);
  std::fill(x.begin() + 2 * h, x.begin() + 3 * h, 0.f);
  const TensorView view = tensor(DType::F32, plan_.rows, h, x);
  backend_->normalize_rows(view, rows);
  sync();
  const std::vector<float> got = read(view, plan_.rows);
  EXPECT_TRUE(close_to("normalize_rows", {got.begin(), got.begin() + rows * h}, reference::normalize_rows(x, rows, h),
                       h, DType::F32));
  for (int64_t i = rows * h; i < plan_.rows * h; ++i) {
    ASSERT_EQ(got[i], x[i]) << "row " << i / h << " is past the " << rows << " rows asked for";
  }
}

// The per-id maxima over a batch whose 8 ids repeat within and across sequences, with
// zero weights and skipped ids; exact (a maximum is one of its inputs).
TEST_P(OpParity, MaxPerTokenId) {
  const PackedBatch& b = data_->sparse;
  const BatchView view = backend_->stage(b, 0);
  std::vector<float> weights = random(b.tokens(), 1.f, 61);
  for (float& w : weights) w = std::max(w, 0.f);  // relu outputs: about half are 0
  const std::vector<int32_t> skip = {0, 1, 2, 3};
  const TensorView w_view = tensor(DType::F32, plan_.rows, 1, weights);
  const TensorView lexical = tensor(DType::F32, plan_.rows, 1, std::vector<float>(plan_.rows, -1.f));
  backend_->max_per_token_id(view, w_view, skip, lexical);
  const auto* fetched = static_cast<const float*>(backend_->fetch(lexical.slice_rows(0, b.tokens()), 0));
  sync();
  const std::vector<double> want = reference::max_per_token_id(b, weights, skip);
  int kept = 0;
  for (int64_t t = 0; t < b.tokens(); ++t) {
    ASSERT_EQ(fetched[t], static_cast<float>(want[t])) << "token " << t << " (id " << b.token_ids[t] << ", weight "
                                                       << weights[t] << ")";
    kept += want[t] > 0;
  }
  EXPECT_GT(kept, 0);  // the batch does exercise the maxima
}

}  // namespace m3::test
