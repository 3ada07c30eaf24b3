// Logging for progress and warnings (stderr, and the run's log.txt once it is named). set_quiet
// (--quiet) silences progress on stderr only: a warning is always printed, and log.txt has all.
#include "painvrl/data/error.h"

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <mutex>
#include <vector>

namespace painvrl {
namespace {
std::atomic<bool> g_quiet{false};
std::mutex g_file_mutex;
std::FILE* g_file = nullptr;       // log.txt of the run, once set_log_file named it
std::vector<std::string> g_early;  // lines logged before that (bounded)
constexpr size_t kEarlyLines = 4000;
std::function<void(const std::string&)> g_sink;  // set and cleared by the caller's thread

void to_file(const std::string& line) {
  if (g_sink) g_sink(line);
  char stamp[32];
  const std::time_t now = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
  std::strftime(stamp, sizeof stamp, "%Y-%m-%d %H:%M:%S ", std::localtime(&now));
  const std::lock_guard<std::mutex> lock(g_file_mutex);
  if (g_file) {
    std::fprintf(g_file, "%s%s\n", stamp, line.c_str());
    std::fflush(g_file);
  } else if (g_early.size() < kEarlyLines) {
    g_early.push_back(stamp + line);
  }
}
}  // namespace

void set_quiet(bool quiet) { g_quiet = quiet; }

void set_log_sink(std::function<void(const std::string&)> sink) { g_sink = std::move(sink); }

void set_log_file(const std::string& path) {
  const std::lock_guard<std::mutex> lock(g_file_mutex);
  if (g_file) std::fclose(g_file);
  g_file = path.empty() ? nullptr : std::fopen(path.c_str(), "ae");
  if (!g_file) return;  // a run without log.txt is still a run; stderr has everything
  for (const std::string& line : g_early) std::fprintf(g_file, "%s\n", line.c_str());
  g_early.clear();
  std::fflush(g_file);
}

void log_info(const std::string& message) {
  if (!g_quiet) std::fprintf(stderr, "%s\n", message.c_str());
  to_file(message);
}

void log_warn(const std::string& message) {
  std::fprintf(stderr, "warning: %s\n", message.c_str());
  to_file("warning: " + message);
}

void log_progress(const std::string& message) {
  static const bool to_stderr = [] {
    const char* mode = std::getenv("PAINVRL_PROGRESS");
    if (mode && std::string(mode) == "all") return true;
    if (mode && std::string(mode) == "none") return false;
    return ::isatty(2) == 1;
  }();
  if (to_stderr && !g_quiet) std::fprintf(stderr, "%s\n", message.c_str());
  to_file(message);
}

void log_final(const std::string& message) {
  std::fprintf(stderr, "%s\n", message.c_str());
  to_file(message);
}

}  // namespace painvrl
