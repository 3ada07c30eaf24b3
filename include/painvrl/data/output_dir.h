// Directories painvrl writes and may replace (run directories, exports). Each holds a marker
// file naming what made it, so that --overwrite replaces only a directory painvrl made, never
// one that is, holds or lies inside what the command reads (the dataset, a mask file), and never
// one with files of the user's in it; a replaced directory is moved aside first and removed only
// when the new one is complete, so a failure never loses both.
#pragma once
#include <string>
#include <vector>

namespace painvrl {

inline constexpr const char* kOutputMarker = ".painvrl-output";

// Throws InputError naming `flag` (e.g. "--out") when `out` may not be written: it is, contains
// or lies inside one of `reads`; it exists and `overwrite` is false; it exists and is not a
// directory painvrl made as `kind` (no marker, another kind, or entries that `is_own` rejects).
void check_output_dir(const std::string& flag, const std::string& out,
                      const std::vector<std::string>& reads, bool overwrite,
                      const std::string& kind, bool (*is_own)(const std::string& name));
// The containment part of check_output_dir alone: `out` is not, does not hold and does not lie
// inside any of `reads`.
void check_apart(const std::string& flag, const std::string& out,
                 const std::vector<std::string>& reads);
// The kind named by `dir`'s marker ("" when it has none).
std::string output_kind(const std::string& dir);
// Writes the marker of `kind` into `dir` (just created).
void mark_output_dir(const std::string& dir, const std::string& kind);
// Moves an existing `out` to "<out>.replaced.<pid>" and returns that path ("" when out does not
// exist); remove it with remove_replaced once the new output is complete.
std::string move_aside(const std::string& flag, const std::string& out);
void remove_replaced(const std::string& aside);

// One writer per directory: an advisory lock (flock) on "<dir>/.lock", released by the kernel
// when the process ends however it ends, so a killed run never leaves a stale lock. A second
// writer is refused at once (InputError naming the holder's pid).
class DirLock {
 public:
  DirLock() = default;
  static DirLock acquire(const std::string& dir);
  // As acquire, but waits up to `wait_seconds` for the holder to let go before refusing.
  static DirLock acquire(const std::string& dir, double wait_seconds);
  DirLock(DirLock&& o) noexcept : fd_(o.fd_) { o.fd_ = -1; }
  DirLock& operator=(DirLock&& o) noexcept;
  DirLock(const DirLock&) = delete;
  DirLock& operator=(const DirLock&) = delete;
  ~DirLock();

 private:
  int fd_ = -1;
};

// The entries of a run directory (config.toml, metrics.jsonl, checkpoints, ...).
bool is_run_entry(const std::string& name);
// The entries of an export directory.
bool is_export_entry(const std::string& name);

}  // namespace painvrl
