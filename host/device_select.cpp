// Device selection (include/painvrl/device_select.h). The CUDA training backend (kernels/, the
// CUDA issue) is not written yet: the build has device discovery and the shared-math probe only,
// so `cuda` is refused with that reason even where a GPU is present, and `auto` trains on the
// CPU, saying which of the two reasons applies.
#include "painvrl/device_select.h"

#include <fmt/format.h>

#include "painvrl/error.h"
#ifdef PAINVRL_HAVE_CUDA
#include "painvrl/cuda/device.h"
#endif

namespace painvrl {

int usable_gpu_count() {
#ifdef PAINVRL_HAVE_CUDA
  return cuda::usable_device_count();
#else
  return 0;
#endif
}

std::string describe_gpu() {
#ifdef PAINVRL_HAVE_CUDA
  return cuda::describe_device();
#else
  return "this build has no CUDA support (built without nvcc)";
#endif
}

std::string resolve_device(const std::string& device) {
  if (device == "cpu") return "cpu";
  const bool gpu = usable_gpu_count() > 0;
  const std::string found = describe_gpu();
  if (device == "cuda") {
    if (!gpu) input_error("--device cuda: no usable GPU was found ({})", found);
    input_error(
        "--device cuda: {} is usable, but the CUDA training backend is not implemented yet; use "
        "--device cpu",
        found);
  }
  // auto
  log_info(gpu ? fmt::format("device auto: {} found, but the CUDA training backend is not "
                             "implemented yet; training on the CPU",
                             found)
               : fmt::format("device auto: no usable GPU ({}); training on the CPU", found));
  return "cpu";
}

}  // namespace painvrl
