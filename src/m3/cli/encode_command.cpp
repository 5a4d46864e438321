// `m3embed encode`: texts in, one JSON line of M3 outputs per text out, in input order.
#include <memory>

#include <spdlog/spdlog.h>

#include "m3/cli/commands.h"
#include "m3/cli/model_options.h"
#include "m3/core/error.h"
#include "m3/core/progress_bar.h"
#include "m3/io/line_writer.h"
#include "m3/io/output_json.h"
#include "m3/io/text_input.h"

namespace m3::cli {
namespace {

struct EncodeOptions {
  ModelOptions model;
  std::string input, output = "-", format = "auto", field = "text";
  bool dense = false, sparse = false, colbert = false, no_truncate = false, quiet = false;
  int64_t max_length = 0;  // 0: the model's limit (8192 for BGE-M3)
};

// Texts per chunk: outputs are written after each chunk, so memory stays bounded.
constexpr size_t kChunkTexts = 2048;

void run_encode(const EncodeOptions& o) {
  OutputRequest request{o.dense, o.sparse, o.colbert};
  if (!o.dense && !o.sparse && !o.colbert) request = {true, false, false};
  const auto texts = read_texts(o.input, parse_input_format(o.format), o.field);
  auto embedder = load_embedder(o.model, o.max_length);
  embedder->check(request);
  const int64_t max_length =
      o.max_length > 0 ? effective_length(*embedder, o.max_length, "--max-length") : embedder->max_seq_len();

  std::vector<std::vector<int32_t>> sequences(texts.size());
  size_t truncated = 0, tokens = 0;
  for (size_t i = 0; i < texts.size(); ++i) {
    bool cut = false;
    sequences[i] = embedder->tokenize(texts[i], max_length, &cut);
    if (cut && o.no_truncate) {
      fail("text {} of {} is longer than {} tokens (--no-truncate is set)", i + 1, o.input, max_length);
    }
    truncated += cut;
    tokens += sequences[i].size();
  }
  if (truncated) {
    spdlog::warn("{} of {} texts were longer than {} tokens and were truncated (see --max-length, --no-truncate)",
                 truncated, texts.size(), max_length);
  }

  LineWriter writer(o.output);
  ProgressBar bar(texts.size(), "texts", !o.quiet);
  const int64_t hidden = embedder->config().hidden_size;
  for (size_t first = 0; first < sequences.size(); first += kChunkTexts) {
    const size_t last = std::min(sequences.size(), first + kChunkTexts);
    const std::vector<std::vector<int32_t>> chunk(sequences.begin() + first, sequences.begin() + last);
    const auto outputs = embedder->encode(chunk, request, [&](size_t done) { bar.update(first + done); });
    for (const auto& out : outputs) writer.write(m3_output_json(out, request, hidden));
  }
  writer.close();
  bar.finish();
  spdlog::info("encoded {} texts ({} tokens) to {}", texts.size(), tokens, o.output == "-" ? "stdout" : o.output);
}

}  // namespace

void add_encode_command(CLI::App& app) {
  auto o = std::make_shared<EncodeOptions>();
  auto* cmd = app.add_subcommand("encode", "Embed texts from a file: dense, sparse (lexical) and/or ColBERT outputs");
  cmd->footer(
      "Input: one text per line, or JSONL objects {\"text\": ...} (--format). Output: one JSON object per input "
      "text, in input order, with FlagEmbedding's keys: \"dense_vecs\" (list of floats), \"lexical_weights\" "
      "(token id string -> weight), \"colbert_vecs\" (list of vectors). Without --dense/--sparse/--colbert only "
      "dense is computed. Texts longer than --max-length tokens are truncated with a warning (FlagEmbedding "
      "truncates silently at 512 by default; pass --max-length 512 for its numbers on long texts).");
  add_model_options(*cmd, o->model);
  cmd->add_option("-i,--input", o->input, "Input file, or - for standard input")->required();
  cmd->add_option("-o,--output", o->output, "Output JSONL file, or - for standard output")->capture_default_str();
  cmd->add_option("--format", o->format, "Input format: auto (JSONL for .jsonl/.ndjson/.json), text or jsonl")
      ->check(CLI::IsMember({"auto", "text", "jsonl"}))
      ->capture_default_str();
  cmd->add_option("--field", o->field, "JSONL field holding the text")->capture_default_str();
  cmd->add_flag("--dense", o->dense, "Output dense_vecs (normalized CLS vector)");
  cmd->add_flag("--sparse", o->sparse, "Output lexical_weights (needs sparse_linear.pt)");
  cmd->add_flag("--colbert", o->colbert, "Output colbert_vecs (needs colbert_linear.pt)");
  cmd->add_option("--max-length", o->max_length,
                  "Maximum tokens per text, <s> and </s> included (default: the model's limit, 8192 for BGE-M3)")
      ->envname("M3_MAX_SEQ_LEN")
      ->check(CLI::Range(int64_t{2}, int64_t{1} << 20));
  cmd->add_flag("--no-truncate", o->no_truncate, "Fail instead of truncating texts longer than --max-length");
  cmd->add_flag("-q,--quiet", o->quiet, "No progress bar");
  cmd->callback([o] { run_encode(*o); });
}

}  // namespace m3::cli
