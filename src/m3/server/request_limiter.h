// Admission control: at most N requests are being served at once (--max-concurrent-requests);
// the next one gets 429 at once instead of waiting. A Permit is held from admission until
// its response is written, so the count is also what graceful shutdown waits for.
#pragma once

#include <atomic>
#include <cstddef>
#include <optional>

namespace m3::server {

class RequestLimiter {
 public:
  class Permit {
   public:
    Permit() = default;
    explicit Permit(RequestLimiter* limiter) : limiter_(limiter) {}
    Permit(Permit&& other) noexcept : limiter_(other.limiter_) { other.limiter_ = nullptr; }
    Permit& operator=(Permit&& other) noexcept {
      if (this != &other) {
        release();
        limiter_ = other.limiter_;
        other.limiter_ = nullptr;
      }
      return *this;
    }
    ~Permit() { release(); }
    explicit operator bool() const { return limiter_ != nullptr; }

   private:
    void release() {
      if (limiter_) limiter_->active_.fetch_sub(1);
      limiter_ = nullptr;
    }
    RequestLimiter* limiter_ = nullptr;
  };

  explicit RequestLimiter(size_t max_active) : max_active_(max_active) {}

  std::optional<Permit> try_acquire() {
    size_t active = active_.load();
    do {
      if (active >= max_active_) return std::nullopt;
    } while (!active_.compare_exchange_weak(active, active + 1));
    return Permit(this);
  }
  size_t active() const { return active_.load(); }
  size_t limit() const { return max_active_; }

 private:
  const size_t max_active_;
  std::atomic<size_t> active_{0};
};

}  // namespace m3::server
