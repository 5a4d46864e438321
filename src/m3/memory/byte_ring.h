// ByteRing: offsets in a fixed block of `capacity` bytes, handed out and given back in
// the same (FIFO) order, as a writer that emits results in input order does. Each region
// is contiguous; one that would run past the end starts again at 0, and the skipped tail
// is given back with it. No locking: the owner serializes calls.
#pragma once

#include <cstdint>
#include <deque>
#include <optional>

namespace m3 {

class ByteRing {
 public:
  explicit ByteRing(uint64_t capacity) : capacity_(capacity) {}

  uint64_t capacity() const { return capacity_; }
  uint64_t used() const { return used_; }  // bytes of live regions, skipped tails included

  // The offset of a new region of `bytes` (64-byte aligned), or nullopt when it does not
  // fit now. A region larger than the capacity never fits (check with fits_ever).
  std::optional<uint64_t> acquire(uint64_t bytes);
  bool fits_ever(uint64_t bytes) const { return align(bytes) <= capacity_; }
  // Gives back the oldest live region.
  void release_oldest();

  static uint64_t align(uint64_t bytes) { return (bytes + 63) / 64 * 64; }

 private:
  uint64_t capacity_;
  uint64_t head_ = 0;  // start of the oldest live region
  uint64_t tail_ = 0;  // where the next region starts
  uint64_t used_ = 0;
  std::deque<uint64_t> sizes_;  // live regions' sizes (with any skipped tail before them), oldest first
};

}  // namespace m3
