// Request parsing and validation of the HTTP API, without a model or a socket: every
// refusal has the status docs/API.md promises and names the field at fault.
#include <gtest/gtest.h>

#include <string>

#include "m3/server/api_error.h"
#include "m3/server/base64.h"
#include "m3/server/json_body.h"
#include "m3/server/native_api.h"
#include "m3/server/openai_api.h"
#include "m3/server/router.h"
#include "m3/server/tei_api.h"

namespace m3::server {
namespace {

ApiLimits limits() {
  ApiLimits l;
  l.max_client_batch_size = 4;
  l.vocab_size = 1000;
  l.hidden_size = 64;
  return l;
}

// The status of the ApiError `parse(body)` throws, or 0 when it parses.
template <typename Parse>
int status_of(Parse parse, const std::string& body, std::string* param = nullptr) {
  try {
    parse(body, limits());
  } catch (const ApiError& e) {
    if (param) *param = e.param();
    return e.status();
  }
  return 0;
}

int openai(const std::string& body, std::string* param = nullptr) {
  return status_of(parse_openai_embedding_request, body, param);
}

TEST(ServerParsing, OpenAiAcceptsItsFourInputShapes) {
  auto one = parse_openai_embedding_request(R"({"input": "hello", "model": "m"})", limits());
  ASSERT_EQ(one.inputs.size(), 1u);
  EXPECT_EQ(one.inputs[0].text, "hello");
  EXPECT_FALSE(one.inputs[0].is_ids);
  EXPECT_EQ(one.model, "m");
  EXPECT_FALSE(one.base64);
  EXPECT_EQ(one.dimensions, 0);

  auto many = parse_openai_embedding_request(R"({"input": ["a", "b\u00e9\n"]})", limits());
  ASSERT_EQ(many.inputs.size(), 2u);
  EXPECT_EQ(many.inputs[1].text, "b\xc3\xa9\n");

  auto ids = parse_openai_embedding_request(R"({"input": [0, 5, 2], "encoding_format": "base64"})", limits());
  ASSERT_EQ(ids.inputs.size(), 1u);
  EXPECT_TRUE(ids.inputs[0].is_ids);
  EXPECT_EQ(ids.inputs[0].ids, (std::vector<int32_t>{0, 5, 2}));
  EXPECT_TRUE(ids.base64);

  auto lists = parse_openai_embedding_request(R"({"input": [[0, 2], [0, 7, 2]], "dimensions": 8})", limits());
  ASSERT_EQ(lists.inputs.size(), 2u);
  EXPECT_EQ(lists.inputs[1].ids.size(), 3u);
  EXPECT_EQ(lists.dimensions, 8);
}

TEST(ServerParsing, MalformedBodiesAre400) {
  EXPECT_EQ(openai(""), 400);
  EXPECT_EQ(openai("{"), 400);
  EXPECT_EQ(openai(R"({"input": "a",})"), 400);
  EXPECT_EQ(openai(R"({"input": "a"} trailing)"), 400);
  EXPECT_EQ(openai(R"({"input": "\ud800"})"), 400);  // lone surrogate escape
  EXPECT_EQ(openai(R"({"input": 1e999})"), 400);
}

TEST(ServerParsing, InvalidValuesAre422AndNameTheField) {
  std::string param;
  EXPECT_EQ(openai("[1, 2]"), 422);
  EXPECT_EQ(openai("\"text\""), 422);
  EXPECT_EQ(openai(R"({"model": "m"})", &param), 422);
  EXPECT_EQ(param, "input");
  EXPECT_EQ(openai(R"({"input": ""})", &param), 422);
  EXPECT_EQ(param, "input");
  EXPECT_EQ(openai(R"({"input": []})"), 422);
  EXPECT_EQ(openai(R"({"input": ["a", ""]})", &param), 422);
  EXPECT_EQ(param, "input[1]");
  EXPECT_EQ(openai(R"({"input": ["a", 3]})", &param), 422);
  EXPECT_EQ(param, "input[1]");
  EXPECT_EQ(openai(R"({"input": 42})"), 422);
  EXPECT_EQ(openai(R"({"input": {"text": "a"}})"), 422);
  EXPECT_EQ(openai(R"({"input": [0, 1.5, 2]})"), 422);
  EXPECT_EQ(openai(R"({"input": [0, -1, 2]})"), 422);
  EXPECT_EQ(openai(R"({"input": [0, 1000, 2]})"), 422);  // vocab is 1000
  EXPECT_EQ(openai(R"({"input": [0, 18446744073709551615]})"), 422);
  EXPECT_EQ(openai(R"({"input": [5]})"), 422);  // fewer than 2 ids
  EXPECT_EQ(openai(R"({"input": [[0, 2], []]})"), 422);
  EXPECT_EQ(openai(R"({"input": [[0, 2], "a"]})"), 422);
  EXPECT_EQ(openai(R"({"input": "a", "encoding_format": "int8"})", &param), 422);
  EXPECT_EQ(param, "encoding_format");
  EXPECT_EQ(openai(R"({"input": "a", "encoding_format": 1})"), 422);
  EXPECT_EQ(openai(R"({"input": "a", "dimensions": -3})", &param), 422);
  EXPECT_EQ(param, "dimensions");
  EXPECT_EQ(openai(R"({"input": "a", "dimensions": 0})"), 422);
  EXPECT_EQ(openai(R"({"input": "a", "dimensions": 65})"), 422);  // hidden is 64
  EXPECT_EQ(openai(R"({"input": "a", "dimensions": 8.5})"), 422);
  EXPECT_EQ(openai(R"({"input": "a", "dimensions": "8"})"), 422);
  EXPECT_EQ(openai(R"({"input": "a", "model": 7})"), 422);
  EXPECT_EQ(openai(R"({"input": "a", "user": []})"), 422);
}

TEST(ServerParsing, NonUtf8Is422) {
  EXPECT_EQ(openai("{\"input\": \"caf\xe9\"}"), 422);       // Latin-1 byte
  EXPECT_EQ(openai("{\"input\": \"\xed\xa0\x80\"}"), 422);  // UTF-8-encoded surrogate
  EXPECT_EQ(openai("{\"input\": \"\xc0\xaf\"}"), 422);      // overlong
}

TEST(ServerParsing, NullReadsAsAbsent) {
  auto request = parse_openai_embedding_request(R"({"input": "a", "dimensions": null, "model": null})", limits());
  EXPECT_EQ(request.dimensions, 0);
  EXPECT_EQ(request.model, "");
  EXPECT_EQ(openai(R"({"input": null})"), 422);
}

TEST(ServerParsing, TooManyInputsAre413) {
  std::string param;
  EXPECT_EQ(openai(R"({"input": ["a", "b", "c", "d"]})"), 0);
  EXPECT_EQ(openai(R"({"input": ["a", "b", "c", "d", "e"]})", &param), 413);
  EXPECT_EQ(param, "input");
  EXPECT_EQ(openai(R"({"input": [[0, 2], [0, 2], [0, 2], [0, 2], [0, 2]]})"), 413);
}

TEST(ServerParsing, TeiEmbed) {
  auto request = parse_tei_embed_request(R"({"inputs": ["a", "b"], "truncate": true, "dimensions": 16})", limits());
  EXPECT_EQ(request.inputs.size(), 2u);
  ASSERT_TRUE(request.truncate.has_value());
  EXPECT_TRUE(*request.truncate);
  EXPECT_TRUE(request.normalize);
  EXPECT_EQ(request.dimensions, 16);
  EXPECT_FALSE(parse_tei_embed_request(R"({"inputs": "a"})", limits()).truncate.has_value());

  auto tei = [](const std::string& body) { return status_of(parse_tei_embed_request, body); };
  EXPECT_EQ(tei(R"({"input": "a"})"), 422);  // TEI's field is "inputs"
  EXPECT_EQ(tei(R"({"inputs": "a", "truncate": "yes"})"), 422);
  EXPECT_EQ(tei(R"({"inputs": "a", "normalize": "no"})"), 422);
  EXPECT_FALSE(parse_tei_embed_request(R"({"inputs": "a", "normalize": false})", limits()).normalize);
  EXPECT_EQ(tei(R"({"inputs": "a", "truncation_direction": "middle"})"), 422);
  EXPECT_EQ(tei(R"({"inputs": "a", "truncation_direction": "right"})"), 0);
  // TEI's enum takes either spelling (huggingface_hub and Milvus send "Left").
  EXPECT_FALSE(parse_tei_embed_request(R"({"inputs": "a", "truncation_direction": "Right"})", limits()).truncate_left);
  EXPECT_TRUE(parse_tei_embed_request(R"({"inputs": "a", "truncation_direction": "left"})", limits()).truncate_left);
  EXPECT_TRUE(parse_tei_embed_request(R"({"inputs": "a", "truncation_direction": "Left"})", limits()).truncate_left);
  EXPECT_EQ(tei(R"({"inputs": "a", "prompt_name": "query"})"), 422);
  EXPECT_EQ(tei(R"({"inputs": ["a", "b", "c", "d", "e"]})"), 413);
}

TEST(ServerParsing, TeiTokenizeTakesTextsOnly) {
  auto request = parse_tei_tokenize_request(R"({"inputs": "a", "add_special_tokens": false})", limits());
  EXPECT_FALSE(request.add_special_tokens);
  EXPECT_EQ(status_of(parse_tei_tokenize_request, R"({"inputs": [0, 2]})"), 422);
}

TEST(ServerParsing, NativeEncode) {
  auto request = parse_native_encode_request(
      R"({"input": ["", "x"], "return_sparse": true, "return_colbert_vecs": true, "max_length": 16, "return_tokens": true})",
      limits());
  EXPECT_EQ(request.inputs.size(), 2u);  // "" is allowed: FlagEmbedding encodes it as <s></s>
  EXPECT_TRUE(request.outputs.dense && request.outputs.sparse && request.outputs.colbert);
  EXPECT_EQ(request.max_length, 16);
  EXPECT_TRUE(request.return_tokens);
  auto native = [](const std::string& body) { return status_of(parse_native_encode_request, body); };
  EXPECT_EQ(native(R"({"input": "a", "return_dense": false})"), 422);
  EXPECT_EQ(native(R"({"input": "a", "max_length": 1})"), 422);
  EXPECT_EQ(native(R"({"inputs": "a"})"), 422);
}

TEST(ServerParsing, NativeScore) {
  auto request = parse_native_score_request(
      R"({"pairs": [["q", "p"], {"query": "q2", "passage": ""}], "weights": [0.4, 0.2, 0.4], "max_query_length": 8})",
      limits());
  ASSERT_EQ(request.pairs.size(), 2u);
  EXPECT_EQ(request.pairs[1].first, "q2");
  EXPECT_FLOAT_EQ(request.weights.dense, 0.4f);
  EXPECT_FLOAT_EQ(request.weights.colbert, 0.4f);
  EXPECT_EQ(request.max_query_length, 8);
  EXPECT_EQ(request.max_passage_length, 8192);
  auto score = [](const std::string& body) { return status_of(parse_native_score_request, body); };
  EXPECT_EQ(score(R"({"pairs": []})"), 422);
  EXPECT_EQ(score(R"({"pairs": [["q"]]})"), 422);
  EXPECT_EQ(score(R"({"pairs": [["q", 1]]})"), 422);
  EXPECT_EQ(score(R"({"pairs": [{"query": "q"}]})"), 422);
  EXPECT_EQ(score(R"({"pairs": [["q", "p"]], "weights": [1, 1]})"), 422);
  EXPECT_EQ(score(R"({"pairs": [["q", "p"]], "weights": [1, -1, 1]})"), 422);
  EXPECT_EQ(score(R"({"pairs": [["q", "p"]], "weights": [0, 0, 1]})"), 422);
  EXPECT_EQ(score(R"({"pairs": [["a","b"],["a","b"],["a","b"],["a","b"],["a","b"]]})"), 413);
}

TEST(ServerParsing, ErrorBodiesFollowEachApi) {
  const ApiError error(422, "`input` must not be \"empty\"", "input");
  const HttpResponse openai = error_response(ErrorFormat::kOpenAi, error);
  EXPECT_EQ(openai.status, 422);
  EXPECT_EQ(
      openai.body,
      R"({"error":{"message":"`input` must not be \"empty\"","type":"invalid_request_error","param":"input","code":"invalid_value"}})");
  const HttpResponse tei = error_response(ErrorFormat::kTei, ApiError(429, "busy"));
  EXPECT_EQ(tei.body, R"({"error":"busy","error_type":"Overloaded"})");
  const HttpResponse unauthorized = error_response(ErrorFormat::kOpenAi, ApiError(401, "no"));
  EXPECT_NE(unauthorized.body.find("\"param\":null"), std::string::npos);
  EXPECT_NE(unauthorized.body.find("invalid_api_key"), std::string::npos);
  ASSERT_EQ(unauthorized.headers.size(), 1u);
  EXPECT_EQ(unauthorized.headers[0].first, "WWW-Authenticate");
}

TEST(ServerParsing, Base64RoundTrip) {
  for (size_t n = 0; n < 10; ++n) {
    std::string data;
    for (size_t i = 0; i < n; ++i) data += static_cast<char>(i * 37 + 200);
    std::string encoded;
    append_base64(encoded, data.data(), data.size());
    EXPECT_EQ(encoded.size(), (n + 2) / 3 * 4);
    auto decoded = decode_base64(encoded);
    ASSERT_TRUE(decoded.has_value()) << encoded;
    EXPECT_EQ(*decoded, data);
  }
  std::string hello;
  append_base64(hello, "hello", 5);
  EXPECT_EQ(hello, "aGVsbG8=");
  EXPECT_FALSE(decode_base64("aGVsbG8").has_value());
  EXPECT_FALSE(decode_base64("aGV=bG8=").has_value());
}

TEST(ServerParsing, BearerKeys) {
  EXPECT_TRUE(authorized("Bearer secret", "secret"));
  EXPECT_TRUE(authorized("bearer secret", "secret"));
  EXPECT_FALSE(authorized("Bearer secret2", "secret"));
  EXPECT_FALSE(authorized("Bearer secre", "secret"));
  EXPECT_FALSE(authorized("Basic secret", "secret"));
  EXPECT_FALSE(authorized("", "secret"));
}

}  // namespace
}  // namespace m3::server
