// Where replicas run: `--device auto|cpu|cuda|cuda:N` and `--devices cuda:0,cuda:1,...`.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace m3 {

enum class DeviceKind { kCpu, kCuda };

struct Device {
  DeviceKind kind = DeviceKind::kCpu;
  int index = 0;  // CUDA ordinal
  std::string name() const;  // "cpu", "cuda:0"
  bool operator==(const Device&) const = default;
};

// "cpu", "cuda" (= cuda:0), "cuda:N". Throws m3::Error otherwise.
Device parse_device(std::string_view text);
// A comma-separated list of CUDA devices ("cuda:0,cuda:1"); duplicates are an error.
std::vector<Device> parse_device_list(std::string_view text);

}  // namespace m3
