// The m3embed subcommands; each registers its options and its action on the app.
#pragma once

#include <CLI/CLI.hpp>

namespace m3::cli {

void add_encode_command(CLI::App& app);
void add_score_command(CLI::App& app);
void add_rerank_command(CLI::App& app);
void add_tokenize_command(CLI::App& app);
void add_download_command(CLI::App& app);
void add_plan_command(CLI::App& app);

}  // namespace m3::cli
