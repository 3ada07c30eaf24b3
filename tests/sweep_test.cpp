// Sweeps through the program: `plan` gives the same ids every time and adding axis values only
// adds runs; malformed specs are refused naming the key; a local sweep's runs equal the same
// configs trained directly; a sweep stopped by SIGTERM and run again ends with the same results;
// SIGTERM, a Ctrl-C's SIGINT or SIGKILL sent to a runner at random moments leave no process of
// the sweep behind within 10 s, and a rerun completes with every epoch logged once; status and
// collect report every run.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <sstream>
#include <thread>

#include "test_util.h"

namespace painvrl {
namespace {

namespace fs = std::filesystem;
using test::run_program;
using test::TempDir;
using test::write_file;

using test::read_bytes;
using test::read_json;

const char* kSettings =
    "[set]\ndim = 8\nnegatives = 4\nbatch_size = 64\nepochs = 3\neval_every = 1\n"
    "pretrain_epochs = 2\nouter_iterations = 1\nenvs = 2\nhim_epochs = 1\nhim_rounds = 1\n"
    "mask_epochs = 2\nmask_batch = 64\nattention_hidden = 4\n";

struct SweepFixture {
  TempDir tmp{"sweep"};
  std::string data = tmp / "data";
  SweepFixture() {
    EXPECT_EQ(run_program("synth --out " + data + " --seed 3 --users 150 --items 100").status, 0);
  }
  std::string spec(const std::string& axes, const std::string& extra = "") {
    const std::string path = tmp / "spec.toml";
    write_file(path, "data = \"" + data + "\"\n" + extra + kSettings + "[axes]\n" + axes +
                         "[resources]\ncpus = 1\n");
    return path;
  }
};

std::vector<std::string> manifest_ids(const std::string& dir) {
  std::vector<std::string> ids;
  const nlohmann::json manifest = read_json(dir + "/manifest.json");
  for (const auto& r : manifest["runs"]) ids.push_back(r["id"]);
  return ids;
}

TEST(Sweep, PlanIsStableAndAddingValuesKeepsTheOthers) {
  SweepFixture fx;
  const std::string dir = fx.tmp / "sw";
  const std::string spec = fx.spec("method = [\"ultragcn\", \"painvrl\"]\nseed = [1, 2]\n");
  ASSERT_EQ(run_program("sweep plan " + spec + " --out " + dir).status, 0);
  const auto ids = manifest_ids(dir);
  ASSERT_EQ(ids.size(), 4u);
  EXPECT_EQ(std::set<std::string>(ids.begin(), ids.end()).size(), 4u);
  const std::string manifest = read_bytes(dir + "/manifest.json");
  const std::string config0 = read_bytes(dir + "/runs/" + ids[0] + "/config.toml");
  ASSERT_EQ(run_program("sweep plan " + spec + " --out " + dir).status, 0);
  EXPECT_EQ(read_bytes(dir + "/manifest.json"), manifest);
  // A second directory from the same spec: the same ids.
  ASSERT_EQ(run_program("sweep plan " + spec + " --out " + (fx.tmp / "sw2")).status, 0);
  EXPECT_EQ(manifest_ids(fx.tmp / "sw2"), ids);
  // One more seed: two more runs, the four others unchanged.
  write_file(dir + "/runs/" + ids[0] + "/marker", "kept");
  const std::string more = fx.spec("method = [\"ultragcn\", \"painvrl\"]\nseed = [1, 2, 3]\n");
  const auto r = run_program("sweep plan " + more + " --out " + dir);
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("6 runs"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("2 new, 4 already there"), std::string::npos) << r.output;
  const auto ids6 = manifest_ids(dir);
  ASSERT_EQ(ids6.size(), 6u);
  for (const std::string& id : ids) EXPECT_NE(std::find(ids6.begin(), ids6.end(), id), ids6.end());
  EXPECT_EQ(read_bytes(dir + "/runs/" + ids[0] + "/config.toml"), config0);
  EXPECT_TRUE(fs::exists(dir + "/runs/" + ids[0] + "/marker"));
  // The thread count is not part of a run's identity.
  const std::string threads = fx.spec("method = [\"ultragcn\", \"painvrl\"]\nseed = [1, 2]\n", "");
  std::string text = read_bytes(threads);
  text.replace(text.find("cpus = 1"), 8, "cpus = 2");
  write_file(threads, text);
  ASSERT_EQ(run_program("sweep plan " + threads + " --out " + (fx.tmp / "sw3")).status, 0);
  EXPECT_EQ(manifest_ids(fx.tmp / "sw3"), ids);
}

TEST(Sweep, MalformedSpecIsRefusedNamingTheKey) {
  SweepFixture fx;
  struct Case {
    std::string text, expect;
  };
  const std::string data = "data = \"" + fx.data + "\"\n";
  const std::vector<Case> cases = {
      {data + "[axis]\nseed = [1]\n", "unknown key `axis` (did you mean `axes`?"},
      {data + "[axes]\nsed = [1, 2]\n", "sed"},
      {data + "[axes]\nseed = []\n", "[axes] `seed`: the list is empty"},
      {data + "[axes]\nseed = 3\n", "[axes] `seed` = 3: expected a list"},
      {data + "[axes]\nseed = [1, 1]\n", "listed twice"},
      {data + "[axes]\nlr = [\"fast\"]\n", "lr"},
      {data + "[resources]\ngpu = 1\n", "unknown key `gpu` (did you mean `gpus`?"},
      {data + "[resources]\ncpus = 0\n", "`cpus` = 0: expected an integer >= 1"},
      {data + "[resources]\nmem_gb = -4\n", "`mem_gb` = -4: expected a number > 0"},
      {data + "[resources]\ntime = \"two hours\"\n", "`time` = \"two hours\""},
      {data + "[resources]\npartition = \"a'b\"\n", "`partition`"},
      {"[axes]\nseed = [1]\n", "no dataset"},
      {"data = \"/nonexistent\"\n[axes]\nseed = [1]\n", "dataset /nonexistent is not a directory"},
      {data + "[set]\nepochs = -1\n", "epochs"},
      {data + "seed = [1\n", "TOML syntax error"},
  };
  for (const Case& c : cases) {
    const std::string spec = fx.tmp / "bad.toml";
    write_file(spec, c.text);
    const std::string dir = fx.tmp / "bad";
    const auto r = run_program("sweep plan " + spec + " --out " + dir);
    EXPECT_EQ(r.status, 1) << c.text << r.output;
    EXPECT_NE(r.output.find(c.expect), std::string::npos) << c.text << "\n" << r.output;
    EXPECT_NE(r.output.find("bad.toml"), std::string::npos) << r.output;
    EXPECT_FALSE(fs::exists(dir + "/manifest.json")) << c.text;
  }
  const auto r = run_program("sweep status " + (fx.tmp / "nowhere"));
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.output.find("not a sweep directory"), std::string::npos) << r.output;
}

TEST(Sweep, LocalRunsEqualDirectTrainingAndCollectReportsThem) {
  SweepFixture fx;
  const std::string dir = fx.tmp / "sw";
  const std::string spec = fx.spec("method = [\"ultragcn-mm\", \"painvrl\"]\nseed = [1, 2]\n");
  ASSERT_EQ(run_program("sweep plan " + spec + " --out " + dir).status, 0);
  const auto r = run_program("sweep run " + dir + " --executor local --jobs 2");
  ASSERT_EQ(r.status, 0) << r.output;
  for (const std::string& id : manifest_ids(dir)) {
    const std::string direct = fx.tmp / ("direct-" + id);
    const auto d = run_program("train --config " + dir + "/runs/" + id + "/config.toml --data " +
                               fx.data + " --out " + direct + " --quiet");
    ASSERT_EQ(d.status, 0) << d.output;
    const auto a = read_json(direct + "/summary.json"),
               b = read_json(dir + "/runs/" + id + "/out/summary.json");
    EXPECT_EQ(a["test_at_best"], b["test_at_best"]) << id;
    EXPECT_EQ(read_bytes(direct + "/model.npy"),
              read_bytes(dir + "/runs/" + id + "/out/model.npy"));
  }
  const auto st = run_program("sweep status " + dir);
  EXPECT_EQ(st.status, 0);
  EXPECT_NE(st.output.find("4 runs: 4 done"), std::string::npos) << st.output;
  ASSERT_EQ(run_program("sweep collect " + dir).status, 0);
  std::ifstream csv(dir + "/results.csv");
  int lines = 0;
  for (std::string line; std::getline(csv, line);) ++lines;
  EXPECT_EQ(lines, 5);
  const std::string md = read_bytes(dir + "/results.md");
  EXPECT_NE(md.find("| ultragcn-mm | 2 | "), std::string::npos) << md;
  EXPECT_NE(md.find("| painvrl | 2 | "), std::string::npos) << md;
  // Nothing left: a second run does nothing.
  const auto again = run_program("sweep run " + dir);
  EXPECT_EQ(again.status, 0);
  EXPECT_NE(again.output.find("0 of 4 runs to do"), std::string::npos) << again.output;
}

TEST(Sweep, StoppedSweepRunAgainEndsWithTheSameResults) {
  SweepFixture fx;
  const std::string axes = "method = [\"painvrl\"]\nseed = [1, 2]\n";
  const std::string want = fx.tmp / "want", got = fx.tmp / "got";
  const std::string spec = fx.spec(axes, "");
  std::string text = read_bytes(spec);
  // Long enough that neither run can end between the wait below and the signal, even on a
  // fast machine (100 epochs took 1.1 s on CI's machine); under the sanitizers (tools/sanitize)
  // 100 epochs already take many seconds.
  text.replace(
      text.find("pretrain_epochs = 2"), 19,
      std::getenv("PAINVRL_SANITIZED") ? "pretrain_epochs = 100" : "pretrain_epochs = 400");
  write_file(spec, text);
  ASSERT_EQ(run_program("sweep plan " + spec + " --out " + want).status, 0);
  ASSERT_EQ(run_program("sweep run " + want + " --jobs 2").status, 0);
  ASSERT_EQ(run_program("sweep plan " + spec + " --out " + got).status, 0);
  const pid_t pid = test::spawn_program("sweep run " + got + " --jobs 2", fx.tmp / "got.log");
  // Stop once both runs have a checkpoint past their start. Any checkpoint counts: only the
  // newest two are kept, so a fast run may have removed its first before this loop looks.
  const auto ids = manifest_ids(got);
  const auto has_checkpoint = [&](const std::string& id) {
    const fs::path out = got + "/runs/" + id + "/out";
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(out, ec))
      if (e.path().extension() == ".ckpt") return true;
    return false;
  };
  bool ready = false;
  for (int k = 0; k < 30000 && !ready; ++k) {
    ready = std::all_of(ids.begin(), ids.end(), has_checkpoint);
    if (!ready) std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  ::kill(pid, SIGTERM);
  int st = 0;
  ::waitpid(pid, &st, 0);
  ASSERT_TRUE(ready) << "no checkpoint in 60 s\n" << read_bytes(fx.tmp / "got.log");
  ASSERT_TRUE(WIFEXITED(st));
  EXPECT_EQ(WEXITSTATUS(st), 75) << read_bytes(fx.tmp / "got.log");
  const auto status = run_program("sweep status " + got);
  EXPECT_NE(status.output.find("interrupted"), std::string::npos) << status.output;
  const auto r = run_program("sweep run " + got + " --jobs 2");
  ASSERT_EQ(r.status, 0) << r.output;
  for (const std::string& id : ids) {
    EXPECT_EQ(read_json(want + "/runs/" + id + "/out/summary.json")["test_at_best"],
              read_json(got + "/runs/" + id + "/out/summary.json")["test_at_best"]);
    EXPECT_EQ(read_bytes(want + "/runs/" + id + "/out/mask.npy"),
              read_bytes(got + "/runs/" + id + "/out/mask.npy"));
  }
}

// The processes whose command line mentions `text` (the sweep directory): the runner and its
// workers.
std::vector<pid_t> processes_mentioning(const std::string& text) {
  std::vector<pid_t> found;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator("/proc", ec)) {
    const std::string name = e.path().filename().string();
    if (name.empty() || !std::all_of(name.begin(), name.end(), ::isdigit)) continue;
    std::ifstream in(e.path() / "cmdline", std::ios::binary);
    std::string cmdline((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::replace(cmdline.begin(), cmdline.end(), '\0', ' ');
    if (cmdline.find(text) != std::string::npos) found.push_back(pid_t(std::stoi(name)));
  }
  return found;
}

// The runner in a process group of its own, as a shell starts a job, so that SIGINT sent to the
// group is what a terminal's Ctrl-C sends.
pid_t spawn_runner(const std::string& args, const std::string& log) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::setpgid(0, 0);
    const std::string cmd = "exec " + std::string(PAINVRL_BIN) + " " + args + " > " + log + " 2>&1";
    ::execl("/bin/sh", "sh", "-c", cmd.c_str(), static_cast<char*>(nullptr));
    ::_exit(127);
  }
  ::setpgid(pid, pid);
  return pid;
}

TEST(Sweep, SignalledRunnerLeavesNothingRunningAndARerunCompletes) {
  SweepFixture fx;
  std::string spec = read_bytes(fx.spec("method = [\"painvrl\"]\nseed = [1, 2, 3, 4]\n"));
  spec.replace(spec.find("epochs = 3"), 10, "epochs = 150");
  spec.replace(spec.find("pretrain_epochs = 2"), 19, "pretrain_epochs = 150");
  write_file(fx.tmp / "spec.toml", spec);
  const std::string want = fx.tmp / "want";
  ASSERT_EQ(run_program("sweep plan " + fx.tmp / "spec.toml" + " --out " + want).status, 0);
  const auto t0 = std::chrono::steady_clock::now();
  ASSERT_EQ(run_program("sweep run " + want + " --jobs 2").status, 0);
  const double sweep_seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const auto ids = manifest_ids(want);
  ASSERT_EQ(ids.size(), 4u);

  std::mt19937 rng(20261204);
  const int rounds = std::getenv("PAINVRL_SANITIZED") ? 3 : 10;
  const int signals[] = {SIGTERM, SIGINT, SIGKILL};
  for (int round = 0; round < rounds; ++round) {
    const int sig = signals[round % 3];
    const std::string got = fx.tmp / ("got" + std::to_string(round));
    ASSERT_EQ(run_program("sweep plan " + fx.tmp / "spec.toml" + " --out " + got).status, 0);
    const std::string log = got + ".log";
    const pid_t pid = spawn_runner("sweep run " + got + " --jobs 2", log);
    // A random moment of the sweep, from its start to a little past its usual end.
    const double at = std::uniform_real_distribution<double>(0.0, 1.1 * sweep_seconds)(rng);
    std::this_thread::sleep_for(std::chrono::duration<double>(at));
    const auto sent = std::chrono::steady_clock::now();
    ::kill(sig == SIGINT ? -pid : pid, sig);
    int st = 0;
    bool reaped = false, gone = false;
    while (!gone && std::chrono::steady_clock::now() - sent < std::chrono::seconds(10)) {
      if (!reaped) reaped = ::waitpid(pid, &st, WNOHANG) == pid;
      gone = reaped && processes_mentioning(got + " ").empty();
      if (!gone) std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    const std::string where = fmt::format("round {} signal {} at {:.2f}s\n", round, sig, at);
    if (!gone) {
      ::kill(-pid, SIGKILL);
      for (pid_t p : processes_mentioning(got + " ")) ::kill(p, SIGKILL);
      if (!reaped) ::waitpid(pid, &st, 0);
    }
    ASSERT_TRUE(gone) << where << "processes of the sweep still running 10 s after the signal\n"
                      << read_bytes(log);
    if (sig == SIGKILL) {
      EXPECT_TRUE(WIFSIGNALED(st) || (WIFEXITED(st) && WEXITSTATUS(st) == 0)) << where;
    } else {  // stopped (75) or, when the signal came after the last run, done (0)
      ASSERT_TRUE(WIFEXITED(st)) << where << read_bytes(log);
      EXPECT_TRUE(WEXITSTATUS(st) == 75 || WEXITSTATUS(st) == 0)
          << where << "exit " << WEXITSTATUS(st) << "\n"
          << read_bytes(log);
      EXPECT_EQ(read_bytes(log).find("FAILED"), std::string::npos) << where << read_bytes(log);
    }
    const auto rerun = run_program("sweep run " + got + " --jobs 2");
    ASSERT_EQ(rerun.status, 0) << where << rerun.output;
    for (const std::string& id : ids) {
      const std::string out = got + "/runs/" + id + "/out";
      // Every line whole, and each (stage, epoch) once.
      std::ifstream in(out + "/metrics.jsonl");
      std::set<std::pair<std::string, int>> seen;
      int lines = 0;
      for (std::string line; std::getline(in, line); ++lines) {
        nlohmann::json j;
        ASSERT_NO_THROW(j = nlohmann::json::parse(line)) << where << id << ": '" << line << "'";
        const auto key = std::make_pair(j.value("stage", std::string()), j.value("epoch", -1));
        EXPECT_TRUE(seen.insert(key).second)
            << where << id << ": epoch " << key.second << " of " << key.first << " twice";
      }
      EXPECT_GT(lines, 0) << where << id;
      EXPECT_EQ(read_json(want + "/runs/" + id + "/out/summary.json")["test_at_best"],
                read_json(out + "/summary.json")["test_at_best"])
          << where << id;
    }
  }
}

}  // namespace
}  // namespace painvrl
