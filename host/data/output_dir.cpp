// Safe output directories (include/painvrl/data/output_dir.h): the marker, the containment
// checks against what a command reads, and replacement by moving the old directory aside.
#include "painvrl/data/output_dir.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <thread>

#include "painvrl/data/error.h"
#include "painvrl/data/io.h"

namespace painvrl {
namespace {

namespace fs = std::filesystem;

fs::path canonical_path(const std::string& p) {
  std::error_code ec;
  fs::path c = fs::weakly_canonical(fs::absolute(p, ec), ec);
  return ec ? fs::absolute(p).lexically_normal() : c;
}

// Whether `inner` is `outer` or lies inside it (by path components).
bool within(const fs::path& inner, const fs::path& outer) {
  auto i = inner.begin();
  for (auto o = outer.begin(); o != outer.end(); ++o, ++i) {
    if (o->empty()) continue;  // a trailing separator
    if (i == inner.end() || *i != *o) return false;
  }
  return true;
}

bool starts_with(const std::string& s, const char* prefix) { return s.rfind(prefix, 0) == 0; }
bool ends_with(const std::string& s, const char* suffix) {
  const size_t n = std::char_traits<char>::length(suffix);
  return s.size() >= n && s.compare(s.size() - n, n, suffix) == 0;
}

}  // namespace

bool is_run_entry(const std::string& name) {
  static const char* const kNames[] = {
      kOutputMarker,  ".lock",     "config.toml",        "metrics.jsonl",
      "summary.json", "model.npy", "mask.npy",           "trace.jsonl",
      "log.txt",      "export",    "recommendations.tsv"};
  for (const char* n : kNames)
    if (name == n) return true;
  return (starts_with(name, "checkpoint-") && ends_with(name, ".ckpt")) ||
         (starts_with(name, "environments-") && ends_with(name, ".tsv")) ||
         name.find(".tmp.") != std::string::npos;
}

bool is_export_entry(const std::string& name) {
  return name == kOutputMarker || ends_with(name, ".npy") || ends_with(name, ".json") ||
         ends_with(name, ".tsv") || name.find(".tmp.") != std::string::npos;
}

void check_apart(const std::string& flag, const std::string& out,
                 const std::vector<std::string>& reads) {
  const fs::path target = canonical_path(out);
  for (const std::string& r : reads) {
    if (r.empty()) continue;
    const fs::path input = canonical_path(r);
    if (within(target, input) || within(input, target)) {
      input_error("{} {}: {} {}, which this command reads; choose a directory apart from it", flag,
                  out, within(target, input) ? "is or lies inside" : "contains", r);
    }
  }
}

std::string output_kind(const std::string& dir) {
  std::error_code ec;
  if (!fs::is_regular_file(fs::path(dir) / kOutputMarker, ec)) return "";
  std::string kind = read_text_file(dir + "/" + kOutputMarker);
  while (!kind.empty() && (kind.back() == '\n' || kind.back() == '\r')) kind.pop_back();
  return kind;
}

void check_output_dir(const std::string& flag, const std::string& out,
                      const std::vector<std::string>& reads, bool overwrite,
                      const std::string& kind, bool (*is_own)(const std::string& name)) {
  check_apart(flag, out, reads);
  std::error_code ec;
  if (!fs::exists(fs::symlink_status(out, ec))) return;
  if (!overwrite) input_error("{} {}: exists; choose another or pass --overwrite", flag, out);
  if (!fs::is_directory(out, ec) || fs::is_symlink(out, ec)) {
    input_error("{} {}: exists and is not a directory painvrl made; --overwrite refuses it", flag,
                out);
  }
  std::string marker_kind;
  try {
    marker_kind = read_text_file(out + "/" + kOutputMarker);
  } catch (const InputError&) {
    input_error("{} {}: not a painvrl {} directory (no {} marker); --overwrite replaces only those",
                flag, out, kind, kOutputMarker);
  }
  while (!marker_kind.empty() && (marker_kind.back() == '\n' || marker_kind.back() == '\r'))
    marker_kind.pop_back();
  if (marker_kind != kind) {
    input_error("{} {}: a painvrl {} directory, not a {} one; --overwrite refuses it", flag, out,
                marker_kind, kind);
  }
  for (const auto& e : fs::directory_iterator(out, ec)) {
    const std::string name = e.path().filename().string();
    if (!is_own(name)) {
      input_error(
          "{} {}: holds {}, which painvrl did not write; move it away or choose another "
          "directory",
          flag, out, name);
    }
  }
  if (ec) input_error("{} {}: cannot list it: {}", flag, out, ec.message());
}

DirLock DirLock::acquire(const std::string& dir) { return acquire(dir, 0.0); }

DirLock DirLock::acquire(const std::string& dir, double wait_seconds) {
  const std::string path = dir + "/.lock";
  DirLock lock;
  lock.fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (lock.fd_ < 0) input_error("{}: cannot open its lock file: {}", dir, std::strerror(errno));
  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::duration<double>(std::max(0.0, wait_seconds));
  bool locked = ::flock(lock.fd_, LOCK_EX | LOCK_NB) == 0;
  while (!locked && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    locked = ::flock(lock.fd_, LOCK_EX | LOCK_NB) == 0;
  }
  if (!locked) {
    char buf[32] = {0};
    const ssize_t n = ::pread(lock.fd_, buf, sizeof buf - 1, 0);
    std::string holder = n > 0 ? std::string(buf, size_t(n)) : "";
    while (!holder.empty() && (holder.back() == '\n' || holder.back() == ' ')) holder.pop_back();
    input_error(
        "{}: in use by process {} (another painvrl command writes it); wait for it to end "
        "or stop it",
        dir, holder.empty() ? "?" : holder);
  }
  // The lock must be the directory's current one: another writer may have moved the directory
  // (and its lock file) aside between our open and our flock.
  struct stat held {
  }, current{};
  if (::fstat(lock.fd_, &held) != 0 || ::stat(path.c_str(), &current) != 0 ||
      held.st_ino != current.st_ino || held.st_dev != current.st_dev) {
    input_error("{}: replaced by another process meanwhile; choose another directory or try again",
                dir);
  }
  const std::string pid = fmt::format("{}\n", ::getpid());
  if (::ftruncate(lock.fd_, 0) != 0 || ::pwrite(lock.fd_, pid.data(), pid.size(), 0) < 0) {
    // The lock holds without the pid; the message of a refused writer then says "?".
  }
  return lock;
}

DirLock& DirLock::operator=(DirLock&& o) noexcept {
  if (this != &o) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = o.fd_;
    o.fd_ = -1;
  }
  return *this;
}

DirLock::~DirLock() {
  if (fd_ >= 0) ::close(fd_);
}

void mark_output_dir(const std::string& dir, const std::string& kind) {
  write_text_atomic(dir + "/" + kOutputMarker, kind + "\n");
}

std::string move_aside(const std::string& flag, const std::string& out) {
  std::error_code ec;
  if (!fs::exists(fs::symlink_status(out, ec))) return "";
  std::string aside = fmt::format("{}.replaced.{}", out, ::getpid());
  fs::rename(out, aside, ec);
  if (ec) input_error("{} {}: cannot move the old directory aside: {}", flag, out, ec.message());
  return aside;
}

void remove_replaced(const std::string& aside) {
  if (aside.empty()) return;
  std::error_code ec;
  fs::remove_all(aside, ec);
  if (ec)
    log_warn(fmt::format("could not remove the replaced directory {}: {}", aside, ec.message()));
}

}  // namespace painvrl
