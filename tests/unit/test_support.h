// Shared helpers for the C++ tests: fixture paths, JSON goldens, running the CLI.
#pragma once

#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <simdjson.h>

#include "m3/model/model_config.h"

namespace m3::test {

// The build's paths, unless the environment names others: scripts/gpu-check.sh runs these
// binaries on another machine, where the checkout and the m3embed binary live elsewhere.
inline std::filesystem::path fixtures() {
  const char* dir = std::getenv("M3_FIXTURES_DIR");
  return dir && *dir ? dir : M3_FIXTURES_DIR;
}
inline std::string m3embed_binary() {
  const char* binary = std::getenv("M3_BINARY");
  return binary && *binary ? binary : M3_BINARY;
}

// The full-size BGE-M3 config (XLM-RoBERTa-large, 8192 tokens), for plans worked by hand.
inline ModelConfig bge_m3_config() {
  ModelConfig c;
  c.vocab_size = 250002;
  c.hidden_size = 1024;
  c.num_layers = 24;
  c.num_heads = 16;
  c.intermediate_size = 4096;
  c.max_position_embeddings = 8194;
  return c;
}

inline std::string read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

inline void write_file(const std::filesystem::path& path, const std::string& data) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(data.data(), static_cast<std::streamsize>(data.size()));
}

// A fresh directory under the system temp dir, removed by the destructor.
class TempDir {
 public:
  TempDir() {
    std::random_device rd;
    path_ = std::filesystem::temp_directory_path() / ("m3test-" + std::to_string(rd()) + std::to_string(rd()));
    std::filesystem::create_directories(path_);
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::string& name) const { return path_ / name; }

 private:
  std::filesystem::path path_;
};

// Copies a fixture model directory (its regular files) so a test can break it.
inline void copy_model(const std::filesystem::path& from, const std::filesystem::path& to) {
  std::filesystem::create_directories(to);
  for (const auto& entry : std::filesystem::directory_iterator(from)) {
    if (entry.is_regular_file()) std::filesystem::copy_file(entry.path(), to / entry.path().filename());
  }
}

struct CliResult {
  int exit_code = -1;
  std::string output;  // stdout and stderr together
};

// Runs the m3embed binary with `args` (shell-quoted by the caller), stdin from /dev/null.
inline CliResult run_cli(const std::string& args) {
  const std::string command = "'" + m3embed_binary() + "' " + args + " </dev/null 2>&1";
  CliResult result;
  FILE* pipe = popen(command.c_str(), "r");
  if (!pipe) return result;
  std::array<char, 4096> buffer;
  size_t n;
  while ((n = fread(buffer.data(), 1, buffer.size(), pipe)) > 0) result.output.append(buffer.data(), n);
  const int status = pclose(pipe);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return result;
}

inline std::vector<float> floats(simdjson::dom::array array) {
  std::vector<float> v;
  for (auto x : array) v.push_back(static_cast<float>(double(x)));
  return v;
}

}  // namespace m3::test
