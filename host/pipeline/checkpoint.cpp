// Checkpoint files (format in include/painvrl/pipeline/checkpoint.h), the run directory's
// checkpoint store, and the stop-signal flag (include/painvrl/pipeline/signals.h).
#include "painvrl/pipeline/checkpoint.h"

#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <filesystem>
#include <fstream>

#include "painvrl/data/io.h"
#include "painvrl/pipeline/signals.h"

namespace painvrl {
namespace fs = std::filesystem;

namespace {

constexpr char kMagic[8] = {'P', 'A', 'I', 'N', 'V', 'R', 'L', 'C'};

inline uint64_t rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }
inline uint64_t mix(uint64_t h) {  // a 64-bit finaliser (murmur3's)
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdULL;
  h ^= h >> 33;
  h *= 0xc4ceb9fe1a85ec53ULL;
  h ^= h >> 33;
  return h;
}

void put_u32(std::string& out, uint32_t v) { out.append(reinterpret_cast<const char*>(&v), 4); }
void put_u64(std::string& out, uint64_t v) { out.append(reinterpret_cast<const char*>(&v), 8); }
uint64_t get_u64(const std::string& in, size_t at) {
  uint64_t v;
  std::memcpy(&v, in.data() + at, 8);
  return v;
}
uint32_t get_u32(const std::string& in, size_t at) {
  uint32_t v;
  std::memcpy(&v, in.data() + at, 4);
  return v;
}

std::atomic<int> g_stop_signal{0};

extern "C" void on_stop_signal(int sig) {
  if (g_stop_signal.exchange(sig) != 0) _exit(128 + sig);  // second signal: leave now
  static const char msg[] =
      "\npainvrl: stop requested; finishing the current step and saving a checkpoint (signal "
      "again to exit at once)\n";
  const ssize_t ignored = write(2, msg, sizeof(msg) - 1);
  (void)ignored;
}

}  // namespace

uint64_t hash64(const void* data, size_t size, uint64_t seed) {
  // Four independent lanes over 32-byte blocks (so the multiplies overlap), then the tail.
  const auto* p = static_cast<const unsigned char*>(data);
  constexpr uint64_t k1 = 0x9e3779b185ebca87ULL, k2 = 0xc2b2ae3d27d4eb4fULL;
  uint64_t lane[4] = {seed + k1 + k2, seed + k2, seed, seed - k1};
  size_t i = 0;
  for (; i + 32 <= size; i += 32) {
    for (int l = 0; l < 4; ++l) {
      uint64_t w;
      std::memcpy(&w, p + i + 8 * l, 8);
      lane[l] = rotl(lane[l] + w * k2, 31) * k1;
    }
  }
  uint64_t h = rotl(lane[0], 1) + rotl(lane[1], 7) + rotl(lane[2], 12) + rotl(lane[3], 18);
  h += uint64_t(size);
  for (; i + 8 <= size; i += 8) {
    uint64_t w;
    std::memcpy(&w, p + i, 8);
    h = rotl(h ^ (rotl(w * k2, 31) * k1), 27) * k1 + k2;
  }
  for (; i < size; ++i) h = rotl(h ^ (uint64_t(p[i]) * k1), 11) * k2;
  return mix(h);
}

std::string Position::describe() const {
  std::string s = phase;
  if (phase == "him" || phase == "mask") s += fmt::format(" outer {}", outer);
  if (phase != "start" && phase != "him") s += fmt::format(" epoch {} step {}", epoch, step);
  return s;
}

std::string Checkpoint::encode() const {
  nlohmann::json header = meta;
  header["position"] = {{"phase", position.phase},
                        {"outer", position.outer},
                        {"epoch", position.epoch},
                        {"step", position.step}};
  nlohmann::json table = nlohmann::json::array();
  uint64_t offset = 0;
  for (const auto& [name, t] : tensors_) {
    table.push_back(
        {{"name", name}, {"dtype", t.dtype}, {"offset", offset}, {"bytes", t.bytes.size()}});
    offset += t.bytes.size();
  }
  header["tensors"] = table;
  const std::string h = header.dump();
  std::string out;
  out.reserve(32 + h.size() + offset);
  out.append(kMagic, 8);
  put_u32(out, kCheckpointVersion);
  put_u32(out, 0);
  put_u64(out, h.size());
  out += h;
  for (const auto& [name, t] : tensors_) out += t.bytes;
  put_u64(out, hash64(out.data(), out.size()));
  return out;
}

Checkpoint Checkpoint::decode(const std::string& bytes, const std::string& origin) {
  auto fail = [&](const std::string& why) -> CheckpointError {
    return CheckpointError(fmt::format("{}: {}", origin, why));
  };
  if (bytes.size() < 32) throw fail(fmt::format("truncated ({} bytes)", bytes.size()));
  if (std::memcmp(bytes.data(), kMagic, 8) != 0) throw fail("not a painvrl checkpoint (bad magic)");
  const uint32_t version = get_u32(bytes, 8);
  if (version != kCheckpointVersion) {
    throw fail(fmt::format("format version {}, this program reads version {}", version,
                           kCheckpointVersion));
  }
  const uint64_t stored = get_u64(bytes, bytes.size() - 8);
  if (hash64(bytes.data(), bytes.size() - 8) != stored) {
    throw fail("checksum mismatch (the file is truncated or corrupted)");
  }
  const uint64_t header_len = get_u64(bytes, 16);
  if (header_len > bytes.size() - 32) throw fail("header length past the end of the file");
  Checkpoint ck;
  try {
    nlohmann::json header = nlohmann::json::parse(bytes.substr(24, header_len));
    const nlohmann::json& pos = header.at("position");
    ck.position.phase = pos.at("phase").get<std::string>();
    ck.position.outer = pos.at("outer").get<int>();
    ck.position.epoch = pos.at("epoch").get<int>();
    ck.position.step = pos.at("step").get<int64_t>();
    const size_t data_begin = 24 + header_len, data_size = bytes.size() - 8 - data_begin;
    for (const nlohmann::json& t : header.at("tensors")) {
      const uint64_t off = t.at("offset").get<uint64_t>(), n = t.at("bytes").get<uint64_t>();
      if (off > data_size || n > data_size - off) throw fail("a tensor lies past the end");
      Tensor& dst = ck.tensors_[t.at("name").get<std::string>()];
      dst.dtype = t.at("dtype").get<std::string>();
      dst.bytes = bytes.substr(data_begin + off, n);
    }
    header.erase("position");
    header.erase("tensors");
    ck.meta = std::move(header);
  } catch (const nlohmann::json::exception& e) {
    throw fail(fmt::format("malformed header: {}", e.what()));
  }
  return ck;
}

CheckpointStore::CheckpointStore(std::string run_dir, int every, int keep, std::string config_toml,
                                 std::string data_dir, uint64_t dataset_hash)
    : run_dir_(std::move(run_dir)),
      every_(every),
      keep_(keep),
      config_toml_(std::move(config_toml)),
      data_dir_(std::move(data_dir)),
      dataset_hash_(dataset_hash) {}

void CheckpointStore::track(const std::string& file_name, std::ostream* stream) {
  logs_.emplace_back(file_name, stream);
}

std::string CheckpointStore::save(Checkpoint& ck) {
  ck.meta["config"] = config_toml_;
  ck.meta["data_dir"] = data_dir_;
  ck.meta["dataset_hash"] = fmt::format("{:016x}", dataset_hash_);
  nlohmann::json logs = nlohmann::json::object();
  for (auto& [name, stream] : logs_) {
    stream->flush();
    if (!*stream) input_error("cannot write {}/{}", run_dir_, name);
    logs[name] = int64_t(stream->tellp());
  }
  ck.meta["logs"] = logs;
  const std::string bytes = ck.encode();
  const std::string path = fmt::format("{}/checkpoint-{:06d}.ckpt", run_dir_, next_sequence_);
  write_bytes_atomic(path, bytes.data(), bytes.size());  // throws; older files untouched
  ++next_sequence_;
  last_path_ = path;
  const auto all = list_checkpoints(run_dir_);
  for (size_t k = size_t(keep_); keep_ > 0 && k < all.size(); ++k) {
    std::error_code ec;
    fs::remove(all[k].second, ec);
  }
  return path;
}

std::vector<std::pair<int64_t, std::string>> list_checkpoints(const std::string& run_dir) {
  std::vector<std::pair<int64_t, std::string>> out;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(run_dir, ec)) {
    const std::string name = entry.path().filename().string();
    // checkpoint-NNNNNN.ckpt exactly (temporary files carry a suffix and are skipped)
    if (name.size() < 17 || name.rfind("checkpoint-", 0) != 0 ||
        name.substr(name.size() - 5) != ".ckpt") {
      continue;
    }
    const std::string digits = name.substr(11, name.size() - 16);
    if (digits.empty() || !std::all_of(digits.begin(), digits.end(), ::isdigit)) continue;
    out.emplace_back(std::stoll(digits), entry.path().string());
  }
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
  return out;
}

LoadedCheckpoint load_newest_checkpoint(const std::string& run_dir, uint64_t dataset_hash,
                                        bool warn) {
  const auto files = list_checkpoints(run_dir);
  if (files.empty()) input_error("--resume {}: the run directory has no checkpoint", run_dir);
  std::vector<std::string> refused;
  for (const auto& [seq, path] : files) {
    std::string why;
    try {
      Checkpoint ck = Checkpoint::decode(read_text_file(path), path);
      const std::string want = fmt::format("{:016x}", dataset_hash);
      const std::string have = ck.meta.value("dataset_hash", std::string());
      if (dataset_hash != 0 && have != want) {
        why = fmt::format(
            "{}: written for a dataset with content hash {}, the dataset now hashes to {} (its "
            "files changed)",
            path, have, want);
      } else {
        if (warn) {
          for (const std::string& r : refused) log_warn("checkpoint refused: " + r);
          if (!refused.empty())
            log_warn(fmt::format("resuming from the older checkpoint {}", path));
        }
        return LoadedCheckpoint{std::move(ck), path, seq};
      }
    } catch (const CheckpointError& e) {
      why = e.what();
    } catch (const InputError& e) {
      why = e.what();
    }
    refused.push_back(why);
  }
  std::string all;
  for (const std::string& r : refused) all += "\n  " + r;
  input_error("--resume {}: no usable checkpoint:{}", run_dir, all);
}

void truncate_logs(const std::string& run_dir, const Checkpoint& ck) {
  if (!ck.meta.contains("logs")) return;
  for (const auto& [name, length] : ck.meta["logs"].items()) {
    const std::string path = run_dir + "/" + name;
    std::error_code ec;
    const uint64_t want = length.get<uint64_t>();
    const uint64_t have = fs::exists(path, ec) ? fs::file_size(path, ec) : 0;
    if (have < want) {
      input_error("--resume: {} has {} bytes, the checkpoint recorded {}; it was truncated", path,
                  have, want);
    }
    fs::resize_file(path, want, ec);
    if (ec) input_error("--resume: cannot truncate {}: {}", path, ec.message());
  }
}

void install_stop_handlers() {
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  // A sweep worker starts with both signals blocked (sweep.cpp), so that a stop sent between its
  // fork and this point is held, not fatal: it is delivered to the handler here.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  sigprocmask(SIG_UNBLOCK, &stop_signals, nullptr);
}

const std::atomic<int>& stop_signal() { return g_stop_signal; }
void request_stop_for_testing(int signal) { g_stop_signal = signal; }

namespace {
std::atomic<int64_t> g_polls{0}, g_stop_at_poll{0};
}

bool stop_requested() {
  if (g_stop_signal.load(std::memory_order_relaxed) != 0) return true;
  const int64_t n = g_polls.fetch_add(1, std::memory_order_relaxed) + 1;
  const int64_t at = g_stop_at_poll.load(std::memory_order_relaxed);
  if (at > 0 && n >= at) {
    g_stop_signal = 15;
    return true;
  }
  return false;
}

int64_t stop_after_polls_for_testing(int64_t polls) {
  const int64_t counted = g_polls.exchange(0);
  g_stop_at_poll = polls;
  g_stop_signal = 0;
  return counted;
}

}  // namespace painvrl
