// m3embed: BGE-M3 embeddings (dense, sparse, ColBERT) without PyTorch.
#include <cstdio>

#include <CLI/CLI.hpp>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include "m3/cli/commands.h"
#include "m3/cli/serve_command.h"
#include "m3/core/error.h"

int main(int argc, char** argv) {
  // Logs go to stderr: stdout may be carrying results (--output -).
  spdlog::set_default_logger(spdlog::stderr_color_mt("m3embed"));
  spdlog::set_pattern("%^[%l]%$ %v");

  CLI::App app{"m3embed " M3_VERSION ": BGE-M3 embeddings (dense, sparse/lexical, ColBERT) on CPU, with the same "
               "numbers as FlagEmbedding"};
  app.require_subcommand(1);
  app.fallthrough();  // --log-level may also follow the subcommand
  app.set_version_flag("--version", std::string("m3embed ") + M3_VERSION);
  std::string log_level = "info";
  app.add_option("--log-level", log_level, "Log level: trace, debug, info, warn, error, off")
      ->envname("M3_LOG_LEVEL")
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error", "off"}))
      ->capture_default_str();
  app.parse_complete_callback([&] { spdlog::set_level(spdlog::level::from_str(log_level)); });
  m3::cli::add_encode_command(app);
  m3::cli::add_score_command(app);
  m3::cli::add_rerank_command(app);
  m3::cli::add_tokenize_command(app);
  m3::cli::add_download_command(app);
  m3::cli::add_plan_command(app);
  m3::cli::add_serve_command(app);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const m3::HubUnreachable& e) {
    std::fprintf(stderr, "m3embed: error: %s\n", e.what());
    return 3;
  } catch (const m3::Error& e) {
    std::fprintf(stderr, "m3embed: error: %s\n", e.what());
    return 1;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "m3embed: error: out of memory (try a smaller --batch-tokens)\n");
    return 1;
  }
  return 0;
}
