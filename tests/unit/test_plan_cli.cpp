// `m3embed plan` end to end: its totals equal the plan worked out by hand from the
// model's shapes, --memory-limit picks the largest budget that fits or fails naming the
// minimum, and --corpus reports what corpus_stats computes on the same token lengths.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <nlohmann/json.hpp>

#include "m3/backend/cpu/cpu_backend.h"
#include "m3/memory/corpus_stats.h"
#include "m3/memory/memory_plan.h"
#include "m3/model/model_config.h"
#include "m3/runtime/embedder.h"
#include "m3/tokenizer/xlmr_tokenizer.h"
#include "test_support.h"

namespace m3 {
namespace {

using ::testing::HasSubstr;
using json = nlohmann::json;

std::string quoted(const std::filesystem::path& p) { return "'" + p.string() + "'"; }

constexpr const char* kBgeM3Config = R"({
  "architectures": ["XLMRobertaModel"], "hidden_act": "gelu", "hidden_size": 1024,
  "intermediate_size": 4096, "layer_norm_eps": 1e-05, "max_position_embeddings": 8194,
  "model_type": "xlm-roberta", "num_attention_heads": 16, "num_hidden_layers": 24,
  "pad_token_id": 1, "type_vocab_size": 1, "vocab_size": 250002,
  "position_embedding_type": "absolute"
})";

uint64_t align64(uint64_t n) { return (n + 63) / 64 * 64; }

struct Shapes {
  uint64_t vocab, positions, hidden, ffn, layers;
  bool colbert, sparse;
};

// Every tensor's elements x 4 bytes.
uint64_t weights_by_hand(const Shapes& s) {
  const uint64_t h = s.hidden, f = s.ffn;
  const uint64_t per_layer = (3 * h * h + 3 * h)  // query, key, value
                             + (h * h + h)        // attention.output.dense
                             + (f * h + f)        // intermediate.dense
                             + (h * f + h)        // output.dense
                             + 4 * h;             // two LayerNorms (weight + bias)
  uint64_t elements = s.vocab * h + s.positions * h + h /* token type 0 */ + 2 * h /* LayerNorm */ +
                      s.layers * per_layer;
  if (s.colbert) elements += h * h + h;
  if (s.sparse) elements += h + 1;
  return 4 * elements;
}

// The arena of MemoryPlan's layout: buffers one after the other at 64-byte aligned
// offsets; every activation buffer has max_batch_tokens rows (rounded up to 64), the FFN
// buffer is as wide as the FFN or the head outputs, whichever is wider.
std::vector<uint64_t> arena_buffers_by_hand(const Shapes& s, uint64_t batch_tokens, uint64_t max_seq_len,
                                            uint64_t threads, uint64_t workspace) {
  const uint64_t rows = batch_tokens <= 64 ? batch_tokens : (batch_tokens + 63) / 64 * 64;
  const uint64_t head_width = (s.colbert ? s.hidden : 0) + (s.sparse ? 1 : 0);
  return {rows * s.hidden * 4,      rows * 3 * s.hidden * 4, rows * s.hidden * 4,
          rows * std::max(s.ffn, head_width) * 4, threads * 64 * max_seq_len * 4, workspace};
}

uint64_t arena_by_hand(const std::vector<uint64_t>& buffers) {
  uint64_t total = 0;
  for (uint64_t b : buffers) total += align64(b);
  return total;
}

json parse_json(const test::CliResult& r) {
  EXPECT_EQ(r.exit_code, 0) << r.output;
  return json::parse(r.output);
}

// The one line of an error exit.
void expect_one_line_error(const test::CliResult& r, const std::string& text) {
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr(text));
  EXPECT_EQ(std::count(r.output.begin(), r.output.end(), '\n'), 1) << r.output;
}

class PlanCliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    bge_ = tmp_ / "bge-m3";
    std::filesystem::create_directories(bge_);
    test::write_file(bge_ / "config.json", kBgeM3Config);
    test::write_file(bge_ / "colbert_linear.pt", "");
    test::write_file(bge_ / "sparse_linear.pt", "");
  }
  test::CliResult plan(const std::filesystem::path& model, const std::string& args) {
    return test::run_cli("plan --model " + quoted(model) + " " + args);
  }
  // oneDNN's scratchpad for `rows` rows run by `threads` threads (a replica's).
  uint64_t workspace(const std::filesystem::path& model, int64_t rows, int threads) {
    const bool heads = std::filesystem::exists(model / "colbert_linear.pt");
    return CpuBackend::library_workspace_bytes(xlmr_m3_weight_table(ModelConfig::load(model), heads, heads), rows,
                                               DType::F32, threads);
  }

  // Outputs in flight: 2 batches per replica of rows x (hidden + 3) floats (BGE-M3); and the
  // default output memory: the larger of that and two max-length responses as JSON (20 bytes
  // a float: the float and its text).
  static uint64_t outputs(uint64_t tokens, uint64_t replicas, uint64_t hidden = 1024) {
    return 2 * replicas * ((tokens + 63) / 64 * 64) * (hidden + 3) * 4;
  }
  static uint64_t output_memory(uint64_t tokens, uint64_t replicas, uint64_t max_seq_len = 8192,
                                uint64_t hidden = 1024) {
    return std::max(outputs(tokens, replicas, hidden), 2 * max_seq_len * (hidden + 2) * 20);
  }

  test::TempDir tmp_;
  std::filesystem::path bge_;
  std::filesystem::path tiny_ = test::fixtures() / "tiny-st";
  const Shapes bge_shapes_{250002, 8194, 1024, 4096, 24, true, true};
};

TEST_F(PlanCliTest, BgeM3TotalsMatchTheFormula) {
  const auto j = parse_json(plan(bge_, "--max-seq-len 8192 --max-batch-tokens 16384 --threads 16 --json"));
  const uint64_t weights = weights_by_hand(bge_shapes_);
  EXPECT_EQ(weights, 2271023108u);  // 567,755,777 parameters
  EXPECT_EQ(j["weights"]["total_bytes"].get<uint64_t>(), weights);

  const auto buffers = arena_buffers_by_hand(bge_shapes_, 16384, 8192, 16, workspace(bge_, 16384, 16));
  const uint64_t arena = arena_by_hand(buffers);
  // 16384 x (1024 + 3072 + 1024 + 4096) floats + 16 x 64 x 8192 floats of scores = 608 MiB.
  EXPECT_EQ(arena - align64(buffers.back()), 637534208u);
  EXPECT_EQ(j["arena"]["total_bytes"].get<uint64_t>(), arena);
  EXPECT_EQ(j["arena"]["bytes_per_batch_token"].get<uint64_t>(), 36864u);
  EXPECT_EQ(j["result_buffer_bytes"].get<uint64_t>(), output_memory(16384, 1));
  EXPECT_EQ(j["total_bytes"].get<uint64_t>(),
            weights + arena + 16 * 16384 * 4 + outputs(16384, 1) + output_memory(16384, 1));  // + queue, outputs
  EXPECT_EQ(j["queue"]["tokens"].get<int64_t>(), 16 * 16384);
  EXPECT_EQ(j["replicas"].get<int>(), 1);

  // Buffer by buffer, at consecutive aligned offsets.
  const auto& items = j["arena"]["items"];
  ASSERT_EQ(items.size(), buffers.size());
  uint64_t offset = 0;
  for (size_t i = 0; i < buffers.size(); ++i) {
    EXPECT_EQ(items[i]["bytes"].get<uint64_t>(), buffers[i]) << items[i].dump();
    EXPECT_EQ(items[i]["offset"].get<uint64_t>(), offset) << items[i].dump();
    offset += align64(buffers[i]);
  }
  EXPECT_EQ(items[1]["shape"], "[16384, 3072] f32");
  EXPECT_EQ(items[4]["shape"], "[1024, 8192] f32");

  uint64_t sum = 0;
  for (const auto& w : j["weights"]["items"]) sum += w["bytes"].get<uint64_t>();
  EXPECT_EQ(sum, weights);

  EXPECT_EQ(j["model"]["max_tokens"], 8192);
  EXPECT_EQ(j["model"]["heads"], json::array({"dense", "sparse", "colbert"}));
  EXPECT_EQ(j["limits"]["max_seq_len"], 8192);
  EXPECT_EQ(j["limits"]["max_batch_tokens"], 16384);
  EXPECT_TRUE(j["memory_limit"].is_null());
  EXPECT_TRUE(j["corpus"].is_null());
}

TEST_F(PlanCliTest, DefaultsAreTheModelLimitAnd16384Tokens) {
  const auto j = parse_json(plan(bge_, "--threads 2 --json"));
  EXPECT_EQ(j["limits"]["max_seq_len"], 8192);
  EXPECT_EQ(j["limits"]["max_batch_tokens"], 16384);
  EXPECT_EQ(j["limits"]["threads"], 2);
}

TEST_F(PlanCliTest, ReplicasShareWeightsAndSplitThreads) {
  const auto j = parse_json(plan(bge_, "--max-batch-tokens 8192 --threads 16 --replicas 2 --json"));
  EXPECT_EQ(j["limits"]["threads_per_replica"], 8);
  const uint64_t arena = arena_by_hand(arena_buffers_by_hand(bge_shapes_, 8192, 8192, 8, workspace(bge_, 8192, 8)));
  EXPECT_EQ(j["arena"]["total_bytes"].get<uint64_t>(), arena);
  EXPECT_EQ(j["total_bytes"].get<uint64_t>(),
            weights_by_hand(bge_shapes_) + 2 * arena + 16 * 8192 * 4 + outputs(8192, 2) + output_memory(8192, 2));
}

TEST_F(PlanCliTest, TinyFixtureAndMissingHeads) {
  const Shapes tiny{1202, 130, 64, 128, 2, true, true};
  const auto j = parse_json(plan(tiny_, "--max-batch-tokens 1000 --threads 3 --json"));
  EXPECT_EQ(j["limits"]["max_seq_len"], 128);
  EXPECT_EQ(j["weights"]["total_bytes"].get<uint64_t>(), weights_by_hand(tiny));
  const uint64_t arena = arena_by_hand(arena_buffers_by_hand(tiny, 1000, 128, 3, workspace(tiny_, 1000, 3)));
  EXPECT_EQ(j["arena"]["items"][0]["shape"], "[1024, 64] f32");  // 1000 rows rounded up to 64
  EXPECT_EQ(j["arena"]["total_bytes"].get<uint64_t>(), arena);
  EXPECT_EQ(j["total_bytes"].get<uint64_t>(), weights_by_hand(tiny) + arena + 16 * 1000 * 4 + 2 * 1024 * (64 + 3) * 4 +
                                                  output_memory(1000, 1, 128, 64));

  // Without head files only the encoder counts. With an FFN narrower than the head
  // outputs (32 < 64 + 1), the shared buffer takes the heads' width.
  const auto bare = tmp_ / "bare";
  std::filesystem::create_directories(bare);
  std::string config = test::read_file(tiny_ / "config.json");
  config.replace(config.find("\"intermediate_size\": 128"), 24, "\"intermediate_size\": 32");
  test::write_file(bare / "config.json", config);
  const Shapes bare_shapes{1202, 130, 64, 32, 2, false, false};
  const auto b = parse_json(plan(bare, "--threads 1 --max-batch-tokens 128 --json"));
  EXPECT_EQ(b["model"]["heads"], json::array({"dense"}));
  EXPECT_EQ(b["weights"]["total_bytes"].get<uint64_t>(), weights_by_hand(bare_shapes));
  EXPECT_EQ(b["arena"]["total_bytes"].get<uint64_t>(),
            arena_by_hand(arena_buffers_by_hand(bare_shapes, 128, 128, 1, workspace(bare, 128, 1))));

  test::write_file(bare / "colbert_linear.pt", "");
  test::write_file(bare / "sparse_linear.pt", "");
  const Shapes heads_shapes{1202, 130, 64, 32, 2, true, true};
  const auto h = parse_json(plan(bare, "--threads 1 --max-batch-tokens 128 --json"));
  EXPECT_EQ(h["arena"]["items"][3]["shape"], "[128, 65] f32");
  EXPECT_EQ(h["arena"]["total_bytes"].get<uint64_t>(),
            arena_by_hand(arena_buffers_by_hand(heads_shapes, 128, 128, 1, workspace(bare, 128, 1))));
}

TEST_F(PlanCliTest, MemoryLimitChoosesTheLargestBudgetThatFits) {
  const uint64_t limit = 6ull << 30;
  const auto j = parse_json(plan(bge_, "--memory-limit 6GiB --threads 16 --json"));
  const auto t = j["memory_limit"]["max_batch_tokens"].get<uint64_t>();
  EXPECT_EQ(j["limits"]["max_batch_tokens"].get<uint64_t>(), t);
  EXPECT_EQ(t % 64, 0u);
  // The choice is made with the workspace the largest budget could need, as Embedder does.
  const uint64_t weights = weights_by_hand(bge_shapes_);
  const uint64_t ws_most = workspace(bge_, Embedder::kMaxBatchTokensForLimit, 16);
  auto total = [&](uint64_t tokens) {
    return weights + arena_by_hand(arena_buffers_by_hand(bge_shapes_, tokens, 8192, 16, ws_most)) +
           16 * tokens * 4 + outputs(tokens, 1) + output_memory(tokens, 1);  // the queue holds 16 batches of ids
  };
  EXPECT_LE(total(t), limit);
  EXPECT_GT(total(t + 64), limit);
  const uint64_t used =
      weights + arena_by_hand(arena_buffers_by_hand(bge_shapes_, t, 8192, 16, workspace(bge_, t, 16))) + 16 * t * 4 +
      outputs(t, 1) + output_memory(t, 1);
  EXPECT_EQ(j["total_bytes"].get<uint64_t>(), used);
  EXPECT_EQ(j["memory_limit"]["used_bytes"].get<uint64_t>(), used);
  EXPECT_EQ(j["memory_limit"]["limit_bytes"].get<uint64_t>(), limit);
  // The minimum is one sequence per pass with that pass's own workspace.
  EXPECT_EQ(j["memory_limit"]["minimum_bytes"].get<uint64_t>(),
            weights + arena_by_hand(arena_buffers_by_hand(bge_shapes_, 8192, 8192, 16, workspace(bge_, 8192, 16))) +
                16 * 8192 * 4 + outputs(8192, 1) + output_memory(8192, 1));
  EXPECT_DOUBLE_EQ(j["memory_limit"]["used_fraction"].get<double>(), double(used) / double(limit));

  // A limit never picks more than Embedder's cap.
  const auto big = parse_json(plan(bge_, "--memory-limit 64GiB --threads 16 --json"));
  EXPECT_EQ(big["limits"]["max_batch_tokens"], Embedder::kMaxBatchTokensForLimit);

  const auto text = plan(bge_, "--memory-limit 6GiB --threads 16");
  EXPECT_EQ(text.exit_code, 0) << text.output;
  EXPECT_THAT(text.output, HasSubstr("chosen max batch tokens  " + std::to_string(t)));
}

TEST_F(PlanCliTest, TooSmallLimitFailsNamingTheMinimum) {
  // One sequence per pass, with that pass's own GEMM workspace (not the largest budget's).
  const uint64_t minimum = weights_by_hand(bge_shapes_) +
                           arena_by_hand(arena_buffers_by_hand(bge_shapes_, 8192, 8192, 16, workspace(bge_, 8192, 16))) +
                           16 * 8192 * 4 + outputs(8192, 1) + output_memory(8192, 1);
  const auto r = plan(bge_, "--memory-limit 2GiB --threads 16");
  expect_one_line_error(r, "too small");
  EXPECT_THAT(r.output, HasSubstr(format_bytes(minimum)));
  EXPECT_THAT(r.output, HasSubstr("8192-token"));
  // Exactly the minimum fits, with one sequence per pass.
  const auto j = parse_json(plan(bge_, "--memory-limit " + std::to_string(minimum) + " --threads 16 --json"));
  EXPECT_EQ(j["memory_limit"]["max_batch_tokens"], 8192);
}

TEST_F(PlanCliTest, ErrorsExitNonZeroWithOneLine) {
  expect_one_line_error(plan(bge_, "--memory-limit 6XB"), "unknown unit");
  expect_one_line_error(plan(bge_, "--memory-limit lots"), "not a size");
  expect_one_line_error(plan(bge_, "--max-seq-len 9000"), "9000");
  expect_one_line_error(plan(bge_, "--max-seq-len 8192 --max-batch-tokens 4096"), "max sequence length 8192");
  const auto empty = tmp_ / "empty";
  std::filesystem::create_directories(empty);
  expect_one_line_error(plan(empty, ""), "config.json");
  // A budget and a limit together are refused by the parser.
  EXPECT_NE(plan(bge_, "--max-batch-tokens 16384 --memory-limit 6GiB").exit_code, 0);
}

TEST_F(PlanCliTest, CorpusStatsEqualCorpusStatsOfTheTokenLengths) {
  std::vector<std::string> texts = {"hello world", "", "a somewhat longer text with more words in it, and more",
                                    "一段中文", "short", "x"};
  std::string long_text;
  for (int i = 0; i < 40; ++i) long_text += "word" + std::to_string(i) + " ";
  texts.push_back(long_text);
  texts.push_back(long_text + long_text);
  std::string file;
  for (const auto& t : texts) file += t + "\n";
  test::write_file(tmp_ / "corpus.txt", file);

  const int64_t max_seq_len = 16;
  const auto tokenizer = XlmrTokenizer::load(tiny_);
  std::vector<int64_t> lengths;
  int64_t truncated = 0, longest = 0;
  for (const auto& t : texts) {
    bool cut = false;
    lengths.push_back(static_cast<int64_t>(tokenizer.encode(t, max_seq_len, &cut).size()));
    truncated += cut;
    longest = std::max(longest, static_cast<int64_t>(tokenizer.encode(t).size()));
  }
  ASSERT_EQ(truncated, 3);
  const auto expected = corpus_stats(lengths, 3, 32);

  const auto j = parse_json(plan(tiny_, "--max-seq-len 16 --max-batch-tokens 32 --threads 1 --batch-size 3 "
                                        "--corpus " + quoted(tmp_ / "corpus.txt") + " --json"));
  const auto& c = j["corpus"];
  EXPECT_EQ(c["texts"], 8);
  EXPECT_EQ(c["tokens"], expected.lengths.total_tokens);
  EXPECT_EQ(c["truncated"], truncated);
  EXPECT_EQ(c["longest_before_truncation"], longest);
  EXPECT_EQ(c["min"], expected.lengths.min);
  EXPECT_EQ(c["max"], 16);
  EXPECT_DOUBLE_EQ(c["mean"].get<double>(), expected.lengths.mean);
  const auto& p = expected.lengths.percentiles;
  EXPECT_EQ(c["percentiles"]["p50"], p.p50);
  EXPECT_EQ(c["percentiles"]["p90"], p.p90);
  EXPECT_EQ(c["percentiles"]["p95"], p.p95);
  EXPECT_EQ(c["percentiles"]["p99"], p.p99);
  EXPECT_EQ(c["percentiles"]["p99.9"], p.p999);
  ASSERT_EQ(c["histogram"].size(), expected.lengths.histogram.size());
  for (size_t k = 0; k < expected.lengths.histogram.size(); ++k) {
    const auto& b = expected.lengths.histogram[k];
    EXPECT_EQ(c["histogram"][k]["min"], b.min_len);
    EXPECT_EQ(c["histogram"][k]["max"], b.max_len);
    EXPECT_EQ(c["histogram"][k]["texts"], b.texts) << k;
    EXPECT_EQ(c["histogram"][k]["tokens"], b.tokens) << k;
  }
  EXPECT_EQ(c["reference"]["batch_size"], 3);
  for (const auto& [key, b] : {std::pair{"sorted", expected.reference_sorted},
                               std::pair{"unsorted", expected.reference_unsorted}}) {
    EXPECT_EQ(c["reference"][key]["batches"], b.batches) << key;
    EXPECT_EQ(c["reference"][key]["real_tokens"], b.real_tokens) << key;
    EXPECT_EQ(c["reference"][key]["padded_tokens"], b.padded_tokens) << key;
    EXPECT_EQ(c["reference"][key]["largest_batch_tokens"], b.largest_batch_tokens) << key;
    EXPECT_DOUBLE_EQ(c["reference"][key]["waste_fraction"].get<double>(), b.waste_fraction()) << key;
  }
  EXPECT_GT(expected.reference_sorted.padded_tokens, expected.reference_sorted.real_tokens);
  EXPECT_EQ(c["m3embed"]["max_batch_tokens"], 32);
  EXPECT_EQ(c["m3embed"]["passes"], expected.m3embed.passes);
  EXPECT_EQ(c["m3embed"]["tokens"], expected.lengths.total_tokens);

  // JSONL with another field gives the same numbers; the text report shows them.
  std::string jsonl;
  for (const auto& t : texts) jsonl += json({{"body", t}}).dump() + "\n";
  test::write_file(tmp_ / "corpus.jsonl", jsonl);
  const auto k = parse_json(plan(tiny_, "--max-seq-len 16 --max-batch-tokens 32 --threads 1 --batch-size 3 "
                                        "--corpus " + quoted(tmp_ / "corpus.jsonl") + " --field body --json"));
  EXPECT_EQ(k["corpus"]["tokens"], c["tokens"]);
  EXPECT_EQ(k["corpus"]["reference"], c["reference"]);

  const auto text = plan(tiny_, "--max-seq-len 16 --max-batch-tokens 32 --threads 1 --batch-size 3 --corpus " +
                                    quoted(tmp_ / "corpus.txt"));
  ASSERT_EQ(text.exit_code, 0) << text.output;
  EXPECT_THAT(text.output, HasSubstr("p99.9"));
  EXPECT_THAT(text.output, HasSubstr("truncated at 16 tokens: 3 texts"));
  EXPECT_THAT(text.output, HasSubstr("#"));
  EXPECT_THAT(text.output, HasSubstr("padded tokens"));
  EXPECT_THAT(text.output, HasSubstr(std::to_string(expected.m3embed.passes) + " (the reference runs " +
                                     std::to_string(expected.reference_sorted.batches) + " batches)"));
}

TEST_F(PlanCliTest, CorpusNeedsTheTokenizer) {
  test::write_file(tmp_ / "corpus.txt", "hello\n");
  const auto r = plan(bge_, "--corpus " + quoted(tmp_ / "corpus.txt"));
  expect_one_line_error(r, "sentencepiece.bpe.model");
}

TEST_F(PlanCliTest, TextReportListsEveryPart) {
  const auto r = plan(bge_, "--threads 16");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  for (const char* part : {"Inputs", "Weights", "embeddings.word_embeddings", "Arena", "qkv",
                           "FFN intermediate / head outputs", "attention scratch (16 threads x 64 query rows)",
                           "total per replica", "Total", "2271023108"}) {
    EXPECT_THAT(r.output, HasSubstr(part));
  }
  EXPECT_THAT(plan(bge_, "--help").output, HasSubstr("--json keys"));
}

}  // namespace
}  // namespace m3
