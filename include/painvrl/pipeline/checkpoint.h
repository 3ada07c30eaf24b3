// Checkpoints: the full state of a training run in one file, and the store that writes them into
// the run directory (temporary file, flush, rename; the newest two kept) and finds the newest
// usable one when a run is resumed. File layout (little-endian):
//   8 bytes  magic "PAINVRLC"
//   u32      format version (kCheckpointVersion), u32 zero
//   u64      H, then H bytes of JSON: the position, scalars, the resolved config, the dataset
//            path and content hash, the lengths of the run's log files, and the tensor table
//            [{name, dtype, shape, offset, bytes}]
//   the tensors' bytes, in table order (offsets count from the start of this section)
//   u64      checksum: hash64 of every byte before it
#pragma once
#include <cstdint>
#include <cstring>
#include <map>
#include <nlohmann/json.hpp>
#include <ostream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "painvrl/data/error.h"

namespace painvrl {

constexpr uint32_t kCheckpointVersion = 1;

// A 64-bit content hash (not cryptographic): checkpoints' checksums and the dataset hash.
uint64_t hash64(const void* data, size_t size, uint64_t seed = 0);

// Where a run stands: the phase it is in (start, pretrain, him, mask, final, baseline), the outer
// iteration, and the epoch and step of that phase to run next.
struct Position {
  std::string phase = "start";
  int outer = 0;
  int epoch = 0;
  int64_t step = 0;
  std::string describe() const;  // "mask outer 1 epoch 3 step 0"
};

// A checkpoint file is refused (bad magic, version, checksum, truncated, inconsistent table).
class CheckpointError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class Checkpoint {
 public:
  Position position;
  nlohmann::json meta = nlohmann::json::object();  // scalars of the stage and of the run

  template <class T>
  void put(const std::string& name, const std::vector<T>& values);
  template <class T>
  std::vector<T> get(const std::string& name) const;  // throws CheckpointError if absent
  bool has(const std::string& name) const { return tensors_.count(name) > 0; }

  std::string encode() const;
  // Checks magic, version, length and checksum; `origin` names the file in errors.
  static Checkpoint decode(const std::string& bytes, const std::string& origin);

 private:
  struct Tensor {
    std::string dtype;
    std::string bytes;
  };
  std::map<std::string, Tensor> tensors_;
};

// Writes a run's checkpoints (`checkpoint-<sequence>.ckpt`, the newest `keep` of them) and records
// with each the resolved config, the dataset and the lengths of the run's append-only logs
// (metrics.jsonl, trace.jsonl), which resume truncates back to.
class CheckpointStore {
 public:
  CheckpointStore(std::string run_dir, int every, int keep, std::string config_toml,
                  std::string data_dir, uint64_t dataset_hash);
  // Logs whose length each checkpoint records (the stream is flushed first).
  void track(const std::string& file_name, std::ostream* stream);
  // True after `epochs_done` epochs of a stage when a periodic checkpoint is due.
  bool due(int epochs_done) const {
    return every_ > 0 && epochs_done > 0 && epochs_done % every_ == 0;
  }
  // Writes the checkpoint (atomically), deletes all but the newest `keep`; returns its path. A
  // failed write (disk full) throws InputError and leaves the earlier checkpoints as they were.
  std::string save(Checkpoint& ck);
  const std::string& last_path() const { return last_path_; }
  // Continue numbering after an existing run's checkpoints.
  void continue_after(int64_t sequence) { next_sequence_ = sequence + 1; }

 private:
  std::string run_dir_;
  int every_, keep_;
  std::string config_toml_, data_dir_;
  uint64_t dataset_hash_;
  std::vector<std::pair<std::string, std::ostream*>> logs_;
  int64_t next_sequence_ = 0;
  std::string last_path_;
};

// The checkpoint files of a run directory, newest first: (sequence, path).
std::vector<std::pair<int64_t, std::string>> list_checkpoints(const std::string& run_dir);

// The newest checkpoint of `run_dir` that decodes and matches `dataset_hash` (when non-zero);
// warns about each newer one refused and why. Throws InputError when none is usable.
struct LoadedCheckpoint {
  Checkpoint checkpoint;
  std::string path;
  int64_t sequence = 0;
};
LoadedCheckpoint load_newest_checkpoint(const std::string& run_dir, uint64_t dataset_hash,
                                        bool warn = true);

// Truncates the run's logs back to the lengths the checkpoint recorded.
void truncate_logs(const std::string& run_dir, const Checkpoint& ck);

// Thrown after a stop signal once the state is saved; main exits with kExitInterrupted.
class Interrupted : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};
// Thrown when a loss, gradient or mask is not finite; main exits with kExitDiverged.
class Diverged : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};
constexpr int kExitDiverged = 3;
constexpr int kExitInterrupted = 75;  // EX_TEMPFAIL: "try again" (resume)

// ---- template definitions ----------------------------------------------------------------------
namespace detail {
template <class T>
const char* dtype_name();
template <>
inline const char* dtype_name<float>() {
  return "f32";
}
template <>
inline const char* dtype_name<double>() {
  return "f64";
}
template <>
inline const char* dtype_name<int32_t>() {
  return "i32";
}
template <>
inline const char* dtype_name<int64_t>() {
  return "i64";
}
template <>
inline const char* dtype_name<uint8_t>() {
  return "u8";
}
}  // namespace detail

template <class T>
void Checkpoint::put(const std::string& name, const std::vector<T>& values) {
  Tensor& t = tensors_[name];
  t.dtype = detail::dtype_name<T>();
  t.bytes.assign(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(T));
}

template <class T>
std::vector<T> Checkpoint::get(const std::string& name) const {
  const auto it = tensors_.find(name);
  if (it == tensors_.end()) throw CheckpointError("the checkpoint has no tensor " + name);
  if (it->second.dtype != detail::dtype_name<T>() || it->second.bytes.size() % sizeof(T) != 0) {
    throw CheckpointError("tensor " + name + " has dtype " + it->second.dtype + ", expected " +
                          detail::dtype_name<T>());
  }
  std::vector<T> out(it->second.bytes.size() / sizeof(T));
  if (!out.empty()) std::memcpy(out.data(), it->second.bytes.data(), it->second.bytes.size());
  return out;
}

}  // namespace painvrl
