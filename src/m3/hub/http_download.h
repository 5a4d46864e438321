// HTTP for the hub client (libcurl): a HEAD that does not follow redirects, and a
// resumable GET into a file with a progress bar and an optional SHA-256 check.
// Network failures throw m3::HubUnreachable, local write failures m3::Error; HTTP error
// statuses are returned to the caller, which knows what they mean for a hub repo.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <string_view>

namespace m3::http {

struct Response {
  long status = 0;
  std::string url;           // the URL that gave this response
  std::string redirect_url;  // absolute Location of a 3xx response, else empty
  std::map<std::string, std::string> headers;  // names lower-cased
  std::string body;          // first bytes of an error response's body

  // The header's value, "" when absent.
  std::string header(std::string_view lower_case_name) const;
  bool is_redirect() const { return status >= 300 && status < 400 && !redirect_url.empty(); }
};

struct Options {
  // Sent as "Authorization: Bearer <token>" to the URL's host only; libcurl drops it on
  // a redirect to another host or port (CURLOPT_UNRESTRICTED_AUTH stays off).
  std::string bearer_token;
  long connect_timeout_s = 10;
  long head_timeout_s = 30;         // whole HEAD request
  long low_speed_bytes_per_s = 1024;  // a transfer slower than this ...
  long low_speed_time_s = 60;         // ... for this long is aborted
};

// HEAD `url`, not following redirects (a redirect's own headers carry the hub metadata).
Response head(const std::string& url, const Options& options);

struct Download {
  std::string url;
  std::filesystem::path partial;          // written and resumed here (blobs/<etag>.incomplete)
  std::optional<std::uint64_t> expected_size;
  std::string expected_sha256;            // lower-case hex; the result is verified when set
  std::string label;                      // file name for the progress bar and messages
  bool progress = true;                   // progress bar (only when stderr is a terminal)
};

// GET `url` (following redirects) into `partial`. An existing `partial` is resumed with a
// Range request (206 appends, 200 starts over); a connection lost mid-transfer is resumed
// the same way a few times. Returns the final response: 200/206 when `partial` now holds
// the whole file, else the HTTP error (partial untouched). Throws m3::Error on write
// errors and on size or checksum mismatch (the bad partial file is removed).
Response download(const Download& request, const Options& options);

// "scheme://host:port", lower-cased, default port filled in; "" when `url` does not parse.
std::string origin(const std::string& url);

// 1234567 -> "1.23 MB" (decimal units, as the progress bar shows them).
std::string human_bytes(double bytes);

// "%XX"-escapes everything but unreserved characters (for a revision in a URL path).
std::string escape_path_segment(std::string_view segment);

}  // namespace m3::http
