#include "m3/backend/cpu/packed_linear_weights.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>

#include "m3/core/error.h"

namespace m3 {
namespace {

using dnnl::memory;
using dt = memory::data_type;
using tag = memory::format_tag;

dt weight_type(DType p) { return p == DType::I8 ? dt::s8 : dt::bf16; }
dt source_type(DType p) { return p == DType::I8 ? dt::u8 : dt::bf16; }  // quantize_rows_to_uint8

std::shared_ptr<void> aligned_bytes(size_t n) {
  void* p = std::aligned_alloc(64, (n + 63) / 64 * 64);
  if (p == nullptr) fail("out of memory packing {} bytes of weights", n);
  return {p, std::free};
}

}  // namespace

memory::desc packed_weights_desc(const dnnl::engine& engine, DType precision, int64_t out, int64_t in) {
  // oneDNN's brgemm kernels choose the same blocked layout for every row count (checked
  // from 1 to 8192 rows), so one chunk size stands for all of them.
  const memory::desc src({1024, in}, source_type(precision), tag::ab);
  const memory::desc wei({in, out}, weight_type(precision), tag::any);
  const memory::desc dst({1024, out}, dt::f32, tag::ab);
  return dnnl::matmul::primitive_desc(dnnl::matmul::desc(src, wei, dst), engine).weights_desc();
}

std::shared_ptr<const CpuPackedWeights> pack_linear_weights(const std::vector<float>& weight, int64_t out, int64_t in,
                                                            DType precision) {
  if (precision != DType::BF16 && precision != DType::I8) fail("internal: no packed {} weights", precision_name(precision));
  if (weight.size() != static_cast<size_t>(out * in)) fail("internal: a [{}, {}] linear has {} weights", out, in, weight.size());
  struct Shape {
    int64_t out, in;
    const std::vector<float>& weight;
  } w{out, in, weight};
  const dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  dnnl::stream stream(engine);
  auto packed = std::make_shared<CpuPackedWeights>();
  packed->precision = precision;
  packed->desc = packed_weights_desc(engine, precision, w.out, w.in);
  packed->data = aligned_bytes(packed->desc.get_size());
  memory dst(packed->desc, engine, packed->data.get());

  if (precision == DType::BF16) {
    // PyTorch's [out, in] is W^T [in, out] in format ba; the reorder rounds to nearest even.
    memory src({{w.in, w.out}, dt::f32, tag::ba}, engine, const_cast<float*>(w.weight.data()));
    dnnl::reorder(src, dst).execute(stream, src, dst);
  } else {
    // Symmetric per output channel: q = round(W / scale), scale = max|W[c, :]| / 127.
    std::vector<int8_t> q(w.weight.size());
    packed->channel_scales.resize(static_cast<size_t>(w.out));
    packed->channel_sums.resize(static_cast<size_t>(w.out));
    for (int64_t c = 0; c < w.out; ++c) {
      const float* row = w.weight.data() + c * w.in;
      float most = 0.f;
      for (int64_t k = 0; k < w.in; ++k) most = std::max(most, std::fabs(row[k]));
      const float scale = most > 0.f ? most / 127.f : 1.f;
      int64_t sum = 0;  // exact: at most 127 * in
      for (int64_t k = 0; k < w.in; ++k) {
        q[c * w.in + k] = static_cast<int8_t>(std::clamp(std::nearbyint(row[k] / scale), -127.f, 127.f));
        sum += q[c * w.in + k];
      }
      packed->channel_scales[c] = scale;
      packed->channel_sums[c] = scale * static_cast<float>(sum);
    }
    memory src({{w.in, w.out}, dt::s8, tag::ba}, engine, q.data());
    dnnl::reorder(src, dst).execute(stream, src, dst);
  }
  stream.wait();
  return packed;
}

bool cpu_supports(DType precision) {
  using isa = dnnl::cpu_isa;
  // oneDNN's ISA values are bit sets: an ISA includes every ISA whose bits it has.
  const int have = static_cast<int>(dnnl::get_effective_cpu_isa());
  auto at_least = [&](isa need) { return (have & static_cast<int>(need)) == static_cast<int>(need); };
  switch (precision) {
    case DType::F32: return true;
    case DType::BF16: return at_least(isa::avx512_core_bf16) || at_least(isa::avx512_core_amx);
    case DType::I8:
      return at_least(isa::avx512_core_vnni) || at_least(isa::avx2_vnni) || at_least(isa::avx512_core_amx);
    case DType::F16: case DType::I32: return false;  // F16: CUDA only
  }
  return false;
}

}  // namespace m3
