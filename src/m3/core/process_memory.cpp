#include "m3/core/process_memory.h"

#include <cstdio>
#include <cstring>

namespace m3 {
namespace {

uint64_t status_field_kib(const char* field) {
  FILE* f = std::fopen("/proc/self/status", "r");
  if (!f) return 0;
  char line[256];
  uint64_t value = 0;
  const size_t n = std::strlen(field);
  while (std::fgets(line, sizeof line, f)) {
    if (std::strncmp(line, field, n) == 0 && line[n] == ':') {
      std::sscanf(line + n + 1, "%lu", &value);
      break;
    }
  }
  std::fclose(f);
  return value;
}

}  // namespace

uint64_t current_rss_bytes() { return status_field_kib("VmRSS") * 1024; }
uint64_t peak_rss_bytes() { return status_field_kib("VmHWM") * 1024; }

void reset_peak_rss() {
  if (FILE* f = std::fopen("/proc/self/clear_refs", "w")) {
    std::fputs("5", f);
    std::fclose(f);
  }
}

}  // namespace m3
