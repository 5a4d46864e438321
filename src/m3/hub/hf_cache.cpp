#include "m3/hub/hf_cache.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <iterator>
#include <system_error>

#include <spdlog/spdlog.h>

#include "m3/core/error.h"

namespace m3 {
namespace fs = std::filesystem;

namespace {

constexpr const char* kCacheDirTag =
    "Signature: 8a477f597d28d172789f06886806bc55\n"
    "# This file is a cache directory tag created by huggingface_hub.\n"
    "# For information about cache directory tags, see:\n"
    "#\thttps://bford.info/cachedir/\n";

void create_dirs(const fs::path& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) {
    fail("cannot create the hub cache directory {}: {} (set HF_HUB_CACHE to a writable directory)",
         dir.string(), ec.message());
  }
}

// A name unique to this process and call, for write-then-rename.
std::string temp_suffix() {
  static std::atomic<unsigned> counter{0};
  return fmt::format(".{}.{}.tmp", ::getpid(), counter++);
}

}  // namespace

bool is_commit_hash(std::string_view revision) {
  if (revision.size() != 40) return false;
  for (char c : revision) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

HfRepoCache::HfRepoCache(fs::path cache_dir, const std::string& repo_id)
    : cache_dir_(std::move(cache_dir)) {
  folder_ = "models";
  std::string::size_type start = 0;
  while (true) {
    auto slash = repo_id.find('/', start);
    folder_ += "--" + repo_id.substr(start, slash - start);
    if (slash == std::string::npos) break;
    start = slash + 1;
  }
  root_ = cache_dir_ / folder_;
}

std::optional<std::string> HfRepoCache::commit_for(const std::string& revision) const {
  if (is_commit_hash(revision)) return revision;
  std::ifstream in(root_ / "refs" / revision, std::ios::binary);
  if (!in) return std::nullopt;
  std::string commit((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  // huggingface_hub writes the bare hash; tolerate a trailing newline written by hand.
  while (!commit.empty() && (commit.back() == '\n' || commit.back() == '\r' || commit.back() == ' ')) {
    commit.pop_back();
  }
  if (!is_commit_hash(commit)) return std::nullopt;
  return commit;
}

void HfRepoCache::write_ref(const std::string& revision, const std::string& commit) const {
  if (revision == commit) return;
  if (commit_for(revision) == commit) return;
  const fs::path ref = root_ / "refs" / revision;
  create_dirs(ref.parent_path());
  const fs::path tmp = ref.string() + temp_suffix();
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << commit;
    out.close();
    if (!out) fail("cannot write {}: {}", tmp.string(), std::strerror(errno));
  }
  std::error_code ec;
  fs::rename(tmp, ref, ec);
  if (ec) {
    fs::remove(tmp, ec);
    fail("cannot write {}: {}", ref.string(), ec.message());
  }
}

void HfRepoCache::link(const std::string& commit, const std::string& file,
                       const std::string& etag) const {
  const fs::path dst = pointer(commit, file);
  create_dirs(dst.parent_path());
  // snapshots/<commit>/<a/b/file> -> ../../(../..)blobs/<etag>, as os.path.relpath gives.
  std::string target = "../../";
  for (char c : file) {
    if (c == '/') target += "../";
  }
  target += "blobs/" + etag;
  std::error_code ec;
  if (fs::is_symlink(dst, ec) && fs::read_symlink(dst, ec) == fs::path(target)) return;
  // Made under a temporary name and renamed over dst, so that another process checking
  // the snapshot never sees the pointer missing (a remove-then-create left a gap).
  const fs::path tmp = dst.string() + temp_suffix();
  fs::create_symlink(target, tmp, ec);
  if (!ec) fs::rename(tmp, dst, ec);
  if (ec) {
    std::error_code ignored;
    fs::remove(tmp, ignored);
    fail("cannot create the link {} -> {}: {}", dst.string(), target, ec.message());
  }
}

void HfRepoCache::mark_missing(const std::string& commit, const std::string& file) const {
  const fs::path marker = root_ / ".no_exist" / commit / file;
  std::error_code ec;
  if (fs::exists(marker, ec)) return;
  fs::create_directories(marker.parent_path(), ec);
  if (ec) return;
  std::ofstream touch(marker, std::ios::binary | std::ios::app);
}

void HfRepoCache::prepare(const std::string& commit) const {
  create_dirs(root_ / "blobs");
  create_dirs(snapshot(commit));
  const fs::path tag = cache_dir_ / "CACHEDIR.TAG";
  std::error_code ec;
  if (!fs::exists(tag, ec)) {
    std::ofstream out(tag, std::ios::binary);
    out << kCacheDirTag;  // best effort, as huggingface_hub
  }
}

HfBlobLock::HfBlobLock(const HfRepoCache& cache, const std::string& etag, const std::string& label) {
  const fs::path path = cache.cache_dir_ / ".locks" / cache.folder_ / (etag + ".lock");
  create_dirs(path.parent_path());
  fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd_ < 0) fail("cannot open the lock file {}: {}", path.string(), std::strerror(errno));
  if (::flock(fd_, LOCK_EX | LOCK_NB) == 0) return;
  if (errno == EWOULDBLOCK) {
    spdlog::info("another process is downloading {}; waiting for it (lock {})", label, path.string());
    int rc;
    do {
      rc = ::flock(fd_, LOCK_EX);
    } while (rc != 0 && errno == EINTR);
    if (rc == 0) return;
  }
  const int err = errno;
  ::close(fd_);
  fd_ = -1;
  fail("cannot lock {}: {}", path.string(), std::strerror(err));
}

HfBlobLock::~HfBlobLock() {
  if (fd_ >= 0) {
    ::flock(fd_, LOCK_UN);
    ::close(fd_);
  }
}

}  // namespace m3
