// The hub cache layout shared with huggingface_hub: pointer links must never be seen
// missing by a concurrent reader (two `m3embed download` runs on one cache).
#include <atomic>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>

#include <gtest/gtest.h>
#include <unistd.h>

#include "m3/hub/hf_cache.h"

namespace fs = std::filesystem;

namespace m3 {
namespace {

const std::string kCommit = "3d1f0c8e5b7a9f2e4c6d8a0b1e3f5a7c9d2b4e6f";

TEST(HfRepoCache, LinkPointsIntoBlobsWithARelativePath) {
  const fs::path dir = fs::temp_directory_path() / ("m3-hf-cache-layout-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  const HfRepoCache cache(dir, "acme/tiny-m3");
  cache.prepare(kCommit);
  std::ofstream(cache.blob("abc")) << "weights";
  cache.link(kCommit, "sub/model.safetensors", "abc");
  const fs::path pointer = cache.pointer(kCommit, "sub/model.safetensors");
  EXPECT_EQ(fs::read_symlink(pointer), fs::path("../../../blobs/abc"));
  EXPECT_TRUE(fs::is_regular_file(pointer));
  // Relinking to another blob replaces the link.
  std::ofstream(cache.blob("def")) << "other";
  cache.link(kCommit, "sub/model.safetensors", "def");
  EXPECT_EQ(fs::read_symlink(pointer), fs::path("../../../blobs/def"));
  fs::remove_all(dir);
}

TEST(HfRepoCache, ConcurrentRelinkNeverLeavesThePointerMissing) {
  const fs::path dir = fs::temp_directory_path() / ("m3-hf-cache-race-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  const HfRepoCache cache(dir, "acme/tiny-m3");
  cache.prepare(kCommit);
  std::ofstream(cache.blob("abc")) << "weights";
  std::ofstream(cache.blob("def")) << "weights";
  cache.link(kCommit, "model.safetensors", "abc");
  const fs::path pointer = cache.pointer(kCommit, "model.safetensors");

  std::atomic<bool> done{false};
  std::atomic<int> misses{0}, checks{0};
  std::thread reader([&] {
    while (!done.load()) {
      std::error_code ec;
      if (!fs::is_regular_file(pointer, ec)) misses.fetch_add(1);
      checks.fetch_add(1);
    }
  });
  // Alternate targets so that every call really replaces the link; go on until the reader
  // has looked often while relinking went on (on a loaded machine it may start late).
  for (int i = 0; i < 4000 || checks.load() < 2000; ++i) cache.link(kCommit, "model.safetensors", i % 2 ? "abc" : "def");
  done = true;
  reader.join();
  EXPECT_EQ(misses.load(), 0) << "a reader saw the snapshot pointer missing while it was relinked";
  // No temporary links are left behind.
  int entries = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator(cache.snapshot(kCommit))) ++entries;
  EXPECT_EQ(entries, 1);
  fs::remove_all(dir);
}

}  // namespace
}  // namespace m3
