// Arena: one block of memory per replica, allocated once at start and used at the
// fixed offsets of the MemoryPlan for its whole life. Pages are touched at warm-up so
// the resident size after warm-up is the size the process keeps.
#pragma once

#include <cstddef>
#include <cstdint>

namespace m3 {

class Arena {
 public:
  explicit Arena(uint64_t bytes);  // reserves address space; nothing is resident yet
  ~Arena();
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;

  template <typename T>
  T* at(uint64_t offset) const {
    return reinterpret_cast<T*>(static_cast<std::byte*>(base_) + offset);
  }
  uint64_t size() const { return bytes_; }
  // Writes every page (zeros), making the whole arena resident.
  void touch();

 private:
  void* base_ = nullptr;
  uint64_t bytes_ = 0;
};

}  // namespace m3
