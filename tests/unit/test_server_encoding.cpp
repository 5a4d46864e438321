// Response encoding of the HTTP API and the metrics text, from hand-made outputs: exact
// JSON shapes, shortest round-trip floats, base64 float32, dimensions re-normalized.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>

#include <simdjson.h>

#include "m3/server/base64.h"
#include "m3/server/dense_dimensions.h"
#include "m3/server/engine_hooks.h"
#include "m3/server/json_writer.h"
#include "m3/server/metrics.h"
#include "m3/server/native_api.h"
#include "m3/server/openai_api.h"
#include "m3/server/request_limiter.h"
#include "m3/server/tei_api.h"

namespace m3::server {
namespace {

M3Output output(std::vector<float> dense) {
  M3Output o;
  o.dense = std::move(dense);
  o.lexical = {{7, 0.25f}, {3000, 0.5f}};
  o.colbert = {1, 0, 0, 1};
  o.colbert_rows = 2;
  o.tokens = 3;
  return o;
}

simdjson::dom::element parse(simdjson::dom::parser& parser, const std::string& json) {
  simdjson::dom::element element;
  EXPECT_EQ(parser.parse(json).get(element), simdjson::SUCCESS) << json;
  return element;
}

TEST(ServerEncoding, JsonStringsAreEscaped) {
  std::string out;
  append_json_string(out, std::string("a\"b\\c\n\t\x01 \xc3\xa9", 11));
  EXPECT_EQ(out, "\"a\\\"b\\\\c\\n\\t\\u0001 \xc3\xa9\"");
}

TEST(ServerEncoding, FloatsAreShortestRoundTrip) {
  std::string out;
  append_json_floats(out, std::vector<float>{0.1f, -2.5f, 1e-7f, 0.f}.data(), 4);
  EXPECT_EQ(out, "[0.1,-2.5,1e-07,0]");
  out.clear();
  append_json_float(out, std::nanf(""));
  EXPECT_EQ(out, "null");
}

TEST(ServerEncoding, OpenAiFloatResponse) {
  OpenAiEmbeddingRequest request;
  const std::string json = openai_embedding_response({output({0.6f, 0.8f}), output({1.f, 0.f})}, request, "m", 9);
  EXPECT_EQ(
      json,
      R"({"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.6,0.8]},)"
      R"({"object":"embedding","index":1,"embedding":[1,0]}],"model":"m","usage":{"prompt_tokens":9,"total_tokens":9}})");
}

TEST(ServerEncoding, OpenAiBase64IsLittleEndianFloat32) {
  OpenAiEmbeddingRequest request;
  request.base64 = true;
  const std::vector<float> dense = {0.6f, -0.8f, 0.f};
  const std::string json = openai_embedding_response({output(dense)}, request, "m", 3);
  simdjson::dom::parser parser;
  const auto root = parse(parser, json);
  std::string_view text;
  ASSERT_EQ(root["data"].at(0)["embedding"].get(text), simdjson::SUCCESS);
  const auto bytes = decode_base64(text);
  ASSERT_TRUE(bytes.has_value());
  ASSERT_EQ(bytes->size(), dense.size() * 4);
  std::vector<float> back(dense.size());
  std::memcpy(back.data(), bytes->data(), bytes->size());
  EXPECT_EQ(back, dense);
}

TEST(ServerEncoding, DimensionsSliceThenRenormalize) {
  const M3Output o = output({0.6f, 0.8f, 0.f, 0.f});
  EXPECT_EQ(dense_with_dimensions(o, 0), o.dense);
  EXPECT_EQ(dense_with_dimensions(o, 4), o.dense);
  const auto one = dense_with_dimensions(o, 1);
  ASSERT_EQ(one.size(), 1u);
  EXPECT_FLOAT_EQ(one[0], 1.f);
  const auto two = dense_with_dimensions(output({0.3f, 0.4f, 0.866f}), 2);
  EXPECT_NEAR(two[0], 0.6f, 1e-6);
  EXPECT_NEAR(two[1], 0.8f, 1e-6);
  const auto zeros = dense_with_dimensions(output({0.f, 0.f, 1.f}), 2);
  EXPECT_EQ(zeros, (std::vector<float>{0.f, 0.f}));  // norm clamped at 1e-12, as the reference
}

TEST(ServerEncoding, TeiShapes) {
  const std::vector<M3Output> outputs = {output({0.6f, 0.8f})};
  EXPECT_EQ(tei_embed_response(outputs, 0), "[[0.6,0.8]]");
  EXPECT_EQ(tei_embed_response(outputs, 1), "[[1]]");
  // normalize=false: the raw CLS state, dense * its norm; dimensions cut it without re-normalizing.
  std::vector<M3Output> raw = outputs;
  raw[0].dense_norm = 5.f;
  EXPECT_EQ(tei_embed_response(raw, 0, false), "[[3,4]]");
  EXPECT_EQ(tei_embed_response(raw, 1, false), "[[3]]");
  EXPECT_EQ(tei_sparse_response(outputs), R"([[{"index":7,"value":0.25},{"index":3000,"value":0.5}]])");
  EXPECT_EQ(tei_all_response(outputs, 2), "[[[1,0],[0,1]]]");
  EXPECT_EQ(tei_tokenize_response({{{0, "<s>", true, std::nullopt}, {5, " hi", false, ByteRange{3, 6}}}}),
            "[[{\"id\":0,\"text\":\"<s>\",\"special\":true,\"start\":null,\"stop\":null},"
            "{\"id\":5,\"text\":\" hi\",\"special\":false,\"start\":3,\"stop\":6}]]");
}

TEST(ServerEncoding, NativeEncodeUsesFlagEmbeddingKeys) {
  NativeEncodeRequest request;
  request.outputs = {true, true, true};
  request.return_tokens = true;
  const std::vector<int32_t> ids = {0, 7, 3000, 2};
  std::vector<EncodedInput> inputs(1);
  inputs[0].ids = &ids;
  inputs[0].pieces = {"<s>", "a", "b", "</s>"};
  const std::string json = native_encode_response({output({0.6f, 0.8f})}, inputs, request, 2, "m", 4);
  EXPECT_EQ(
      json,
      R"({"object":"list","data":[{"index":0,"dense_vecs":[0.6,0.8],"lexical_weights":{"7":0.25,"3000":0.5},)"
      R"("colbert_vecs":[[1,0],[0,1]],"truncated":false,"input_ids":[0,7,3000,2],"tokens":["<s>","a","b","</s>"],)"
      R"("lexical_tokens":{"a":0.25,"b":0.5}}],"model":"m","usage":{"prompt_tokens":4,"total_tokens":4}})");
  request.outputs = {false, true, false};
  request.return_tokens = false;
  EXPECT_EQ(native_encode_response({output({})}, {EncodedInput{}}, request, 2, "m", 4),
            R"({"object":"list","data":[{"index":0,"lexical_weights":{"7":0.25,"3000":0.5},"truncated":false}],)"
            R"("model":"m","usage":{"prompt_tokens":4,"total_tokens":4}})");
}

TEST(ServerEncoding, NativeScore) {
  PairScores s{0.5f, 0.25f, 0.75f, 0.375f, 0.5f};
  EXPECT_EQ(native_score_response({s}, "m", 6),
            R"({"object":"list","data":[{"index":0,"dense":0.5,"sparse":0.25,"colbert":0.75,"sparse+dense":0.375,)"
            R"("colbert+sparse+dense":0.5}],"model":"m","usage":{"prompt_tokens":6,"total_tokens":6}})");
}

TEST(ServerEncoding, PrometheusText) {
  Metrics metrics;
  metrics.record_request("/v1/embeddings", 200, 0.003);
  metrics.record_request("/v1/embeddings", 200, 0.2);
  metrics.record_request("/v1/embeddings", 422, 0.0001);
  metrics.record_batch(100);
  metrics.record_timing(0.002, 0.01);
  metrics.record_inference(3, 42);
  RuntimeGauges gauges;
  gauges.ready = true;
  gauges.model = "m";
  gauges.version = "1";
  SchedulerStats stats;
  stats.queued_tokens = 17;
  gauges.scheduler = stats;
  const std::string text = metrics.render(gauges);
  auto has = [&](const std::string& line) { return text.find(line + "\n") != std::string::npos; };
  EXPECT_TRUE(has(R"(m3_http_requests_total{route="/v1/embeddings",status="200"} 2)")) << text;
  EXPECT_TRUE(has(R"(m3_http_requests_total{route="/v1/embeddings",status="422"} 1)"));
  EXPECT_TRUE(has(R"(m3_http_request_duration_seconds_bucket{route="/v1/embeddings",le="0.005"} 2)"));
  EXPECT_TRUE(has(R"(m3_http_request_duration_seconds_bucket{route="/v1/embeddings",le="+Inf"} 3)"));
  EXPECT_TRUE(has(R"(m3_http_request_duration_seconds_count{route="/v1/embeddings"} 3)"));
  EXPECT_TRUE(has(R"(m3_batch_tokens_bucket{le="64"} 0)"));
  EXPECT_TRUE(has(R"(m3_batch_tokens_bucket{le="128"} 1)"));
  EXPECT_TRUE(has("m3_batch_tokens_sum 100"));
  EXPECT_TRUE(has("m3_request_queue_seconds_count 1"));
  EXPECT_TRUE(has("m3_request_inference_seconds_count 1"));
  EXPECT_TRUE(has("m3_tokens_total 42"));
  EXPECT_TRUE(has("m3_queue_tokens 17"));
  EXPECT_TRUE(has("m3_ready 1"));
  EXPECT_TRUE(has("# TYPE m3_batch_tokens histogram"));
  // Every sample line is "name{labels} value" or "name value".
  size_t start = 0;
  while (start < text.size()) {
    const size_t end = text.find('\n', start);
    ASSERT_NE(end, std::string::npos);
    const std::string line = text.substr(start, end - start);
    start = end + 1;
    if (line.starts_with("# HELP ") || line.starts_with("# TYPE ")) continue;
    EXPECT_TRUE(line.starts_with("m3_")) << line;
    EXPECT_EQ(std::count(line.begin(), line.end(), ' '), 1) << line;
  }
}

TEST(ServerEncoding, BatchSamplerSpreadsTheMean) {
  Metrics metrics;
  BatchSampler sampler;
  SchedulerStats stats;
  stats.batches_formed = 2;
  stats.tokens_batched = 300;
  sampler.sample(stats, metrics);
  sampler.sample(stats, metrics);  // nothing new
  RuntimeGauges gauges;
  const std::string text = metrics.render(gauges);
  EXPECT_NE(text.find("m3_batch_tokens_count 2\n"), std::string::npos);
  EXPECT_NE(text.find("m3_batch_tokens_sum 300\n"), std::string::npos);
}

TEST(ServerEncoding, LimiterAdmitsUpToItsLimit) {
  RequestLimiter limiter(2);
  auto a = limiter.try_acquire();
  auto b = limiter.try_acquire();
  ASSERT_TRUE(a && b);
  EXPECT_FALSE(limiter.try_acquire().has_value());
  EXPECT_EQ(limiter.active(), 2u);
  a.reset();
  EXPECT_EQ(limiter.active(), 1u);
  RequestLimiter::Permit moved = std::move(*b);
  b.reset();
  EXPECT_EQ(limiter.active(), 1u);
  EXPECT_TRUE(limiter.try_acquire().has_value());
}

struct TimedResult {
  double queue_seconds = 0.5;
  double inference_seconds = 0.25;
};
struct UntimedResult {};
struct ObservableScheduler {
  std::function<void(int64_t, size_t)> observer;
  void set_batch_observer(std::function<void(int64_t, size_t)> f) { observer = std::move(f); }
};
struct PlainScheduler {};

TEST(ServerEncoding, EngineHooksAreUsedWhenPresent) {
  const auto timing = request_timing(TimedResult{});
  ASSERT_TRUE(timing.has_value());
  EXPECT_EQ(timing->queue_seconds, 0.5);
  EXPECT_FALSE(request_timing(UntimedResult{}).has_value());
  ObservableScheduler observable;
  int64_t seen = 0;
  EXPECT_TRUE(observe_batches(observable, [&](int64_t tokens, size_t) { seen = tokens; }));
  observable.observer(12, 1);
  EXPECT_EQ(seen, 12);
  PlainScheduler plain;
  EXPECT_FALSE(observe_batches(plain, [](int64_t, size_t) {}));
}

}  // namespace
}  // namespace m3::server
