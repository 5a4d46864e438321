// Which devices the replicas run on, from --device and --devices.
#pragma once

#include <string_view>
#include <vector>

#include "m3/core/device.h"

namespace m3 {

// `devices` (cuda:0,cuda:1,...) when not empty, else `device`: auto (the first GPU when
// one is visible, else the CPU), cpu, cuda or cuda:N. A CUDA device that is not there
// (or a binary built without CUDA) is an m3::Error that says why.
std::vector<Device> select_devices(std::string_view device, std::string_view devices);

}  // namespace m3
