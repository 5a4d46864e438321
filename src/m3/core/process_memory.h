// Resident memory of this process, from /proc/self/status, for checking the plan.
#pragma once

#include <cstdint>

namespace m3 {

uint64_t current_rss_bytes();  // VmRSS
uint64_t peak_rss_bytes();     // VmHWM: the peak since start or the last reset
void reset_peak_rss();         // writes 5 to /proc/self/clear_refs (Linux >= 4.0)

}  // namespace m3
