#include "m3/memory/byte_ring.h"

namespace m3 {

std::optional<uint64_t> ByteRing::acquire(uint64_t bytes) {
  const uint64_t size = align(bytes);
  if (size > capacity_) return std::nullopt;
  if (sizes_.empty()) head_ = tail_ = used_ = 0;  // empty: start over at 0
  uint64_t start = tail_, skipped = 0;
  if (!sizes_.empty() && tail_ <= head_) {
    // Wrapped: free space is [tail_, head_).
    if (head_ - tail_ < size) return std::nullopt;
  } else if (capacity_ - tail_ < size) {
    // Not wrapped: free space is [tail_, capacity_) then [0, head_).
    if (head_ < size) return std::nullopt;
    skipped = capacity_ - tail_;
    start = 0;
  }
  sizes_.push_back(skipped + size);
  used_ += skipped + size;
  tail_ = start + size;
  if (tail_ == capacity_) tail_ = 0;
  return start;
}

void ByteRing::release_oldest() {
  if (sizes_.empty()) return;
  const uint64_t size = sizes_.front();
  sizes_.pop_front();
  used_ -= size;
  head_ = (head_ + size) % capacity_;
  if (sizes_.empty()) head_ = tail_ = 0;
}

}  // namespace m3
