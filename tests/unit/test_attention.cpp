// CpuBackend::attention against a direct double-precision softmax(Q K^T / sqrt(d)) V,
// on packed batches whose sequences span several key blocks (the online softmax and
// output rescaling), for the AVX-512 kernels (head_dim 16 and 64, BGE-M3's) and for
// the oneDNN sgemm path (head_dim 24, which the kernels do not take); the bf16 kernels
// (--dtype bf16) and the int8-score kernels (--dtype int8), on AMX where the CPU has it;
// the AMX tiles against the AVX-512 ones; and the packing of Q, K and V into the kernels'
// layouts against plain loops.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>

#include "m3/backend/cpu/attention_amx.h"
#include "m3/backend/cpu/attention_kernels.h"
#include "m3/backend/cpu/cpu_backend.h"
#include "m3/backend/cpu/gemm_inputs.h"
#include "op_reference.h"

namespace m3 {
namespace {

struct Shape {
  int64_t heads, head_dim;
  DType precision = DType::F32;
  // max_len a multiple of 16, so the kernels' K layout fits the scratch (as for BGE-M3); or
  // below one key block and no multiple of 16 (--max-seq-len 198), with a sequence that long.
  int64_t max_len = 704;
  std::vector<int32_t> lengths = {1, 17, 300, 2, 700, 513};
};

void PrintTo(const Shape& s, std::ostream* os) {
  *os << s.heads << " heads of " << s.head_dim << ", " << precision_name(s.precision) << ", max " << s.max_len;
}

void round_to_bf16(std::vector<float>& x) {
  std::vector<uint16_t> b(x.size());
  round_rows_to_bf16(x.data(), 1, static_cast<int64_t>(x.size()), b.data());
  for (size_t i = 0; i < x.size(); ++i) {
    const uint32_t bits = uint32_t(b[i]) << 16;
    std::memcpy(&x[i], &bits, 4);
  }
}

double worst_error(const PackedBatch& batch, const std::vector<float>& reference_qkv, const std::vector<float>& out,
                   int64_t heads, int64_t head_dim);

class AttentionTest : public ::testing::TestWithParam<Shape> {};

TEST_P(AttentionTest, MatchesTheDirectSoftmax) {
  const auto [heads, head_dim, precision, max_len, lengths] = GetParam();
  const bool int8 = precision == DType::I8;
  const bool bf16 = precision == DType::BF16;
  if (bf16 && !bf16_attention_kernels_supported(head_dim)) GTEST_SKIP() << "no AVX512-BF16 on this CPU";
  if (int8 && !int8_attention_kernels_supported(head_dim)) GTEST_SKIP() << "no AVX512-VNNI and BF16 on this CPU";
  const int64_t hidden = heads * head_dim;
  PackedBatch batch;
  for (int32_t len : lengths) batch.add(std::vector<int32_t>(len, 5), 1);
  const int64_t t = batch.tokens();

  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.f, 1.f);
  std::vector<float> qkv(t * 3 * hidden);
  for (float& x : qkv) x = 2.f * normal(rng);  // peaked enough that the running max moves
  // The backend's attention scratch comes from a plan for these shapes (its arena).
  PlanInputs in;
  in.config.vocab_size = 8;
  in.config.hidden_size = hidden;
  in.config.num_layers = 1;
  in.config.num_heads = heads;
  in.config.intermediate_size = 4;
  in.config.max_position_embeddings = max_len + 2;
  in.max_seq_len = max_len;
  in.max_batch_tokens = t;
  in.threads = 2;
  in.precision = precision;
  const MemoryPlan plan = plan_memory(in);
  // --dtype bf16 plans bf16 activations: Q, K and V arrive in bf16 and the output leaves in
  // bf16, as the graph hands them over; the other precisions keep float32.
  const bool bf16_io = plan.activation == DType::BF16;
  EXPECT_EQ(bf16_io, bf16);
  CpuBackend backend(plan, 2);
  backend.attach_thread();
  std::vector<float> out(t * hidden, std::nanf(""));
  std::vector<uint16_t> qkv16(bf16_io ? qkv.size() : 0), out16(bf16_io ? out.size() : 0, 0x7fc0);  // NaN
  if (bf16_io) round_rows_to_bf16(qkv.data(), 1, static_cast<int64_t>(qkv.size()), qkv16.data());
  auto view = [&](void* data, int64_t rows, int64_t cols) {
    TensorView v;
    v.data = data;
    v.dtype = bf16_io ? DType::BF16 : DType::F32;
    v.rows = rows;
    v.cols = cols;
    return v;
  };
  backend.attention(backend.stage(batch, 0), view(bf16_io ? (void*)qkv16.data() : qkv.data(), t, 3 * hidden), {},
                    heads, head_dim, view(bf16_io ? (void*)out16.data() : out.data(), t, hidden));
  if (bf16_io) convert_to_f32(DType::BF16, out16.data(), out.data(), out.size());

  // The bf16 kernels take Q, K and V in bfloat16; the int8 ones put each head's Q and K on
  // its int8 grid and round V to bfloat16: so does the reference. Both also round the
  // softmax numerators (and bf16 its output), which the reference does not: hence the
  // looser bound.
  std::vector<float> reference_qkv = qkv;
  if (bf16) round_to_bf16(reference_qkv);
  if (int8) reference::to_int8_attention_operands(reference_qkv, heads, head_dim);
  const double worst = worst_error(batch, reference_qkv, out, heads, head_dim);
  EXPECT_LT(worst, bf16 || int8 ? 2e-2 : 2e-5) << "heads " << heads << ", head_dim " << head_dim;
  if (bf16 || int8) EXPECT_GT(worst, 1e-5) << "the low-precision kernels did not run";
  if (int8) {
    // Q and K in bf16 instead of int8 (the grid's step is ~8x bf16's) must fit worse.
    std::vector<float> bf16_qkv = qkv;
    round_to_bf16(bf16_qkv);
    EXPECT_GT(worst_error(batch, bf16_qkv, out, heads, head_dim), 2 * worst) << "the int8 scores did not run";
  }
}

// max |out - softmax(scale q k^T) v| over every output, from the reference's Q, K and V.
double worst_error(const PackedBatch& batch, const std::vector<float>& reference_qkv, const std::vector<float>& out,
                   int64_t heads, int64_t head_dim) {
  const int64_t hidden = heads * head_dim;
  const float* ref = reference_qkv.data();
  double worst = 0;
  const double scale = 1.0 / std::sqrt(double(head_dim));
  for (int32_t s = 0; s < batch.sequences(); ++s) {
    const int64_t b = batch.seq_begin(s), len = batch.seq_len(s);
    for (int64_t h = 0; h < heads; ++h) {
      for (int64_t i = 0; i < len; ++i) {
        std::vector<double> p(len);
        double most = -1e300, sum = 0;
        for (int64_t j = 0; j < len; ++j) {
          double dot = 0;
          for (int64_t d = 0; d < head_dim; ++d) {
            dot += double(ref[(b + i) * 3 * hidden + h * head_dim + d]) *
                   ref[(b + j) * 3 * hidden + hidden + h * head_dim + d];
          }
          p[j] = dot * scale;
          most = std::max(most, p[j]);
        }
        for (double& x : p) sum += x = std::exp(x - most);
        for (int64_t d = 0; d < head_dim; ++d) {
          double want = 0;
          for (int64_t j = 0; j < len; ++j) want += p[j] / sum * ref[(b + j) * 3 * hidden + 2 * hidden + h * head_dim + d];
          worst = std::max(worst, std::fabs(out[(b + i) * hidden + h * head_dim + d] - want));
        }
      }
    }
  }
  return worst;
}

INSTANTIATE_TEST_SUITE_P(HeadShapes, AttentionTest,
                         ::testing::Values(Shape{2, 64}, Shape{3, 16}, Shape{2, 24}, Shape{2, 64, DType::BF16},
                                           Shape{3, 16, DType::BF16}, Shape{2, 32, DType::BF16},
                                           Shape{3, 32, DType::F32, 198, {198, 100, 7, 197}},
                                           Shape{3, 32, DType::BF16, 198, {198, 100, 7, 197}},
                                           Shape{2, 16, DType::F32, 100, {100, 99, 1}}, Shape{2, 64, DType::I8},
                                           Shape{3, 48, DType::I8}, Shape{3, 48, DType::BF16},
                                           Shape{3, 32, DType::I8, 198, {198, 100, 7, 197}}),
                         [](const auto& info) {
                           return "d" + std::to_string(info.param.head_dim) + "_" +
                                  std::string(precision_name(info.param.precision)) + "_max" +
                                  std::to_string(info.param.max_len);
                         });

TEST(AttentionKernels, TakeTheHeadDimsTheyAreWrittenFor) {
  if (!__builtin_cpu_supports("avx512f")) GTEST_SKIP() << "no AVX-512 on this CPU: the sgemm path runs instead";
  for (int64_t d : {16, 32, 48, 64}) EXPECT_TRUE(attention_kernels_supported(d)) << d;
  for (int64_t d : {8, 24, 80, 128}) EXPECT_FALSE(attention_kernels_supported(d)) << d;
}

// The packing into the kernels' layouts (attention_kernels.h), for whole and partial
// 16-key groups and every head size, against plain loops over the layouts' definitions,
// from float32 rows and from bf16 ones.
uint16_t bf16_bits(float x) {
  std::vector<float> one{x};
  uint16_t b;
  round_rows_to_bf16(one.data(), 1, 1, &b);
  return b;
}

TEST(AttentionKernels, PackKeysAndValuesIntoTheirLayouts) {
  if (!bf16_attention_kernels_supported(64)) GTEST_SKIP() << "no AVX512-BF16 on this CPU";
  std::mt19937 rng(3);
  std::normal_distribution<float> normal(0.f, 1.f);
  const int64_t stride = 200;
  for (int64_t head_dim : {16, 32, 48, 64}) {
    for (int64_t keys : {1, 2, 15, 16, 17, 33, 128}) {
      std::vector<float> k(keys * stride);
      for (float& x : k) x = normal(rng);
      const int64_t keys16 = (keys + 15) / 16 * 16;
      std::vector<float> kt(head_dim * keys16, -1.f);
      transpose_keys(k.data(), stride, keys, head_dim, kt.data(), keys16);
      std::vector<uint16_t> kt2(head_dim * keys16, 0xffff), vt2(head_dim * keys16, 0xffff);
      pack_keys_bf16(k.data(), stride, keys, head_dim, kt2.data());
      pack_values_bf16(k.data(), stride, keys, head_dim, vt2.data());
      for (int64_t d = 0; d < head_dim; ++d) {
        for (int64_t j = 0; j < keys16; ++j) {
          const float x = j < keys ? k[j * stride + d] : 0.f;
          ASSERT_EQ(kt[d * keys16 + j], x) << "K float32, head_dim " << head_dim << ", keys " << keys;
          ASSERT_EQ(kt2[((d / 2) * keys16 + j) * 2 + d % 2], bf16_bits(x)) << "K bf16, " << head_dim << ", " << keys;
        }
        for (int64_t j = 0; j < (keys + 1) / 2 * 2; ++j) {
          const float x = j < keys ? k[j * stride + d] : 0.f;
          ASSERT_EQ(vt2[((j / 2) * head_dim + d) * 2 + j % 2], bf16_bits(x)) << "V bf16, " << head_dim << ", " << keys;
        }
      }
      // From bf16 rows (--dtype bf16 stores QKV so): the same bits, and nothing else written.
      std::vector<uint16_t> k16(k.size());
      round_rows_to_bf16(k.data(), 1, static_cast<int64_t>(k.size()), k16.data());
      std::vector<uint16_t> kt2_from16(kt2.size(), 0xffff), vt2_from16(vt2.size(), 0xffff);
      pack_keys_bf16(k16.data(), stride, keys, head_dim, kt2_from16.data());
      pack_values_bf16(k16.data(), stride, keys, head_dim, vt2_from16.data());
      ASSERT_EQ(kt2_from16, kt2) << "K from bf16, head_dim " << head_dim << ", keys " << keys;
      ASSERT_EQ(vt2_from16, vt2) << "V from bf16, head_dim " << head_dim << ", keys " << keys;
    }
  }
}

TEST(AttentionKernels, RoundRowToBf16RoundsToNearestEven) {
  // Halfway cases both ways (ties to even), values just either side of them, signs, tiny
  // and huge magnitudes, and lengths with and without a tail past the last 16.
  std::vector<uint32_t> patterns = {0x3f808000u, 0x3f818000u, 0x3f808001u, 0x3f807fffu, 0xbf808000u, 0xbf818000u,
                                    0x00008000u, 0x00018000u, 0x7f7f8000u, 0x7f7effffu, 0x00000000u, 0x80000000u};
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> uniform(-40.f, 40.f);
  for (int i = 0; i < 200; ++i) {
    const float f = uniform(rng) * std::ldexp(1.f, static_cast<int>(rng() % 60) - 30);
    uint32_t bits;
    std::memcpy(&bits, &f, 4);
    patterns.push_back(bits);
  }
  for (size_t n : {size_t{1}, size_t{15}, size_t{16}, size_t{17}, size_t{64}, patterns.size()}) {
    std::vector<float> x(n);
    std::memcpy(x.data(), patterns.data(), n * 4);
    std::vector<uint16_t> y(n + 1, 0xabcd);
    round_row_to_bf16(x.data(), static_cast<int64_t>(n), y.data());
    for (size_t i = 0; i < n; ++i) {
      const uint32_t b = patterns[i];
      const uint32_t lower = b >> 16, rest = b & 0xffffu;
      const uint32_t want = rest > 0x8000u || (rest == 0x8000u && (lower & 1u)) ? lower + 1 : lower;
      ASSERT_EQ(y[i], want) << "n " << n << ", input bits " << std::hex << b;
    }
    EXPECT_EQ(y[n], 0xabcd) << "wrote past the row of " << n;
  }
}

// The int8 layouts: each byte, scale, factor and offset against the definitions in
// attention_kernels.h computed by plain loops (reference::int8_row); rows of zeros, and
// halves that round to even.
using reference::Int8Row;
using reference::int8_row;

TEST(AttentionKernels, PackQueriesAndKeysIntoTheInt8Layouts) {
  if (!int8_attention_kernels_supported(64)) GTEST_SKIP() << "no AVX512-VNNI and BF16 on this CPU";
  std::mt19937 rng(5);
  std::normal_distribution<float> normal(0.f, 1.f);
  const int64_t stride = 200;
  const float softmax_scale = 0.125f;
  for (int64_t head_dim : {16, 32, 48, 64}) {
    for (int64_t keys : {1, 2, 15, 16, 17, 33, 128}) {
      std::vector<float> k(keys * stride);
      for (float& x : k) x = 3.f * normal(rng);
      std::fill_n(k.begin(), head_dim, 0.f);  // key 0: zeros
      if (keys > 1) {                         // key 1: max 127, so scale 1 and halves that tie
        float* row = k.data() + stride;
        for (int64_t d = 0; d < head_dim; ++d) row[d] = d % 2 ? 3.5f - float(d % 8) : -0.5f - float(d % 5);
        row[0] = 127.f;
      }
      const int64_t keys16 = (keys + 15) / 16 * 16;
      std::vector<int8_t> kt4(head_dim * keys16, 99);
      std::vector<float> factor(keys16, -1.f);
      std::vector<int32_t> offset(keys16, 99);
      pack_keys_int8(k.data(), stride, keys, head_dim, softmax_scale, kt4.data(), factor.data(), offset.data());
      for (int64_t j = 0; j < keys16; ++j) {
        const Int8Row want = j < keys ? int8_row(k.data() + j * stride, head_dim) : Int8Row{std::vector<int>(head_dim, 0), 0.f};
        int sum = 0;
        for (int64_t d = 0; d < head_dim; ++d) {
          ASSERT_EQ(kt4[((d / 4) * keys16 + j) * 4 + d % 4], want.q[d]) << "K, head_dim " << head_dim << ", key " << j;
          sum += want.q[d];
        }
        EXPECT_EQ(factor[j], want.scale * softmax_scale) << "head_dim " << head_dim << ", key " << j;
        EXPECT_EQ(offset[j], -128 * sum) << "head_dim " << head_dim << ", key " << j;
      }
      if (keys > 1) ASSERT_EQ(kt4[(0 * keys16 + 1) * 4 + 1], 2) << "2.5 rounds to even";
      // Each key row as a query: q + 128, and its scale.
      for (int64_t j = 0; j < keys; ++j) {
        std::vector<uint8_t> q(64, 7);
        float scale = -1.f;
        quantize_query_int8(k.data() + j * stride, head_dim, q.data(), &scale);
        const Int8Row want = int8_row(k.data() + j * stride, head_dim);
        EXPECT_EQ(scale, want.scale);
        for (int64_t d = 0; d < head_dim; ++d) ASSERT_EQ(int(q[d]), want.q[d] + 128) << "Q, " << head_dim << ", " << j;
        for (int64_t d = head_dim; d < 64; ++d) ASSERT_EQ(q[d], 7) << "wrote past the row";
      }
    }
  }
}


// The AMX tiles (attention_amx.h) against the AVX-512 ones on the same operands: query tiles
// of whole and partial 16-row groups, sequences ending inside a 16- and a 32-key step, in
// bf16 (float32 and bf16 outputs) and with int8 scores. Only the order of the float32 sums
// differs, and where that moves an exp across a bf16 rounding boundary, one P element by
// one bf16 step: ~1e-5 seen in float32 outputs, one bf16 step (~8e-3) in bf16 ones; the
// kernels' own error against float32 is up to 2e-2.
TEST(AttentionKernels, AmxTilesMatchTheAvx512Tiles) {
  if (!amx_attention_supported(64)) GTEST_SKIP() << "no AMX on this CPU (or no permission for its tile state): the AVX-512 tiles run";
  ASSERT_TRUE(amx_attention_allowed());
  const int64_t head_dim = 64, block = 128, stride = 3 * head_dim;
  const float scale = 0.125f;
  std::mt19937 rng(11);
  std::normal_distribution<float> normal(0.f, 1.f);
  for (int64_t len : {1, 17, 40, 128, 300, 690}) {
    std::vector<float> qkv(len * stride);
    for (float& x : qkv) x = 2.f * normal(rng);
    const int64_t len16 = (len + 15) / 16 * 16;
    std::vector<uint16_t> kt2(head_dim * len16), vt2(head_dim * len16);
    std::vector<int8_t> kt4(head_dim * len16);
    std::vector<float> key_factor(len16);
    std::vector<int32_t> key_offset(len16);
    for (int64_t k0 = 0; k0 < len; k0 += block) {
      const int64_t keys = std::min(block, len - k0);
      const float* k = qkv.data() + k0 * stride + head_dim;
      pack_keys_bf16(k, stride, keys, head_dim, kt2.data() + k0 * head_dim);
      pack_values_bf16(k + head_dim, stride, keys, head_dim, vt2.data() + k0 * head_dim);
      pack_keys_int8(k, stride, keys, head_dim, scale, kt4.data() + k0 * head_dim, key_factor.data() + k0,
                     key_offset.data() + k0);
    }
    for (int64_t rows : {1, 5, 16, 17, 40, 64}) {
      if (rows > len) continue;
      std::vector<uint16_t> q16(rows * head_dim);
      std::vector<uint8_t> q8(rows * head_dim);
      std::vector<float> q_scale(rows);
      for (int64_t r = 0; r < rows; ++r) {
        round_row_to_bf16(qkv.data() + r * stride, head_dim, q16.data() + r * head_dim);
        quantize_query_int8(qkv.data() + r * stride, head_dim, q8.data() + r * head_dim, q_scale.data() + r);
      }
      const int64_t o_stride = 80;  // rows further apart than head_dim: nothing else written
      auto run = [&](bool amx, int kind) {
        allow_amx_attention(amx);
        std::vector<float> o(rows * o_stride, -7.f);
        if (kind == 0) {
          attention_tile_bf16(q16.data(), rows, kt2.data(), vt2.data(), len, block, head_dim, scale, o.data(), o_stride);
        } else if (kind == 1) {
          std::vector<uint16_t> o16(rows * o_stride, bf16_bits(-7.f));
          attention_tile_bf16(q16.data(), rows, kt2.data(), vt2.data(), len, block, head_dim, scale, o16.data(), o_stride);
          convert_to_f32(DType::BF16, o16.data(), o.data(), o.size());
        } else {
          attention_tile_int8(q8.data(), q_scale.data(), rows, kt4.data(), key_factor.data(), key_offset.data(),
                              vt2.data(), len, block, head_dim, o.data(), o_stride);
        }
        allow_amx_attention(true);
        return o;
      };
      for (int kind : {0, 1, 2}) {
        const std::vector<float> avx512 = run(false, kind), amx = run(true, kind);
        double worst = 0;
        for (int64_t r = 0; r < rows; ++r) {
          for (int64_t d = 0; d < o_stride; ++d) {
            const float a = avx512[r * o_stride + d], b = amx[r * o_stride + d];
            if (d >= head_dim) {
              ASSERT_EQ(b, -7.f) << "wrote past the row: len " << len << ", rows " << rows << ", kind " << kind;
            } else {
              ASSERT_TRUE(std::isfinite(b)) << "len " << len << ", rows " << rows << ", kind " << kind;
              worst = std::max(worst, double(std::fabs(a - b)));
            }
          }
        }
        EXPECT_LT(worst, kind == 1 ? 2e-2 : 1e-4) << "len " << len << ", rows " << rows << ", kind " << kind;
      }
    }
  }
}

}  // namespace
}  // namespace m3
