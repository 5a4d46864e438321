// One HTTP/1.1 connection: reads requests within the header and body limits and the read
// timeout, routes them, runs inference jobs while watching for the client going away
// (which cancels its queued work), and writes the responses in order within the write
// timeout. Keep-alive and pipelining follow HTTP/1.1; transport errors close the connection.
#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/asio/ip/tcp.hpp>

#include "m3/server/router.h"
#include "m3/server/server_context.h"

namespace m3::server {

boost::asio::awaitable<void> serve_connection(boost::asio::ip::tcp::socket socket, ServerContext& context,
                                              const Router& router);

}  // namespace m3::server
