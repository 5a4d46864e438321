// The server's bound on response bytes in flight (--output-memory, counted in the memory
// plan): each inference request reserves its response's estimated size (outputs and their
// JSON) at admission and gives it back once the response is written. A response larger
// than the whole budget is refused with 413; one that does not fit now gets 429.
#pragma once

#include <atomic>
#include <cstdint>
#include <optional>

namespace m3::server {

class ResponseBudget {
 public:
  class Reservation {
   public:
    Reservation() = default;
    Reservation(ResponseBudget* budget, uint64_t bytes) : budget_(budget), bytes_(bytes) {}
    Reservation(Reservation&& other) noexcept : budget_(other.budget_), bytes_(other.bytes_) {
      other.budget_ = nullptr;
    }
    Reservation& operator=(Reservation&& other) noexcept {
      if (this != &other) {
        release();
        budget_ = other.budget_;
        bytes_ = other.bytes_;
        other.budget_ = nullptr;
      }
      return *this;
    }
    ~Reservation() { release(); }
    uint64_t bytes() const { return budget_ ? bytes_ : 0; }

   private:
    void release() {
      if (budget_) budget_->used_.fetch_sub(bytes_);
      budget_ = nullptr;
    }
    ResponseBudget* budget_ = nullptr;
    uint64_t bytes_ = 0;
  };

  // Set once, when the model (and so the plan) is ready, before any reservation.
  void set_capacity(uint64_t bytes) { capacity_.store(bytes); }
  uint64_t capacity() const { return capacity_.load(); }
  uint64_t used() const { return used_.load(); }

  std::optional<Reservation> try_reserve(uint64_t bytes) {
    const uint64_t capacity = capacity_.load();
    uint64_t used = used_.load();
    do {
      if (bytes > capacity || used > capacity - bytes) return std::nullopt;
    } while (!used_.compare_exchange_weak(used, used + bytes));
    return Reservation(this, bytes);
  }

 private:
  std::atomic<uint64_t> capacity_{0};
  std::atomic<uint64_t> used_{0};
};

}  // namespace m3::server
