// Logging for progress and warnings (stderr). set_quiet (--quiet) silences progress only: a
// warning is always printed.
#include "painvrl/data/error.h"

#include <atomic>
#include <cstdio>

namespace painvrl {
namespace {
std::atomic<bool> g_quiet{false};
}

void set_quiet(bool quiet) { g_quiet = quiet; }

void log_info(const std::string& message) {
  if (!g_quiet) std::fprintf(stderr, "%s\n", message.c_str());
}

void log_warn(const std::string& message) {
  std::fprintf(stderr, "warning: %s\n", message.c_str());
}

}  // namespace painvrl
