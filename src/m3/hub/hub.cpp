#include "m3/hub/hub.h"

#include <pwd.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <optional>
#include <set>
#include <system_error>
#include <vector>

#include <fmt/ranges.h>
#include <spdlog/spdlog.h>

#include "m3/core/error.h"
#include "m3/hub/hf_cache.h"
#include "m3/hub/http_download.h"

namespace m3 {
namespace fs = std::filesystem;

namespace {

// What a snapshot needs to be served; the rest is fetched when the repo has it.
constexpr const char* kRequiredFiles[] = {"config.json", "sentencepiece.bpe.model"};
constexpr const char* kWeightFiles[] = {"model.safetensors", "pytorch_model.bin"};  // first found
// BGE-M3's heads, and sentence-transformers' files that say how an embedder pools
// (multilingual-e5: mean) and where it truncates; 1_Pooling is where every
// sentence-transformers model on the Hub keeps its pooling config.
constexpr const char* kOptionalFiles[] = {"tokenizer.json",        "tokenizer_config.json",  "special_tokens_map.json",
                                          "colbert_linear.pt",     "sparse_linear.pt",       "modules.json",
                                          "1_Pooling/config.json", "sentence_bert_config.json"};

std::string env(const char* name) {
  const char* value = std::getenv(name);
  return value != nullptr ? std::string(value) : std::string();
}

// huggingface_hub's _is_true: 1, ON, YES, TRUE in any case.
bool is_true(std::string value) {
  std::transform(value.begin(), value.end(), value.begin(), [](unsigned char c) { return std::toupper(c); });
  return value == "1" || value == "ON" || value == "YES" || value == "TRUE";
}

fs::path expand_user(const std::string& path) {
  if (path.empty() || path[0] != '~' || (path.size() > 1 && path[1] != '/')) return path;
  std::string home = env("HOME");
  if (home.empty()) {
    if (const passwd* pw = ::getpwuid(::getuid()); pw != nullptr && pw->pw_dir != nullptr) home = pw->pw_dir;
  }
  return home + path.substr(1);
}

// huggingface_hub's _clean_token: drop CR/LF, trim.
std::string clean_token(std::string token) {
  std::erase(token, '\r');
  std::erase(token, '\n');
  const auto first = token.find_first_not_of(" \t");
  if (first == std::string::npos) return {};
  return token.substr(first, token.find_last_not_of(" \t") - first + 1);
}

// ETag: W/"abc" or "abc" -> abc
std::string normalize_etag(std::string etag) {
  if (etag.starts_with("W/")) etag.erase(0, 2);
  if (etag.size() >= 2 && etag.front() == '"' && etag.back() == '"') etag = etag.substr(1, etag.size() - 2);
  return etag;
}

// A blob name from the server becomes a file name: refuse anything path-like.
bool safe_blob_name(const std::string& etag) {
  if (etag.empty() || etag.size() > 255 || etag[0] == '.') return false;
  return std::all_of(etag.begin(), etag.end(), [](unsigned char c) {
    return std::isalnum(c) || c == '-' || c == '_' || c == '.';
  });
}

bool is_sha256(const std::string& s) {
  return s.size() == 64 && std::all_of(s.begin(), s.end(), [](unsigned char c) {
           return std::isdigit(c) || (c >= 'a' && c <= 'f');
         });
}

std::optional<std::uint64_t> parse_size(const std::string& value) {
  if (value.empty() || !std::all_of(value.begin(), value.end(), [](unsigned char c) { return std::isdigit(c); })) {
    return std::nullopt;
  }
  return std::stoull(value);
}

// Files a complete snapshot lacks (empty: complete). Dangling links count as missing.
std::vector<std::string> missing_files(const fs::path& snapshot) {
  std::vector<std::string> missing;
  std::error_code ec;
  for (const char* file : kRequiredFiles) {
    if (!fs::is_regular_file(snapshot / file, ec)) missing.emplace_back(file);
  }
  if (std::none_of(std::begin(kWeightFiles), std::end(kWeightFiles),
                   [&](const char* file) { return fs::is_regular_file(snapshot / file, ec); })) {
    missing.emplace_back(fmt::format("{} or {}", kWeightFiles[0], kWeightFiles[1]));
  }
  return missing;
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// Downloads one revision of a repo into the cache, file by file, as huggingface_hub's
// hf_hub_download does: HEAD for commit, blob name and size; GET into blobs/<etag>.
class HubFetch {
 public:
  HubFetch(const std::string& repo, const HubOptions& options, const HfRepoCache& cache)
      : repo_(repo), options_(options), cache_(cache), url_revision_(options.revision) {
    trusted_origins_ = {http::origin(options.endpoint), http::origin("https://huggingface.co"),
                        http::origin("https://hf.co")};
  }

  fs::path run() {
    for (const char* file : kRequiredFiles) fetch(file, Need::kRequired);
    if (!fetch(kWeightFiles[0], Need::kFallback)) {
      if (!fetch(kWeightFiles[1], Need::kFallback)) {
        fail("{} has neither {} nor {} (HTTP 404 for {} and {})", repo_, kWeightFiles[0], kWeightFiles[1],
             url_for(kWeightFiles[0]), url_for(kWeightFiles[1]));
      }
    }
    for (const char* file : kOptionalFiles) fetch(file, Need::kOptional);
    return cache_.snapshot(commit_);
  }

 private:
  enum class Need { kRequired, kFallback, kOptional };

  struct Metadata {
    http::Response response;  // the last HEAD response
    std::string commit, etag, download_url;
    std::optional<std::uint64_t> size;
    bool lfs = false;
  };

  std::string url_for(const std::string& file) const {
    return fmt::format("{}/{}/resolve/{}/{}", options_.endpoint, repo_, http::escape_path_segment(url_revision_),
                       file);
  }

  // The token goes to the hub only, never to the CDN a large file is redirected to.
  http::Options options_for(const std::string& url) const {
    http::Options o;
    if (trusted_origins_.contains(http::origin(url))) o.bearer_token = options_.token;
    return o;
  }

  Metadata metadata(const std::string& file) {
    std::string url = url_for(file);
    Metadata m;
    for (int hop = 0;; ++hop) {
      m.response = http::head(url, options_for(url));
      // Same-origin redirects (a renamed repo) are followed; one to another host is the
      // LFS file's CDN location, and the hub's headers are on this very response.
      if (m.response.is_redirect() && hop < 10 && http::origin(m.response.redirect_url) == http::origin(url)) {
        url = m.response.redirect_url;
        continue;
      }
      break;
    }
    const http::Response& r = m.response;
    if (r.status >= 400) return m;
    if (r.status >= 300 && !r.is_redirect()) fail("HTTP {} without a Location for {}", r.status, url);
    m.commit = r.header("x-repo-commit");
    const std::string linked = r.header("x-linked-etag");
    m.lfs = !linked.empty();
    m.etag = normalize_etag(m.lfs ? linked : r.header("etag"));
    m.size = parse_size(r.header("x-linked-size"));
    if (!m.size && !r.is_redirect()) m.size = parse_size(r.header("content-length"));
    m.download_url = r.is_redirect() ? r.redirect_url : url;
    if (!is_commit_hash(m.commit)) {
      fail("{} answered without a valid X-Repo-Commit header: HF_ENDPOINT={} does not look like a Hugging Face hub",
           url, options_.endpoint);
    }
    if (!safe_blob_name(m.etag)) {
      fail("{} answered without a usable ETag ('{}'): HF_ENDPOINT={} does not look like a Hugging Face hub", url,
           m.etag, options_.endpoint);
    }
    return m;
  }

  [[noreturn]] void http_fail(const http::Response& r, const std::string& file, const std::string& url) const {
    const std::string code = r.header("x-error-code");
    const long status = r.status;
    if (status == 401 || status == 403) {
      if (code == "GatedRepo") {
        fail("{} is a gated model: accept its conditions at {}/{} and set HF_TOKEN to a token of that account "
             "(HTTP {} for {})",
             repo_, options_.endpoint, repo_, status, url);
      }
      if (options_.token.empty()) {
        fail("HTTP {} for {}: {} is private or gated, or does not exist; set HF_TOKEN to an access token that can "
             "read it",
             status, url, repo_);
      }
      fail("HTTP {} for {}: the token (HF_TOKEN or the token file) was refused for {}; set HF_TOKEN to a valid "
           "token with access to this private or gated repo",
           status, url, repo_);
    }
    if (status == 404) {
      if (code == "RepoNotFound") fail("repository {} not found on {} (HTTP 404 for {})", repo_, options_.endpoint, url);
      if (code == "RevisionNotFound") {
        fail("revision '{}' not found in {} (HTTP 404 for {})", options_.revision, repo_, url);
      }
      fail("{} not found in {} at revision {} (HTTP 404 for {})", file, repo_, options_.revision, url);
    }
    if (status == 429 || status >= 500) {
      throw HubUnreachable(fmt::format("HTTP {} for {}; try again later", status, url));
    }
    const std::string message = r.header("x-error-message");
    fail("HTTP {} for {}{}", status, url, message.empty() ? "" : " (" + message + ")");
  }

  static bool entry_missing(const http::Response& r) {
    const std::string code = r.header("x-error-code");
    return r.status == 404 && (code.empty() || code == "EntryNotFound");
  }

  // Returns false for a file the repo does not have (allowed unless required).
  bool fetch(const std::string& file, Need need) {
    Metadata m = metadata(file);
    if (m.response.status >= 400) {
      if (need != Need::kRequired && entry_missing(m.response)) {
        const std::string commit = m.response.header("x-repo-commit");
        if (is_commit_hash(commit)) cache_.mark_missing(commit, file);
        if (need == Need::kOptional) spdlog::info("{}: not in {} (optional)", file, repo_);
        return false;
      }
      http_fail(m.response, file, url_for(file));
    }
    if (commit_.empty()) {
      commit_ = m.commit;
      cache_.prepare(commit_);
      cache_.write_ref(options_.revision, commit_);
      url_revision_ = commit_;  // every later file from the same commit
    } else if (m.commit != commit_) {
      spdlog::warn("{}: the hub answered commit {} while downloading commit {}", file, m.commit, commit_);
    }

    std::error_code ec;
    if (fs::is_regular_file(cache_.pointer(commit_, file), ec)) return true;
    const fs::path blob = cache_.blob(m.etag);
    if (!fs::is_regular_file(blob, ec)) {
      HfBlobLock lock(cache_, m.etag, file);
      if (!fs::is_regular_file(blob, ec)) download(file, m, blob);
    }
    cache_.link(commit_, file, m.etag);
    return true;
  }

  void download(const std::string& file, const Metadata& m, const fs::path& blob) {
    http::Download request;
    request.url = m.download_url;
    request.partial = cache_.incomplete_blob(m.etag);
    request.expected_size = m.size;
    if (m.lfs && is_sha256(m.etag)) request.expected_sha256 = m.etag;  // LFS blobs are named by their SHA-256
    request.label = file;
    request.progress = options_.progress;
    std::error_code ec;
    if (m.size) {
      const auto have = fs::exists(request.partial, ec) ? fs::file_size(request.partial, ec) : 0;
      const auto space = fs::space(blob.parent_path(), ec);
      if (!ec && have < *m.size && space.available < *m.size - have) {
        spdlog::warn("{} needs {} more but only {} are free in {}", file, http::human_bytes(double(*m.size - have)),
                     http::human_bytes(double(space.available)), blob.parent_path().string());
      }
    }
    const auto start = std::chrono::steady_clock::now();
    const http::Response r = http::download(request, options_for(request.url));
    if (r.status != 200 && r.status != 206) http_fail(r, file, request.url);
    fs::rename(request.partial, blob, ec);
    if (ec) fail("cannot move {} to {}: {}", request.partial.string(), blob.string(), ec.message());
    const double seconds = seconds_since(start);
    const auto bytes = static_cast<double>(fs::file_size(blob, ec));
    spdlog::info("downloaded {} ({} in {:.1f} s, {}/s)", file, http::human_bytes(bytes), seconds,
                 http::human_bytes(seconds > 0 ? bytes / seconds : 0.0));
  }

  const std::string& repo_;
  const HubOptions& options_;
  const HfRepoCache& cache_;
  std::string url_revision_;
  std::string commit_;
  std::set<std::string> trusted_origins_;
};

}  // namespace

HubOptions hub_options_from_env() {
  HubOptions options;
  std::string endpoint = env("HF_ENDPOINT");
  if (!endpoint.empty()) options.endpoint = endpoint;
  while (options.endpoint.ends_with('/')) options.endpoint.pop_back();

  std::string home = env("HF_HOME");
  if (home.empty()) {
    std::string xdg = env("XDG_CACHE_HOME");
    home = (xdg.empty() ? expand_user("~/.cache") : fs::path(xdg)) / "huggingface";
  }
  const fs::path hf_home = expand_user(home);

  options.token = clean_token(!env("HF_TOKEN").empty() ? env("HF_TOKEN") : env("HUGGING_FACE_HUB_TOKEN"));
  if (options.token.empty()) {
    const std::string token_path = env("HF_TOKEN_PATH");
    std::ifstream in(token_path.empty() ? hf_home / "token" : expand_user(token_path), std::ios::binary);
    if (in) options.token = clean_token(std::string(std::istreambuf_iterator<char>(in), {}));
  }
  if (is_true(env("HF_HUB_DISABLE_IMPLICIT_TOKEN"))) options.token.clear();

  std::string cache = env("HF_HUB_CACHE");
  if (cache.empty()) cache = env("HUGGINGFACE_HUB_CACHE");  // legacy name, still honoured upstream
  options.cache_dir = cache.empty() ? hf_home / "hub" : expand_user(cache);

  // As upstream: HF_HUB_OFFLINE, or TRANSFORMERS_OFFLINE when HF_HUB_OFFLINE is unset or empty.
  const std::string offline = env("HF_HUB_OFFLINE");
  options.offline = is_true(offline.empty() ? env("TRANSFORMERS_OFFLINE") : offline);
  options.progress = !is_true(env("HF_HUB_DISABLE_PROGRESS_BARS"));
  return options;
}

bool looks_like_hub_id(std::string_view model) {
  const auto slash = model.find('/');
  if (slash == std::string_view::npos || model.find('/', slash + 1) != std::string_view::npos) return false;
  if (slash == 0 || slash + 1 == model.size() || model.size() > 96) return false;
  const bool charset = std::all_of(model.begin(), model.end(), [](unsigned char c) {
    return std::isalnum(c) || c == '.' || c == '_' || c == '-' || c == '/';
  });
  // huggingface_hub refuses "--" and ".." in repo ids.
  if (!charset || model.find("--") != std::string_view::npos || model.find("..") != std::string_view::npos) {
    return false;
  }
  std::error_code ec;
  return !fs::exists(fs::path(model), ec);
}

fs::path resolve_model(const std::string& model, const HubOptions& options) {
  std::error_code ec;
  const fs::path path(model);
  if (fs::is_directory(path, ec)) return path;
  if (fs::exists(path, ec)) fail("model '{}' is a file; pass the directory that holds config.json", model);
  if (!looks_like_hub_id(model)) {
    fail("model '{}': no such directory, and not a hub id of the form owner/name", model);
  }

  HubOptions effective = options;
  if (effective.cache_dir.empty()) effective.cache_dir = hub_options_from_env().cache_dir;
  if (effective.revision.empty()) effective.revision = "main";
  if (effective.revision.find("..") != std::string::npos || effective.revision.front() == '/') {
    fail("revision '{}' is not a branch, tag or commit name", effective.revision);
  }
  while (effective.endpoint.ends_with('/')) effective.endpoint.pop_back();
  const HfRepoCache cache(effective.cache_dir, model);

  std::string cached = "not in the cache";
  if (const auto commit = cache.commit_for(effective.revision)) {
    const fs::path snapshot = cache.snapshot(*commit);
    const auto missing = missing_files(snapshot);
    if (missing.empty()) {
      spdlog::info("using cached snapshot {}", snapshot.string());
      return snapshot;
    }
    cached = fmt::format("incomplete in the cache (no {})", fmt::join(missing, ", "));
  }
  if (effective.offline) {
    throw HubUnreachable(fmt::format(
        "HF_HUB_OFFLINE is set and {} (revision {}) is {} at {}; unset HF_HUB_OFFLINE to download it, or pass "
        "a local model directory",
        model, effective.revision, cached, effective.cache_dir.string()));
  }

  spdlog::info("downloading {} (revision {}) from {} into {}", model, effective.revision, effective.endpoint,
               effective.cache_dir.string());
  fs::path snapshot;
  try {
    snapshot = HubFetch(model, effective, cache).run();
  } catch (const HubUnreachable& e) {
    throw HubUnreachable(fmt::format(
        "cannot reach the Hugging Face hub to download {} ({}); no complete copy is cached in {} (check the "
        "network, a proxy, or HF_ENDPOINT; or pass a local model directory)",
        model, e.what(), effective.cache_dir.string()));
  }
  const auto missing = missing_files(snapshot);
  if (!missing.empty()) fail("downloaded {} but {} lacks {}", model, snapshot.string(), fmt::join(missing, ", "));
  spdlog::info("model {} is in {}", model, snapshot.string());
  return snapshot;
}

}  // namespace m3
