#include "m3/hub/http_download.h"

#include <curl/curl.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>
#include <mutex>
#include <system_error>
#include <thread>
#include <vector>

#include <spdlog/spdlog.h>

#include "m3/core/error.h"

#ifndef M3_VERSION
#define M3_VERSION "dev"
#endif

namespace m3::http {
namespace fs = std::filesystem;

namespace {

// ---------------------------------------------------------------- SHA-256 (FIPS 180-4)
// LFS blobs are named by the SHA-256 of their content; checking it catches a resumed
// download glued to a stale prefix and any corruption on the way.
class Sha256 {
 public:
  void update(const unsigned char* data, std::size_t size) {
    length_ += size;
    if (fill_ > 0) {
      const std::size_t take = std::min(size, block_.size() - fill_);
      std::memcpy(block_.data() + fill_, data, take);
      fill_ += take;
      data += take;
      size -= take;
      if (fill_ < block_.size()) return;
      compress(block_.data());
      fill_ = 0;
    }
    for (; size >= 64; data += 64, size -= 64) compress(data);
    std::memcpy(block_.data(), data, size);
    fill_ = size;
  }

  std::string hex_digest() {
    const std::uint64_t bits = length_ * 8;
    const unsigned char pad = 0x80;
    update(&pad, 1);
    const unsigned char zero = 0;
    while (fill_ != 56) update(&zero, 1);
    unsigned char len[8];
    for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>(bits >> (56 - 8 * i));
    update(len, 8);
    std::string out;
    for (std::uint32_t word : h_) out += fmt::format("{:08x}", word);
    return out;
  }

 private:
  static std::uint32_t rotr(std::uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }

  void compress(const unsigned char* p) {
    static constexpr std::uint32_t k[64] = {
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
        0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
        0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
        0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
        0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
        0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
        0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
        0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2};
    std::uint32_t w[64];
    for (int i = 0; i < 16; ++i) {
      w[i] = (std::uint32_t{p[4 * i]} << 24) | (std::uint32_t{p[4 * i + 1]} << 16) |
             (std::uint32_t{p[4 * i + 2]} << 8) | std::uint32_t{p[4 * i + 3]};
    }
    for (int i = 16; i < 64; ++i) {
      const std::uint32_t s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
      const std::uint32_t s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
      w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    std::uint32_t a = h_[0], b = h_[1], c = h_[2], d = h_[3], e = h_[4], f = h_[5], g = h_[6],
                  h = h_[7];
    for (int i = 0; i < 64; ++i) {
      const std::uint32_t t1 =
          h + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + k[i] + w[i];
      const std::uint32_t t2 = (rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
      h = g;
      g = f;
      f = e;
      e = d + t1;
      d = c;
      c = b;
      b = a;
      a = t1 + t2;
    }
    h_[0] += a;
    h_[1] += b;
    h_[2] += c;
    h_[3] += d;
    h_[4] += e;
    h_[5] += f;
    h_[6] += g;
    h_[7] += h;
  }

  std::array<std::uint32_t, 8> h_ = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                     0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
  std::array<unsigned char, 64> block_{};
  std::size_t fill_ = 0;
  std::uint64_t length_ = 0;
};

// Hashes the first `size` bytes of `path` into `sha`.
void hash_file_prefix(const fs::path& path, std::uint64_t size, Sha256& sha) {
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> in(std::fopen(path.c_str(), "rb"), &std::fclose);
  if (!in) fail("cannot read {}: {}", path.string(), std::strerror(errno));
  std::vector<unsigned char> buffer(1 << 20);
  while (size > 0) {
    const std::size_t want = static_cast<std::size_t>(std::min<std::uint64_t>(size, buffer.size()));
    const std::size_t got = std::fread(buffer.data(), 1, want, in.get());
    if (got != want) fail("cannot read {}: unexpected end of file", path.string());
    sha.update(buffer.data(), got);
    size -= got;
  }
}

// ---------------------------------------------------------------- progress bar
}  // namespace

std::string human_bytes(double bytes) {
  static constexpr const char* units[] = {"B", "kB", "MB", "GB", "TB"};
  int unit = 0;
  while (bytes >= 1000.0 && unit < 4) {
    bytes /= 1000.0;
    ++unit;
  }
  return unit == 0 ? fmt::format("{:.0f} B", bytes) : fmt::format("{:.2f} {}", bytes, units[unit]);
}

namespace {

// One line on stderr, redrawn in place at most 10 times a second, ended with a newline.
// Drawn only when stderr is a terminal: in a log file the summary log line says enough.
class ProgressBar {
 public:
  using Clock = std::chrono::steady_clock;

  ProgressBar(std::string label, std::optional<std::uint64_t> total, bool enabled)
      : label_(std::move(label)), total_(total), enabled_(enabled && ::isatty(STDERR_FILENO) == 1) {
    if (label_.size() > 28) label_ = "..." + label_.substr(label_.size() - 25);
  }
  ~ProgressBar() { finish(); }

  // `done`: bytes of the file on disk; `fresh`: bytes this process received (for the rate).
  void update(std::uint64_t done, std::uint64_t fresh, bool force = false) {
    if (!enabled_) return;
    const auto now = Clock::now();
    // Files that arrive within half a second get no bar (the summary log line suffices).
    if (!drawn_ && now - start_ < std::chrono::milliseconds(500)) return;
    if (!force && drawn_ && now - last_draw_ < std::chrono::milliseconds(100)) return;
    last_draw_ = now;
    drawn_ = true;
    const double seconds = std::chrono::duration<double>(now - start_).count();
    const double rate = seconds > 0.05 ? static_cast<double>(fresh) / seconds : 0.0;
    std::string line;
    if (total_ && *total_ > 0) {
      const double fraction = std::min(1.0, static_cast<double>(done) / static_cast<double>(*total_));
      constexpr int width = 20;
      const int filled = static_cast<int>(fraction * width);
      line = fmt::format("{:<28} {:3.0f}% [{}{}] {}/{} {}/s", label_, fraction * 100.0,
                         std::string(filled, '#'), std::string(width - filled, '.'),
                         human_bytes(static_cast<double>(done)), human_bytes(static_cast<double>(*total_)),
                         human_bytes(rate));
    } else {
      line = fmt::format("{:<28} {} {}/s", label_, human_bytes(static_cast<double>(done)), human_bytes(rate));
    }
    std::fprintf(stderr, "\r%s\x1b[K", line.c_str());
    std::fflush(stderr);
  }

  // Ends the line (before a log line, or at the end); a later update() starts a new one.
  void finish() {
    if (enabled_ && drawn_) {
      std::fputc('\n', stderr);
      std::fflush(stderr);
    }
    drawn_ = false;
  }

 private:
  std::string label_;
  std::optional<std::uint64_t> total_;
  bool enabled_;
  bool drawn_ = false;
  Clock::time_point start_ = Clock::now();
  Clock::time_point last_draw_{};
};

// ---------------------------------------------------------------- libcurl plumbing
void global_init() {
  static std::once_flag once;
  std::call_once(once, [] {
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) throw Error("libcurl initialisation failed");
  });
}

struct CurlDeleter {
  void operator()(CURL* h) const { curl_easy_cleanup(h); }
  void operator()(curl_slist* l) const { curl_slist_free_all(l); }
};
using CurlPtr = std::unique_ptr<CURL, CurlDeleter>;
using SlistPtr = std::unique_ptr<curl_slist, CurlDeleter>;

std::string trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r' || s.back() == '\n')) {
    s.remove_suffix(1);
  }
  return std::string(s);
}

// Keeps the headers of the latest response (a followed redirect starts a new set).
std::size_t on_header(char* data, std::size_t size, std::size_t count, void* user) {
  auto& response = *static_cast<Response*>(user);
  const std::size_t n = size * count;
  std::string_view line(data, n);
  if (line.starts_with("HTTP/")) {
    response.headers.clear();
    return n;
  }
  const auto colon = line.find(':');
  if (colon == std::string_view::npos) return n;
  std::string name(line.substr(0, colon));
  std::transform(name.begin(), name.end(), name.begin(), [](unsigned char c) { return std::tolower(c); });
  response.headers[trim(name)] = trim(line.substr(colon + 1));
  return n;
}

// Options every request shares; returns the header list to keep alive for the call.
SlistPtr configure(CURL* h, const std::string& url, const Options& options, char* error_buffer,
                   Response& response, const std::string& range = {}) {
  curl_easy_setopt(h, CURLOPT_URL, url.c_str());
  curl_easy_setopt(h, CURLOPT_USERAGENT, "m3embed/" M3_VERSION);
  curl_easy_setopt(h, CURLOPT_ERRORBUFFER, error_buffer);
  curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT, options.connect_timeout_s);
  curl_easy_setopt(h, CURLOPT_LOW_SPEED_LIMIT, options.low_speed_bytes_per_s);
  curl_easy_setopt(h, CURLOPT_LOW_SPEED_TIME, options.low_speed_time_s);
  curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(h, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
  // Never send the token to a host the hub redirects to (libcurl's default, made explicit).
  curl_easy_setopt(h, CURLOPT_UNRESTRICTED_AUTH, 0L);
  curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, &on_header);
  curl_easy_setopt(h, CURLOPT_HEADERDATA, &response);
  curl_slist* list = nullptr;
  if (!options.bearer_token.empty()) {
    list = curl_slist_append(list, ("Authorization: Bearer " + options.bearer_token).c_str());
  }
  if (!range.empty()) list = curl_slist_append(list, ("Range: " + range).c_str());
  curl_easy_setopt(h, CURLOPT_HTTPHEADER, list);
  return SlistPtr(list);
}

std::string curl_message(CURLcode code, const char* error_buffer) {
  return error_buffer[0] != '\0' ? trim(error_buffer) : std::string(curl_easy_strerror(code));
}

bool transient_status(long status) {
  return status == 408 || status == 429 || status == 500 || status == 502 || status == 503 ||
         status == 504;
}

constexpr int kHttpAttempts = 3;  // for transient statuses (429, 5xx)

void backoff(int attempt) { std::this_thread::sleep_for(std::chrono::milliseconds(500 << attempt)); }

// ---------------------------------------------------------------- one GET attempt
struct Transfer {
  const Download* request = nullptr;
  CURL* handle = nullptr;
  Response response;
  std::uint64_t offset = 0;   // bytes on disk when the body starts
  std::uint64_t received = 0; // body bytes written by this attempt
  std::FILE* file = nullptr;
  bool decided = false;       // status seen, file opened (or not, for an error status)
  bool writing = false;
  bool range_mismatch = false;
  int write_errno = 0;
  Sha256* sha = nullptr;      // covers [0, offset + received) when set
  ProgressBar* bar = nullptr;
  std::uint64_t* fresh = nullptr;  // bytes received by this process, all attempts

  ~Transfer() {
    if (file != nullptr) std::fclose(file);
  }
};

// "bytes 100-199/200" -> 100
std::optional<std::uint64_t> content_range_start(const std::string& value) {
  unsigned long long start = 0;
  if (std::sscanf(value.c_str(), "bytes %llu-", &start) != 1) return std::nullopt;
  return start;
}

std::size_t on_body(char* data, std::size_t size, std::size_t count, void* user) {
  auto& t = *static_cast<Transfer*>(user);
  const std::size_t n = size * count;
  if (!t.decided) {
    t.decided = true;
    curl_easy_getinfo(t.handle, CURLINFO_RESPONSE_CODE, &t.response.status);
    const char* mode = nullptr;
    if (t.response.status == 206) {
      if (content_range_start(t.response.header("content-range")) != t.offset) {
        t.range_mismatch = true;
        return 0;
      }
      mode = "ab";
    } else if (t.response.status == 200) {
      t.offset = 0;  // the server ignored (or we sent no) Range: start over
      if (t.sha != nullptr) *t.sha = Sha256();
      mode = "wb";
    }
    if (mode != nullptr) {
      t.file = std::fopen(t.request->partial.c_str(), mode);
      if (t.file == nullptr) {
        t.write_errno = errno;
        return 0;
      }
      std::setvbuf(t.file, nullptr, _IOFBF, 1 << 20);
      t.writing = true;
    }
  }
  if (!t.writing) {  // an error response: keep the start of its body for the message
    t.response.body.append(data, std::min(n, 4096 - std::min<std::size_t>(4096, t.response.body.size())));
    return n;
  }
  if (std::fwrite(data, 1, n, t.file) != n) {
    t.write_errno = errno != 0 ? errno : EIO;
    return 0;
  }
  if (t.sha != nullptr) t.sha->update(reinterpret_cast<const unsigned char*>(data), n);
  t.received += n;
  *t.fresh += n;
  t.bar->update(t.offset + t.received, *t.fresh);
  return n;
}

std::uint64_t size_on_disk(const fs::path& path) {
  std::error_code ec;
  const auto size = fs::file_size(path, ec);
  return ec ? 0 : size;
}

void remove_file(const fs::path& path) {
  std::error_code ec;
  fs::remove(path, ec);
}

}  // namespace

std::string Response::header(std::string_view lower_case_name) const {
  const auto it = headers.find(std::string(lower_case_name));
  return it == headers.end() ? std::string() : it->second;
}

Response head(const std::string& url, const Options& options) {
  global_init();
  for (int attempt = 0;; ++attempt) {
    CurlPtr handle(curl_easy_init());
    if (!handle) throw Error("libcurl: cannot create a handle");
    char error_buffer[CURL_ERROR_SIZE] = {};
    Response response;
    auto headers = configure(handle.get(), url, options, error_buffer, response);
    curl_easy_setopt(handle.get(), CURLOPT_NOBODY, 1L);
    curl_easy_setopt(handle.get(), CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(handle.get(), CURLOPT_TIMEOUT, options.head_timeout_s);
    const CURLcode rc = curl_easy_perform(handle.get());
    if (rc != CURLE_OK) throw HubUnreachable(fmt::format("{}: {}", url, curl_message(rc, error_buffer)));
    response.url = url;
    curl_easy_getinfo(handle.get(), CURLINFO_RESPONSE_CODE, &response.status);
    char* location = nullptr;
    curl_easy_getinfo(handle.get(), CURLINFO_REDIRECT_URL, &location);
    if (location != nullptr) response.redirect_url = location;
    if (transient_status(response.status) && attempt + 1 < kHttpAttempts) {
      spdlog::warn("HTTP {} for HEAD {}; retrying", response.status, url);
      backoff(attempt);
      continue;
    }
    return response;
  }
}

Response download(const Download& request, const Options& options) {
  global_init();
  constexpr int kResumes = 5;  // lost connections that made progress, resumed in place
  int resumes = 0;
  int transient_attempts = 0;
  bool restarted = false;
  std::uint64_t fresh = 0;
  Sha256 sha;
  std::optional<std::uint64_t> hashed;  // sha covers [0, *hashed) of the partial file
  ProgressBar bar(request.label, request.expected_size, request.progress);

  // "" when the partial file is the announced file, else what is wrong (and it is removed).
  auto verify = [&]() -> std::string {
    const std::uint64_t size = size_on_disk(request.partial);
    std::string problem;
    if (request.expected_size && size != *request.expected_size) {
      problem = fmt::format("received {} bytes, the hub announced {}", size, *request.expected_size);
    } else if (!request.expected_sha256.empty()) {
      if (hashed != size) {
        sha = Sha256();
        hash_file_prefix(request.partial, size, sha);
      }
      const std::string digest = sha.hex_digest();
      if (digest != request.expected_sha256) {
        problem = fmt::format("checksum mismatch (sha256 {} instead of {})", digest, request.expected_sha256);
      }
    }
    if (!problem.empty()) {
      remove_file(request.partial);
      sha = Sha256();
      hashed = 0;
    } else {
      bar.update(size, fresh, /*force=*/true);
    }
    bar.finish();
    return problem;
  };
  bool resumed = false;  // some bytes came from an earlier attempt or an earlier run
  // A bad result built on resumed bytes is downloaded once more from the start.
  auto finish = [&](Response response) {
    const std::string problem = verify();
    if (problem.empty()) return std::optional<Response>(std::move(response));
    if (resumed && !restarted) {
      spdlog::warn("{}: {} after resuming; downloading it again from the start", request.label, problem);
      restarted = true;
      resumed = false;
      return std::optional<Response>();
    }
    fail("{}: {} (from {}); the partial file was removed, run again", request.label, problem, request.url);
  };

  while (true) {
    std::uint64_t offset = size_on_disk(request.partial);
    if (request.expected_size && offset > *request.expected_size) {
      remove_file(request.partial);
      offset = 0;
    }
    if (offset > 0) resumed = true;
    if (offset > 0 && request.expected_size && offset == *request.expected_size) {
      Response done;
      done.status = 200;
      done.url = request.url;
      if (auto ok = finish(std::move(done))) return std::move(*ok);
      continue;
    }
    if (!request.expected_sha256.empty() && hashed != offset) {
      sha = Sha256();
      if (offset > 0) hash_file_prefix(request.partial, offset, sha);
      hashed = offset;
    }
    if (offset > 0) spdlog::info("resuming {} at byte {}", request.label, offset);

    CurlPtr handle(curl_easy_init());
    if (!handle) throw Error("libcurl: cannot create a handle");
    char error_buffer[CURL_ERROR_SIZE] = {};
    Transfer t;
    t.request = &request;
    t.handle = handle.get();
    t.offset = offset;
    t.sha = request.expected_sha256.empty() ? nullptr : &sha;
    t.bar = &bar;
    t.fresh = &fresh;
    auto headers = configure(handle.get(), request.url, options, error_buffer, t.response,
                             offset > 0 ? fmt::format("bytes={}-", offset) : std::string());
    curl_easy_setopt(handle.get(), CURLOPT_FOLLOWLOCATION, 1L);
    curl_easy_setopt(handle.get(), CURLOPT_MAXREDIRS, 10L);
    curl_easy_setopt(handle.get(), CURLOPT_WRITEFUNCTION, &on_body);
    curl_easy_setopt(handle.get(), CURLOPT_WRITEDATA, &t);
    curl_easy_setopt(handle.get(), CURLOPT_BUFFERSIZE, 256L * 1024);
    bar.update(offset, fresh);
    const CURLcode rc = curl_easy_perform(handle.get());

    if (t.file != nullptr) {
      const bool flushed = std::fflush(t.file) == 0;
      if (!flushed && t.write_errno == 0) t.write_errno = errno;
      if (std::fclose(t.file) != 0 && t.write_errno == 0) t.write_errno = errno;
      t.file = nullptr;
    }
    if (t.sha != nullptr) hashed = t.offset + t.received;
    if (t.write_errno != 0) {
      bar.finish();
      fail("cannot write {}: {}{}", request.partial.string(), std::strerror(t.write_errno),
           t.write_errno == ENOSPC ? " (free some space and run again: the download resumes where it stopped)" : "");
    }
    if (t.range_mismatch) {
      bar.finish();
      if (restarted) fail("{}: the server answered a resumed download with the wrong range", request.url);
      spdlog::warn("{}: the server resumed at another offset; starting over", request.label);
      remove_file(request.partial);
      restarted = true;
      continue;
    }
    if (rc != CURLE_OK) {
      const std::string message = curl_message(rc, error_buffer);
      if (t.received > 0 && resumes < kResumes) {
        ++resumes;
        bar.finish();
        spdlog::warn("{}: {} after {} bytes; resuming", request.label, message, t.offset + t.received);
        continue;
      }
      bar.finish();
      throw HubUnreachable(fmt::format("{}: {}", request.url, message));
    }
    char* effective = nullptr;
    curl_easy_getinfo(handle.get(), CURLINFO_EFFECTIVE_URL, &effective);
    curl_easy_getinfo(handle.get(), CURLINFO_RESPONSE_CODE, &t.response.status);
    t.response.url = effective != nullptr ? effective : request.url;
    const long status = t.response.status;
    if (status == 416 && offset > 0 && !restarted) {
      remove_file(request.partial);
      restarted = true;
      continue;
    }
    if (transient_status(status) && ++transient_attempts < kHttpAttempts) {
      bar.finish();
      spdlog::warn("HTTP {} for {}; retrying", status, request.url);
      backoff(transient_attempts);
      continue;
    }
    if (status != 200 && status != 206) {
      bar.finish();
      return std::move(t.response);
    }
    if (!t.decided) {  // an empty body: no write callback ran
      if (status == 200) {
        std::unique_ptr<std::FILE, int (*)(std::FILE*)> out(std::fopen(request.partial.c_str(), "wb"),
                                                           &std::fclose);
        if (!out) fail("cannot write {}: {}", request.partial.string(), std::strerror(errno));
        sha = Sha256();
        hashed = 0;
      }
    }
    if (auto ok = finish(std::move(t.response))) return std::move(*ok);
  }
}

std::string origin(const std::string& url) {
  CURLU* parsed = curl_url();
  if (parsed == nullptr) return {};
  std::string result;
  if (curl_url_set(parsed, CURLUPART_URL, url.c_str(), 0) == CURLUE_OK) {
    char* scheme = nullptr;
    char* host = nullptr;
    char* port = nullptr;
    if (curl_url_get(parsed, CURLUPART_SCHEME, &scheme, 0) == CURLUE_OK &&
        curl_url_get(parsed, CURLUPART_HOST, &host, 0) == CURLUE_OK &&
        curl_url_get(parsed, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT) == CURLUE_OK) {
      result = fmt::format("{}://{}:{}", scheme, host, port);
      std::transform(result.begin(), result.end(), result.begin(),
                     [](unsigned char c) { return std::tolower(c); });
    }
    curl_free(scheme);
    curl_free(host);
    curl_free(port);
  }
  curl_url_cleanup(parsed);
  return result;
}

std::string escape_path_segment(std::string_view segment) {
  std::string out;
  for (unsigned char c : segment) {
    if (std::isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~') {
      out += static_cast<char>(c);
    } else {
      out += fmt::format("%{:02X}", c);
    }
  }
  return out;
}

}  // namespace m3::http
