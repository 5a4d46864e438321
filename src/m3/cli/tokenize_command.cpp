// `m3embed tokenize`: the token ids (and pieces) the model would see for each text.
#include <memory>

#include "m3/cli/commands.h"
#include "m3/cli/model_options.h"
#include "m3/core/error.h"
#include "m3/io/line_writer.h"
#include "m3/io/output_json.h"
#include "m3/io/text_input.h"
#include "m3/hub/hub.h"
#include "m3/tokenizer/xlmr_tokenizer.h"

namespace m3::cli {
namespace {

struct TokenizeOptions {
  ModelOptions model;
  std::string input, output = "-", format = "auto", field = "text";
  int64_t max_length = 0;
  bool pieces = false;
  bool offsets = false;
};

void run_tokenize(const TokenizeOptions& o) {
  const auto texts = read_texts(o.input, parse_input_format(o.format), o.field);
  const auto tokenizer = XlmrTokenizer::load(resolve_model_dir(o.model));
  LineWriter writer(o.output);
  for (const auto& text : texts) {
    std::vector<ByteRange> ranges;
    const auto ids = tokenizer.encode(text, static_cast<size_t>(o.max_length), nullptr, false,
                                      o.offsets ? &ranges : nullptr);
    std::vector<std::string> pieces;
    if (o.pieces) {
      for (int32_t id : ids) pieces.push_back(tokenizer.id_to_piece(id));
    }
    std::vector<std::pair<uint32_t, uint32_t>> offsets;
    for (const ByteRange& r : ranges) offsets.emplace_back(r.begin, r.end);
    writer.write(tokens_json(ids, pieces, offsets));
  }
  writer.close();
}

}  // namespace

void add_tokenize_command(CLI::App& app) {
  auto o = std::make_shared<TokenizeOptions>();
  auto* cmd = app.add_subcommand("tokenize", "Show the token ids of texts (XLM-R tokenizer, as transformers)");
  cmd->footer(
      "Output: one JSON object per text: {\"input_ids\": [...]}, plus \"tokens\" with --pieces and \"offsets\" "
      "with --offsets.");
  add_model_options(*cmd, o->model);
  cmd->add_option("-i,--input", o->input, "Input file (text lines or JSONL), or - for standard input")->required();
  cmd->add_option("-o,--output", o->output, "Output JSONL file, or - for standard output")->capture_default_str();
  cmd->add_option("--format", o->format, "Input format: auto, text or jsonl")
      ->check(CLI::IsMember({"auto", "text", "jsonl"}))
      ->capture_default_str();
  cmd->add_option("--field", o->field, "JSONL field holding the text")->capture_default_str();
  cmd->add_option("--max-length", o->max_length, "Truncate to this many tokens, specials included (0: no limit)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_flag("--pieces", o->pieces, "Also output the token strings");
  cmd->add_flag("--offsets", o->offsets,
                "Also output each token's [start, end) byte offsets in the text, as Hugging Face tokenizers "
                "(and TEI's /tokenize) report them; [0, 0] for the <s> and </s> added around it");
  cmd->callback([o] { run_tokenize(*o); });
}

}  // namespace m3::cli
