#include "m3/server/http_session.h"

#include <sys/socket.h>

#include <cerrno>
#include <chrono>
#include <memory>

#include <spdlog/spdlog.h>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include "m3/server/async_infer.h"

namespace m3::server {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using Clock = std::chrono::steady_clock;
constexpr auto kTuple = asio::as_tuple(asio::use_awaitable);

std::chrono::steady_clock::duration seconds(double s) {
  return std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(s));
}

double since(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

struct ConnectionCount {
  explicit ConnectionCount(std::atomic<size_t>& count) : count_(count) { ++count_; }
  ~ConnectionCount() { --count_; }
  std::atomic<size_t>& count_;
};

// Watches the socket while a request is being computed: the peer closing (EOF or reset)
// emits the cancellation signal bound to the inference. Pipelined bytes end the watch.
struct DisconnectWatch {
  asio::cancellation_signal signal;
  bool done = false;
  bool peer_gone = false;
};

void watch_disconnect(tcp::socket& socket, const std::shared_ptr<DisconnectWatch>& watch) {
  const int fd = socket.native_handle();
  socket.async_wait(tcp::socket::wait_read, [watch, fd](const boost::system::error_code& ec) {
    if (watch->done || ec == asio::error::operation_aborted) return;
    char byte;
    const ssize_t n = ::recv(fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n > 0 || (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))) return;
    watch->peer_gone = true;
    watch->signal.emit(asio::cancellation_type::terminal);
  });
}

ErrorFormat format_for(std::string_view target) {
  return target.starts_with("/v1/") || target.starts_with("/m3/") ? ErrorFormat::kOpenAi : ErrorFormat::kTei;
}

std::string_view path_of(std::string_view target) { return target.substr(0, target.find('?')); }

asio::awaitable<bool> write_response(beast::tcp_stream& stream, HttpResponse&& response, unsigned version,
                                     bool keep_alive, const ServerOptions& options) {
  http::response<http::string_body> message{static_cast<http::status>(response.status), version};
  message.set(http::field::server, "m3embed/" M3_VERSION);
  message.set(http::field::content_type, response.content_type);
  for (const auto& [name, value] : response.headers) message.set(name, value);
  message.keep_alive(keep_alive);
  message.body() = std::move(response.body);
  message.prepare_payload();
  stream.expires_after(seconds(options.write_timeout_s));
  auto [ec, bytes] = co_await http::async_write(stream, message, kTuple);
  co_return !ec;
}

// After an error that leaves request bytes unread: stop sending, drain what the client is
// still sending for a moment (so it sees the response instead of a reset), then close.
asio::awaitable<void> linger_close(beast::tcp_stream& stream) {
  boost::system::error_code ignored;
  stream.socket().shutdown(tcp::socket::shutdown_send, ignored);
  stream.expires_after(std::chrono::seconds(2));
  std::array<char, 16384> scratch;
  size_t drained = 0;
  while (drained < (64u << 20)) {
    auto [ec, n] = co_await stream.async_read_some(asio::buffer(scratch), kTuple);
    if (ec) break;
    drained += n;
  }
  stream.close();
}

// A request that could not be read: answer what deserves an answer, then close.
asio::awaitable<void> refuse_transport(beast::tcp_stream& stream, ServerContext& context,
                                       const http::request_parser<http::string_body>& parser,
                                       const boost::system::error_code& ec, Clock::time_point start) {
  int status = 400;
  std::string message;
  if (ec == http::error::body_limit) {
    status = 413;
    message = fmt::format("the request body is larger than the limit of {} bytes (--payload-limit)",
                          context.options.payload_limit);
  } else if (ec == http::error::header_limit) {
    status = 431;
    message = fmt::format("the request header is larger than the limit of {} bytes", context.options.max_header_bytes);
  } else if (ec.category() == http::make_error_code(http::error::bad_target).category() &&
             ec != http::error::end_of_stream && ec != http::error::partial_message) {
    message = fmt::format("malformed HTTP request: {}", ec.message());
  } else {
    co_return;  // closed, reset, timed out (the stream is closed already): nobody to answer
  }
  const std::string_view target = parser.is_header_done() ? std::string_view(parser.get().target()) : "";
  context.metrics.record_request("http", status, since(start));
  HttpResponse response = error_response(format_for(target), ApiError(status, message));
  if (co_await write_response(stream, std::move(response), 11, false, context.options)) co_await linger_close(stream);
}

// Runs the route's inference job; the response, or nullopt when the client went away.
asio::awaitable<std::optional<HttpResponse>> run_job(beast::tcp_stream& stream, ServerContext& context,
                                                     RouteDecision& decision) {
  InferenceJob& job = *decision.result.job;
  Embedder* embedder = decision.engine;
  auto watch = std::make_shared<DisconnectWatch>();
  watch_disconnect(stream.socket(), watch);
  const size_t sequences = job.sequences.size();
  InferenceOutcome outcome =
      co_await async_infer(embedder->scheduler(), context.in_flight, std::move(job.sequences), job.outputs,
                           asio::bind_cancellation_slot(watch->signal.slot(), asio::use_awaitable));
  if (outcome.registration) context.in_flight.remove(outcome.registration);
  watch->done = true;
  boost::system::error_code ignored;
  stream.socket().cancel(ignored);  // ends the watch's wait
  if (watch->peer_gone || outcome.status == 499) co_return std::nullopt;
  if (outcome.timing) context.metrics.record_timing(outcome.timing->queue_seconds, outcome.timing->inference_seconds);
  if (!outcome.error.empty()) {
    if (outcome.status >= 500 && outcome.status != 503) spdlog::error("inference failed: {}", outcome.error);
    co_return error_response(decision.format, ApiError(outcome.status, outcome.error));
  }
  context.metrics.record_inference(sequences, job.tokens);
  try {
    co_return job.respond(std::move(outcome.outputs));
  } catch (const ApiError& e) {
    co_return error_response(decision.format, e);
  } catch (const std::exception& e) {
    spdlog::error("encoding the response failed: {}", e.what());
    co_return error_response(decision.format, ApiError(500, "internal error while encoding the response"));
  }
}

}  // namespace

asio::awaitable<void> serve_connection(tcp::socket socket, ServerContext& context, const Router& router) {
  ConnectionCount count(context.connections);
  const ServerOptions& options = context.options;
  beast::tcp_stream stream(std::move(socket));
  beast::flat_buffer buffer;
  for (;;) {
    http::request_parser<http::string_body> parser;
    parser.header_limit(static_cast<std::uint32_t>(options.max_header_bytes));
    parser.body_limit(options.payload_limit);
    stream.expires_after(seconds(options.read_timeout_s));
    auto [ec, bytes] = co_await http::async_read_header(stream, buffer, parser, kTuple);
    const auto start = Clock::now();
    if (!ec && !parser.is_done()) {
      if (beast::iequals(parser.get()[http::field::expect], "100-continue")) {
        http::response<http::empty_body> go_on{http::status::continue_, parser.get().version()};
        stream.expires_after(seconds(options.write_timeout_s));
        std::tie(ec, bytes) = co_await http::async_write(stream, go_on, kTuple);
      }
      if (!ec) {
        stream.expires_after(seconds(options.read_timeout_s));
        std::tie(ec, bytes) = co_await http::async_read(stream, buffer, parser, kTuple);
      }
    }
    if (ec) {
      co_await refuse_transport(stream, context, parser, ec, start);
      co_return;
    }

    auto message = parser.release();
    HttpRequest request;
    request.method = std::string(message.method_string());
    request.path = std::string(path_of(message.target()));
    request.authorization = std::string(message[http::field::authorization]);
    request.body = std::move(message.body());
    bool keep_alive = message.keep_alive();

    RouteDecision decision = router.route(request);
    request.body.clear();
    request.body.shrink_to_fit();
    std::optional<HttpResponse> response;
    if (decision.result.job) {
      response = co_await run_job(stream, context, decision);
      if (!response) {  // the client is gone: its work was withdrawn, nothing to write
        context.metrics.record_request(decision.label, 499, since(start));
        co_return;
      }
    } else {
      response = std::move(decision.result.response);
    }
    if (context.state.load() == ServerState::kDraining) keep_alive = false;
    context.metrics.record_request(decision.label, response->status, since(start));
    const bool written = co_await write_response(stream, std::move(*response), message.version(), keep_alive, options);
    if (!written || !keep_alive) break;
  }
  boost::system::error_code ignored;
  stream.socket().shutdown(tcp::socket::shutdown_send, ignored);
  stream.close();
}

}  // namespace m3::server
