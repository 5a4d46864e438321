// The scheduler requests the connections are waiting on, so that a forced stop (a second
// signal, or --shutdown-timeout passing) can withdraw the queued ones at once instead of
// computing answers nobody will read.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include "m3/runtime/request.h"

namespace m3::server {

class InFlightRequests {
 public:
  uint64_t add(std::shared_ptr<RequestHandle> handle) {
    std::lock_guard lock(mutex_);
    handles_.emplace(++next_, std::move(handle));
    return next_;
  }
  void remove(uint64_t id) {
    std::lock_guard lock(mutex_);
    handles_.erase(id);
  }
  // Cancels every registered request (their callbacks run now, on this thread).
  size_t cancel_all() {
    std::vector<std::shared_ptr<RequestHandle>> handles;
    {
      std::lock_guard lock(mutex_);
      for (auto& [id, handle] : handles_) handles.push_back(handle);
    }
    size_t cancelled = 0;
    for (auto& handle : handles) cancelled += handle->cancel();
    return cancelled;
  }

 private:
  std::mutex mutex_;
  uint64_t next_ = 0;
  std::map<uint64_t, std::shared_ptr<RequestHandle>> handles_;
};

}  // namespace m3::server
