// vLLM's /pooling request parsing and response encoding (vllm_api.h), without a model: the
// defaults vLLM has, every refusal's status and field, and the exact rows each task returns.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "m3/server/api_error.h"
#include "m3/server/base64.h"
#include "m3/server/vllm_api.h"

namespace m3::server {
namespace {

// At most 4 inputs, ids below 1000, hidden size 2.
const ApiLimits kLimits{4, 1000, 2};

VllmPoolingRequest parse(const std::string& body) { return parse_vllm_pooling_request(body, kLimits); }

// The ApiError's status and field, or {0, ""} when the body parses.
std::pair<int, std::string> refusal(const std::string& body) {
  try {
    parse(body);
  } catch (const ApiError& e) {
    return {e.status(), e.param()};
  }
  return {0, ""};
}

TEST(VllmPoolingApi, DefaultsAreVllms) {
  const auto r = parse(R"({"input": "hello", "model": "BAAI/bge-m3", "user": "u", "priority": 0})");
  ASSERT_EQ(r.inputs.size(), 1u);
  EXPECT_EQ(r.task, PoolingTask::kEmbed);
  EXPECT_FALSE(r.base64);
  EXPECT_FALSE(r.big_endian);
  EXPECT_TRUE(r.activation);
  EXPECT_FALSE(r.truncate_prompt_tokens);
  EXPECT_FALSE(r.truncate_left);
  EXPECT_EQ(r.model, "BAAI/bge-m3");
  EXPECT_EQ(r.request_id, "");
  // null reads as absent, as everywhere
  const auto nulls = parse(R"({"input": [0, 5, 2], "task": null, "dimensions": null, "truncate_prompt_tokens": null})");
  EXPECT_EQ(nulls.task, PoolingTask::kEmbed);
  EXPECT_TRUE(nulls.inputs[0].is_ids);
}

TEST(VllmPoolingApi, TasksAndTheirOutputs) {
  EXPECT_EQ(parse(R"({"input": "a", "task": "token_classify"})").task, PoolingTask::kTokenClassify);
  EXPECT_EQ(parse(R"({"input": "a", "task": "token_embed"})").task, PoolingTask::kTokenEmbed);
  EXPECT_EQ(parse(R"({"input": "a", "task": "embed"})").task, PoolingTask::kEmbed);
  const OutputRequest sparse = pooling_outputs(PoolingTask::kTokenClassify);
  EXPECT_TRUE(sparse.token_weights && !sparse.sparse && !sparse.dense && !sparse.colbert);
  const OutputRequest colbert = pooling_outputs(PoolingTask::kTokenEmbed);
  EXPECT_TRUE(colbert.colbert && !colbert.token_weights && !colbert.dense);
  const OutputRequest dense = pooling_outputs(PoolingTask::kEmbed);
  EXPECT_TRUE(dense.dense && !dense.colbert && !dense.token_weights && !dense.sparse);
  for (const char* task : {"classify", "score", "plugin", "embed&token_classify", "encode", "Token_embed", ""}) {
    EXPECT_EQ(refusal(std::string(R"({"input": "a", "task": ")") + task + "\"}"), std::make_pair(422, std::string("task")))
        << task;
  }
  EXPECT_EQ(refusal(R"({"input": "a", "task": 1})"), std::make_pair(422, std::string("task")));
}

TEST(VllmPoolingApi, EncodingOptions) {
  const auto b = parse(R"({"input": "a", "encoding_format": "base64", "endianness": "big", "embed_dtype": "float32"})");
  EXPECT_TRUE(b.base64);
  EXPECT_TRUE(b.big_endian);
  EXPECT_FALSE(parse(R"({"input": "a", "endianness": "little"})").big_endian);
  EXPECT_EQ(refusal(R"({"input": "a", "encoding_format": "bytes"})").second, "encoding_format");
  EXPECT_EQ(refusal(R"({"input": "a", "encoding_format": "bytes_only"})").second, "encoding_format");
  EXPECT_EQ(refusal(R"({"input": "a", "embed_dtype": "bfloat16"})").second, "embed_dtype");
  EXPECT_EQ(refusal(R"({"input": "a", "endianness": "BIG"})").second, "endianness");
  EXPECT_EQ(refusal(R"({"input": "a", "dimensions": 2})"), std::make_pair(422, std::string("dimensions")));
}

TEST(VllmPoolingApi, ActivationOnlyOffForEmbed) {
  EXPECT_FALSE(parse(R"({"input": "a", "use_activation": false})").activation);
  EXPECT_FALSE(parse(R"({"input": "a", "normalize": false})").activation);  // vLLM before use_activation
  EXPECT_TRUE(parse(R"({"input": "a", "task": "token_embed", "normalize": true})").activation);
  // the first of use_activation, normalize, activation that is present decides
  EXPECT_TRUE(parse(R"({"input": "a", "use_activation": true, "normalize": false})").activation);
  EXPECT_EQ(refusal(R"({"input": "a", "task": "token_classify", "use_activation": false})").second, "use_activation");
  EXPECT_EQ(refusal(R"({"input": "a", "task": "token_classify", "activation": false})").second, "activation");
  EXPECT_EQ(refusal(R"({"input": "a", "task": "token_embed", "normalize": false})").second, "normalize");
  EXPECT_EQ(refusal(R"({"input": "a", "use_activation": "no"})").second, "use_activation");
}

TEST(VllmPoolingApi, Truncation) {
  EXPECT_EQ(*parse(R"({"input": "a", "truncate_prompt_tokens": -1})").truncate_prompt_tokens, -1);
  EXPECT_EQ(*parse(R"({"input": "a", "truncate_prompt_tokens": 2})").truncate_prompt_tokens, 2);
  for (const char* n : {"0", "1", "-2", "1.5", "\"8\""}) {
    EXPECT_EQ(refusal(std::string(R"({"input": "a", "truncate_prompt_tokens": )") + n + "}").second,
              "truncate_prompt_tokens")
        << n;
  }
  EXPECT_TRUE(parse(R"({"input": "a", "truncation_side": "left"})").truncate_left);
  EXPECT_FALSE(parse(R"({"input": "a", "truncation_side": "right"})").truncate_left);
  EXPECT_EQ(refusal(R"({"input": "a", "truncation_side": "Left"})").second, "truncation_side");
}

TEST(VllmPoolingApi, InputsAndOtherRefusals) {
  EXPECT_EQ(refusal(R"({"input": "a", "add_special_tokens": false})").second, "add_special_tokens");
  EXPECT_EQ(refusal(R"({"input": "a", "add_special_tokens": true})").first, 0);
  EXPECT_EQ(refusal(R"({"messages": [{"role": "user", "content": "a"}]})").second, "messages");
  EXPECT_EQ(refusal(R"({"task": "embed"})"), std::make_pair(422, std::string("input")));
  EXPECT_EQ(refusal(R"({"input": ""})").second, "input");
  EXPECT_EQ(refusal(R"({"input": [7, 8]})").second, "input");  // not <s> ... </s>
  EXPECT_EQ(refusal(R"({"input": ["a", "b", "c", "d", "e"]})").first, 413);
  EXPECT_EQ(refusal(R"({"input": "a",)").first, 400);
  EXPECT_EQ(refusal(R"([1])").first, 422);
  EXPECT_EQ(parse(R"({"input": "a", "request_id": "r-1"})").request_id, "r-1");
}

M3Output sequence_of_four() {
  M3Output o;
  o.tokens = 4;                                 // <s> x y </s>
  o.token_weights = {0.5f, 0.25f, 0.f, 0.75f};  // per position, <s> and </s> included
  o.colbert = {1, 0, 0, 1, 0.6f, 0.8f};         // the rows after <s>
  o.colbert_rows = 3;
  o.dense = {0.6f, 0.8f};
  o.dense_norm = 2.f;
  return o;
}

PoolingResponseInfo info() {
  PoolingResponseInfo i;
  i.id = "pooling-x";
  i.created = 1700000000;
  i.model = "m";
  i.prompt_tokens = 4;
  i.hidden = 2;
  return i;
}

TEST(VllmPoolingApi, ResponsesPerTask) {
  VllmPoolingRequest request;
  request.task = PoolingTask::kTokenClassify;
  EXPECT_EQ(vllm_pooling_response({sequence_of_four()}, request, info()),
            R"({"id":"pooling-x","object":"list","created":1700000000,"model":"m","data":[{"index":0,)"
            R"("object":"pooling","data":[0.25,0]}],"usage":{"prompt_tokens":4,"total_tokens":4,)"
            R"("completion_tokens":0,"prompt_tokens_details":null}})");
  const std::string head = R"({"id":"pooling-x","object":"list","created":1700000000,"model":"m","data":[)";
  const std::string usage =
      R"(],"usage":{"prompt_tokens":4,"total_tokens":4,"completion_tokens":0,"prompt_tokens_details":null}})";
  request.task = PoolingTask::kTokenEmbed;
  EXPECT_EQ(vllm_pooling_response({sequence_of_four(), sequence_of_four()}, request, info()),
            head + R"({"index":0,"object":"pooling","data":[[1,0],[0,1],[0.6,0.8]]},)" +
                R"({"index":1,"object":"pooling","data":[[1,0],[0,1],[0.6,0.8]]})" + usage);
  request.task = PoolingTask::kEmbed;
  EXPECT_EQ(vllm_pooling_response({sequence_of_four()}, request, info()),
            head + R"({"index":0,"object":"pooling","data":[0.6,0.8]})" + usage);
  request.activation = false;  // the raw CLS state
  EXPECT_EQ(vllm_pooling_response({sequence_of_four()}, request, info()),
            head + R"({"index":0,"object":"pooling","data":[1.2,1.6]})" + usage);
  // The shortest sequence, <s></s>: no token_classify rows, one token_embed row.
  M3Output empty;
  empty.token_weights = {0.5f, 0.5f};
  request.task = PoolingTask::kTokenClassify;
  EXPECT_NE(vllm_pooling_response({empty}, request, info()).find(R"("data":[]})"), std::string::npos);
}

TEST(VllmPoolingApi, Base64IsTheFloat32TensorInTheAskedByteOrder) {
  VllmPoolingRequest request;
  request.base64 = true;
  request.task = PoolingTask::kTokenEmbed;
  const std::string json = vllm_pooling_response({sequence_of_four()}, request, info());
  const float rows[] = {1, 0, 0, 1, 0.6f, 0.8f};
  std::string want;
  append_base64(want, rows, sizeof(rows));
  EXPECT_NE(json.find("\"data\":\"" + want + "\""), std::string::npos) << json;

  request.big_endian = true;
  request.task = PoolingTask::kTokenClassify;
  const std::string big = vllm_pooling_response({sequence_of_four()}, request, info());
  const unsigned char bytes[] = {0x3e, 0x80, 0, 0, 0, 0, 0, 0};  // 0.25f and 0.f, big-endian
  want.clear();
  append_base64(want, bytes, sizeof(bytes));
  EXPECT_NE(big.find("\"data\":\"" + want + "\""), std::string::npos) << big;
}

}  // namespace
}  // namespace m3::server
