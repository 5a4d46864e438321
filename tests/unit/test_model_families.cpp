// Beyond BGE-M3: what a snapshot is, read from its own files (config.json's architectures,
// sentence-transformers' modules.json and pooling config), and the reranker and
// mean-pooling fixtures against the reference libraries' goldens (family_checks.h).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "m3/core/error.h"
#include "m3/model/pooling_config.h"
#include "family_checks.h"

namespace m3 {
namespace {

std::string config_json(const std::string& extra) {
  return R"({"vocab_size": 10, "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2,
             "intermediate_size": 16, "max_position_embeddings": 20)" +
         extra + "}";
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(ModelFamilies, ArchitecturesSayEmbedderOrClassifier) {
  EXPECT_EQ(ModelConfig::parse(config_json(""), "c").architecture, Architecture::kEncoder);
  EXPECT_EQ(ModelConfig::parse(config_json(R"(, "architectures": ["XLMRobertaModel"])"), "c").architecture,
            Architecture::kEncoder);
  const auto reranker = ModelConfig::parse(
      config_json(R"(, "architectures": ["XLMRobertaForSequenceClassification"], "id2label": {"0": "LABEL_0"})"), "c");
  EXPECT_EQ(reranker.architecture, Architecture::kSequenceClassification);
  EXPECT_EQ(reranker.num_labels, 1);
  EXPECT_EQ(reranker.labels, std::vector<std::string>{"LABEL_0"});
  const auto three = ModelConfig::parse(
      config_json(R"(, "architectures": ["XLMRobertaForSequenceClassification"],
                     "id2label": {"1": "neutral", "0": "negative", "2": "positive"})"), "c");
  EXPECT_EQ(three.labels, (std::vector<std::string>{"negative", "neutral", "positive"}));
  const std::string masked =
      error_of([] { ModelConfig::parse(config_json(R"(, "architectures": ["XLMRobertaForMaskedLM"])"), "cfg.json"); });
  EXPECT_NE(masked.find("cfg.json: architectures \"XLMRobertaForMaskedLM\" is not supported"), std::string::npos)
      << masked;
  EXPECT_NE(error_of([] {
              ModelConfig::parse(config_json(R"(, "architectures": ["XLMRobertaForSequenceClassification"],
                                                 "id2label": {"0": "a", "5": "b"})"), "c");
            }).find("id2label"),
            std::string::npos);
}

TEST(ModelFamilies, PoolingComesFromSentenceTransformersFiles) {
  const PoolingConfig e5 = load_pooling_config(test::fixtures() / "tiny-e5");
  EXPECT_EQ(e5.pooling, Pooling::kMean);
  EXPECT_TRUE(e5.normalize);
  const PoolingConfig m3 = load_pooling_config(test::fixtures() / "tiny-st");  // no modules.json: BGE-M3's
  EXPECT_EQ(m3.pooling, Pooling::kCls);
  EXPECT_TRUE(m3.normalize);

  test::TempDir dir;
  std::filesystem::create_directories(dir.path() / "1_Pooling");
  const auto modules = [&](const std::string& extra) {
    test::write_file(dir.path() / "modules.json",
                     R"([{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                         {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"})" +
                         extra + "]");
  };
  // sentence-transformers 6 writes "pooling_mode" and its own module paths.
  modules("");
  test::write_file(dir.path() / "1_Pooling" / "config.json", R"({"word_embedding_dimension": 8, "pooling_mode": "cls"})");
  const PoolingConfig st6 = load_pooling_config(dir.path());
  EXPECT_EQ(st6.pooling, Pooling::kCls);
  EXPECT_FALSE(st6.normalize);  // no Normalize module
  test::write_file(dir.path() / "1_Pooling" / "config.json",
                   R"({"pooling_mode_cls_token": false, "pooling_mode_max_tokens": true})");
  const std::string max = error_of([&] { load_pooling_config(dir.path()); });
  EXPECT_NE(max.find("pooling_mode_max_tokens is not supported"), std::string::npos) << max;
  test::write_file(dir.path() / "1_Pooling" / "config.json", R"({"pooling_mode_mean_tokens": true})");
  modules(R"(, {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"})");
  const std::string dense = error_of([&] { load_pooling_config(dir.path()); });
  EXPECT_NE(dense.find("sentence_transformers.models.Dense\" is not supported"), std::string::npos) << dense;
}

std::unique_ptr<Embedder> load(const std::string& fixture, DType precision = DType::F32) {
  EmbedderOptions options;
  options.threads = 2;
  options.max_batch_tokens = 512;
  options.precision = precision;
  return Embedder::load(test::fixtures() / fixture, options);
}

TEST(ModelFamilies, RerankerMatchesFlagRerankerAndCrossEncoder) {
  auto reranker = load("tiny-reranker");
  EXPECT_TRUE(reranker->is_classifier());
  test::check_reranker(*reranker, {});
}

TEST(ModelFamilies, MeanPoolingMatchesSentenceTransformers) {
  auto e5 = load("tiny-e5");
  test::check_mean_pooling(*e5, {});
}

TEST(ModelFamilies, AskingAModelForWhatItDoesNotComputeIsAClearError) {
  auto reranker = load("tiny-reranker");
  const std::string embed = error_of([&] { reranker->check(OutputRequest{}); });
  EXPECT_NE(embed.find("is a classifier (XLMRobertaForSequenceClassification): it scores pairs"), std::string::npos)
      << embed;
  auto e5 = load("tiny-e5");
  const std::string score = error_of([&] { e5->check(OutputRequest{.dense = false, .scores = true}); });
  EXPECT_NE(score.find("is an embedder: it has no classifier head"), std::string::npos) << score;
  const std::string sparse = error_of([&] { e5->check(OutputRequest{.sparse = true}); });
  EXPECT_NE(sparse.find("sparse_linear.pt"), std::string::npos) << sparse;
}

// Two models in one process: building a one-thread replica leaves this thread's OpenMP
// setting at 1; the next model's plan must still size oneDNN's scratchpad for its own two
// threads (it used to ask with 1, and its first GEMM then refused to run).
TEST(ModelFamilies, EachModelIsPlannedForItsOwnThreads) {
  EmbedderOptions one_thread;
  one_thread.threads = 1;
  one_thread.max_batch_tokens = 512;
  auto reranker = Embedder::load(test::fixtures() / "tiny-reranker", one_thread);
  auto embedder = load("tiny-st");  // 2 threads
  EXPECT_NO_THROW(embedder->encode({embedder->tokenize("hello world", 0)}, OutputRequest{.sparse = true, .colbert = true}));
  EXPECT_NO_THROW(reranker->encode({reranker->tokenize_pair("q", "p", 0, 0)}, OutputRequest{.dense = false, .scores = true}));
}

// A query that leaves no room for the passage is refused, not silently dropped.
TEST(ModelFamilies, PairTokenizationRefusesAQueryThatFillsTheLimit) {
  auto reranker = load("tiny-reranker");
  const std::string error = error_of([&] { reranker->tokenize_pair("a b c d e f g h", "passage", 8, 8); });
  EXPECT_NE(error.find("leaves no room for the passage"), std::string::npos) << error;
  bool cut = false;
  const auto ids = reranker->tokenize_pair("query", "a much longer passage than the limit allows", 10, 0, &cut);
  EXPECT_TRUE(cut);
  EXPECT_EQ(ids.size(), 10u);
  EXPECT_EQ(ids.front(), 0);
  EXPECT_EQ(ids.back(), 2);
}

// bf16 and int8 against fp32 on the same pairs and texts (the encoder GEMMs round or
// quantize; the classifier and pooling stay float32). The tiny random models' large
// weights make quantization far coarser than on trained ones (test_low_precision states
// int8 dense cosine 0.97 for BGE-M3's heads on them), and the classifier spreads its 16
// golden logits over -3.5..6.7, so the bounds are relative to that spread. Measured: bf16
// correlation 0.998, largest difference 3% of the spread; int8 0.977 and 12%.
TEST(ModelFamilies, LowPrecisionStaysCloseToFloat32) {
  for (DType precision : {DType::BF16, DType::I8}) {
    const bool bf16 = precision == DType::BF16;
    const double least_correlation = bf16 ? 0.995 : 0.95, largest_share = bf16 ? 0.05 : 0.2;
    const double least_cosine = bf16 ? 0.997 : 0.97;
    auto fp32 = load("tiny-reranker"), low = load("tiny-reranker", precision);
    if (low->plan().inputs.precision != precision) {
      GTEST_SKIP() << "this CPU has no " << precision_name(precision) << " instructions";
    }
    simdjson::dom::parser parser;
    const auto root = parser.load((test::fixtures() / "golden" / "tiny-reranker.json").string()).value();
    std::vector<std::vector<int32_t>> pairs;
    for (auto pair : root["pairs"].get_array()) {
      auto both = pair.get_array();
      pairs.push_back(fp32->tokenize_pair(std::string_view(both.at(0)), std::string_view(both.at(1)), 0, 0));
    }
    const OutputRequest scores{.dense = false, .scores = true};
    const auto want = fp32->encode(pairs, scores), got = low->encode(pairs, scores);
    std::vector<double> a, b;
    for (size_t i = 0; i < pairs.size(); ++i) {
      a.push_back(want[i].scores[0]);
      b.push_back(got[i].scores[0]);
    }
    const auto [low_it, high_it] = std::minmax_element(a.begin(), a.end());
    const double spread = *high_it - *low_it;
    double largest = 0, ma = 0, mb = 0, sab = 0, saa = 0, sbb = 0;
    for (size_t i = 0; i < a.size(); ++i) largest = std::max(largest, std::abs(a[i] - b[i]));
    for (size_t i = 0; i < a.size(); ++i) ma += a[i] / a.size(), mb += b[i] / b.size();
    for (size_t i = 0; i < a.size(); ++i) {
      sab += (a[i] - ma) * (b[i] - mb), saa += (a[i] - ma) * (a[i] - ma), sbb += (b[i] - mb) * (b[i] - mb);
    }
    EXPECT_GE(sab / std::sqrt(saa * sbb), least_correlation) << precision_name(precision);
    EXPECT_LE(largest, largest_share * spread) << precision_name(precision);
    auto e5 = load("tiny-e5"), e5_low = load("tiny-e5", precision);
    const std::vector<std::vector<int32_t>> texts = {e5->tokenize("hello world", 0),
                                                     e5->tokenize("東京の天気は今日も晴れです。", 0)};
    const auto exact = e5->encode(texts, OutputRequest{}), rounded = e5_low->encode(texts, OutputRequest{});
    for (size_t i = 0; i < texts.size(); ++i) {
      double dot = 0;
      for (size_t k = 0; k < exact[i].dense.size(); ++k) dot += double(exact[i].dense[k]) * rounded[i].dense[k];
      EXPECT_GE(dot, least_cosine) << precision_name(precision) << " text " << i;
    }
  }
}

}  // namespace
}  // namespace m3
