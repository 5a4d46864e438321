// config.json parsing: the BGE-M3 fields, and clear refusals of what we do not run.
#include <gtest/gtest.h>
#include <gmock/gmock.h>

#include "m3/core/error.h"
#include "m3/model/model_config.h"
#include "test_support.h"

namespace m3 {
namespace {

using ::testing::HasSubstr;

const char* kBgeM3 = R"({"architectures": ["XLMRobertaModel"], "model_type": "xlm-roberta", "hidden_size": 1024,
  "num_hidden_layers": 24, "num_attention_heads": 16, "intermediate_size": 4096, "hidden_act": "gelu",
  "vocab_size": 250002, "max_position_embeddings": 8194, "layer_norm_eps": 1e-05, "pad_token_id": 1,
  "type_vocab_size": 1, "position_embedding_type": "absolute"})";

std::string error_of(const std::string& json) {
  try {
    ModelConfig::parse(json, "config.json");
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(ModelConfig, ParsesBgeM3) {
  const auto c = ModelConfig::parse(kBgeM3, "config.json");
  EXPECT_EQ(c.hidden_size, 1024);
  EXPECT_EQ(c.num_layers, 24);
  EXPECT_EQ(c.num_heads, 16);
  EXPECT_EQ(c.head_dim(), 64);
  EXPECT_EQ(c.intermediate_size, 4096);
  EXPECT_EQ(c.vocab_size, 250002);
  EXPECT_EQ(c.max_tokens(), 8192);
  EXPECT_DOUBLE_EQ(c.layer_norm_eps, 1e-5);
}

TEST(ModelConfig, RefusesWhatItCannotRun) {
  std::string s = kBgeM3;
  EXPECT_THAT(error_of(std::string(s).replace(s.find("\"gelu\""), 6, "\"relu\"")), HasSubstr("hidden_act"));
  EXPECT_THAT(error_of(std::string(s).replace(s.find("\"xlm-roberta\""), 13, "\"bert\"")), HasSubstr("model_type"));
  EXPECT_THAT(error_of(std::string(s).replace(s.find("16,"), 3, "15,")), HasSubstr("not divisible"));
  EXPECT_THAT(error_of(std::string(s).replace(s.find("\"hidden_size\": 1024,"), 20, "")), HasSubstr("hidden_size"));
  EXPECT_THAT(error_of("{\"hidden_size\": "), HasSubstr("not valid JSON"));
  EXPECT_THAT(error_of("[1, 2]"), HasSubstr("JSON object"));
}

TEST(ModelConfig, MissingFileNamesIt) {
  test::TempDir dir;
  try {
    ModelConfig::load(dir.path());
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("config.json"));
  }
}

}  // namespace
}  // namespace m3
