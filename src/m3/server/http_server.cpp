#include "m3/server/http_server.h"

#include <csignal>
#include <cstdlib>

#include <spdlog/spdlog.h>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "m3/core/error.h"
#include "m3/server/engine_hooks.h"
#include "m3/server/http_session.h"

namespace m3::server {
namespace {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;

constexpr auto kDrainPoll = std::chrono::milliseconds(20);
constexpr auto kSamplePeriod = std::chrono::milliseconds(5);

asio::awaitable<void> accept_loop(asio::io_context& io, tcp::acceptor& acceptor, ServerContext& context,
                                  const Router& router) {
  asio::steady_timer backoff(acceptor.get_executor());
  for (;;) {
    auto [ec, socket] = co_await acceptor.async_accept(asio::make_strand(io), asio::as_tuple(asio::use_awaitable));
    if (!acceptor.is_open() || ec == asio::error::operation_aborted) co_return;
    if (ec) {  // e.g. out of file descriptors: wait a moment rather than spin
      spdlog::warn("accept failed: {}", ec.message());
      backoff.expires_after(std::chrono::milliseconds(50));
      co_await backoff.async_wait(asio::as_tuple(asio::use_awaitable));
      continue;
    }
    if (context.connections.load() >= context.options.max_connections) {
      spdlog::debug("refusing a connection: {} open (--max-connections)", context.connections.load());
      continue;  // the socket closes here
    }
    boost::system::error_code ignored;
    socket.set_option(tcp::no_delay(true), ignored);
    auto executor = socket.get_executor();
    asio::co_spawn(executor, serve_connection(std::move(socket), context, router), [](std::exception_ptr error) {
      if (!error) return;
      try {
        std::rethrow_exception(error);
      } catch (const std::exception& e) {
        spdlog::warn("connection ended by an error: {}", e.what());
      }
    });
  }
}

}  // namespace

struct HttpServer::Sampler {
  BatchSampler batches;
};

HttpServer::HttpServer(ServerContext& context)
    : context_(context),
      router_(context),
      strand_(asio::make_strand(io_)),
      acceptor_(strand_),
      signals_(strand_, SIGINT, SIGTERM),
      drain_timer_(strand_),
      sample_timer_(strand_) {
  const auto& o = context.options;
  boost::system::error_code ec;
  const auto address = asio::ip::make_address(o.host, ec);
  if (ec) fail("--host {}: not an IP address", o.host);
  const tcp::endpoint endpoint(address, o.port);
  acceptor_.open(endpoint.protocol(), ec);
  if (!ec) acceptor_.set_option(tcp::acceptor::reuse_address(true), ec);
  if (!ec) acceptor_.bind(endpoint, ec);
  if (!ec) acceptor_.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) fail("cannot listen on {}:{}: {}", o.host, o.port, ec.message());
  port_ = acceptor_.local_endpoint().port();
  const bool v6 = address.is_v6();
  spdlog::info("listening on http://{}{}{}:{}", v6 ? "[" : "", o.host, v6 ? "]" : "", port_);
}

HttpServer::~HttpServer() {
  io_.stop();
  for (auto& thread : threads_) {
    if (thread.joinable()) thread.join();
  }
}

void HttpServer::start() {
  asio::co_spawn(strand_, accept_loop(io_, acceptor_, context_, router_), asio::detached);
  wait_for_signal();
  const size_t n = std::max<size_t>(1, context_.options.http_threads);
  for (size_t i = 0; i < n; ++i) threads_.emplace_back([this] { io_.run(); });
}

void HttpServer::models_ready(const std::vector<std::pair<std::string, Embedder*>>& models) {
  Metrics& metrics = context_.metrics;
  bool observed = true;
  for (const auto& [name, engine] : models) {
    observed = observe_batches(engine->scheduler(), [&metrics](int64_t tokens, size_t) { metrics.record_batch(tokens); }) &&
               observed;
  }
  context_.set_ready(models);
  if (!observed) {
    asio::post(strand_, [this] {
      sampler_ = std::make_unique<Sampler>();
      sample_batches();
    });
  }
  if (context_.state.load() == ServerState::kReady) spdlog::info("ready");
}

void HttpServer::sample_batches() {
  Embedder* embedder = context_.embedder.load();
  if (embedder) sampler_->batches.sample(embedder->scheduler().stats(), context_.metrics);
  sample_timer_.expires_after(kSamplePeriod);
  sample_timer_.async_wait([this](const boost::system::error_code& ec) {
    if (!ec) sample_batches();
  });
}

void HttpServer::shutdown() {
  asio::post(strand_, [this] { begin_drain(); });
}

void HttpServer::wait() {
  for (auto& thread : threads_) {
    if (thread.joinable()) thread.join();
  }
}

void HttpServer::wait_for_signal() {
  signals_.async_wait([this](const boost::system::error_code& ec, int signal) {
    if (ec) return;
    if (context_.state.load() == ServerState::kDraining) {
      spdlog::warn("signal {} again: stopping now, {} request(s) unanswered", signal, context_.limiter.active());
      context_.in_flight.cancel_all();
      io_.stop();
      return;
    }
    spdlog::info("signal {}: shutting down", signal);
    begin_drain();
    wait_for_signal();
  });
}

void HttpServer::begin_drain() {
  if (context_.state.exchange(ServerState::kDraining) == ServerState::kDraining) return;
  spdlog::info("finishing {} in-flight request(s); new requests get 503 (at most {} s)", context_.limiter.active(),
               context_.options.shutdown_timeout_s);
  drain_deadline_ =
      std::chrono::steady_clock::now() + std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                                             std::chrono::duration<double>(context_.options.shutdown_timeout_s));
  check_drained();
}

void HttpServer::check_drained() {
  const size_t active = context_.limiter.active();
  const bool late = std::chrono::steady_clock::now() >= drain_deadline_;
  if (active == 0 || late) {
    if (late && active) {
      spdlog::warn("shutdown timeout: {} request(s) unanswered", active);
      context_.in_flight.cancel_all();
    }
    boost::system::error_code ignored;
    acceptor_.close(ignored);
    signals_.cancel(ignored);
    io_.stop();
    return;
  }
  drain_timer_.expires_after(kDrainPoll);
  drain_timer_.async_wait([this](const boost::system::error_code& ec) {
    if (!ec) check_drained();
  });
}

}  // namespace m3::server
