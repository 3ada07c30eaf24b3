// Which device a run trains on (config key `device`): cpu, cuda or auto. The GPU is optional at
// build and at run time; this is the one place that asks whether one is usable.
#pragma once
#include <memory>
#include <string>

#include "painvrl/backend/backend.h"

namespace painvrl {

// Usable CUDA devices (0 in a build without CUDA or on any runtime error), and one line saying
// what was found or why nothing was.
int usable_gpu_count();
std::string describe_gpu();

// Resolves `device` to the backend to use, "cpu" or "cuda" (see the .cpp). `cuda` without a usable
// GPU, or before the CUDA backend has passed its device check (unless PAINVRL_UNVERIFIED_CUDA=1),
// is an InputError; `auto` trains on the CPU and logs one line saying why.
std::string resolve_device(const std::string& device);

// The backend for a resolved device: the CUDA backend for "cuda", the CPU backend otherwise
// ("cpu", and "auto" where nothing resolved it, as in library callers and tests).
std::unique_ptr<Backend> make_backend(const std::string& device);

}  // namespace painvrl
