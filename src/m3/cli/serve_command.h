// `m3embed serve`: the HTTP server (OpenAI, TEI-compatible and native routes).
#pragma once

#include <CLI/CLI.hpp>

namespace m3::cli {

void add_serve_command(CLI::App& app);

}  // namespace m3::cli
