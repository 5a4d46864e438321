#include "m3/memory/arena.h"

#include <sys/mman.h>

#include <cerrno>
#include <cstring>

#include "m3/core/error.h"
#include "m3/memory/memory_plan.h"

namespace m3 {

Arena::Arena(uint64_t bytes) : bytes_(bytes) {
  if (bytes == 0) return;
  // An anonymous mapping, not the heap: it never fragments and goes back to the OS whole.
  base_ = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (base_ == MAP_FAILED) {
    base_ = nullptr;
    fail("cannot allocate the {} arena: {}", format_bytes(bytes), std::strerror(errno));
  }
}

Arena::~Arena() {
  if (base_) munmap(base_, bytes_);
}

void Arena::touch() {
  if (base_) std::memset(base_, 0, bytes_);
}

}  // namespace m3
