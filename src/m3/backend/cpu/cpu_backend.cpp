#include "m3/backend/cpu/cpu_backend.h"

#include <omp.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <cstring>
#include <set>
#include <string>
#include <type_traits>

#include <fmt/format.h>

#include "m3/backend/cpu/attention_kernels.h"
#include "m3/backend/cpu/attention_softmax.h"
#include "m3/backend/cpu/gemm_inputs.h"
#include "m3/backend/cpu/packed_linear_weights.h"
#include "m3/core/cpu_quota.h"
#include "m3/core/error.h"
#include "m3/memory/gemm_row_blocks.h"
#include "m3/memory/plan_rules.h"

namespace m3 {
namespace {

using dnnl::memory;
using tag = memory::format_tag;
using dt = memory::data_type;

// fp32 and bf16: y (epilogue)= x W^T + b in one primitive. int8: the raw accumulators
// only (x and W are quantized), int8_epilogue applies the scales, bias and epilogue.
// bf16 may write its output in bf16 (`dst`, for the next GEMM only: the FFN's intermediate).
dnnl::matmul::primitive_desc gemm_desc(const dnnl::engine& engine, int64_t rows, int64_t out, int64_t in,
                                       Epilogue epilogue, DType precision, bool bias = true, DType dst = DType::F32) {
  const memory::desc dst_md({rows, out}, dst == DType::BF16 ? dt::bf16 : dt::f32, tag::ab);
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);  // the arena holds it
  if (precision == DType::I8) {
    const memory::desc src_md({rows, in}, dt::u8, tag::ab);
    const memory::desc wei_md = packed_weights_desc(engine, precision, out, in);
    return dnnl::matmul::primitive_desc(dnnl::matmul::desc(src_md, wei_md, dst_md), attr, engine);
  }
  const bool bf16 = precision == DType::BF16;
  const memory::desc src_md({rows, in}, bf16 ? dt::bf16 : dt::f32, tag::ab);
  // fp32 keeps PyTorch's [out, in] in place (format ba of W^T); bf16 uses the packed layout.
  const memory::desc wei_md =
      bf16 ? packed_weights_desc(engine, precision, out, in) : memory::desc({in, out}, dt::f32, tag::ba);
  const memory::desc bias_md({1, out}, dt::f32, tag::ab);
  dnnl::post_ops post_ops;
  if (epilogue == Epilogue::kResidual) post_ops.append_sum(1.0f);
  if (epilogue == Epilogue::kGelu) post_ops.append_eltwise(1.0f, dnnl::algorithm::eltwise_gelu_erf, 0.f, 0.f);
  if (epilogue == Epilogue::kRelu) post_ops.append_eltwise(1.0f, dnnl::algorithm::eltwise_relu, 0.f, 0.f);
  if (epilogue == Epilogue::kTanh) post_ops.append_eltwise(1.0f, dnnl::algorithm::eltwise_tanh, 0.f, 0.f);
  attr.set_post_ops(post_ops);
  if (!bias) return dnnl::matmul::primitive_desc(dnnl::matmul::desc(src_md, wei_md, dst_md), attr, engine);
  return dnnl::matmul::primitive_desc(dnnl::matmul::desc(src_md, wei_md, bias_md, dst_md), attr, engine);
}

class CpuLinear final : public PreparedLinear {
 public:
  CpuLinear(const LinearRef& l, CpuBackend::RowBlockKernels& k, Epilogue e, DType dst, const dnnl::engine& engine)
      : out(l.weight.tensor.rows), in(l.weight.tensor.cols), kernels(k), epilogue(e), output(dst),
        precision(l.weight.packed ? static_cast<const CpuPackedWeights&>(*l.weight.packed).precision : DType::F32),
        bias(l.bias.empty() ? nullptr : l.bias.as<const float>()) {
    if (!bias && precision == DType::I8) {  // int8_epilogue always adds a bias: zeros stand in
      zero_bias.assign(static_cast<size_t>(out), 0.f);
      int8.bias = zero_bias.data();
    } else {
      int8.bias = bias;
    }
    if (bias) bias_memory = memory(memory::desc({1, out}, dt::f32, tag::ab), engine, const_cast<float*>(bias));
    if (l.weight.packed) {
      const auto& packed = static_cast<const CpuPackedWeights&>(*l.weight.packed);
      weight_memory = memory(packed.desc, engine, packed.data.get());
      int8.scales = packed.channel_scales.data();
      int8.sums = packed.channel_sums.data();
    } else {
      weight_memory = memory(memory::desc({in, out}, dt::f32, tag::ba), engine, l.weight.tensor.data);
    }
  }

  int64_t out, in;
  CpuBackend::RowBlockKernels& kernels;
  Epilogue epilogue;
  DType output;  // what y holds: float32, or bf16 (bf16 GEMMs whose output only a GEMM reads)
  DType precision;
  const float* bias;
  memory weight_memory;
  memory bias_memory;
  Int8Channels int8{};  // int8: the weights' scales and sums, the bias or zeros
  std::vector<float> zero_bias;
};

// Returns the norm it divided by.
float l2_normalize(const float* in, int64_t n, float* out) {
  float sum = 0.f;
  for (int64_t i = 0; i < n; ++i) sum += in[i] * in[i];
  const float norm = std::max(std::sqrt(sum), 1e-12f);
  for (int64_t i = 0; i < n; ++i) out[i] = in[i] / norm;
  return norm;
}

// One head of one sequence through the bf16 kernels: Q, K and V rows `stride` apart in
// float32 (rounded here) or in bf16 (--dtype bf16's activations), the output rows in the
// same type. K then V go to the kernels' layouts in `scratch`: head_dim x len rounded up
// to 16 floats, which attention() checks the plan gives.
template <class T>
void attention_head_bf16(const T* q, const T* k, const T* v, int64_t stride, int64_t len, int64_t head_dim,
                         float scale, int64_t query_tile, float* scratch, T* o, int64_t o_stride) {
  const int64_t len16 = (len + 15) / 16 * 16;
  auto* kt2 = reinterpret_cast<uint16_t*>(scratch);
  uint16_t* vt2 = kt2 + head_dim * len16;
  for (int64_t k0 = 0; k0 < len; k0 += kBf16KeyBlock) {
    const int64_t keys = std::min<int64_t>(kBf16KeyBlock, len - k0);
    pack_keys_bf16(k + k0 * stride, stride, keys, head_dim, kt2 + k0 * head_dim);
    pack_values_bf16(v + k0 * stride, stride, keys, head_dim, vt2 + k0 * head_dim);
  }
  alignas(64) uint16_t tile_q[kMaxQueryTile * 64];
  for (int64_t q0 = 0; q0 < len; q0 += query_tile) {
    const int64_t rows = std::min<int64_t>(query_tile, len - q0);
    for (int64_t r = 0; r < rows; ++r) {
      if constexpr (std::is_same_v<T, float>) {
        round_row_to_bf16(q + (q0 + r) * stride, head_dim, tile_q + r * head_dim);
      } else {
        std::memcpy(tile_q + r * head_dim, q + (q0 + r) * stride, static_cast<size_t>(head_dim) * sizeof(T));
      }
    }
    attention_tile_bf16(tile_q, rows, kt2, vt2, len, kBf16KeyBlock, head_dim, scale, o + q0 * o_stride, o_stride);
  }
}

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
// OpenMP's thread count as the process started (OMP_NUM_THREADS, the CPU affinity mask):
// read before any replica's attach_thread changes the setting of the thread it runs on.
const int kStartupOmpThreads = omp_get_max_threads();

int CpuBackend::default_threads() {
  const int visible = kStartupOmpThreads;
  const int quota = cgroup_cpu_limit();
  return quota > 0 ? std::min(visible, quota) : visible;
}

std::string CpuBackend::spin_wait_warning() {
  auto lower = [](const char* v) {
    std::string s = v ? v : "";
    for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return s;
  };
  const std::string policy = lower(std::getenv("OMP_WAIT_POLICY"));
  const std::string spin = lower(std::getenv("GOMP_SPINCOUNT"));
  const char* setting = policy == "active"                        ? "OMP_WAIT_POLICY=ACTIVE"
                        : spin == "infinite" || spin == "infinity" ? "GOMP_SPINCOUNT=infinite"
                                                                   : nullptr;
  if (!setting) return {};
  return fmt::format(
      "{}: idle OpenMP threads will spin instead of sleeping. Every thread that starts parallel work (the "
      "loader, each replica) has a team of its own, so spinning teams take the cores the working one needs: "
      "unset it (bench/results/2026-12-07-omp-contention.md: 41% slower on a quiet machine)",
      setting);
}

CpuBackend::CpuBackend(const MemoryPlan& plan, int threads)
    : query_tile_(plan.inputs.query_tile),
      max_rows_(plan.inputs.max_batch_tokens),
      max_seq_len_(plan.inputs.max_seq_len),
      precision_(plan.inputs.precision),
      activation_(plan.activation),
      threads_(threads > 0 ? threads : default_threads()),
      arena_(plan.arena_bytes),
      engine_(dnnl::engine::kind::cpu, 0),
      stream_(engine_) {
  if (query_tile_ < 1 || query_tile_ > kMaxQueryTile) {
    fail("attention query tile {} is outside 1..{}", query_tile_, kMaxQueryTile);
  }
  attention_scratch_ = arena_.at<float>(plan.attention_scratch_offset);
  scratch_floats_per_thread_ = cpu_attention_scratch_floats(plan.inputs);
  library_ = arena_.at<void>(plan.library_workspace_offset);
  library_bytes_ = plan.inputs.library_workspace_bytes;
  if (plan.gemm_input_bytes > 0) {
    gemm_input_ = arena_.at<void>(plan.gemm_input_offset);
    gemm_input_bytes_ = plan.gemm_input_bytes;
  }
  if (precision_ == DType::I8) {
    row_scales_ = arena_.at<float>(plan.row_scales_offset);
    row_minima_ = arena_.at<float>(plan.row_minima_offset);
    int8_accumulator_ = arena_.at<float>(plan.int8_accumulator_offset);
  }
}

TensorView CpuBackend::arena() { return tensor_view(arena_.at<void>(0), DType::I8, static_cast<int64_t>(arena_.size()), 1); }

std::vector<WeightView> CpuBackend::place_weights(const HostWeights& w) {
  std::vector<WeightView> views;
  for (size_t i = 0; i < w.table.specs.size(); ++i) {
    const WeightSpec& spec = w.table.specs[i];
    WeightView v;
    v.packed = w.packed[i].get();
    v.tensor = tensor_view(v.packed ? nullptr : w.data[i].data(),
                         v.packed ? static_cast<const CpuPackedWeights&>(*v.packed).precision : DType::F32, spec.rows,
                         spec.cols);
    if (!v.packed && w.data[i].size() != spec.elements()) fail("internal: {} has no host copy to compute from", spec.name);
    views.push_back(v);
  }
  return views;
}

BatchView CpuBackend::stage(const PackedBatch& batch, int slot) {
  if (batch.tokens() > max_rows_) fail("batch of {} tokens exceeds the planned {} tokens", batch.tokens(), max_rows_);
  if (batch.max_seq_len > max_seq_len_) {
    fail("sequence of {} tokens exceeds the planned {}", batch.max_seq_len, max_seq_len_);
  }
  BatchView v;
  v.host = &batch;
  v.slot = slot;
  v.token_ids = tensor_view(batch.token_ids.data(), DType::I32, batch.tokens(), 1);
  v.positions = tensor_view(batch.positions.data(), DType::I32, batch.tokens(), 1);
  v.cu_seqlens = tensor_view(batch.cu_seqlens.data(), DType::I32, batch.sequences() + 1, 1);
  return v;
}

void CpuBackend::zero_chunk_tail(const TensorView& x, int64_t rows) const {
  const int64_t padded = std::min(padded_rows(rows), x.rows);
  if (padded > rows) std::memset(x.slice_rows(rows, padded - rows).data, 0, x.slice_rows(rows, padded - rows).bytes());
}

void CpuBackend::attach_thread() { omp_set_num_threads(threads_); }

uint64_t CpuBackend::library_workspace_bytes(const WeightTable& table, int64_t max_rows, DType precision,
                                             int threads) {
  // A replica's thread runs its GEMMs with omp_set_num_threads(threads) (attach_thread): ask
  // with the same, not with whatever this thread was last set to (another model's replica
  // built in this process, with fewer threads, left its setting here).
  const int saved = omp_get_max_threads();
  omp_set_num_threads(threads);
  struct Restore {
    int threads;
    ~Restore() { omp_set_num_threads(threads); }
  } restore{saved};
  const dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  std::set<std::tuple<int64_t, int64_t, Epilogue, DType>> gemms;  // every GEMM of the table, once
  for (const WeightSpec& s : table.specs) {
    if (s.role == WeightRole::kEncoderLinear || s.role == WeightRole::kHeadLinear ||
        s.role == WeightRole::kFloatHeadLinear) {
      gemms.insert({s.rows, s.cols, s.epilogue, cpu_weight_dtype(s, precision)});
    }
  }
  uint64_t most = 0;
  for (const auto& [out, in, epilogue, p] : gemms) {
    for (int64_t rows : gemm_block_sizes(max_rows)) {
      for (DType dst : {DType::F32, p == DType::BF16 ? DType::BF16 : DType::F32}) {
        most = std::max<uint64_t>(most,
                                  gemm_desc(engine, rows, out, in, epilogue, p, true, dst).scratchpad_desc().get_size());
      }
    }
  }
  return most;
}

CpuBackend::RowBlockKernels& CpuBackend::kernels_for(int64_t out, int64_t in, Epilogue epilogue, DType precision,
                                                      bool bias, DType dst) {
  auto [it, inserted] = kernels_.try_emplace({out, in, epilogue, precision, bias, dst});
  RowBlockKernels& k = it->second;
  if (!inserted) return k;
  for (int64_t rows : gemm_block_sizes(max_rows_)) {
    const auto pd = gemm_desc(engine_, rows, out, in, epilogue, precision, bias || precision == DType::I8, dst);
    k.index[rows] = k.primitives.size();
    if (pd.scratchpad_desc().get_size() > library_bytes_) {
      fail("oneDNN needs a {}-byte scratchpad for a {}x{}x{} GEMM, more than the {} planned", pd.scratchpad_desc().get_size(),
           rows, out, in, library_bytes_);
    }
    k.primitives.emplace_back(pd);
    k.src.emplace_back(pd.src_desc(), engine_, static_cast<void*>(DNNL_MEMORY_NONE));
    k.dst.emplace_back(pd.dst_desc(), engine_, static_cast<void*>(DNNL_MEMORY_NONE));
    k.scratchpad.emplace_back(pd.scratchpad_desc(), engine_, library_);
  }
  return k;
}

std::unique_ptr<PreparedLinear> CpuBackend::prepare_linear(const LinearRef& l, Epilogue epilogue, DType out) {
  const DType precision = l.weight.packed ? static_cast<const CpuPackedWeights&>(*l.weight.packed).precision : DType::F32;
  const bool bf16_out = out == DType::BF16 && precision == DType::BF16 && epilogue != Epilogue::kResidual;
  if (out != DType::F32 && !bf16_out) {
    fail("internal: a CPU {} linear writes float32 (or bf16 from a bf16 GEMM without a residual), not {}",
         precision_name(precision), dtype_name(out));
  }
  const int64_t in = l.weight.tensor.cols;
  if (precision == DType::I8 || (precision == DType::BF16 && activation_ == DType::F32)) {
    // int8 quantizes every input into it; bf16 rounds the float32 ones only (the FFN's
    // intermediate arrives in bf16; with bf16 activations every input does, and there is
    // no buffer), so linear() checks the width it rounds.
    const uint64_t need = static_cast<uint64_t>(max_rows_ + kRowGranularity) * in;
    if (gemm_input_ == nullptr || (precision == DType::I8 && gemm_input_bytes_ < need)) {
      fail("a {} GEMM with {} inputs needs a planned {}-byte input buffer", precision_name(precision), in, need);
    }
    if (precision == DType::I8 && (row_scales_ == nullptr || row_minima_ == nullptr || int8_accumulator_ == nullptr)) {
      fail("an int8 GEMM needs planned row scales, row minima and accumulators");
    }
  }
  auto& kernels = kernels_for(l.weight.tensor.rows, in, epilogue, precision, !l.bias.empty(), out);
  return std::make_unique<CpuLinear>(l, kernels, epilogue, out, engine_);
}

void CpuBackend::linear(const PreparedLinear& prepared, const TensorView& x_view, int64_t rows, const TensorView& y_view) {
  if (rows <= 0) return;
  if (rows > max_rows_) fail("a batch of {} rows exceeds the planned {}", rows, max_rows_);
  const auto& op = static_cast<const CpuLinear&>(prepared);
  const float* x = x_view.as<const float>();
  float* y = y_view.as<float>();
  const int64_t in = op.in, out = op.out;
  const int64_t covered = padded_rows(rows);
  if (y_view.dtype != op.output) fail("internal: a linear writing {} got a {} output", dtype_name(op.output), dtype_name(y_view.dtype));
  if (x_view.dtype != DType::F32 && !(x_view.dtype == DType::BF16 && op.precision == DType::BF16)) {
    fail("internal: a {} linear got a {} input", precision_name(op.precision), dtype_name(x_view.dtype));
  }
  // The GEMM's own input and output: x and y (fp32), x rounded (bf16, unless it is bf16
  // already), x quantized and raw accumulators (int8; the residual linears accumulate
  // aside, then add).
  const void* src = x;
  size_t src_element = sizeof(float);
  float* dst = y;
  const size_t dst_element = op.output == DType::BF16 ? 2 : sizeof(float);
  if (op.precision == DType::BF16 && x_view.dtype == DType::BF16) {
    src_element = 2;
  } else if (op.precision == DType::BF16) {
    if (static_cast<uint64_t>(covered * in) * 2 > gemm_input_bytes_) {
      fail("a bf16 GEMM with {} float32 inputs per row needs more than the planned {}-byte input buffer", in,
           gemm_input_bytes_);
    }
    round_rows_to_bf16(x, covered, in, static_cast<uint16_t*>(gemm_input_));
    src = gemm_input_;
    src_element = 2;
  } else if (op.precision == DType::I8) {
    quantize_rows_to_uint8(x, covered, in, static_cast<uint8_t*>(gemm_input_), row_scales_, row_minima_);
    src = gemm_input_;
    src_element = 1;
    if (op.epilogue == Epilogue::kResidual) dst = int8_accumulator_;
  }
  const dnnl_memory_t bias = op.precision == DType::I8 || !op.bias ? nullptr : op.bias_memory.get();
  for_each_gemm_chunk(rows, [&](int64_t first, int64_t chunk) {
    const size_t k = op.kernels.index.at(chunk);
    memory& src_memory = op.kernels.src[k];
    memory& dst_memory = op.kernels.dst[k];
    src_memory.set_data_handle(const_cast<char*>(static_cast<const char*>(src)) + first * in * src_element);
    dst_memory.set_data_handle(reinterpret_cast<char*>(dst) + first * out * dst_element);
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
  if (op.precision == DType::I8) {
    int8_epilogue(dst, rows, out, row_scales_, row_minima_, op.int8, op.epilogue, y);
  }
}

void CpuBackend::layer_norm(const TensorView& x_view, int64_t rows, const NormRef& norm, float eps,
                            const TensorView& copy) {
  const int64_t n = x_view.cols;
  float* x = x_view.as<float>();
  const float* gamma = norm.gamma.as<const float>();
  const float* beta = norm.beta.as<const float>();
  auto* copy_bf16 = !copy.empty() && copy.dtype == DType::BF16 ? copy.as<uint16_t>() : nullptr;
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    normalize_row(x + r * n, n, gamma, beta, eps);
    if (copy_bf16) round_row_to_bf16(x + r * n, n, copy_bf16 + r * n);  // while the row is in L1
  }
  if (!copy.empty() && !copy_bf16 && copy.data != x_view.data) {
    std::memcpy(copy.data, x, static_cast<size_t>(rows * n) * sizeof(float));
  }
}

void CpuBackend::embed(const BatchView& batch, const WeightView& word_view, const WeightView& position_view,
                       const TensorView& token_type_view, const NormRef& norm, float eps, const TensorView& hidden_view,
                       const TensorView& copy) {
  const PackedBatch& b = *batch.host;
  const int64_t rows = b.tokens(), hidden = hidden_view.cols;
  const float* word_table = word_view.tensor.as<const float>();
  const float* position_table = position_view.tensor.as<const float>();
  const float* token_type = token_type_view.as<const float>();
  const int64_t vocab = word_view.tensor.rows, positions = position_view.tensor.rows;
  for (int64_t t = 0; t < rows; ++t) {
    if (b.token_ids[t] < 0 || b.token_ids[t] >= vocab) fail("token id {} is outside the vocabulary of {}", b.token_ids[t], vocab);
    if (b.positions[t] < 0 || b.positions[t] >= positions) fail("position {} is outside the model's {}", b.positions[t], positions);
  }
  float* out = hidden_view.as<float>();
  auto* copy_bf16 = !copy.empty() && copy.dtype == DType::BF16 ? copy.as<uint16_t>() : nullptr;
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < rows; ++t) {
    const float* word = word_table + int64_t(b.token_ids[t]) * hidden;
    const float* position = position_table + int64_t(b.positions[t]) * hidden;
    float* row = out + t * hidden;
    // Same association as PyTorch: (word + token_type) + position.
    for (int64_t i = 0; i < hidden; ++i) row[i] = (word[i] + token_type[i]) + position[i];
    normalize_row(row, hidden, norm.gamma.as<const float>(), norm.beta.as<const float>(), eps);
    if (copy_bf16) round_row_to_bf16(row, hidden, copy_bf16 + t * hidden);
  }
  zero_chunk_tail(hidden_view, rows);
  if (copy_bf16) {
    zero_chunk_tail(copy, rows);
  } else if (!copy.empty() && copy.data != hidden_view.data) {
    std::memcpy(copy.data, out, hidden_view.slice_rows(0, rows).bytes());
  }
}

void CpuBackend::pool(const BatchView& batch, const TensorView& x, Pooling pooling, const TensorView& out,
                      const TensorView& norms) {
  const PackedBatch& b = *batch.host;
  const int64_t h = x.cols;
  if (b.sequences() > out.rows) fail("batch of {} sequences exceeds the planned {}", b.sequences(), out.rows);
  float* norm_of = norms.empty() ? nullptr : norms.as<float>();
#pragma omp parallel for schedule(static)
  for (int32_t s = 0; s < b.sequences(); ++s) {
    const float* rows = x.as<const float>() + int64_t(b.seq_begin(s)) * h;
    float* pooled = out.as<float>() + s * h;
    if (pooling == Pooling::kMean) {
      // Row by row in order, as sentence-transformers sums the masked rows, then / count.
      std::fill(pooled, pooled + h, 0.f);
      const int64_t len = b.seq_len(s);
      for (int64_t r = 0; r < len; ++r) {
#pragma omp simd
        for (int64_t i = 0; i < h; ++i) pooled[i] += rows[r * h + i];
      }
      const float count = static_cast<float>(std::max<int64_t>(len, 1));
      for (int64_t i = 0; i < h; ++i) pooled[i] /= count;
      rows = pooled;
    } else if (!norm_of) {
      std::copy(rows, rows + h, pooled);
    }
    if (norm_of) norm_of[s] = l2_normalize(rows, h, pooled);
  }
}

void CpuBackend::normalize_rows(const TensorView& x, int64_t rows) {
  const int64_t n = x.cols;
  float* data = x.as<float>();
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) l2_normalize(data + r * n, n, data + r * n);
}

void CpuBackend::max_per_token_id(const BatchView& batch, const TensorView& weights_view, std::span<const int32_t> skip,
                                   const TensorView& out_view) {
  const PackedBatch& b = *batch.host;
  const float* weights = weights_view.as<const float>();
  float* maxima = out_view.as<float>();
  // Each sequence finds an id's first position through an open-addressing table in its
  // thread's attention scratch (free once the encoder has run): nothing is allocated.
  const int64_t scratch_bytes = scratch_floats_per_thread_ * static_cast<int64_t>(sizeof(float));
  int64_t capacity = 1;
  while (capacity * 2 * 8 <= scratch_bytes) capacity *= 2;
#pragma omp parallel for schedule(dynamic, 1)
  for (int32_t s = 0; s < b.sequences(); ++s) {
    const int64_t begin = b.seq_begin(s), end = begin + b.seq_len(s);
    auto* table = reinterpret_cast<int32_t*>(attention_scratch_ + int64_t(omp_get_thread_num()) * scratch_floats_per_thread_);
    int64_t size = 1;
    while (size < 2 * (end - begin)) size *= 2;
    const bool hashed = size <= capacity;
    if (hashed) std::fill(table, table + 2 * size, -1);  // [id, first position] pairs
    for (int64_t t = begin; t < end; ++t) {
      maxima[t] = 0.f;
      const int32_t id = b.token_ids[t];
      const float w = weights[t];
      if (!(w > 0.f) || std::find(skip.begin(), skip.end(), id) != skip.end()) continue;
      int64_t first = -1;
      if (hashed) {
        uint64_t slot = (static_cast<uint32_t>(id) * 2654435761u) & static_cast<uint64_t>(size - 1);
        while (table[2 * slot] != -1 && table[2 * slot] != id) slot = (slot + 1) & static_cast<uint64_t>(size - 1);
        if (table[2 * slot] == id) {
          first = table[2 * slot + 1];
        } else {
          table[2 * slot] = id;
          table[2 * slot + 1] = static_cast<int32_t>(t);
        }
      } else {
        for (int64_t j = begin; j < t && first < 0; ++j) {
          if (b.token_ids[j] == id && maxima[j] > 0.f) first = j;
        }
      }
      if (first < 0) {
        maxima[t] = w;
      } else if (w > maxima[first]) {
        maxima[first] = w;
      }
    }
  }
}

void CpuBackend::attention(const BatchView& batch_view, const TensorView& qkv_view, const TensorView& qkv_bias,
                           int64_t heads, int64_t head_dim, const TensorView& context) {
  const PackedBatch& batch = *batch_view.host;
  const int64_t hidden = heads * head_dim;
  const int64_t stride = 3 * hidden;
  const int64_t tile = query_tile_;
  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  if (batch.max_seq_len > max_seq_len_) fail("a {}-token sequence exceeds the planned {}", batch.max_seq_len, max_seq_len_);
  const bool bf16_io = qkv_view.dtype == DType::BF16;
  if (bf16_io != (context.dtype == DType::BF16) || (qkv_view.dtype != DType::F32 && !bf16_io)) {
    fail("internal: CPU attention reads and writes float32 or bf16, not {} QKV and a {} output",
         dtype_name(qkv_view.dtype), dtype_name(context.dtype));
  }
  if (bf16_io && !bf16_attention_kernels_supported(head_dim)) {
    fail("internal: bf16 Q, K and V need the bf16 attention kernels, which do not take head size {} on this CPU",
         head_dim);
  }
  // Their K and V take head_dim x len rounded up to 16 floats of a thread's scratch: the
  // plan gives that much with bf16 activations (cpu_attention_scratch_floats).
  if (bf16_io && head_dim * ((batch.max_seq_len + 15) / 16 * 16) > scratch_floats_per_thread_) {
    fail("internal: a {}-token sequence's K and V need more than the planned attention scratch", batch.max_seq_len);
  }
  if (!qkv_bias.empty()) {  // the graph adds it in the QKV GEMM here; an op test may not
    const float* bias = qkv_bias.as<const float>();
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < batch.tokens(); ++t) {
      if (bf16_io) {  // in float32, then rounded as the stored values are
        uint16_t* row = qkv_view.as<uint16_t>() + t * stride;
        for (int64_t i = 0; i < stride; ++i) {
          const float sum = bf16_to_float(row[i]) + bias[i];
          round_row_to_bf16(&sum, 1, row + i);
        }
      } else {
        float* row = qkv_view.as<float>() + t * stride;
        for (int64_t i = 0; i < stride; ++i) row[i] += bias[i];
      }
    }
  }
  zero_chunk_tail(context, batch.tokens());
  // Each thread's planned scratch (cpu_attention_scratch_floats) holds one head's K of the
  // sequence, and for bf16 and int8 its V, in the kernels' layouts (attention_kernels.h);
  // without the kernels, oneDNN sgemm's score block.
  const int64_t per_thread = scratch_floats_per_thread_;
  // --dtype fp32 keeps attention in float32; bf16 computes it in bf16, int8 its scores in
  // int8 and P V in bf16 (attention_kernels.h says why int8 may).
  const bool low_precision = precision_ == DType::BF16 || precision_ == DType::I8;
  const Kernels preferred = !attention_kernels_supported(head_dim) ? Kernels::kSgemm
                            : precision_ == DType::I8 && int8_attention_kernels_supported(head_dim) ? Kernels::kInt8
                            : low_precision && bf16_attention_kernels_supported(head_dim)          ? Kernels::kBf16
                                                                                                   : Kernels::kFp32;
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
    const int64_t first = begin * stride + head * head_dim;  // of its Q row, in elements
    float* thread_scratch = attention_scratch_ + int64_t(omp_get_thread_num()) * per_thread;
    if (bf16_io) {
      const uint16_t* q = qkv_view.as<const uint16_t>() + first;
      attention_head_bf16(q, q + hidden, q + 2 * hidden, stride, len, head_dim, scale, tile, thread_scratch,
                          context.as<uint16_t>() + begin * hidden + head * head_dim, hidden);
      continue;
    }
    const float* q = qkv_view.as<const float>() + first;
    const float* k = q + hidden;
    const float* v = q + 2 * hidden;
    float* o = context.as<float>() + begin * hidden + head * head_dim;
    // The layouts take head_dim x len rounded up to 16 floats (K in float32, or K and V in
    // bf16): that fits unless len is within 15 of a max_seq_len that is not a multiple of 16.
    const int64_t len16 = (len + 15) / 16 * 16;
    const bool fits = head_dim * len16 <= per_thread;
    const Kernels kernels = fits ? preferred : Kernels::kSgemm;
    switch (kernels) {
      case Kernels::kInt8: {
        // K in bytes with a factor and an offset per key, then V in bf16: (3 head_dim + 8)
        // bytes per key, within the bf16 layouts' 4 head_dim.
        auto* kt4 = reinterpret_cast<int8_t*>(thread_scratch);
        auto* key_factor = reinterpret_cast<float*>(kt4 + head_dim * len16);
        auto* key_offset = reinterpret_cast<int32_t*>(key_factor + len16);
        auto* vt2 = reinterpret_cast<uint16_t*>(key_offset + len16);
        for (int64_t k0 = 0; k0 < len; k0 += kBf16KeyBlock) {
          const int64_t keys = std::min<int64_t>(kBf16KeyBlock, len - k0);
          pack_keys_int8(k + k0 * stride, stride, keys, head_dim, scale, kt4 + k0 * head_dim, key_factor + k0,
                         key_offset + k0);
          pack_values_bf16(v + k0 * stride, stride, keys, head_dim, vt2 + k0 * head_dim);
        }
        alignas(64) uint8_t tile_q[kMaxQueryTile * 64];
        float q_scale[kMaxQueryTile];
        for (int64_t q0 = 0; q0 < len; q0 += tile) {
          const int64_t rows = std::min<int64_t>(tile, len - q0);
          for (int64_t r = 0; r < rows; ++r) {
            quantize_query_int8(q + (q0 + r) * stride, head_dim, tile_q + r * head_dim, q_scale + r);
          }
          attention_tile_int8(tile_q, q_scale, rows, kt4, key_factor, key_offset, vt2, len, kBf16KeyBlock, head_dim,
                              o + q0 * hidden, hidden);
        }
        break;
      }
      case Kernels::kBf16:
        attention_head_bf16(q, k, v, stride, len, head_dim, scale, tile, thread_scratch, o, hidden);
        break;
      case Kernels::kFp32: {
        for (int64_t k0 = 0; k0 < len; k0 += kFp32KeyBlock) {
          const int64_t keys = std::min<int64_t>(kFp32KeyBlock, len - k0);
          transpose_keys(k + k0 * stride, stride, keys, head_dim, thread_scratch + k0 * head_dim, (keys + 15) / 16 * 16);
        }
        for (int64_t q0 = 0; q0 < len; q0 += tile) {
          const int64_t rows = std::min<int64_t>(tile, len - q0);
          attention_tile_f32(q + q0 * stride, stride, rows, thread_scratch, v, stride, len, kFp32KeyBlock, head_dim,
                             scale, o + q0 * hidden, hidden);
        }
        break;
      }
      case Kernels::kSgemm:
        attention_sgemm(q, k, v, stride, len, head_dim, scale, thread_scratch, o, hidden);
        break;
    }
  }
}

// One head of one sequence through oneDNN's sgemm, for head sizes the kernels do not take
// (or a sequence whose kernel layouts would not fit the scratch): 64 x 256 score blocks in
// the thread's scratch, the same online softmax.
void CpuBackend::attention_sgemm(const float* q, const float* k, const float* v, int64_t stride, int64_t len,
                                 int64_t head_dim, float scale, float* scores, float* o, int64_t o_stride) const {
  const int64_t tile = query_tile_;
  const int64_t block = std::min(kKeyBlock, max_seq_len_);
  float running_max[kMaxQueryTile], running_sum[kMaxQueryTile];
  for (int64_t q0 = 0; q0 < len; q0 += tile) {
    const int64_t rows = std::min<int64_t>(tile, len - q0);
    float* ot = o + q0 * o_stride;
    for (int64_t k0 = 0; k0 < len; k0 += block) {
      const int64_t keys = std::min<int64_t>(block, len - k0);
      dnnl_sgemm('N', 'T', rows, keys, head_dim, scale, q + q0 * stride, stride, k + k0 * stride, stride, 0.f, scores,
                 block);
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
            for (int64_t d = 0; d < head_dim; ++d) ot[r * o_stride + d] *= rescale;
          }
        }
      }
      dnnl_sgemm('N', 'N', rows, head_dim, keys, 1.f, scores, block, v + k0 * stride, stride, k0 == 0 ? 0.f : 1.f, ot,
                 o_stride);
    }
    for (int64_t r = 0; r < rows; ++r) {
      const float inverse = 1.0f / running_sum[r];
      for (int64_t d = 0; d < head_dim; ++d) ot[r * o_stride + d] *= inverse;
    }
  }
}

}  // namespace m3
