// `m3embed score`: query/passage pairs in, the five scores of compute_score out.
#include <memory>

#include <spdlog/spdlog.h>

#include "m3/cli/commands.h"
#include "m3/cli/model_options.h"
#include "m3/core/error.h"
#include "m3/core/progress_bar.h"
#include "m3/io/line_writer.h"
#include "m3/io/output_json.h"
#include "m3/io/text_input.h"
#include "m3/runtime/ordered_results.h"
#include "m3/model/scoring.h"

namespace m3::cli {
namespace {

struct ScoreOptions {
  ModelOptions model;
  std::string input, output = "-", weights = "1,1,1";
  int64_t max_query_length = 512, max_passage_length = 8192;
  bool quiet = false;
};

ScoreWeights parse_weights(const std::string& text) {
  std::vector<float> values;
  size_t start = 0;
  while (start <= text.size()) {
    const size_t comma = std::min(text.find(',', start), text.size());
    const std::string item = text.substr(start, comma - start);
    try {
      size_t used = 0;
      values.push_back(std::stof(item, &used));
      if (used != item.size()) throw std::invalid_argument(item);
    } catch (const std::exception&) {
      fail("--weights: \"{}\" is not a number", item);
    }
    start = comma + 1;
  }
  if (values.size() != 3) fail("--weights needs three numbers (dense,sparse,colbert), got \"{}\"", text);
  for (float v : values) {
    if (!(v >= 0.f)) fail("--weights must not be negative, got \"{}\"", text);
  }
  if (values[0] + values[1] == 0.f) fail("--weights: dense and sparse weights must not both be 0");
  return {values[0], values[1], values[2]};
}

void run_score(const ScoreOptions& o) {
  const ScoreWeights weights = parse_weights(o.weights);
  const auto pairs = read_pairs(o.input);
  auto embedder = load_embedder(o.model, std::max(o.max_query_length, o.max_passage_length));
  const OutputRequest request{true, true, true};
  embedder->check(request);
  const int64_t query_length = effective_length(*embedder, o.max_query_length, "--max-query-length");
  const int64_t passage_length = effective_length(*embedder, o.max_passage_length, "--max-passage-length");
  const int64_t hidden = embedder->config().hidden_size;

  LineWriter writer(o.output);
  ProgressBar bar(pairs.size(), "pairs", !o.quiet);
  // Pairs go through the model in chunks whose outputs (ColBERT vectors included) fit the
  // planned output memory, so a file of long passages cannot grow memory past the plan.
  const uint64_t budget = embedder->plan().result_buffer_bytes;
  for (size_t first = 0; first < pairs.size();) {
    std::vector<std::vector<int32_t>> queries, passages;
    uint64_t bytes = 0;
    size_t last = first;
    while (last < pairs.size()) {
      auto q = embedder->tokenize(pairs[last].query, query_length);
      auto p = embedder->tokenize(pairs[last].passage, passage_length);
      const uint64_t pair_bytes = OrderedResults::bytes_for(static_cast<int64_t>(q.size()), hidden, request) +
                                  OrderedResults::bytes_for(static_cast<int64_t>(p.size()), hidden, request);
      if (last > first && bytes + pair_bytes > budget) break;
      bytes += pair_bytes;
      queries.push_back(std::move(q));
      passages.push_back(std::move(p));
      ++last;
    }
    const size_t n = last - first;
    for (auto& ids : passages) queries.push_back(std::move(ids));  // queries, then passages: one pass
    const auto outputs = embedder->encode(queries, request);
    for (size_t i = 0; i < n; ++i) writer.write(scores_json(compute_scores(outputs[i], outputs[n + i], hidden, weights)));
    bar.update(last);
    first = last;
  }
  writer.close();
  bar.finish();
  spdlog::info("scored {} pairs", pairs.size());
}

}  // namespace

void add_score_command(CLI::App& app) {
  auto o = std::make_shared<ScoreOptions>();
  auto* cmd = app.add_subcommand("score", "Score query/passage pairs (dense, sparse, ColBERT and their combinations)");
  cmd->footer(
      "Input: JSONL lines {\"query\": ..., \"passage\": ...} or [query, passage]. Output: one JSON object per pair "
      "with the keys of FlagEmbedding's compute_score: \"dense\", \"sparse\", \"colbert\", \"sparse+dense\" = "
      "(ws*s + wd*d)/(ws+wd) and \"colbert+sparse+dense\" = (wc*c + ws*s + wd*d)/(wc+ws+wd). ColBERT is scored "
      "on the real token vectors only (FlagEmbedding's compute_score also lets padding rows of a batch win the "
      "max; see docs).");
  add_model_options(*cmd, o->model);
  cmd->add_option("-i,--input", o->input, "Input JSONL file, or - for standard input")->required();
  cmd->add_option("-o,--output", o->output, "Output JSONL file, or - for standard output")->capture_default_str();
  cmd->add_option("--weights", o->weights, "Weights dense,sparse,colbert for the combined scores")
      ->capture_default_str();
  cmd->add_option("--max-query-length", o->max_query_length, "Maximum tokens per query")
      ->check(CLI::Range(int64_t{2}, int64_t{1} << 20))
      ->capture_default_str();
  cmd->add_option("--max-passage-length", o->max_passage_length, "Maximum tokens per passage")
      ->check(CLI::Range(int64_t{2}, int64_t{1} << 20))
      ->capture_default_str();
  cmd->add_flag("-q,--quiet", o->quiet, "No progress bar");
  cmd->callback([o] { run_score(*o); });
}

}  // namespace m3::cli
