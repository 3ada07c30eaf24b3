// Device selection (include/painvrl/pipeline/device_select.h). The CUDA backend (kernels/) trains
// the backbone stages and HIM's environment models and scores on the GPU, but it has not yet run on
// one: until tools/device-check
// has passed on an H200, `cuda` is refused even where a GPU is present unless
// PAINVRL_UNVERIFIED_CUDA=1 asks for it (the device check's whole-run comparison does), and
// `auto` trains on the CPU, saying which reason applies.
#include "painvrl/pipeline/device_select.h"

#include <fmt/format.h>

#include <cstdlib>
#include <cstring>

#include "painvrl/data/error.h"
#ifdef PAINVRL_HAVE_CUDA
#include "painvrl/cuda/backend.h"
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

namespace {
bool unverified_cuda_allowed() {
  const char* v = std::getenv("PAINVRL_UNVERIFIED_CUDA");
  return v && std::strcmp(v, "1") == 0;
}
}  // namespace

std::string resolve_device(const std::string& device) {
  if (device == "cpu") return "cpu";
  const bool gpu = usable_gpu_count() > 0;
  const std::string found = describe_gpu();
  if (device == "cuda") {
    if (!gpu) input_error("--device cuda: no usable GPU was found ({})", found);
    if (!unverified_cuda_allowed()) {
      input_error(
          "--device cuda: {} is usable, but the CUDA backend has not yet passed its device check "
          "(tools/device-check); use --device cpu, or set PAINVRL_UNVERIFIED_CUDA=1 to use it "
          "anyway",
          found);
    }
    log_warn(fmt::format(
        "--device cuda on {}: the CUDA backend has not yet passed its device check; the "
        "backbone stages, HIM's environment models, the mask generation and the ranking run "
        "on the GPU unverified",
        found));
    return "cuda";
  }
  // auto
  log_info(gpu ? fmt::format("device auto: {} found, but the CUDA backend has not yet passed its "
                             "device check; training on the CPU",
                             found)
               : fmt::format("device auto: no usable GPU ({}); training on the CPU", found));
  return "cpu";
}

std::unique_ptr<Backend> make_backend(const std::string& device) {
  if (device == "cuda") {
#ifdef PAINVRL_HAVE_CUDA
    return cuda::make_cuda_backend();
#else
    input_error("--device cuda: {}", describe_gpu());
#endif
  }
  return make_cpu_backend();
}

}  // namespace painvrl
