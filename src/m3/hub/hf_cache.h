// The Hugging Face hub cache, in exactly the layout huggingface_hub writes, so that each
// tool reuses what the other downloaded:
//   <cache>/models--{owner}--{name}/refs/{revision}            commit hash, no newline
//   <cache>/models--{owner}--{name}/blobs/{etag}               file contents
//   <cache>/models--{owner}--{name}/snapshots/{commit}/{file}  -> ../../blobs/{etag}
//   <cache>/models--{owner}--{name}/.no_exist/{commit}/{file}  "not in this commit" marker
//   <cache>/.locks/models--{owner}--{name}/{etag}.lock         flock held while downloading
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <string_view>

namespace m3 {

// A 40-hex-digit git commit hash.
bool is_commit_hash(std::string_view revision);

class HfRepoCache {
 public:
  HfRepoCache(std::filesystem::path cache_dir, const std::string& repo_id);

  const std::filesystem::path& cache_dir() const { return cache_dir_; }
  const std::filesystem::path& root() const { return root_; }
  std::filesystem::path blob(const std::string& etag) const { return root_ / "blobs" / etag; }
  std::filesystem::path incomplete_blob(const std::string& etag) const {
    return root_ / "blobs" / (etag + ".incomplete");
  }
  std::filesystem::path snapshot(const std::string& commit) const { return root_ / "snapshots" / commit; }
  std::filesystem::path pointer(const std::string& commit, const std::string& file) const {
    return snapshot(commit) / file;
  }

  // The commit a revision names: the revision itself when it is a commit hash, else the
  // content of refs/<revision>; nullopt when the cache knows nothing about it.
  std::optional<std::string> commit_for(const std::string& revision) const;

  // refs/<revision> = commit (atomically; nothing written when revision is the commit).
  void write_ref(const std::string& revision, const std::string& commit) const;

  // snapshots/<commit>/<file> -> relative link to blobs/<etag> (replacing what was there).
  void link(const std::string& commit, const std::string& file, const std::string& etag) const;

  // Best effort: records that `file` is absent from `commit` (as huggingface_hub does).
  void mark_missing(const std::string& commit, const std::string& file) const;

  // Creates blobs/, snapshots/<commit>/ and the CACHEDIR.TAG of the cache; m3::Error with
  // the path when the cache directory is not writable.
  void prepare(const std::string& commit) const;

 private:
  std::filesystem::path cache_dir_;
  std::filesystem::path root_;
  std::string folder_;  // models--{owner}--{name}

  friend class HfBlobLock;
};

// Exclusive flock on .locks/<repo folder>/<etag>.lock, the lock huggingface_hub takes for
// the same blob, so concurrent downloaders (ours or theirs) never write one file twice.
class HfBlobLock {
 public:
  // `label` names the file in the "waiting for another process" log line.
  HfBlobLock(const HfRepoCache& cache, const std::string& etag, const std::string& label);
  ~HfBlobLock();
  HfBlobLock(const HfBlobLock&) = delete;
  HfBlobLock& operator=(const HfBlobLock&) = delete;

 private:
  int fd_ = -1;
};

}  // namespace m3
