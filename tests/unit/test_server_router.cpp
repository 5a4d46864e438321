// The router and the routes on the tiny fixture model, without a socket: admission,
// authentication, readiness, length limits and truncation, and jobs whose responses
// equal the engine's own outputs.
#include <gtest/gtest.h>

#include <simdjson.h>

#include "m3/model/scoring.h"
#include "m3/server/router.h"
#include "m3/server/tokenize_inputs.h"
#include "test_support.h"

namespace m3::server {
namespace {

class ServerRouterTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    EmbedderOptions options;
    options.threads = 1;
    options.max_seq_len = 16;
    options.max_batch_tokens = 256;
    options.max_queue_tokens = 512;
    embedder_ = Embedder::load(test::fixtures() / "tiny-st", options).release();
  }
  static void TearDownTestSuite() {
    delete embedder_;
    embedder_ = nullptr;
  }

  static ServerOptions options(const std::string& api_key = "") {
    ServerOptions o;
    o.api_key = api_key;
    o.max_concurrent_requests = 2;
    o.max_client_batch_size = 8;
    return o;
  }

  static HttpRequest post(const std::string& path, const std::string& body) { return {"POST", path, body, ""}; }

  // Runs the decision's job on the engine, as a session would.
  static HttpResponse complete(RouteDecision& decision) {
    if (!decision.result.job) return decision.result.response;
    InferenceJob& job = *decision.result.job;
    auto outputs = embedder_->scheduler().run(job.sequences, job.outputs);
    return job.respond(std::move(outputs));
  }

  static Embedder* embedder_;
};
Embedder* ServerRouterTest::embedder_ = nullptr;

TEST_F(ServerRouterTest, UnknownRoutesAndMethods) {
  ServerContext context(options(), "tiny");
  context.set_ready({{"tiny", embedder_}});
  Router router(context);
  auto missing = router.route({"GET", "/nope", "", ""});
  EXPECT_EQ(missing.result.response.status, 404);
  EXPECT_EQ(missing.label, "unmatched");
  auto wrong = router.route({"GET", "/v1/embeddings", "", ""});
  EXPECT_EQ(wrong.result.response.status, 405);
  EXPECT_EQ(wrong.label, "/v1/embeddings");
  ASSERT_EQ(wrong.result.response.headers.size(), 1u);
  EXPECT_EQ(wrong.result.response.headers[0].second, "POST");
  EXPECT_NE(wrong.result.response.body.find("\"error\":{"), std::string::npos);  // OpenAI shape
  auto tei = router.route({"DELETE", "/embed", "", ""});
  EXPECT_EQ(tei.result.response.status, 405);
  EXPECT_NE(tei.result.response.body.find("\"error_type\""), std::string::npos);  // TEI shape
}

TEST_F(ServerRouterTest, ApiKey) {
  ServerContext context(options("s3cret"), "tiny");
  context.set_ready({{"tiny", embedder_}});
  Router router(context);
  EXPECT_EQ(router.route(post("/embed", R"({"inputs":"a"})")).result.response.status, 401);
  EXPECT_EQ(router.route({"GET", "/nope", "", ""}).result.response.status, 401);
  EXPECT_EQ(router.route({"GET", "/metrics", "", "Bearer wrong"}).result.response.status, 401);
  EXPECT_EQ(router.route({"GET", "/health", "", ""}).result.response.status, 200);  // probes need no key
  EXPECT_EQ(router.route({"GET", "/metrics", "", "Bearer s3cret"}).result.response.status, 200);
  auto ok = router.route({"POST", "/embed", R"({"inputs":"a"})", "Bearer s3cret"});
  EXPECT_TRUE(ok.result.job.has_value());
}

TEST_F(ServerRouterTest, ReadinessAndDraining) {
  ServerContext context(options(), "tiny");
  Router router(context);
  EXPECT_EQ(router.route({"GET", "/health", "", ""}).result.response.status, 503);
  EXPECT_EQ(router.route({"GET", "/info", "", ""}).result.response.status, 503);
  EXPECT_EQ(router.route({"GET", "/metrics", "", ""}).result.response.status, 200);
  EXPECT_EQ(router.route(post("/v1/embeddings", R"({"input":"a"})")).result.response.status, 503);
  context.set_ready({{"tiny", embedder_}});
  EXPECT_EQ(router.route({"GET", "/health", "", ""}).result.response.status, 200);
  EXPECT_EQ(router.route({"GET", "/info", "", ""}).result.response.status, 200);
  context.state = ServerState::kDraining;
  EXPECT_EQ(router.route({"GET", "/health", "", ""}).result.response.status, 503);
  auto refused = router.route(post("/v1/embeddings", R"({"input":"a"})"));
  EXPECT_EQ(refused.result.response.status, 503);
  EXPECT_NE(refused.result.response.body.find("shutting_down"), std::string::npos);
}

TEST_F(ServerRouterTest, AdmissionIsLimited) {
  ServerContext context(options(), "tiny");  // 2 at once
  context.set_ready({{"tiny", embedder_}});
  Router router(context);
  auto a = router.route(post("/embed", R"({"inputs":"a"})"));
  auto b = router.route(post("/embed", R"({"inputs":"b"})"));
  ASSERT_TRUE(a.permit && b.permit);
  auto c = router.route(post("/embed", R"({"inputs":"c"})"));
  EXPECT_EQ(c.result.response.status, 429);
  a = RouteDecision{};
  auto d = router.route(post("/embed", R"({"inputs":"d"})"));
  EXPECT_TRUE(d.permit);
  d = RouteDecision{};
  // Refused requests give their permit back at once.
  auto bad = router.route(post("/embed", R"({"inputs":""})"));
  EXPECT_EQ(bad.result.response.status, 422);
  EXPECT_FALSE(bad.permit);
  EXPECT_EQ(context.limiter.active(), 1u);
}

TEST_F(ServerRouterTest, LongInputs413UnlessTruncated) {
  const std::string long_text = R"("one two three four five six seven eight nine ten eleven twelve thirteen fourteen")";
  ServerContext context(options(), "tiny");
  context.set_ready({{"tiny", embedder_}});
  Router router(context);
  auto refused = router.route(post("/embed", "{\"inputs\":" + long_text + "}"));
  EXPECT_EQ(refused.result.response.status, 413);
  EXPECT_NE(refused.result.response.body.find("maximum of 16"), std::string::npos) << refused.result.response.body;
  auto cut = router.route(post("/embed", "{\"inputs\":" + long_text + ",\"truncate\":true}"));
  ASSERT_TRUE(cut.result.job.has_value());
  EXPECT_EQ(cut.result.job->sequences[0].size(), 16u);
  EXPECT_EQ(cut.result.job->sequences[0].back(), 2);
  EXPECT_EQ(router.route(post("/v1/embeddings", "{\"input\":" + long_text + "}")).result.response.status, 413);

  ServerOptions o = options();
  o.auto_truncate = true;
  ServerContext truncating(o, "tiny");
  truncating.set_ready({{"tiny", embedder_}});
  Router auto_router(truncating);
  EXPECT_TRUE(auto_router.route(post("/v1/embeddings", "{\"input\":" + long_text + "}")).result.job.has_value());
  // A request that says truncate=false wins over --auto-truncate.
  EXPECT_EQ(
      auto_router.route(post("/embed", "{\"inputs\":" + long_text + ",\"truncate\":false}")).result.response.status,
      413);
}

TEST_F(ServerRouterTest, TokenIdsAreCutKeepingTheLast) {
  std::vector<Input> inputs(1);
  inputs[0].is_ids = true;
  for (int i = 0; i < 20; ++i) inputs[0].ids.push_back(i == 0 ? 0 : i == 19 ? 2 : 100 + i);
  LengthRule rule;
  rule.max_length = 8;
  rule.truncate = true;
  auto cut = tokenize_inputs(embedder_->tokenizer(), inputs, rule, "input");
  EXPECT_EQ(cut.sequences[0], (std::vector<int32_t>{0, 101, 102, 103, 104, 105, 106, 2}));
  EXPECT_TRUE(cut.truncated[0]);
  EXPECT_EQ(cut.tokens, 8);
  rule.truncate = false;
  EXPECT_THROW(tokenize_inputs(embedder_->tokenizer(), inputs, rule, "input"), ApiError);
}

TEST_F(ServerRouterTest, QueueBoundIs413) {
  ServerOptions o = options();
  o.max_client_batch_size = 100;
  ServerContext context(o, "tiny");
  context.set_ready({{"tiny", embedder_}});
  Router router(context);
  std::string body = R"({"input":[)";
  for (int i = 0; i < 60; ++i) body += std::string(i ? "," : "") + "\"several words in a text\"";
  body += "]}";
  auto refused = router.route(post("/v1/embeddings", body));
  EXPECT_EQ(refused.result.response.status, 413) << refused.result.response.body;
  EXPECT_NE(refused.result.response.body.find("queue"), std::string::npos);
}

TEST_F(ServerRouterTest, ResponsesEqualTheEngineOutputs) {
  ServerContext context(options(), "tiny");
  context.set_ready({{"tiny", embedder_}});
  Router router(context);
  const std::vector<std::string> texts = {"hello world", "a second, longer text"};
  std::vector<std::vector<int32_t>> ids;
  for (const auto& t : texts) ids.push_back(embedder_->tokenize(t, 16));
  const auto expected = embedder_->encode(ids, {true, true, true});

  auto decision =
      router.route(post("/m3/encode", R"({"input":["hello world","a second, longer text"],"return_sparse":true,)"
                                      R"("return_colbert_vecs":true,"model":"echo"})"));
  const HttpResponse response = complete(decision);
  ASSERT_EQ(response.status, 200) << response.body;
  simdjson::dom::parser parser;
  simdjson::dom::element root;
  ASSERT_EQ(parser.parse(response.body).get(root), simdjson::SUCCESS);
  EXPECT_EQ(std::string_view(root["model"]), "echo");
  EXPECT_EQ(int64_t(root["usage"]["prompt_tokens"]), int64_t(ids[0].size() + ids[1].size()));
  for (size_t i = 0; i < texts.size(); ++i) {
    auto item = root["data"].at(i);
    EXPECT_EQ(test::floats(item["dense_vecs"]), expected[i].dense);
    auto colbert = item["colbert_vecs"].get_array().value();
    EXPECT_EQ(int64_t(colbert.size()), expected[i].colbert_rows);
    EXPECT_EQ(test::floats(colbert.at(0)),
              std::vector<float>(expected[i].colbert.begin(), expected[i].colbert.begin() + 64));
    for (const auto& [id, weight] : expected[i].lexical) {
      EXPECT_EQ(float(double(item["lexical_weights"][std::to_string(id)])), weight);
    }
  }

  auto tokenize = router.route(post("/tokenize", R"({"inputs":"hello world","add_special_tokens":false})"));
  ASSERT_FALSE(tokenize.result.job.has_value());
  ASSERT_EQ(parser.parse(tokenize.result.response.body).get(root), simdjson::SUCCESS);
  EXPECT_EQ(root.at(0).get_array().value().size(), ids[0].size() - 2);
  EXPECT_EQ(int64_t(root.at(0).at(0)["id"]), ids[0][1]);
}

TEST_F(ServerRouterTest, ScoresEqualComputeScores) {
  ServerContext context(options(), "tiny");
  context.set_ready({{"tiny", embedder_}});
  Router router(context);
  auto decision =
      router.route(post("/m3/score", R"({"pairs":[["what is it","it is a test"]],"weights":[0.4,0.2,0.4]})"));
  const HttpResponse response = complete(decision);
  ASSERT_EQ(response.status, 200) << response.body;
  const auto outputs = embedder_->encode(
      {embedder_->tokenize("what is it", 16), embedder_->tokenize("it is a test", 16)}, {true, true, true});
  const PairScores expected = compute_scores(outputs[0], outputs[1], 64, {0.4f, 0.2f, 0.4f});
  simdjson::dom::parser parser;
  simdjson::dom::element root;
  ASSERT_EQ(parser.parse(response.body).get(root), simdjson::SUCCESS);
  auto item = root["data"].at(0);
  EXPECT_EQ(float(double(item["dense"])), expected.dense);
  EXPECT_EQ(float(double(item["sparse"])), expected.sparse);
  EXPECT_EQ(float(double(item["colbert"])), expected.colbert);
  EXPECT_EQ(float(double(item["colbert+sparse+dense"])), expected.colbert_sparse_dense);
}

TEST_F(ServerRouterTest, InfoAndMetricsDescribeTheModel) {
  ServerContext context(options(), "tiny");
  context.set_ready({{"tiny", embedder_}});
  Router router(context);
  const HttpResponse info = router.route({"GET", "/info", "", ""}).result.response;
  simdjson::dom::parser parser;
  simdjson::dom::element root;
  ASSERT_EQ(parser.parse(info.body).get(root), simdjson::SUCCESS) << info.body;
  EXPECT_EQ(int64_t(root["max_input_length"]), 16);
  EXPECT_EQ(int64_t(root["config"]["hidden_size"]), 64);
  EXPECT_EQ(uint64_t(root["memory"]["plan"]["total_bytes"]), embedder_->plan().total_bytes);
  EXPECT_GT(uint64_t(root["memory"]["resident_bytes"]), 0u);
  const HttpResponse metrics = router.route({"GET", "/metrics", "", ""}).result.response;
  EXPECT_EQ(metrics.content_type.rfind("text/plain", 0), 0u);
  EXPECT_NE(
      metrics.body.find("m3_memory_planned_bytes{part=\"total\"} " + std::to_string(embedder_->plan().total_bytes)),
      std::string::npos);
  EXPECT_NE(metrics.body.find("m3_queue_max_tokens 512"), std::string::npos);
}

}  // namespace
}  // namespace m3::server
