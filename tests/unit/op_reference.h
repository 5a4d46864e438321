// Double-precision references of the Backend ops (backend/backend.h), written the plain
// way (no tiling, no online softmax, no fused epilogues), for tests/unit/op_parity.h.
// Inputs are float32 as a backend holds them (tests round them to the storage type first,
// with round_to below); outputs are double, row-major [rows, cols].
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <span>
#include <vector>

#include "m3/backend/backend.h"
#include "m3/core/dtype.h"
#include "m3/model/packed_batch.h"

namespace m3::reference {

inline double gelu_erf(double x) { return 0.5 * x * (1.0 + std::erf(x / std::sqrt(2.0))); }

// y = epilogue(x W^T + b) over `rows` rows; x [rows, in], w [out, in], bias [out] or
// empty. kResidual adds the product to `y_before` [rows, out] (the residual stream).
inline std::vector<double> linear(std::span<const float> x, int64_t rows, int64_t in, std::span<const float> w,
                                  int64_t out, std::span<const float> bias, Epilogue epilogue,
                                  std::span<const float> y_before = {}) {
  std::vector<double> y(static_cast<size_t>(rows * out));
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x.data() + r * in;
    for (int64_t c = 0; c < out; ++c) {
      const float* wc = w.data() + c * in;
      double acc = 0;
      for (int64_t k = 0; k < in; ++k) acc += double(xr[k]) * double(wc[k]);
      if (!bias.empty()) acc += bias[c];
      switch (epilogue) {
        case Epilogue::kStore: break;
        case Epilogue::kGelu: acc = gelu_erf(acc); break;
        case Epilogue::kRelu: acc = std::max(acc, 0.0); break;
        case Epilogue::kTanh: acc = std::tanh(acc); break;
        case Epilogue::kResidual: acc += y_before[r * out + c]; break;
      }
      y[r * out + c] = acc;
    }
  }
  return y;
}

// One row's layer norm: mean, then the biased variance of the centred values (two passes).
inline void layer_norm_row(const double* x, int64_t width, std::span<const float> gamma, std::span<const float> beta,
                           double eps, double* y) {
  double mean = 0;
  for (int64_t i = 0; i < width; ++i) mean += x[i];
  mean /= double(width);
  double variance = 0;
  for (int64_t i = 0; i < width; ++i) variance += (x[i] - mean) * (x[i] - mean);
  variance /= double(width);
  const double inv = 1.0 / std::sqrt(variance + eps);
  for (int64_t i = 0; i < width; ++i) y[i] = (x[i] - mean) * inv * gamma[i] + beta[i];
}

inline std::vector<double> layer_norm(std::span<const float> x, int64_t rows, int64_t width,
                                      std::span<const float> gamma, std::span<const float> beta, double eps) {
  std::vector<double> row(static_cast<size_t>(width)), y(static_cast<size_t>(rows * width));
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t i = 0; i < width; ++i) row[i] = x[r * width + i];
    layer_norm_row(row.data(), width, gamma, beta, eps, y.data() + r * width);
  }
  return y;
}

// hidden[t] = LayerNorm(word[ids[t]] + token_type + position[positions[t]]).
inline std::vector<double> embed(const PackedBatch& batch, std::span<const float> word,
                                 std::span<const float> position, std::span<const float> token_type,
                                 std::span<const float> gamma, std::span<const float> beta, double eps,
                                 int64_t width) {
  const int64_t tokens = batch.tokens();
  std::vector<double> row(static_cast<size_t>(width)), y(static_cast<size_t>(tokens * width));
  for (int64_t t = 0; t < tokens; ++t) {
    const float* w = word.data() + int64_t(batch.token_ids[t]) * width;
    const float* p = position.data() + int64_t(batch.positions[t]) * width;
    for (int64_t i = 0; i < width; ++i) row[i] = double(w[i]) + token_type[i] + p[i];
    layer_norm_row(row.data(), width, gamma, beta, eps, y.data() + t * width);
  }
  return y;
}

// Per sequence and head: softmax(Q K^T / sqrt(head_dim)) V with the full score matrix.
// qkv [T, 3 * heads * head_dim] (query | key | value), its bias already added.
inline std::vector<double> attention(const PackedBatch& batch, std::span<const float> qkv, int64_t heads,
                                     int64_t head_dim) {
  const int64_t hidden = heads * head_dim, stride = 3 * hidden;
  const double scale = 1.0 / std::sqrt(double(head_dim));
  std::vector<double> context(static_cast<size_t>(batch.tokens() * hidden));
  for (int32_t s = 0; s < batch.sequences(); ++s) {
    const int64_t begin = batch.seq_begin(s), len = batch.seq_len(s);
    std::vector<double> p(static_cast<size_t>(len));
    for (int64_t h = 0; h < heads; ++h) {
      for (int64_t i = 0; i < len; ++i) {
        const float* q = qkv.data() + (begin + i) * stride + h * head_dim;
        double most = -INFINITY;
        for (int64_t j = 0; j < len; ++j) {
          const float* k = qkv.data() + (begin + j) * stride + hidden + h * head_dim;
          double dot = 0;
          for (int64_t d = 0; d < head_dim; ++d) dot += double(q[d]) * k[d];
          p[j] = dot * scale;
          most = std::max(most, p[j]);
        }
        double sum = 0;
        for (int64_t j = 0; j < len; ++j) sum += (p[j] = std::exp(p[j] - most));
        double* out = context.data() + (begin + i) * hidden + h * head_dim;
        for (int64_t j = 0; j < len; ++j) {
          const float* v = qkv.data() + (begin + j) * stride + 2 * hidden + h * head_dim;
          for (int64_t d = 0; d < head_dim; ++d) out[d] += p[j] / sum * v[d];
        }
      }
    }
  }
  return context;
}

// x / max(||x||, 1e-12), as torch.nn.functional.normalize.
inline void normalize(const float* x, int64_t width, double* y) {
  double squares = 0;
  for (int64_t i = 0; i < width; ++i) squares += double(x[i]) * x[i];
  const double norm = std::max(std::sqrt(squares), 1e-12);
  for (int64_t i = 0; i < width; ++i) y[i] = x[i] / norm;
}

inline std::vector<double> normalize_rows(std::span<const float> x, int64_t rows, int64_t width) {
  std::vector<double> y(static_cast<size_t>(rows * width));
  for (int64_t r = 0; r < rows; ++r) normalize(x.data() + r * width, width, y.data() + r * width);
  return y;
}

// pooled[s] = each sequence's first (CLS) row, or the mean of its rows.
inline std::vector<double> pool(const PackedBatch& batch, std::span<const float> x, int64_t width, bool mean) {
  std::vector<double> pooled(static_cast<size_t>(batch.sequences() * width));
  for (int32_t s = 0; s < batch.sequences(); ++s) {
    const int64_t rows = mean ? batch.seq_len(s) : 1;
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t i = 0; i < width; ++i) pooled[s * width + i] += x[(batch.seq_begin(s) + r) * width + i];
    }
    for (int64_t i = 0; i < width; ++i) pooled[s * width + i] /= double(rows);
  }
  return pooled;
}

// max(||row||, 1e-12) of each row, and the rows divided by it.
inline std::vector<double> row_norms(const std::vector<double>& rows, int64_t width) {
  std::vector<double> norms(rows.size() / width);
  for (size_t r = 0; r < norms.size(); ++r) {
    double sum = 0;
    for (int64_t i = 0; i < width; ++i) sum += rows[r * width + i] * rows[r * width + i];
    norms[r] = std::max(std::sqrt(sum), 1e-12);
  }
  return norms;
}
inline std::vector<double> divided(std::vector<double> rows, const std::vector<double>& norms, int64_t width) {
  for (size_t i = 0; i < rows.size(); ++i) rows[i] /= norms[i / width];
  return rows;
}

// lexical[t] = the largest weight of ids[t] in t's sequence, at the id's first position
// with a positive weight, when the id is not skipped; 0 everywhere else.
inline std::vector<double> max_per_token_id(const PackedBatch& batch, std::span<const float> weights,
                                             std::span<const int32_t> skip) {
  std::vector<double> lexical(static_cast<size_t>(batch.tokens()), 0.0);
  for (int32_t s = 0; s < batch.sequences(); ++s) {
    const int64_t begin = batch.seq_begin(s), end = begin + batch.seq_len(s);
    for (int64_t t = begin; t < end; ++t) {
      const int32_t id = batch.token_ids[t];
      if (!(weights[t] > 0.f) || std::find(skip.begin(), skip.end(), id) != skip.end()) continue;
      bool first = true;
      for (int64_t j = begin; j < t && first; ++j) first = !(batch.token_ids[j] == id && weights[j] > 0.f);
      if (!first) continue;
      double most = weights[t];
      for (int64_t j = t + 1; j < end; ++j) {
        if (batch.token_ids[j] == id) most = std::max(most, double(weights[j]));
      }
      lexical[t] = most;
    }
  }
  return lexical;
}

// --- storage types: what a backend holds when it stores float32 values as `type`

// float32 -> bfloat16, round to nearest even (finite inputs).
inline uint16_t float_to_bf16(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, 4);
  return static_cast<uint16_t>((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
}

// float32 -> IEEE binary16, round to nearest even (finite inputs; overflow gives inf,
// tiny values subnormals), as _cvtss_sh and __float2half_rn do.
inline uint16_t float_to_half(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, 4);
  const auto sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  const uint32_t magnitude = bits & 0x7fffffffu;
  if (magnitude >= 0x47800000u) return sign | 0x7c00u;  // >= 65536 rounds to inf (>= 65520 does below)
  if (magnitude < 0x33000000u) return sign;              // below half the smallest subnormal: 0
  const int exponent = static_cast<int>(magnitude >> 23) - 127;
  uint32_t mantissa = (magnitude & 0x7fffffu) | 0x800000u;  // 24 bits with the implicit one
  // Bits of the 24-bit mantissa that do not fit: 13 for normals, more for subnormals.
  const int shift = exponent >= -14 ? 13 : 13 + (-14 - exponent);
  const uint32_t kept = mantissa >> shift, rest = mantissa & ((1u << shift) - 1), half = 1u << (shift - 1);
  uint32_t rounded = kept + (rest > half || (rest == half && (kept & 1u)) ? 1u : 0u);
  if (exponent >= -14) {
    // Normal: exponent field (exponent + 15); a mantissa carry moves into it (up to inf).
    return sign | static_cast<uint16_t>((uint32_t(exponent + 15) << 10) + (rounded - 0x400u));
  }
  return sign | static_cast<uint16_t>(rounded);  // subnormal (a carry makes the smallest normal)
}

// `values` stored as `type` (F32, F16, BF16): the bytes a device tensor of that type holds.
inline std::vector<unsigned char> encode(DType type, std::span<const float> values) {
  std::vector<unsigned char> bytes(values.size() * dtype_size(type));
  for (size_t i = 0; i < values.size(); ++i) {
    if (type == DType::F32) {
      std::memcpy(bytes.data() + 4 * i, &values[i], 4);
    } else {
      const uint16_t v = type == DType::F16 ? float_to_half(values[i]) : float_to_bf16(values[i]);
      std::memcpy(bytes.data() + 2 * i, &v, 2);
    }
  }
  return bytes;
}

// The values as a backend storing them in `type` holds them (int8 and float32: unchanged,
// int8 quantization being the backend's own, per token and channel).
inline std::vector<float> round_to(DType type, std::span<const float> values) {
  if (type != DType::F16 && type != DType::BF16) return {values.begin(), values.end()};
  std::vector<float> out(values.size());
  const std::vector<unsigned char> bytes = encode(type, values);
  convert_to_f32(type, bytes.data(), out.data(), values.size());
  return out;
}

// A row on the symmetric int8 grid the CPU's int8 attention puts Q and K on
// (quantize_query_int8, pack_keys_int8): s = max |x| / 127 (1 for zeros), x ~= s q with
// q = round-to-nearest-even(x * (1 / s)) within -127..127.
struct Int8Row {
  std::vector<int> q;
  float scale;
};

inline Int8Row int8_row(const float* x, int64_t n) {
  float most = 0.f;
  for (int64_t i = 0; i < n; ++i) most = std::max(most, std::fabs(x[i]));
  Int8Row row{{}, most > 0.f ? most / 127.f : 1.f};
  const float inverse = 1.f / row.scale;
  for (int64_t i = 0; i < n; ++i) row.q.push_back(static_cast<int>(std::clamp(std::nearbyint(x[i] * inverse), -127.f, 127.f)));
  return row;
}

// The row replaced by s q.
inline void to_int8_grid(float* row, int64_t n) {
  const Int8Row grid = int8_row(row, n);
  for (int64_t i = 0; i < n; ++i) row[i] = grid.scale * static_cast<float>(grid.q[i]);
}

// Packed Q, K, V rows (3 hidden floats per token) as --dtype int8's attention reads them on
// a CPU with the int8 kernels: each head's Q and K on its int8 grid, V in bf16.
inline void to_int8_attention_operands(std::vector<float>& qkv, int64_t heads, int64_t head_dim) {
  const int64_t hidden = heads * head_dim;
  const int64_t tokens = static_cast<int64_t>(qkv.size()) / (3 * hidden);
  for (int64_t t = 0; t < tokens; ++t) {
    float* row = qkv.data() + t * 3 * hidden;
    for (int64_t h = 0; h < 2 * heads; ++h) to_int8_grid(row + h * head_dim, head_dim);
    const std::vector<float> v = round_to(DType::BF16, std::span<const float>(row + 2 * hidden, hidden));
    std::copy(v.begin(), v.end(), row + 2 * hidden);
  }
}

}  // namespace m3::reference
