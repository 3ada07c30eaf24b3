// The thread governor (include/painvrl/pipeline/threads.h): /proc/stat and getrusage, no
// sampling thread; a look costs one small file read.
#include "painvrl/pipeline/threads.h"

#include <omp.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <string>

#include "painvrl/data/error.h"

namespace painvrl {
namespace {

double wall_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Busy CPU seconds of the whole machine (every CPU's user, nice, system, irq, softirq, steal).
bool machine_busy_seconds(double& out) {
  std::ifstream in("/proc/stat");
  std::string cpu;
  long long user = 0, nice = 0, system = 0, idle = 0, iowait = 0, irq = 0, softirq = 0, steal = 0;
  if (!(in >> cpu >> user >> nice >> system >> idle >> iowait >> irq >> softirq >> steal) ||
      cpu != "cpu") {
    return false;
  }
  const double tick = double(::sysconf(_SC_CLK_TCK));
  out = double(user + nice + system + irq + softirq + steal) / (tick > 0 ? tick : 100.0);
  return true;
}

double own_cpu_seconds() {
  rusage ru{};
  ::getrusage(RUSAGE_SELF, &ru);
  return double(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
         1e-6 * double(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
}

}  // namespace

ThreadGovernor& ThreadGovernor::current() {
  static ThreadGovernor governor;
  return governor;
}

// OpenMP's own count before any run set one (OMP_NUM_THREADS, else the cores it may use).
ThreadGovernor::ThreadGovernor() : initial_(omp_get_max_threads()) {}

int ThreadGovernor::threads_for(double others_busy, int most) {
  // A neighbour counts as a core once it keeps 0.7 of one busy (a light one is left the core).
  const int taken = int(std::floor(std::max(0.0, others_busy) + 0.3));
  return std::clamp(most - taken, 1, std::max(1, most));
}

void ThreadGovernor::start(int configured) {
  adaptive_ = configured <= 0;
  most_ = adaptive_ ? initial_ : configured;
  omp_set_num_threads(most_);
  threads_ = most_;
  last_wall_ = -1;
  if (adaptive_ && most_ > 1) {
    if (machine_busy_seconds(last_busy_)) {
      last_wall_ = wall_seconds();
      last_self_ = own_cpu_seconds();
    }
  }
}

void ThreadGovernor::adapt(double interval_seconds) {
  if (!adaptive_ || most_ <= 1 || last_wall_ < 0) return;
  const double now = wall_seconds();
  if (now - last_wall_ < interval_seconds) return;
  double busy = 0;
  if (!machine_busy_seconds(busy)) return;
  const double self = own_cpu_seconds();
  const double others = ((busy - last_busy_) - (self - last_self_)) / (now - last_wall_);
  last_wall_ = now;
  last_busy_ = busy;
  last_self_ = self;
  const int want = threads_for(others, most_);
  if (want != threads_) {
    log_progress(fmt::format("threads: {} of {} (other processes kept {:.1f} cores busy)", want,
                             most_, std::max(0.0, others)));
    threads_ = want;
    omp_set_num_threads(want);
  }
}

}  // namespace painvrl
