// `m3embed encode`: texts in, one JSON line of M3 outputs per text out, in input order.
// It streams: texts are read and tokenized as they come, each result is written as soon as
// every text before it is written, and the results in between wait in the planned output
// buffer (OrderedResults). When that buffer is full, reading waits for the writer, so
// memory stays within the plan whatever the corpus size and whichever outputs are asked for.
#include <exception>
#include <memory>
#include <optional>
#include <thread>

#include <spdlog/spdlog.h>

#include "m3/cli/commands.h"
#include "m3/cli/model_options.h"
#include "m3/core/error.h"
#include "m3/core/progress_bar.h"
#include "m3/io/line_writer.h"
#include "m3/io/output_json.h"
#include "m3/io/text_input.h"
#include "m3/runtime/ordered_results.h"

namespace m3::cli {
namespace {

struct EncodeOptions {
  ModelOptions model;
  std::string input, output = "-", format = "auto", field = "text";
  bool dense = false, sparse = false, colbert = false, no_truncate = false, quiet = false;
  int64_t max_length = 0;  // 0: the model's limit (8192 for BGE-M3)
};

struct ReadCounts {
  size_t texts = 0, truncated = 0, tokens = 0;
};

// Reads, tokenizes and submits every text, one scheduler request each, reserving its
// result's room first (this is where a full output buffer holds the reading back).
ReadCounts submit_texts(const EncodeOptions& o, Embedder& embedder, const OutputRequest& request,
                        int64_t max_length, OrderedResults& results) {
  ReadCounts counts;
  const int64_t hidden = embedder.config().hidden_size;
  for_each_text(o.input, parse_input_format(o.format), o.field, [&](std::string_view text, size_t line) {
    bool cut = false;
    std::vector<int32_t> ids = embedder.tokenize(text, max_length, &cut);
    if (cut && o.no_truncate) {
      fail("{}:{}: the text is longer than {} tokens (--no-truncate is set)", o.input == "-" ? "<stdin>" : o.input,
           line, max_length);
    }
    counts.truncated += cut;
    counts.tokens += ids.size();
    ++counts.texts;
    const uint64_t number =
        results.reserve(OrderedResults::bytes_for(static_cast<int64_t>(ids.size()), hidden, request));
    std::vector<std::vector<int32_t>> one;
    one.push_back(std::move(ids));
    try {
      embedder.scheduler().submit_wait(std::move(one), request, [&results, number](RequestResult&& r) {
        if (!r.error.empty() || r.outputs.size() != 1) {
          results.fail(number, r.error.empty() ? "internal error: no output" : r.error);
        } else {
          results.deliver(number, r.outputs[0]);
        }
      });
    } catch (const std::exception& e) {
      results.fail(number, e.what());
      throw;
    }
  });
  return counts;
}

void run_encode(const EncodeOptions& o) {
  OutputRequest request{o.dense, o.sparse, o.colbert};
  if (!o.dense && !o.sparse && !o.colbert) request = {true, false, false};
  const InputFormat format = parse_input_format(o.format);
  const std::optional<size_t> total = count_texts(o.input, format);  // for the progress bar only
  auto embedder = load_embedder(o.model, o.max_length);
  embedder->check(request);
  const int64_t max_length =
      o.max_length > 0 ? effective_length(*embedder, o.max_length, "--max-length") : embedder->max_seq_len();
  const int64_t hidden = embedder->config().hidden_size;

  LineWriter writer(o.output);
  ReadCounts counts;
  {
    OrderedResults results(embedder->plan().result_buffer_bytes);
    std::exception_ptr read_error;
    std::thread reader([&] {
      try {
        counts = submit_texts(o, *embedder, request, max_length, results);
      } catch (...) {
        read_error = std::current_exception();
      }
      results.close();  // after a read error the writer still writes what came before it
    });
    ProgressBar bar(total.value_or(0), "texts", !o.quiet);
    std::string buffer;
    auto flush = [&](std::string& text) {
      writer.write_raw(text);
      text.clear();
    };
    size_t written = 0;
    try {
      for (;;) {
        if (!results.next_ready()) {  // about to wait: what is done goes out now (a stream's reader sees it)
          flush(buffer);
          writer.flush();
        }
        const auto result = results.next();
        if (!result) break;
        write_m3_output_json(*result, request, hidden, buffer, flush);
        buffer += '\n';
        if (buffer.size() >= (1 << 16)) flush(buffer);
        results.pop();
        bar.update(++written);
      }
      flush(buffer);
    } catch (const std::exception& e) {
      results.abort(e.what());  // the reader stops at its next text
      reader.join();
      if (read_error) std::rethrow_exception(read_error);  // the first cause
      throw;
    }
    reader.join();
    writer.close();
    bar.finish();
    if (read_error) std::rethrow_exception(read_error);
    spdlog::debug("output buffer: {} of {} used at most", format_bytes(results.peak_used()),
                  format_bytes(results.capacity()));
  }
  if (counts.truncated) {
    spdlog::warn("{} of {} texts were longer than {} tokens and were truncated (see --max-length, --no-truncate)",
                 counts.truncated, counts.texts, max_length);
  }
  const uint64_t plan = embedder->plan().total_bytes, baseline = embedder->baseline_rss(), peak = embedder->peak_rss();
  spdlog::info("encoded {} texts ({} tokens) to {}", counts.texts, counts.tokens,
               o.output == "-" ? "stdout" : o.output);
  spdlog::info("peak resident {} = {:.3f} x (memory plan {} + baseline {}: libraries, tokenizer, compiled kernels)",
               format_bytes(peak), static_cast<double>(peak) / static_cast<double>(plan + baseline),
               format_bytes(plan), format_bytes(baseline));
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
      "truncates silently at 512 by default; pass --max-length 512 for its numbers on long texts). Input is read "
      "and results are written as a stream: memory stays within the plan (`m3embed plan`) for any corpus size; "
      "--output-memory bounds the results waiting to be written. On a bad line, encode stops with its line "
      "number after writing the results of every text before it.");
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
