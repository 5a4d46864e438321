#include "m3/runtime/ordered_results.h"

#include <algorithm>
#include <cstring>

#include "m3/core/error.h"
#include "m3/memory/memory_plan.h"

namespace m3 {
namespace {

// Copies `count` items to `base + *offset` and advances the offset; returns where they went.
template <typename T>
const T* put(std::byte* base, uint64_t* offset, const T* data, size_t count) {
  T* to = reinterpret_cast<T*>(base + *offset);
  if (count) std::memcpy(static_cast<void*>(to), data, count * sizeof(T));
  *offset += count * sizeof(T);
  return to;
}

}  // namespace

OrderedResults::OrderedResults(uint64_t capacity_bytes)
    : storage_(ByteRing::align(capacity_bytes)), ring_(ByteRing::align(capacity_bytes)) {}

OrderedResults::~OrderedResults() {
  std::unique_lock lock(mutex_);
  idle_cv_.wait(lock, [&] { return pending_ == 0; });
}

uint64_t OrderedResults::bytes_for(int64_t tokens, int64_t hidden, const OutputRequest& request) {
  const auto t = static_cast<uint64_t>(tokens), h = static_cast<uint64_t>(hidden);
  uint64_t bytes = 0;
  if (request.dense) bytes += h * sizeof(float);
  if (request.sparse) bytes += t * sizeof(std::pair<int32_t, float>);
  if (request.colbert) bytes += t * h * sizeof(float);  // at most one row per token
  return ByteRing::align(bytes + 3 * 64);                 // each part starts 64-aligned
}

uint64_t OrderedResults::reserve(uint64_t bytes) {
  std::unique_lock lock(mutex_);
  if (!ring_.fits_ever(bytes)) {
    m3::fail("one result needs {} but the output buffer holds {} (raise --output-memory)", format_bytes(bytes),
         format_bytes(ring_.capacity()));
  }
  std::optional<uint64_t> offset;
  auto ready = [&] { return !abort_error_.empty() || (offset = ring_.acquire(bytes)).has_value(); };
  if (!ready()) {
    ++waiting_;
    room_cv_.wait(lock, ready);
    --waiting_;
  }
  if (!abort_error_.empty()) throw Error(abort_error_);
  peak_ = std::max(peak_, ring_.used());
  slots_.push_back(Slot{*offset, bytes, false, {}, {}});
  ++pending_;
  return first_ + slots_.size() - 1;
}

OrderedResults::Slot& OrderedResults::slot_locked(uint64_t number) { return slots_[number - first_]; }

void OrderedResults::deliver(uint64_t number, const M3Output& output) {
  uint64_t offset = 0, bytes = 0;
  {
    std::lock_guard lock(mutex_);
    const Slot& slot = slot_locked(number);
    offset = slot.offset;
    bytes = slot.bytes;
  }
  // The region is this result's alone until it is marked ready: copy outside the lock.
  ResultView view;
  std::byte* base = storage_.at<std::byte>(0);
  uint64_t at = offset;
  const uint64_t needed = ByteRing::align(output.dense.size() * sizeof(float)) +
                          ByteRing::align(output.lexical.size() * sizeof(output.lexical[0])) +
                          ByteRing::align(output.colbert.size() * sizeof(float));
  std::string error;
  if (needed > bytes) {
    error = fmt::format("internal error: a result of {} bytes was reserved {}", needed, bytes);
  } else {
    view.dense = put(base, &at, output.dense.data(), output.dense.size());
    at = ByteRing::align(at);
    view.lexical = put(base, &at, output.lexical.data(), output.lexical.size());
    at = ByteRing::align(at);
    view.colbert = put(base, &at, output.colbert.data(), output.colbert.size());
    view.dense_size = static_cast<int64_t>(output.dense.size());
    view.lexical_size = static_cast<int64_t>(output.lexical.size());
    view.colbert_rows = output.colbert_rows;
    view.tokens = output.tokens;
  }
  {
    std::lock_guard lock(mutex_);
    Slot& slot = slot_locked(number);
    slot.view = view;
    slot.error = std::move(error);
    slot.ready = true;
    --pending_;
  }
  ready_cv_.notify_all();
  idle_cv_.notify_all();
}

void OrderedResults::fail(uint64_t number, std::string error) {
  {
    std::lock_guard lock(mutex_);
    Slot& slot = slot_locked(number);
    slot.error = error.empty() ? std::string("failed") : std::move(error);
    slot.ready = true;
    --pending_;
  }
  ready_cv_.notify_all();
  idle_cv_.notify_all();
}

void OrderedResults::close() {
  {
    std::lock_guard lock(mutex_);
    closed_ = true;
  }
  ready_cv_.notify_all();
}

void OrderedResults::abort(std::string error) {
  {
    std::lock_guard lock(mutex_);
    if (abort_error_.empty()) abort_error_ = error.empty() ? std::string("aborted") : std::move(error);
  }
  room_cv_.notify_all();
  ready_cv_.notify_all();
}

std::optional<ResultView> OrderedResults::next() {
  std::unique_lock lock(mutex_);
  ready_cv_.wait(lock, [&] {
    return !abort_error_.empty() || (!slots_.empty() && slots_.front().ready) || (closed_ && slots_.empty());
  });
  if (!abort_error_.empty()) throw Error(abort_error_);
  if (slots_.empty()) return std::nullopt;
  if (!slots_.front().error.empty()) throw Error(slots_.front().error);
  return slots_.front().view;
}

bool OrderedResults::next_ready() const {
  std::lock_guard lock(mutex_);
  return !abort_error_.empty() || (!slots_.empty() && slots_.front().ready) || (closed_ && slots_.empty());
}

void OrderedResults::pop() {
  {
    std::lock_guard lock(mutex_);
    if (slots_.empty()) return;
    slots_.pop_front();
    ++first_;
    ring_.release_oldest();
  }
  room_cv_.notify_all();
}

size_t OrderedResults::waiting_producers() const {
  std::lock_guard lock(mutex_);
  return waiting_;
}

uint64_t OrderedResults::peak_used() const {
  std::lock_guard lock(mutex_);
  return peak_;
}

}  // namespace m3
