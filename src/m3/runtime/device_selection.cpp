#include "m3/runtime/device_selection.h"

#include <spdlog/spdlog.h>

#include "m3/backend/cuda_devices.h"
#include "m3/core/error.h"

namespace m3 {

std::vector<Device> select_devices(std::string_view device, std::string_view devices) {
  std::vector<Device> chosen;
  if (!devices.empty()) {
    chosen = parse_device_list(devices);
  } else if (device == "auto") {
    std::string why;
    if (cuda_device_count(&why) > 0) return {Device{DeviceKind::kCuda, 0}};
    spdlog::info("--device auto: no usable GPU ({}); running on the CPU", why);
    return {Device{DeviceKind::kCpu, 0}};
  } else {
    chosen = {parse_device(device)};
  }
  if (chosen.front().kind == DeviceKind::kCpu) return chosen;
  std::string why;
  const int count = cuda_device_count(&why);
  for (const Device& d : chosen) {
    if (count == 0) fail("{} was asked for, but no GPU can be used: {} (use --device cpu or auto)", d.name(), why);
    if (d.index >= count) {
      fail("{} was asked for, but only {} CUDA device(s) are visible (cuda:0..cuda:{}; CUDA_VISIBLE_DEVICES "
           "limits them)", d.name(), count, count - 1);
    }
  }
  return chosen;
}

}  // namespace m3
