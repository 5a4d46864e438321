// `m3embed rerank`: a query and its passages in, a reranker's scores out (a cross-encoder
// such as bge-reranker-v2-m3, as FlagEmbedding's FlagReranker.compute_score scores them).
#include <cmath>
#include <memory>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "m3/cli/commands.h"
#include "m3/cli/model_options.h"
#include "m3/core/error.h"
#include "m3/core/progress_bar.h"
#include "m3/io/line_writer.h"
#include "m3/io/text_input.h"

namespace m3::cli {
namespace {

struct RerankOptions {
  ModelOptions model;
  std::string input, output = "-";
  int64_t max_length = 512, query_max_length = 0;
  bool normalize = false, quiet = false;
};

std::string score_text(float logit, bool normalize) {
  return fmt::format("{}", normalize ? 1.f / (1.f + std::exp(-logit)) : logit);
}

void run_rerank(const RerankOptions& o) {
  const auto lines = read_rerank_lines(o.input);
  auto reranker = load_embedder(o.model, o.max_length);
  if (!reranker->is_classifier() || reranker->config().num_labels != 1) {
    fail("{} is not a reranker (a classifier with one label: architectures [\"XLMRobertaForSequenceClassification\"] "
         "in config.json); it is {}",
         reranker->model_dir().string(), reranker->describe());
  }
  const int64_t max_length = effective_length(*reranker, o.max_length, "--max-length");
  size_t pairs = 0;
  for (const auto& line : lines) pairs += line.passages.size();
  LineWriter writer(o.output);
  ProgressBar bar(pairs, "pairs", !o.quiet);
  // Lines go through the model together, a few batches' worth of pairs at a time, so short
  // lines still fill batches; their scores are written in input order.
  const int64_t chunk_tokens = 4 * reranker->max_batch_tokens();
  size_t done = 0;
  for (size_t first = 0; first < lines.size();) {
    std::vector<std::vector<int32_t>> sequences;
    int64_t tokens = 0;
    size_t last = first;
    for (; last < lines.size() && (last == first || tokens < chunk_tokens); ++last) {
      for (const auto& passage : lines[last].passages) {
        sequences.push_back(reranker->tokenize_pair(lines[last].query, passage, max_length, o.query_max_length));
        tokens += static_cast<int64_t>(sequences.back().size());
      }
    }
    const auto outputs = reranker->encode(sequences, OutputRequest{.dense = false, .scores = true});
    size_t at = 0;
    for (size_t i = first; i < last; ++i) {
      const RerankLine& line = lines[i];
      if (line.single) {
        writer.write("{\"score\":" + score_text(outputs[at].scores[0], o.normalize) + "}");
      } else {
        std::string out = "{\"scores\":[";
        for (size_t k = 0; k < line.passages.size(); ++k) {
          out += (k ? "," : "") + score_text(outputs[at + k].scores[0], o.normalize);
        }
        writer.write(out + "]}");
      }
      at += line.passages.size();
    }
    done += sequences.size();
    bar.update(done);
    first = last;
  }
  writer.close();
  bar.finish();
  spdlog::info("scored {} pairs of {} queries", pairs, lines.size());
}

}  // namespace

void add_rerank_command(CLI::App& app) {
  auto o = std::make_shared<RerankOptions>();
  auto* cmd = app.add_subcommand("rerank", "Score query/passage pairs with a reranker (cross-encoder)");
  cmd->footer(
      "Input: JSONL lines {\"query\": ..., \"passages\": [...]} (output {\"scores\": [...]}, in passage order), or "
      "{\"query\": ..., \"passage\": ...} / [query, passage] (output {\"score\": ...}). Scores are the model's logits "
      "(FlagReranker's compute_score), or their sigmoid with --normalize. A pair is <s> query </s></s> passage </s>: "
      "the query cut to --query-max-length tokens, then the passage's end so the pair fits --max-length, as "
      "FlagReranker cuts it.");
  add_model_options(*cmd, o->model);
  cmd->add_option("-i,--input", o->input, "Input JSONL file, or - for standard input")->required();
  cmd->add_option("-o,--output", o->output, "Output JSONL file, or - for standard output")->capture_default_str();
  cmd->add_option("--max-length", o->max_length, "Maximum tokens per pair (FlagReranker's default 512)")
      ->check(CLI::Range(int64_t{8}, int64_t{1} << 20))
      ->capture_default_str();
  cmd->add_option("--query-max-length", o->query_max_length, "Maximum query tokens (0: 3/4 of --max-length)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd->add_flag("--normalize", o->normalize, "Sigmoid of the scores (FlagReranker's normalize=True)");
  cmd->add_flag("-q,--quiet", o->quiet, "No progress bar");
  cmd->callback([o] { run_rerank(*o); });
}

}  // namespace m3::cli
