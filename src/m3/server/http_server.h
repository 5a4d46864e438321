// HttpServer: the listening socket, the I/O threads, the signals and the server's life:
// listening while the model loads (503), ready, then on SIGTERM/SIGINT draining (in-flight
// requests finish, new ones get 503) until nothing is in flight or --shutdown-timeout
// passes; a second signal stops at once.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>

#include "m3/server/router.h"
#include "m3/server/server_context.h"

namespace m3::server {

class HttpServer {
 public:
  // Binds host:port (throws m3::Error when it cannot) and installs the signal handlers.
  explicit HttpServer(ServerContext& context);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  uint16_t port() const { return port_; }
  // Starts accepting on the I/O threads.
  void start();
  // The models are loaded and warm: routes serve them (the first is the default).
  void models_ready(const std::vector<std::pair<std::string, Embedder*>>& models);
  // Graceful shutdown, as SIGTERM; safe from any thread.
  void shutdown();
  // Blocks until the server has stopped (after shutdown) and its threads are joined.
  void wait();

 private:
  // These run on strand_, with the acceptor, the signals and the timers.
  void begin_drain();
  void check_drained();  // stops the I/O threads once nothing is in flight
  void wait_for_signal();
  void sample_batches();

  ServerContext& context_;
  Router router_;
  boost::asio::io_context io_;
  boost::asio::strand<boost::asio::io_context::executor_type> strand_;
  boost::asio::ip::tcp::acceptor acceptor_;
  boost::asio::signal_set signals_;
  boost::asio::steady_timer drain_timer_;
  boost::asio::steady_timer sample_timer_;
  std::chrono::steady_clock::time_point drain_deadline_;
  uint16_t port_ = 0;
  std::vector<std::thread> threads_;
  struct Sampler;
  std::unique_ptr<Sampler> sampler_;
};

}  // namespace m3::server
