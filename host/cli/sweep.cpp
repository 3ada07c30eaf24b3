// Sweeps (include/painvrl/cli/sweep.h): plan a spec into run directories, run them with local
// workers or as one Slurm array job, report their state, collect their metrics. Slurm does the
// scheduling; this file only writes what it needs (an sbatch script and a task list) and reads
// squeue. An array task forwards SIGTERM (sent by Slurm `signal_seconds` before the time limit,
// or by scancel --signal=TERM) to `painvrl sweep exec`, which checkpoints and exits 75; the task
// then requeues itself, and the requeued task resumes from the checkpoint.
#include "painvrl/cli/sweep.h"

#include <fmt/format.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <toml++/toml.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <thread>

#include "painvrl/data/error.h"
#include "painvrl/data/io.h"
#include "painvrl/data/output_dir.h"
#include "painvrl/pipeline/checkpoint.h"
#include "painvrl/pipeline/config.h"
#include "painvrl/pipeline/device_select.h"
#include "painvrl/pipeline/signals.h"
#include "painvrl/pipeline/trainer.h"

namespace painvrl {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

struct Resources {
  int gpus = 0, cpus = 1;
  double mem_gb = 0;
  std::string time, partition, account;
  int signal_seconds = 120;
};

void check_keys(const toml::table& table, const std::vector<std::string>& valid,
                const std::string& where) {
  for (const auto& [k, v] : table) {
    const std::string key(k.str());
    if (std::find(valid.begin(), valid.end(), key) != valid.end()) continue;
    const std::string best = nearest_name(key, valid);
    input_error("{}: unknown key `{}` (did you mean `{}`? valid: {})", where, key, best,
                fmt::join(valid, ", "));
  }
}

// A TOML value as TOML text (strings quoted) and as JSON.
std::string toml_text(const toml::node& node) {
  std::ostringstream ss;
  node.visit([&](const auto& n) { ss << n; });
  return ss.str();
}
json toml_json(const toml::node& node) {
  if (const auto* s = node.as_string()) return s->get();
  if (const auto* i = node.as_integer()) return i->get();
  if (const auto* f = node.as_floating_point()) return f->get();
  if (const auto* b = node.as_boolean()) return b->get();
  if (const auto* a = node.as_array()) {
    json out = json::array();
    for (const auto& x : *a) out.push_back(toml_json(x));
    return out;
  }
  return toml_text(node);
}

Resources parse_resources(const toml::table* t, const std::string& where) {
  Resources r;
  if (!t) return r;
  check_keys(*t, {"gpus", "cpus", "mem_gb", "time", "partition", "account", "signal_seconds"},
             where);
  auto integer = [&](const char* key, int& out, int lowest) {
    if (const toml::node* n = t->get(key)) {
      const auto v = n->value<int64_t>();
      if (!n->is_integer() || !v || *v < lowest || *v > 1000000) {
        input_error("{}: `{}` = {}: expected an integer >= {}", where, key, toml_text(*n), lowest);
      }
      out = int(*v);
    }
  };
  auto text = [&](const char* key, std::string& out) {
    if (const toml::node* n = t->get(key)) {
      if (!n->is_string())
        input_error("{}: `{}` = {}: expected a string", where, key, toml_text(*n));
      out = *n->value<std::string>();
      if (out.find_first_of("\n'\"\\$`") != std::string::npos) {
        input_error("{}: `{}` = {}: quotes, backslashes, $ and newlines are not allowed", where,
                    key, toml_text(*n));
      }
    }
  };
  integer("gpus", r.gpus, 0);
  integer("cpus", r.cpus, 1);
  integer("signal_seconds", r.signal_seconds, 1);
  if (const toml::node* n = t->get("mem_gb")) {
    const auto v = n->value<double>();
    if (!n->is_number() || !v || !(*v > 0)) {
      input_error("{}: `mem_gb` = {}: expected a number > 0", where, toml_text(*n));
    }
    r.mem_gb = *v;
  }
  text("time", r.time);
  text("partition", r.partition);
  text("account", r.account);
  // Slurm's time formats: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S.
  if (!r.time.empty()) {
    bool ok = true;
    int colons = 0, dashes = 0;
    for (char ch : r.time) {
      if (ch == ':')
        ++colons;
      else if (ch == '-')
        ++dashes;
      else if (!std::isdigit(static_cast<unsigned char>(ch)))
        ok = false;
    }
    if (!ok || colons > 2 || dashes > 1 || r.time.front() == ':' || r.time.back() == ':' ||
        r.time.back() == '-') {
      input_error(
          "{}: `time` = \"{}\": expected a Slurm time limit such as \"90\", \"02:00:00\" "
          "or \"1-12:00:00\"",
          where, r.time);
    }
  }
  return r;
}

json resources_json(const Resources& r) {
  return {{"gpus", r.gpus},
          {"cpus", r.cpus},
          {"mem_gb", r.mem_gb},
          {"time", r.time},
          {"partition", r.partition},
          {"account", r.account},
          {"signal_seconds", r.signal_seconds}};
}
Resources resources_from(const json& j) {
  Resources r;
  r.gpus = j.at("gpus");
  r.cpus = j.at("cpus");
  r.mem_gb = j.at("mem_gb");
  r.time = j.at("time");
  r.partition = j.at("partition");
  r.account = j.at("account");
  r.signal_seconds = j.at("signal_seconds");
  return r;
}

std::string run_dir(const std::string& dir, const std::string& id) { return dir + "/runs/" + id; }

json load_manifest(const std::string& dir) {
  const std::string path = dir + "/manifest.json";
  std::error_code ec;
  if (!fs::exists(path, ec)) {
    input_error("{}: not a sweep directory (no manifest.json); create it with `painvrl sweep plan`",
                dir);
  }
  return read_json_file(path);
}

bool run_done(const std::string& dir, const std::string& id) {
  std::error_code ec;
  return fs::exists(run_dir(dir, id) + "/out/summary.json", ec);
}

std::string axes_label(const json& axes) {
  std::string s;
  for (const auto& [k, v] : axes.items()) {
    s += fmt::format("{}{}={}", s.empty() ? "" : " ", k,
                     v.is_string() ? v.get<std::string>() : v.dump());
  }
  return s;
}

std::string now_iso() {
  const auto t = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", std::localtime(&t));
  return buf;
}

std::string self_exe() {
  std::error_code ec;
  const fs::path p = fs::read_symlink("/proc/self/exe", ec);
  if (ec) throw std::runtime_error("cannot find the program's own path: " + ec.message());
  return p.string();
}

std::string shell_quote(const std::string& s) {
  std::string out = "'";
  for (char ch : s) out += ch == '\'' ? std::string("'\\''") : std::string(1, ch);
  return out + "'";
}

// The last `n` lines of a file.
std::string tail_lines(const std::string& path, int n) {
  std::ifstream in(path);
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  std::string out;
  for (size_t k = lines.size() > size_t(n) ? lines.size() - n : 0; k < lines.size(); ++k) {
    out += "    " + lines[k] + "\n";
  }
  return out;
}

// Output of a command (stdout), and its exit status.
std::pair<int, std::string> capture(const std::string& cmd) {
  std::string out;
  FILE* p = ::popen(cmd.c_str(), "r");
  if (!p) return {-1, out};
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  const int st = ::pclose(p);
  return {WIFEXITED(st) ? WEXITSTATUS(st) : -1, out};
}

}  // namespace

void sweep_plan(const std::string& spec_path, const std::string& dir) {
  const std::string text = read_text_file(spec_path);
  toml::table spec;
  try {
    spec = toml::parse(text, spec_path);
  } catch (const toml::parse_error& e) {
    input_error("{}:{}:{}: TOML syntax error: {}", spec_path, e.source().begin.line,
                e.source().begin.column, e.description());
  }
  check_keys(spec, {"base", "preset", "data", "set", "axes", "resources"}, spec_path);
  const fs::path spec_dir = fs::absolute(fs::path(spec_path)).parent_path();
  auto relative_to_spec = [&](const std::string& p) {
    return fs::path(p).is_absolute() ? p : (spec_dir / p).lexically_normal().string();
  };
  auto string_key = [&](const char* key) -> std::string {
    const toml::node* n = spec.get(key);
    if (!n) return "";
    if (!n->is_string()) input_error("{}: `{}`: expected a string", spec_path, key);
    return *n->value<std::string>();
  };

  Config base;
  if (const std::string preset = string_key("preset"); !preset.empty()) apply_preset(base, preset);
  if (const std::string file = string_key("base"); !file.empty()) {
    const std::string path = relative_to_spec(file);
    apply_toml(base, read_text_file(path), path);
  }
  if (const toml::node* n = spec.get("set")) {
    if (!n->is_table()) input_error("{}: [set]: expected a table of config keys", spec_path);
    for (const auto& [k, v] : *n->as_table()) {
      apply_toml(base, fmt::format("{} = {}", k.str(), toml_text(v)),
                 fmt::format("{} [set]", spec_path));
    }
  }
  const Resources res =
      parse_resources(spec.get("resources") ? spec.get("resources")->as_table() : nullptr,
                      spec_path + " [resources]");
  if (spec.get("resources") && !spec.get("resources")->is_table()) {
    input_error("{}: [resources]: expected a table", spec_path);
  }

  // The axes, in key order, each a non-empty list.
  std::vector<std::pair<std::string, std::vector<const toml::node*>>> axes;
  if (const toml::node* n = spec.get("axes")) {
    if (!n->is_table()) input_error("{}: [axes]: expected a table of lists", spec_path);
    for (const auto& [k, v] : *n->as_table()) {
      const std::string name(k.str());
      const toml::array* values = v.as_array();
      if (!values) {
        input_error("{}: [axes] `{}` = {}: expected a list of values, e.g. [1, 2, 3]", spec_path,
                    name, toml_text(v));
      }
      if (values->empty()) input_error("{}: [axes] `{}`: the list is empty", spec_path, name);
      std::vector<const toml::node*> list;
      std::set<std::string> seen;
      for (const auto& x : *values) {
        if (!seen.insert(toml_text(x)).second) {
          input_error("{}: [axes] `{}`: {} is listed twice", spec_path, name, toml_text(x));
        }
        if (name == "dataset" && !x.is_string()) {
          input_error("{}: [axes] `dataset`: {} is not a directory name (a string)", spec_path,
                      toml_text(x));
        }
        list.push_back(&x);
      }
      if (name != "dataset") {  // names the key (with a suggestion) if it is not a config key
        Config probe = base;
        apply_toml(probe, fmt::format("{} = {}", name, toml_text(*list.front())),
                   fmt::format("{} [axes]", spec_path));
      }
      axes.emplace_back(name, std::move(list));
    }
  }
  const bool dataset_axis =
      std::any_of(axes.begin(), axes.end(), [](const auto& a) { return a.first == "dataset"; });
  const std::string data = string_key("data");
  if (!dataset_axis && data.empty()) {
    input_error("{}: no dataset: give `data = \"DIR\"` or a `dataset` axis", spec_path);
  }

  // The product of the axes: every run's resolved config, checked before anything is written.
  struct Run {
    std::string id, data, config_toml;
    json axes;
  };
  std::vector<Run> runs;
  std::vector<size_t> index(axes.size(), 0);
  while (true) {
    Config c = base;
    Run r;
    r.axes = json::object();
    r.data = data.empty() ? "" : relative_to_spec(data);
    for (size_t a = 0; a < axes.size(); ++a) {
      const auto& [name, values] = axes[a];
      const toml::node& v = *values[index[a]];
      r.axes[name] = toml_json(v);
      if (name == "dataset") {
        r.data = relative_to_spec(*v.value<std::string>());
      } else {
        apply_toml(c, fmt::format("{} = {}", name, toml_text(v)),
                   fmt::format("{} [axes]", spec_path));
      }
    }
    if (!fs::is_directory(r.data)) {
      input_error("{}: the run {} : dataset {} is not a directory", spec_path, axes_label(r.axes),
                  r.data);
    }
    if (res.cpus > 0) c.threads = res.cpus;
    try {
      validate(c);
    } catch (const InputError& e) {
      input_error("{}: the run {} : {}", spec_path, axes_label(r.axes), e.what());
    }
    Config for_id = c;
    for_id.threads = 0;  // the thread count does not change results
    const std::string key = to_toml(for_id, true) + "\ndata = " + r.data + "\n";
    r.id = fmt::format("{:016x}", hash64(key.data(), key.size())).substr(0, 12);
    r.config_toml = to_toml(c);
    runs.push_back(std::move(r));
    size_t a = 0;
    for (; a < axes.size(); ++a) {
      if (++index[a] < axes[a].second.size()) break;
      index[a] = 0;
    }
    if (a == axes.size()) break;
  }

  // The sweep directory: apart from everything the runs read, and either new, empty, or a sweep
  // directory already (planning again adds the new runs); never a directory of other files.
  std::vector<std::string> reads;
  for (const Run& r : runs) reads.push_back(r.data);
  check_apart("--out", dir, reads);
  std::error_code ec;
  if (fs::exists(fs::symlink_status(dir, ec))) {
    if (!fs::is_directory(dir, ec)) input_error("--out {}: exists and is not a directory", dir);
    const std::string kind = output_kind(dir);
    const bool earlier_sweep = kind.empty() && fs::exists(dir + "/manifest.json", ec);
    if (!kind.empty() && kind != "sweep") {
      input_error("--out {}: a painvrl {} directory, not a sweep's; choose another", dir, kind);
    }
    if (kind.empty() && !earlier_sweep && !fs::is_empty(dir, ec)) {
      input_error(
          "--out {}: exists and is not a painvrl sweep directory (no {} marker, no "
          "manifest.json); choose a new or empty directory",
          dir, kOutputMarker);
    }
  }
  fs::create_directories(dir + "/runs", ec);
  if (ec) input_error("{}: cannot create the sweep directory: {}", dir, ec.message());
  if (output_kind(dir).empty()) mark_output_dir(dir, "sweep");
  int added = 0;
  std::set<std::string> planned;
  json manifest = {{"spec", fs::absolute(spec_path).string()},
                   {"spec_text", text},
                   {"resources", resources_json(res)},
                   {"axes", json::array()},
                   {"runs", json::array()}};
  for (const auto& [name, values] : axes) manifest["axes"].push_back(name);
  for (const Run& r : runs) {
    const std::string rd = run_dir(dir, r.id);
    if (!planned.insert(r.id).second) continue;  // two axis values resolving alike
    if (!fs::exists(rd + "/config.toml", ec)) {
      fs::create_directories(rd, ec);
      write_text_atomic(rd + "/config.toml", r.config_toml);
      write_text_atomic(rd + "/run.json",
                        json{{"id", r.id}, {"data", r.data}, {"axes", r.axes}}.dump(2) + "\n");
      ++added;
    }
    manifest["runs"].push_back({{"id", r.id}, {"data", r.data}, {"axes", r.axes}});
  }
  write_text_atomic(dir + "/manifest.json", manifest.dump(2) + "\n");
  int stale = 0;
  for (const auto& entry : fs::directory_iterator(dir + "/runs", ec)) {
    stale += planned.count(entry.path().filename().string()) == 0;
  }
  log_info(fmt::format(
      "planned {} runs in {} ({} new, {} already there){}", planned.size(), dir, added,
      planned.size() - added,
      stale ? fmt::format("; {} run directories no longer in the spec are kept", stale) : ""));
}

int sweep_exec(const std::string& dir, const std::string& id) {
  const std::string rd = run_dir(dir, id);
  std::error_code ec;
  if (!fs::exists(rd + "/run.json", ec)) input_error("{}: no run {} in this sweep", dir, id);
  const json run = read_json_file(rd + "/run.json");
  const std::string out = rd + "/out";
  json status = {{"state", "running"},
                 {"host",
                  [] {
                    char h[256] = {0};
                    ::gethostname(h, sizeof h - 1);
                    return std::string(h);
                  }()},
                 {"pid", ::getpid()},
                 {"started", now_iso()}};
  if (const char* job = std::getenv("SLURM_JOB_ID")) status["slurm_job"] = job;
  // One worker per run: a worker left by a runner that was killed gets SIGTERM from the kernel
  // (PR_SET_PDEATHSIG, set by sweep_run_local) and checkpoints; a rerun waits for it to let go.
  const DirLock lock = DirLock::acquire(rd, 60.0);
  if (run_done(dir, id)) {
    log_info(fmt::format("run {} is done already", id));
    return 0;
  }
  write_text_atomic(rd + "/status.json", status.dump(2) + "\n");
  auto finish = [&](const std::string& state, int code) {
    status["state"] = state;
    status["exit"] = code;
    status["ended"] = now_iso();
    write_text_atomic(rd + "/status.json", status.dump(2) + "\n");
  };
  try {
    if (!list_checkpoints(out).empty()) {
      resume_training(RunOptions{"", out, false}, -1);
    } else {
      Config c;
      apply_toml(c, read_text_file(rd + "/config.toml"), rd + "/config.toml");
      run_training(c, RunOptions{run.at("data").get<std::string>(), out, true});
    }
  } catch (const Interrupted&) {
    finish("interrupted", kExitInterrupted);
    throw;
  } catch (const Diverged&) {
    finish("diverged", kExitDiverged);
    throw;
  } catch (const InputError&) {
    finish("failed", 1);
    throw;
  } catch (...) {
    finish("failed", 2);
    throw;
  }
  finish("done", 0);
  return 0;
}

void sweep_run_local(const std::string& dir, int jobs) {
  if (jobs < 1) input_error("--jobs {}: expected at least 1", jobs);
  const json manifest = load_manifest(dir);
  std::vector<json> pending;
  for (const json& r : manifest["runs"]) {
    if (!run_done(dir, r["id"])) pending.push_back(r);
  }
  const size_t total = manifest["runs"].size();
  log_info(fmt::format("{} of {} runs to do, {} workers", pending.size(), total, jobs));
  const DirLock lock = DirLock::acquire(dir);  // one runner per sweep directory
  const int gpus = usable_gpu_count();
  const std::string exe = self_exe();
  install_stop_handlers();
  struct Worker {
    pid_t pid;
    int slot;
    json run;
    std::chrono::steady_clock::time_point start;
  };
  std::vector<Worker> running;
  std::vector<bool> slot_busy(size_t(jobs), false);
  size_t next = 0;
  int done = 0, failed = 0, interrupted = 0;
  bool forwarded = false;
  std::vector<std::string> failures;
  const pid_t runner = ::getpid();
  const auto sweep_start = std::chrono::steady_clock::now();
  // Until a stop: start runs while any are pending; after one, only wait for the running ones.
  while ((!stop_requested() && next < pending.size()) || !running.empty()) {
    while (!stop_requested() && next < pending.size() && int(running.size()) < jobs) {
      const int slot =
          int(std::find(slot_busy.begin(), slot_busy.end(), false) - slot_busy.begin());
      const json run = pending[next++];
      const std::string id = run["id"];
      const std::string log = run_dir(dir, id) + "/log.txt";
      // The child starts with the stop signals blocked (a stop sent while it starts is held
      // for its handlers, not lost to this process's copy of them or fatal to a bare exec).
      sigset_t stop_signals, unblocked;
      sigemptyset(&stop_signals);
      sigaddset(&stop_signals, SIGINT);
      sigaddset(&stop_signals, SIGTERM);
      ::sigprocmask(SIG_BLOCK, &stop_signals, &unblocked);
      const pid_t pid = ::fork();
      if (pid != 0) ::sigprocmask(SIG_SETMASK, &unblocked, nullptr);
      if (pid < 0) throw std::runtime_error("fork failed");
      if (pid == 0) {
        // The worker: its own process group, so a terminal's Ctrl-C reaches only the runner,
        // which forwards one SIGTERM (two signals make a worker exit at once, uncheckpointed);
        // SIGTERM when the runner dies, however it dies. The stop signals stay blocked until the
        // worker's handlers are installed (install_stop_handlers unblocks them).
        ::setpgid(0, 0);
        ::prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (::getppid() != runner) ::_exit(kExitInterrupted);  // the runner died before prctl
        if (gpus > 0) ::setenv("CUDA_VISIBLE_DEVICES", std::to_string(slot % gpus).c_str(), 1);
        std::FILE* f = std::fopen(log.c_str(), "a");
        if (f) {
          ::dup2(::fileno(f), 1);
          ::dup2(::fileno(f), 2);
        }
        ::execl(exe.c_str(), "painvrl", "sweep", "exec", dir.c_str(), id.c_str(),
                static_cast<char*>(nullptr));
        ::_exit(127);
      }
      slot_busy[size_t(slot)] = true;
      running.push_back(Worker{pid, slot, run, std::chrono::steady_clock::now()});
      log_info(fmt::format("start {} ({}){}", id, axes_label(run["axes"]),
                           gpus > 0 ? fmt::format(" on GPU {}", slot % gpus) : ""));
    }
    if (stop_requested() && !forwarded) {  // the workers checkpoint and stop
      for (const Worker& w : running) ::kill(w.pid, SIGTERM);
      forwarded = true;
      log_info("stop requested: the running runs checkpoint and stop; no new run starts");
    }
    int st = 0;
    const pid_t pid = ::waitpid(-1, &st, WNOHANG);
    if (pid <= 0) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      continue;
    }
    const auto it = std::find_if(running.begin(), running.end(),
                                 [pid](const Worker& w) { return w.pid == pid; });
    if (it == running.end()) continue;
    int code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    // After a stop, a worker that a second signal ended at once is interrupted too (it keeps its
    // last checkpoint), not failed.
    if (forwarded && (code == 128 + SIGTERM || code == 128 + SIGINT)) code = kExitInterrupted;
    const std::string id = it->run["id"];
    const double secs =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - it->start).count();
    if (code == 0) {
      ++done;
    } else if (code == kExitInterrupted) {
      ++interrupted;
    } else {
      ++failed;
      failures.push_back(id);
    }
    const size_t ended = size_t(done + failed + interrupted);
    const double spent =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - sweep_start).count();
    // Wall time per ended run so far (the workers in parallel), times the runs left.
    const std::string eta =
        stop_requested() || ended >= pending.size()
            ? std::string()
            : fmt::format("; sweep eta {:.0f}s",
                          spent / double(ended) * double(pending.size() - ended));
    log_info(fmt::format("[{}/{}] {} {} ({}) in {:.1f}s{}", ended, pending.size(),
                         code == 0                  ? "done"
                         : code == kExitInterrupted ? "interrupted"
                                                    : fmt::format("FAILED (exit {})", code),
                         id, axes_label(it->run["axes"]), secs, eta));
    if (code != 0 && code != kExitInterrupted) {
      log_info(tail_lines(run_dir(dir, id) + "/log.txt", 5));
    }
    slot_busy[size_t(it->slot)] = false;
    running.erase(it);
  }
  if (stop_requested()) {
    throw Interrupted(
        fmt::format("{} runs done, {} interrupted, {} not started; run the sweep again to go on",
                    done, interrupted, pending.size() - next));
  }
  if (failed > 0) {
    input_error("{} of {} runs failed ({}); their logs: {}/runs/<id>/log.txt", failed,
                pending.size(), fmt::join(failures, ", "), dir);
  }
  log_info(fmt::format("all {} runs done", total));
}

void sweep_run_slurm(const std::string& dir, bool submit) {
  const json manifest = load_manifest(dir);
  const Resources res = resources_from(manifest["resources"]);
  std::vector<std::string> ids;
  for (const json& r : manifest["runs"]) {
    if (!run_done(dir, r["id"])) ids.push_back(r["id"]);
  }
  if (ids.empty()) {
    log_info("every run is done; nothing to submit");
    return;
  }
  const std::string abs_dir = fs::absolute(dir).lexically_normal().string();
  std::string stamp = now_iso();
  std::replace(stamp.begin(), stamp.end(), ':', '-');
  const std::string sdir = abs_dir + "/slurm/" + stamp;
  std::error_code ec;
  fs::create_directories(sdir, ec);
  if (ec) input_error("{}: cannot create {}: {}", dir, sdir, ec.message());
  std::string tasks;
  for (const std::string& id : ids) tasks += id + "\n";
  write_text_atomic(sdir + "/tasks.txt", tasks);
  std::string s = "#!/bin/bash\n";
  s += fmt::format("#SBATCH --job-name=painvrl-{}\n", fs::path(abs_dir).filename().string());
  s += fmt::format("#SBATCH --array=0-{}\n", ids.size() - 1);
  s += "#SBATCH --requeue\n#SBATCH --open-mode=append\n";
  s += fmt::format("#SBATCH --signal=B:TERM@{}\n", res.signal_seconds);
  s += fmt::format("#SBATCH --cpus-per-task={}\n", res.cpus);
  if (res.mem_gb > 0)
    s += fmt::format("#SBATCH --mem={}M\n", int64_t(std::ceil(res.mem_gb * 1024)));
  if (!res.time.empty()) s += fmt::format("#SBATCH --time={}\n", res.time);
  if (!res.partition.empty()) s += fmt::format("#SBATCH --partition={}\n", res.partition);
  if (!res.account.empty()) s += fmt::format("#SBATCH --account={}\n", res.account);
  if (res.gpus > 0) s += fmt::format("#SBATCH --gres=gpu:{}\n", res.gpus);
  s += fmt::format("#SBATCH --output={}/task-%a.out\n", sdir);
  s += fmt::format(
      "# Written by `painvrl sweep run --executor slurm`: task k runs line k+1 of tasks.txt.\n"
      "# SIGTERM (Slurm's --signal ahead of the time limit, or scancel --signal=TERM) goes to\n"
      "# painvrl, which checkpoints and exits 75; the task then requeues itself and resumes.\n"
      "set -u\n"
      "id=$(sed -n \"$((SLURM_ARRAY_TASK_ID + 1))p\" {tasks})\n"
      "{exe} sweep exec {dir} \"$id\" >> {dir}/runs/\"$id\"/log.txt 2>&1 &\n"
      "child=$!\n"
      "trap 'kill -TERM \"$child\" 2>/dev/null' TERM INT\n"
      "wait \"$child\"; status=$?\n"
      "while [ \"$status\" -gt 128 ] && kill -0 \"$child\" 2>/dev/null; do\n"
      "  wait \"$child\"; status=$?\n"
      "done\n"
      "echo \"painvrl sweep: run $id exited with status $status\"\n"
      "if [ \"$status\" -eq {interrupted} ]; then\n"
      "  scontrol requeue \"${{SLURM_ARRAY_JOB_ID}}_${{SLURM_ARRAY_TASK_ID}}\"\n"
      "fi\n"
      "exit \"$status\"\n",
      fmt::arg("tasks", shell_quote(sdir + "/tasks.txt")), fmt::arg("exe", shell_quote(self_exe())),
      fmt::arg("dir", shell_quote(abs_dir)), fmt::arg("interrupted", kExitInterrupted));
  const std::string script = sdir + "/array.sbatch";
  write_text_atomic(script, s);
  fs::permissions(script, fs::perms::owner_all, fs::perm_options::add, ec);
  if (!submit) {
    log_info(
        fmt::format("wrote {} ({} tasks); submit it with: sbatch {}", script, ids.size(), script));
    return;
  }
  const auto [code, out] = capture("sbatch --parsable " + shell_quote(script) + " 2>&1");
  if (code != 0) input_error("sbatch {} failed (exit {}): {}", script, code, out);
  std::string job = out.substr(0, out.find_first_of(";\n"));
  if (job.empty() || !std::all_of(job.begin(), job.end(), ::isdigit)) {
    input_error("sbatch {}: unexpected reply '{}'", script, out);
  }
  json jobs = json::array();
  if (fs::exists(abs_dir + "/slurm/jobs.json", ec))
    jobs = read_json_file(abs_dir + "/slurm/jobs.json");
  jobs.push_back(
      {{"job", job}, {"script", script}, {"tasks", sdir + "/tasks.txt"}, {"submitted", now_iso()}});
  write_text_atomic(abs_dir + "/slurm/jobs.json", jobs.dump(2) + "\n");
  std::printf("%s\n", job.c_str());
  log_info(fmt::format("submitted Slurm job {} ({} array tasks)", job, ids.size()));
}

void sweep_status(const std::string& dir) {
  const json manifest = load_manifest(dir);
  // Slurm's view of the submitted array tasks: run id -> state.
  std::map<std::string, std::string> slurm;
  std::error_code ec;
  if (fs::exists(dir + "/slurm/jobs.json", ec)) {
    const json submitted = read_json_file(dir + "/slurm/jobs.json");
    for (const json& j : submitted) {
      std::vector<std::string> ids;
      std::ifstream in(j["tasks"].get<std::string>());
      for (std::string line; std::getline(in, line);) ids.push_back(line);
      const auto [code, out] =
          capture("squeue -h -r -j " + j["job"].get<std::string>() + " -o '%i|%T' 2>/dev/null");
      if (code != 0) continue;
      std::istringstream lines(out);
      for (std::string line; std::getline(lines, line);) {
        const auto bar = line.find('|'), us = line.find('_');
        if (bar == std::string::npos || us == std::string::npos || us > bar) continue;
        const size_t task = std::stoul(line.substr(us + 1, bar - us - 1));
        if (task < ids.size()) slurm[ids[task]] = line.substr(bar + 1);
      }
    }
  }
  std::map<std::string, int> counts;
  for (const json& r : manifest["runs"]) {
    const std::string id = r["id"];
    const std::string rd = run_dir(dir, id);
    std::string state = "pending", detail;
    if (run_done(dir, id)) {
      state = "done";
      const json s = read_json_file(rd + "/out/summary.json");
      if (s.contains("test_at_best")) {
        detail = fmt::format("test recall@20 {:.4f} ndcg@10 {:.4f}",
                             s["test_at_best"].value("recall@20", 0.0),
                             s["test_at_best"].value("ndcg@10", 0.0));
      }
    } else if (fs::exists(rd + "/status.json", ec)) {
      const json st = read_json_file(rd + "/status.json");
      state = st.value("state", "pending");
      if (state == "running" && !st.contains("slurm_job")) {  // a local worker: is it alive?
        const pid_t pid = st.value("pid", 0);
        if (pid <= 0 || ::kill(pid, 0) != 0) state = "interrupted";
      }
    }
    if (slurm.count(id)) {
      detail += (detail.empty() ? "" : "; ") + std::string("slurm ") + slurm[id];
      if (state != "done" && state != "failed" && slurm[id] == "PENDING") state = "queued";
      if (slurm[id] == "RUNNING") state = "running";
    }
    ++counts[state];
    std::printf("%-12s %-11s %s%s\n", id.c_str(), state.c_str(), axes_label(r["axes"]).c_str(),
                detail.empty() ? "" : ("  (" + detail + ")").c_str());
    if (state == "failed" || state == "diverged") {
      std::printf("%s", tail_lines(rd + "/log.txt", 5).c_str());
    }
  }
  std::string line;
  for (const auto& [state, n] : counts)
    line += fmt::format("{}{} {}", line.empty() ? "" : ", ", n, state);
  std::printf("%zu runs: %s\n", manifest["runs"].size(), line.c_str());
}

void sweep_collect(const std::string& dir) {
  const json manifest = load_manifest(dir);
  std::vector<std::string> axes;
  for (const json& a : manifest["axes"]) axes.push_back(a);
  struct Row {
    std::string id;
    json axes;
    std::map<std::string, double> metrics;
  };
  std::vector<Row> rows;
  std::set<std::string> metric_names;
  int missing = 0;
  for (const json& r : manifest["runs"]) {
    if (!run_done(dir, r["id"])) {
      ++missing;
      continue;
    }
    const json s = read_json_file(run_dir(dir, r["id"]) + "/out/summary.json");
    Row row{r["id"], r["axes"], {}};
    if (s.contains("test_at_best")) {
      for (const auto& [k, v] : s["test_at_best"].items()) {
        if (k == "users") continue;
        row.metrics["test " + k] = v.get<double>();
        metric_names.insert("test " + k);
      }
    }
    if (s.contains("best_valid")) {
      for (const auto& [k, v] : s["best_valid"].items()) {
        if (k == "users") continue;
        row.metrics["valid " + k] = v.get<double>();
        metric_names.insert("valid " + k);
      }
    }
    rows.push_back(std::move(row));
  }
  auto value_text = [](const json& v) { return v.is_string() ? v.get<std::string>() : v.dump(); };
  std::string csv = "id";
  for (const std::string& a : axes) csv += "," + a;
  for (const std::string& m : metric_names) csv += "," + m;
  csv += "\n";
  for (const Row& row : rows) {
    csv += row.id;
    for (const std::string& a : axes) csv += "," + value_text(row.axes[a]);
    for (const std::string& m : metric_names) {
      csv += row.metrics.count(m) ? fmt::format(",{:.17g}", row.metrics.at(m)) : ",";
    }
    csv += "\n";
  }
  write_text_atomic(dir + "/results.csv", csv);

  // Markdown: the test metrics, mean and standard deviation over the seeds of each group.
  std::vector<std::string> group_axes, shown;
  for (const std::string& a : axes) {
    if (a != "seed") group_axes.push_back(a);
  }
  for (const std::string& m : metric_names) {
    if (m.rfind("test ", 0) == 0) shown.push_back(m);
  }
  std::map<std::string, std::vector<const Row*>> groups;
  std::vector<std::string> order;
  for (const Row& row : rows) {
    std::string key;
    for (const std::string& a : group_axes) key += value_text(row.axes[a]) + " | ";
    if (!groups.count(key)) order.push_back(key);
    groups[key].push_back(&row);
  }
  std::string md = fmt::format(
      "# Sweep {}\n\nTest metrics at the best validation epoch, mean ± "
      "standard deviation over seeds (n runs).\n\n",
      fs::absolute(dir).lexically_normal().string());
  md += "| ";
  for (const std::string& a : group_axes) md += a + " | ";
  md += "n | ";
  for (const std::string& m : shown) md += m.substr(5) + " | ";
  md += "\n|";
  for (size_t k = 0; k < group_axes.size() + 1 + shown.size(); ++k) md += " --- |";
  md += "\n";
  for (const std::string& key : order) {
    const auto& g = groups[key];
    md += "| " + key + std::to_string(g.size()) + " | ";
    for (const std::string& m : shown) {
      double sum = 0, sq = 0;
      int n = 0;
      for (const Row* r : g) {
        if (!r->metrics.count(m)) continue;
        sum += r->metrics.at(m);
        ++n;
      }
      const double mean = n ? sum / n : 0;
      for (const Row* r : g) {
        if (r->metrics.count(m)) sq += (r->metrics.at(m) - mean) * (r->metrics.at(m) - mean);
      }
      const double sd = n > 1 ? std::sqrt(sq / (n - 1)) : 0.0;
      md += fmt::format("{:.4f} ± {:.4f} | ", mean, sd);
    }
    md += "\n";
  }
  if (missing > 0) md += fmt::format("\n{} runs are not finished and not in the table.\n", missing);
  write_text_atomic(dir + "/results.md", md);
  log_info(fmt::format("collected {} runs ({} not finished) into {}/results.csv and results.md",
                       rows.size(), missing, dir));
}

}  // namespace painvrl
