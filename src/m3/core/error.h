// m3::Error: the one exception type the engine throws for bad input, bad files and
// unmet requests. Its message is meant for the user, so it names the file, tensor or
// limit involved. Callers at the edge (CLI, server) turn it into an exit status or 4xx.
#pragma once

#include <stdexcept>
#include <string>
#include <utility>

#include <fmt/format.h>

namespace m3 {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

// The model could not be fetched from the hub and nothing usable is cached.
class HubUnreachable : public Error {
 public:
  using Error::Error;
};

// The device a replica runs on failed in a way it does not recover from (a sticky CUDA
// error: every later call on that device fails too). The replica leaves service; its
// batches go back to the queue for the others.
class DeviceFault : public Error {
 public:
  using Error::Error;
};

template <typename... Args>
[[noreturn]] void fail(fmt::format_string<Args...> format, Args&&... args) {
  throw Error(fmt::format(format, std::forward<Args>(args)...));
}

}  // namespace m3
