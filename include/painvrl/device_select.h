// Which device a run trains on (config key `device`): cpu, cuda or auto. The GPU is optional at
// build and at run time; this is the one place that asks whether one is usable.
#pragma once
#include <string>

namespace painvrl {

// Usable CUDA devices (0 in a build without CUDA or on any runtime error), and one line saying
// what was found or why nothing was.
int usable_gpu_count();
std::string describe_gpu();

// Resolves `device` to the backend to use ("cpu" for now; see the .cpp). `cuda` without a usable
// GPU, or before the CUDA training backend exists, is an InputError; `auto` falls back to the
// CPU and logs one line saying why.
std::string resolve_device(const std::string& device);

}  // namespace painvrl
