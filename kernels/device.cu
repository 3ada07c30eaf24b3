// Device discovery for the optional CUDA backend.
#include <cuda_runtime.h>

#include <cstdio>

#include "painvrl/cuda/device.h"

namespace painvrl::cuda {

namespace {
std::string g_device_error;  // why the last count found no device ("" when it found one)
}

int usable_device_count() {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    g_device_error = std::string(cudaGetErrorName(err)) + ": " + cudaGetErrorString(err);
    cudaGetLastError();  // clear the sticky error
    return 0;
  }
  g_device_error = count == 0 ? "cudaGetDeviceCount found 0 devices" : "";
  return count;
}

std::string describe_device() {
  if (usable_device_count() == 0) return "no usable CUDA device (" + g_device_error + ")";
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, 0) != cudaSuccess) return "no usable CUDA device";
  char line[256];
  std::snprintf(line, sizeof line, "%s (sm_%d%d, %.1f GiB)", prop.name, prop.major, prop.minor,
                double(prop.totalGlobalMem) / (1024.0 * 1024.0 * 1024.0));
  return line;
}

}  // namespace painvrl::cuda
