#include "m3/core/device.h"

#include <algorithm>
#include <charconv>

#include <fmt/format.h>

#include "m3/core/error.h"

namespace m3 {

std::string Device::name() const { return kind == DeviceKind::kCpu ? "cpu" : fmt::format("cuda:{}", index); }

Device parse_device(std::string_view text) {
  if (text == "cpu") return {DeviceKind::kCpu, 0};
  if (text == "cuda" || text == "gpu") return {DeviceKind::kCuda, 0};
  if (text.starts_with("cuda:")) {
    const std::string_view digits = text.substr(5);
    int index = -1;
    const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), index);
    if (ec == std::errc() && end == digits.data() + digits.size() && !digits.empty() && index >= 0 && index < 1024) {
      return {DeviceKind::kCuda, index};
    }
  }
  fail("unknown device \"{}\" (use auto, cpu, cuda or cuda:N)", text);
}

std::vector<Device> parse_device_list(std::string_view text) {
  std::vector<Device> devices;
  size_t start = 0;
  while (start <= text.size()) {
    const size_t comma = std::min(text.find(',', start), text.size());
    const std::string_view item = text.substr(start, comma - start);
    if (item.empty()) fail("--devices \"{}\": empty entry (use cuda:0,cuda:1,...)", text);
    const Device d = parse_device(item);
    if (d.kind != DeviceKind::kCuda) fail("--devices lists CUDA devices (cuda:0,cuda:1,...), not \"{}\"", item);
    if (std::find(devices.begin(), devices.end(), d) != devices.end()) {
      fail("--devices \"{}\" names {} twice", text, d.name());
    }
    devices.push_back(d);
    start = comma + 1;
  }
  return devices;
}

}  // namespace m3
