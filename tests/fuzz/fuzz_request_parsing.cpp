// libFuzzer target: untrusted bytes through everything that parses a request before the
// model sees it. The first byte picks the entry: a raw HTTP/1.1 message (Boost.Beast's
// parser with the server's limits, then the body to the parser of its route), or a JSON
// body given straight to one of the route parsers. Refusals are ApiErrors with a 4xx;
// anything else (a crash, a sanitizer report, another exception, a 5xx) is a finding.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/string_body.hpp>

#include "m3/server/api_error.h"
#include "m3/server/base64.h"
#include "m3/server/json_writer.h"
#include "m3/server/native_api.h"
#include "m3/server/openai_api.h"
#include "m3/server/tei_api.h"
#include "m3/server/vllm_api.h"

namespace {

using namespace m3::server;
namespace http = boost::beast::http;

ApiLimits limits() {
  ApiLimits l;
  l.max_client_batch_size = 16;
  l.vocab_size = 250002;
  l.hidden_size = 1024;
  return l;
}

void check_inputs(const std::vector<Input>& inputs) {
  for (const Input& input : inputs) {
    std::string out;
    append_json_string(out, input.text);  // every accepted text is valid UTF-8 and re-encodable
    if (input.is_ids && input.ids.size() < 2) std::abort();
  }
}

template <typename Parse>
void parse_body(Parse parse, std::string_view body) {
  try {
    auto request = parse(body, limits());
    check_inputs(request.inputs);
  } catch (const ApiError& e) {
    if (e.status() < 400 || e.status() > 499) std::abort();
    (void)error_response(ErrorFormat::kOpenAi, e);
    (void)error_response(ErrorFormat::kTei, e);
  }
}

void parse_score(std::string_view body) {
  try {
    auto request = parse_native_score_request(body, limits());
    if (request.pairs.empty()) std::abort();
  } catch (const ApiError& e) {
    if (e.status() < 400 || e.status() > 499) std::abort();
  }
}

void route_body(std::string_view path, std::string_view body) {
  if (path == "/v1/embeddings")
    parse_body(parse_openai_embedding_request, body);
  else if (path == "/embed" || path == "/embed_sparse" || path == "/embed_all")
    parse_body(parse_tei_embed_request, body);
  else if (path == "/tokenize")
    parse_body(parse_tei_tokenize_request, body);
  else if (path == "/m3/encode")
    parse_body(parse_native_encode_request, body);
  else if (path == "/m3/score")
    parse_score(body);
  else if (path == "/pooling")
    parse_body(parse_vllm_pooling_request, body);
}

void parse_http(std::string_view data) {
  http::request_parser<http::string_body> parser;
  parser.header_limit(16384);
  parser.body_limit(2000000);
  boost::beast::error_code ec;
  size_t used = 0;
  while (used < data.size() && !parser.is_done()) {
    const size_t n = parser.put(boost::asio::buffer(data.data() + used, data.size() - used), ec);
    if (ec == http::error::need_more) break;
    if (ec) return;
    if (n == 0) break;
    used += n;
  }
  if (!parser.is_done()) {
    if (!parser.got_some()) return;  // put_eof's precondition
    parser.put_eof(ec);
    if (ec || !parser.is_done()) return;
  }
  const auto& message = parser.get();
  const std::string_view target = message.target();
  route_body(target.substr(0, target.find('?')), message.body());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::string_view rest(reinterpret_cast<const char*>(data) + 1, size - 1);
  switch (data[0] % 8) {
    case 0: parse_http(rest); break;
    case 1: parse_body(parse_openai_embedding_request, rest); break;
    case 2: parse_body(parse_tei_embed_request, rest); break;
    case 3: parse_body(parse_tei_tokenize_request, rest); break;
    case 4: parse_body(parse_native_encode_request, rest); break;
    case 5: parse_score(rest); break;
    case 6: (void)decode_base64(rest); break;
    case 7: parse_body(parse_vllm_pooling_request, rest); break;
    default: parse_http(rest); break;
  }
  return 0;
}
