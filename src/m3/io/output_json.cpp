#include "m3/io/output_json.h"

#include <cmath>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "m3/core/error.h"

namespace m3 {
namespace {

void append_float(std::string& out, float v) {
  if (!std::isfinite(v)) fail("non-finite value in the model output");
  fmt::format_to(std::back_inserter(out), "{}", v);
}

void append_vector(std::string& out, const float* v, int64_t n) {
  out += '[';
  for (int64_t i = 0; i < n; ++i) {
    if (i) out += ',';
    append_float(out, v[i]);
  }
  out += ']';
}

constexpr size_t kFlushBytes = 256 << 10;

}  // namespace

std::string m3_output_json(const M3Output& o, const OutputRequest& request, int64_t hidden) {
  std::string out;
  write_m3_output_json(view_of(o), request, hidden, out, {});
  return out;
}

void write_m3_output_json(const ResultView& o, const OutputRequest& request, int64_t hidden, std::string& out,
                          const std::function<void(std::string&)>& flush) {
  auto maybe_flush = [&] {
    if (flush && out.size() >= kFlushBytes) flush(out);
  };
  out += '{';
  const char* sep = "";
  if (request.dense) {
    out += "\"dense_vecs\":";
    append_vector(out, o.dense, o.dense_size);
    sep = ",";
  }
  if (request.sparse) {
    out += sep;
    out += "\"lexical_weights\":{";
    for (int64_t i = 0; i < o.lexical_size; ++i) {
      fmt::format_to(std::back_inserter(out), "{}\"{}\":", i ? "," : "", o.lexical[i].first);
      append_float(out, o.lexical[i].second);
    }
    out += '}';
    sep = ",";
  }
  if (request.colbert) {
    out += sep;
    out += "\"colbert_vecs\":[";
    for (int64_t r = 0; r < o.colbert_rows; ++r) {
      if (r) out += ',';
      append_vector(out, o.colbert + r * hidden, hidden);
      maybe_flush();
    }
    out += ']';
  }
  out += '}';
}

void append_score_fields(std::string& out, const PairScores& s) {
  out += "\"dense\":";
  append_float(out, s.dense);
  out += ",\"sparse\":";
  append_float(out, s.sparse);
  out += ",\"colbert\":";
  append_float(out, s.colbert);
  out += ",\"sparse+dense\":";
  append_float(out, s.sparse_dense);
  out += ",\"colbert+sparse+dense\":";
  append_float(out, s.colbert_sparse_dense);
}

std::string scores_json(const PairScores& s) {
  std::string out = "{";
  append_score_fields(out, s);
  out += '}';
  return out;
}

std::string tokens_json(const std::vector<int32_t>& ids, const std::vector<std::string>& pieces,
                        const std::vector<std::pair<uint32_t, uint32_t>>& offsets) {
  std::string out = fmt::format("{{\"input_ids\":[{}]", fmt::join(ids, ","));
  if (!pieces.empty()) out += ",\"tokens\":" + nlohmann::json(pieces).dump();
  if (!offsets.empty()) out += ",\"offsets\":" + nlohmann::json(offsets).dump();
  out += '}';
  return out;
}

}  // namespace m3
