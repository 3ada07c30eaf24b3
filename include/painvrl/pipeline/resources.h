// Host memory: an estimate of a run's peak from the dataset's sizes and the config, made before
// the training state is allocated, and the limit it must fit under (MemAvailable, the cgroup's
// memory.max, or the config's memory_limit_gb). A run that would not fit is refused with both
// numbers instead of being killed by the kernel hours later.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "painvrl/pipeline/config.h"

namespace painvrl {

struct MemoryEstimate {
  int64_t peak_bytes = 0;
  std::string peak_stage;                              // the stage where the peak falls
  std::vector<std::pair<std::string, int64_t>> parts;  // the peak's largest terms
};

// Sizes the estimate needs (counts after loading; d = 0 without features).
struct ProblemSize {
  int64_t n_users = 0, n_items = 0, n_train = 0, n_heldout = 0, d = 0;
};

MemoryEstimate estimate_host_memory(const Config& c, const ProblemSize& size);

// The bytes this process may still use, and where that figure comes from.
struct MemoryLimit {
  int64_t bytes = 0;
  std::string source;
};
MemoryLimit host_memory_limit(const Config& c);

// Throws InputError when the estimate exceeds the limit; otherwise logs both.
void check_host_memory(const Config& c, const ProblemSize& size);

}  // namespace painvrl
