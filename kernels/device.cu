// Device discovery for the optional CUDA backend.
#include <cuda_runtime.h>

#include <cstdio>

#include "painvrl/cuda/device.h"

namespace painvrl::cuda {

int usable_device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky error
    return 0;
  }
  return count;
}

std::string describe_device() {
  if (usable_device_count() == 0) return "no usable CUDA device";
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, 0) != cudaSuccess) return "no usable CUDA device";
  char line[256];
  std::snprintf(line, sizeof line, "%s (sm_%d%d, %.1f GiB)", prop.name, prop.major, prop.minor,
                double(prop.totalGlobalMem) / (1024.0 * 1024.0 * 1024.0));
  return line;
}

}  // namespace painvrl::cuda
