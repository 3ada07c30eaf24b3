// The invariant-learning pipeline and the protocols end to end through the program: painvrl and
// invrl runs write the mask, the trace and the summary; `split` writes the OOD/IID and cold-item
// datasets by its documented rules; cold-candidate evaluation ranks among cold items only.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "painvrl/data/dataset.h"
#include "painvrl/data/error.h"
#include "painvrl/data/io.h"
#include "painvrl/data/npy.h"
#include "painvrl/pipeline/config.h"
#include "painvrl/pipeline/progress.h"
#include "painvrl/pipeline/stages.h"
#include "painvrl/pipeline/threads.h"
#include "painvrl/pipeline/trainer.h"
#include "test_util.h"

namespace painvrl {
namespace {

namespace fs = std::filesystem;
using test::run_program;
using test::TempDir;

using test::read_json;

std::set<std::pair<int32_t, int32_t>> pair_set(const PairList& p) {
  std::set<std::pair<int32_t, int32_t>> s;
  for (size_t k = 0; k < p.size(); ++k) s.insert({p.user[k], p.item[k]});
  return s;
}

const char* kTiny =
    " --set dim=8 negatives=4 batch_size=128 epochs=3 eval_every=1 pretrain_epochs=1 "
    "outer_iterations=2 envs=3 him_epochs=1 him_rounds=2 mask_epochs=2 mask_batch=64 "
    "attention_hidden=4";

// The whole-run ETA: none before a unit has been measured; after one, every stage of the plan
// is predicted; none outside a run. The work model: a stage's work grows with its size.
TEST(Pipeline, RunProgressPredictsOnceAUnitIsMeasured) {
  Config c;
  c.method = "painvrl";
  const ProblemSize size{1000, 800, 13000, 2000, 48};
  RunProgress& p = RunProgress::current();
  p.start(c, size);
  p.begin(StageKind::kPretrain, 0);
  EXPECT_LT(p.eta_seconds(), 0);
  EXPECT_EQ(p.suffix(), "");
  p.advance(1, c.pretrain_epochs);
  EXPECT_GE(p.eta_seconds(), 0);
  EXPECT_NE(p.suffix().find("[run "), std::string::npos) << p.suffix();
  p.finish();
  EXPECT_LT(p.eta_seconds(), 0);
  EXPECT_EQ(p.suffix(), "");
  for (StageKind k : {StageKind::kPretrain, StageKind::kHim, StageKind::kMask, StageKind::kFinal}) {
    const double w = RunProgress::work_per_unit(k, c, size);
    EXPECT_GT(w, 0);
    ProblemSize twice = size;
    twice.n_train *= 2;
    EXPECT_GT(RunProgress::work_per_unit(k, c, twice), 1.5 * w);
  }
}

// threads = 0 on a shared machine: the cores other processes keep busy are left to them (a
// neighbour counts once it keeps 0.7 of a core busy), never fewer than one thread.
TEST(Pipeline, ThreadGovernorLeavesBusyCoresToTheNeighbours) {
  EXPECT_EQ(ThreadGovernor::threads_for(0.0, 2), 2);
  EXPECT_EQ(ThreadGovernor::threads_for(-0.1, 2), 2);  // measurement noise
  EXPECT_EQ(ThreadGovernor::threads_for(0.5, 2), 2);
  EXPECT_EQ(ThreadGovernor::threads_for(0.75, 2), 1);
  EXPECT_EQ(ThreadGovernor::threads_for(1.0, 2), 1);
  EXPECT_EQ(ThreadGovernor::threads_for(7.0, 2), 1);
  EXPECT_EQ(ThreadGovernor::threads_for(1.0, 8), 7);
  EXPECT_EQ(ThreadGovernor::threads_for(2.9, 8), 5);
  EXPECT_EQ(ThreadGovernor::threads_for(3.0, 1), 1);
  ThreadGovernor& g = ThreadGovernor::current();
  g.start(3);  // a fixed count is kept
  EXPECT_EQ(g.threads(), 3);
  g.adapt(0.0);
  EXPECT_EQ(g.threads(), 3);
  g.start(0);
  EXPECT_GE(g.threads(), 1);
  EXPECT_EQ(g.threads(), g.most());
}

// A runner that, like the device's, keeps the state to itself and brings the host copy up to date
// only in sync_state(): the CPU runner on a private copy of the state.
class DeferredRunner final : public MaskRunner {
 public:
  DeferredRunner(const MaskRunSetup& setup, const MaskRunState& host)
      : host_(host),
        params_(*host.params),
        adam_m_(*host.adam_m),
        adam_v_(*host.adam_v),
        adam_t_(*host.adam_t),
        mask_(*host.mask),
        mask_m_(*host.mask_m),
        mask_v_(*host.mask_v),
        mask_t_(*host.mask_t),
        scale_(*host.scale) {
    own_ = MaskRunState{&params_, &adam_m_, &adam_v_, &adam_t_, &mask_,
                        &mask_m_, &mask_v_, &mask_t_, &scale_};
    inner_ = make_cpu_mask_runner(setup, own_);
  }
  void begin_epoch(const std::vector<std::vector<int32_t>>& env_pairs, int epoch) override {
    inner_->begin_epoch(env_pairs, epoch);
  }
  void step(int64_t step) override { inner_->step(step); }
  bool deferred() const override { return true; }
  MaskDrain drain() override { return inner_->drain(); }
  void sync_state() override {
    inner_->sync_state();
    *host_.params = params_, *host_.adam_m = adam_m_, *host_.adam_v = adam_v_;
    *host_.adam_t = adam_t_, *host_.mask = mask_, *host_.mask_m = mask_m_;
    *host_.mask_v = mask_v_, *host_.mask_t = mask_t_, *host_.scale = scale_;
  }

 private:
  MaskRunState host_, own_;
  std::vector<double> params_, adam_m_, adam_v_;
  long long adam_t_;
  std::vector<double> mask_, mask_m_, mask_v_;
  long long mask_t_;
  ParetoScale scale_;
  std::unique_ptr<MaskRunner> inner_;
};

std::unique_ptr<MaskRunner> make_deferred_runner(const MaskRunSetup& setup,
                                                 const MaskRunState& state) {
  return std::make_unique<DeferredRunner>(setup, state);
}

// Issue 22, item 5: the mask stage's progress lines report the current mask with a runner that
// updates the host copy only in sync_state() (the device runner); they reported the initial
// 0.500 at every line. The run's results equal the CPU runner's.
TEST(Pipeline, MaskLinesReportTheCurrentMaskWithADeferredRunner) {
  TempDir tmp("deferred");
  const std::string data = tmp / "synth";
  ASSERT_EQ(run_program("synth --out " + data + " --seed 2 --users 100 --items 80").status, 0);
  Config c;
  c.method = "painvrl";
  for (const char* kv : {"dim=8", "negatives=4", "batch_size=128", "epochs=2", "eval_every=1",
                         "pretrain_epochs=1", "outer_iterations=1", "envs=2", "him_epochs=1",
                         "him_rounds=1", "mask_epochs=8", "mask_batch=64", "attention_hidden=4"}) {
    apply_override(c, kv);
  }
  run_training(c, RunOptions{data, tmp / "cpu", false});
  set_mask_runner_factory_for_testing(make_deferred_runner);
  run_training(c, RunOptions{data, tmp / "deferred", false});
  set_mask_runner_factory_for_testing(nullptr);
  EXPECT_EQ(test::read_bytes(tmp / "cpu" + "/mask.npy"),
            test::read_bytes(tmp / "deferred" + "/mask.npy"));
  // Each "mask outer 0 epoch E/8: ... mask mean M" line against the trace's last step of E.
  std::map<int, double> traced;
  std::ifstream trace(tmp / "deferred" + "/trace.jsonl");
  for (std::string line; std::getline(trace, line);) {
    const auto j = nlohmann::json::parse(line);
    if (j.contains("mask_mean") && j.contains("epoch"))
      traced[j["epoch"].get<int>()] = j["mask_mean"];
  }
  std::ifstream log(tmp / "deferred" + "/log.txt");
  int lines = 0;
  for (std::string line; std::getline(log, line);) {
    const size_t at = line.find("mask outer 0 epoch");
    if (at == std::string::npos) continue;
    const int epoch = std::stoi(line.substr(at + 18));
    const size_t mean_at = line.find("mask mean ");
    ASSERT_NE(mean_at, std::string::npos) << line;
    const double mean = std::stod(line.substr(mean_at + 10));
    ASSERT_TRUE(traced.count(epoch)) << line;
    EXPECT_NEAR(mean, traced[epoch], 5e-4) << line;
    ++lines;
  }
  EXPECT_GT(lines, 1);
  EXPECT_NE(traced.rbegin()->second, 0.5);  // the mask moved, so a stale 0.500 would show
}

TEST(Pipeline, PainvrlAndInvrlWriteMaskTraceAndSummary) {
  TempDir tmp("pipe");
  const std::string data = tmp / "synth";
  ASSERT_EQ(run_program("synth --out " + data + " --seed 2 --users 100 --items 80").status, 0);
  for (const std::string method : {"painvrl", "invrl"}) {
    const std::string run = tmp / method;
    const auto r =
        run_program("train --method " + method + " --data " + data + " --out " + run + kTiny);
    ASSERT_EQ(r.status, 0) << r.output;
    const std::string log = test::read_bytes(run + "/log.txt");
    EXPECT_NE(log.find("HIM outer 1 round"), std::string::npos) << log;
    EXPECT_NE(log.find("final eval epoch"), std::string::npos) << log;
    EXPECT_NE(log.find("[run "), std::string::npos) << log;  // the whole-run ETA
    EXPECT_NE(r.output.find("final model on Phi"), std::string::npos) << r.output;
    const NpyArray mask = read_npy(run + "/mask.npy");
    ASSERT_EQ(mask.shape, (std::vector<int64_t>{48}));
    for (float m : mask.to_float()) {
      EXPECT_GE(m, 0.f);
      EXPECT_LE(m, 1.f);
    }
    const nlohmann::json s = read_json(run + "/summary.json");
    EXPECT_EQ(s["method"], method);
    EXPECT_EQ(s["objective"], method == "invrl" ? "fixed" : "pareto");
    EXPECT_EQ(s["attention"], method == "painvrl");
    EXPECT_TRUE(s["test_at_best"].contains("recall@20"));
    std::ifstream trace(run + "/trace.jsonl");
    int rounds = 0, steps = 0;
    for (std::string line; std::getline(trace, line);) {
      const auto j = nlohmann::json::parse(line);
      if (j.contains("him_round")) {
        ++rounds;
        int64_t total = 0;
        for (int64_t n : j["env_sizes"]) total += n;
        EXPECT_GT(total, 0);
      } else {
        ++steps;
        // InvRL weighs L_ERM + alpha L_IRM: it has no Pareto weight to record.
        EXPECT_EQ(j.contains("w_ERM"), method == "painvrl") << line;
        if (method == "painvrl") {
          EXPECT_GE(double(j["w_ERM"]), 0.0);
          EXPECT_LE(double(j["w_ERM"]), 1.0);
        }
        EXPECT_TRUE(j.contains("L_IRM"));
      }
    }
    EXPECT_GE(rounds, 2);  // at least one HIM round per outer iteration
    EXPECT_GT(steps, 2);
    // The environments of each outer iteration: one `user item env` line per training pair.
    for (int outer = 0; outer < 2; ++outer) {
      std::ifstream envs(run + "/environments-" + std::to_string(outer) + ".tsv");
      ASSERT_TRUE(envs.good()) << "environments-" << outer << ".tsv";
      int64_t lines = 0;
      for (std::string line; std::getline(envs, line);) {
        int u = -1, i = -1, e = -1;
        ASSERT_EQ(std::sscanf(line.c_str(), "%d\t%d\t%d", &u, &i, &e), 3) << line;
        EXPECT_TRUE(e >= 0 && e < 3) << line;
        ++lines;
      }
      EXPECT_EQ(lines, load_dataset(data, {}).train.size());
    }
  }
}

std::string file_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// Determinism (reliability issue): the whole painvrl pipeline gives the same mask, environments,
// trace and metrics, byte for byte, on 1 and 2 threads.
TEST(Pipeline, PainvrlIsBitIdenticalOnOneAndTwoThreads) {
  TempDir tmp("det");
  const std::string data = tmp / "synth";
  ASSERT_EQ(run_program("synth --out " + data + " --seed 2 --users 100 --items 80").status, 0);
  for (const std::string t : {"1", "2"}) {
    const auto r = run_program("train --quiet --method painvrl --data " + data + " --out " +
                               (tmp / ("t" + t)) + kTiny + " threads=" + t);
    ASSERT_EQ(r.status, 0) << r.output;
  }
  for (const std::string f :
       {"mask.npy", "environments-0.tsv", "environments-1.tsv", "trace.jsonl"}) {
    const std::string one = file_bytes(tmp / ("t1/" + f)), two = file_bytes(tmp / ("t2/" + f));
    EXPECT_FALSE(one.empty()) << f;
    EXPECT_EQ(one, two) << f << " differs between 1 and 2 threads";
  }
  std::ifstream m1(tmp / "t1/metrics.jsonl"), m2(tmp / "t2/metrics.jsonl");
  int lines = 0;
  for (std::string a, b; std::getline(m1, a) && std::getline(m2, b); ++lines) {
    auto ja = nlohmann::json::parse(a), jb = nlohmann::json::parse(b);
    ja.erase("train_seconds");
    jb.erase("train_seconds");
    EXPECT_EQ(ja, jb);
  }
  EXPECT_GT(lines, 0);
}

// PaInvRL with every default on the default planted data (`painvrl synth`, seed 2): the mask
// does not collapse and ranks the invariant columns above the spurious ones, w_ERM moves with the
// data, and PaInvRL leads ultragcn-mm on the cold-item OOD test without losing the warm OOD and
// IID tests (the PaInvRL issue's must-shows 1-4; bench/fidelity runs every generator and seed).
// The bounds are the issue's, except cold-OOD, whose margin here is five times the 0.02 asked.
TEST(Pipeline, PainvrlWithDefaultsFindsTheInvariantBlockAndWinsOnColdOodItems) {
  TempDir tmp("must");
  const std::string data = tmp / "synth";
  ASSERT_EQ(run_program("synth --out " + data + " --seed 2").status, 0);
  auto train = [&](const std::string& method) {
    const std::string run = tmp / method;
    const auto r = run_program("train --quiet --method " + method + " --data " + data + " --out " +
                               run + " --set seed=2");
    EXPECT_EQ(r.status, 0) << r.output;
    return run;
  };
  const std::string mm = train("ultragcn-mm"), pv = train("painvrl");
  auto recall = [](const std::string& run, const std::string& test) {
    const nlohmann::json s = read_json(run + "/summary.json");
    return double(test == "ood" ? s["test_at_best"]["recall@20"]
                                : s["test_sets_at_best"][test]["recall@20"]);
  };
  const std::vector<float> mask = read_npy(pv + "/mask.npy").to_float();
  const nlohmann::json kinds = read_json(data + "/manifest.json")["column_kinds"];
  ASSERT_EQ(mask.size(), kinds.size());
  double above = 0, pairs = 0, mean = 0;
  for (size_t a = 0; a < mask.size(); ++a) {
    mean += mask[a] / double(mask.size());
    if (kinds[a] != "invariant") continue;
    for (size_t b = 0; b < mask.size(); ++b) {
      if (kinds[b] != "spurious") continue;
      above += mask[a] > mask[b] ? 1 : mask[a] == mask[b] ? 0.5 : 0;
      pairs += 1;
    }
  }
  std::vector<double> w;
  std::ifstream trace(pv + "/trace.jsonl");
  for (std::string line; std::getline(trace, line);) {
    const auto j = nlohmann::json::parse(line);
    if (j.contains("w_ERM")) w.push_back(j["w_ERM"]);
  }
  ASSERT_GT(w.size(), 20u);
  std::vector<double> sorted = w;
  std::sort(sorted.begin(), sorted.end());
  const double iqr = sorted[sorted.size() * 3 / 4] - sorted[sorted.size() / 4];
  double near = 0;
  for (double x : w)
    near += std::fabs(x) < 0.01 || std::fabs(x - 0.5) < 0.01 || std::fabs(x - 1) < 0.01;
  std::printf(
      "recall@20 ultragcn-mm / painvrl: cold-OOD %.4f / %.4f, OOD %.4f / %.4f, IID %.4f / "
      "%.4f; mask AUC %.3f mean %.3f; w_ERM IQR %.3f, %.0f%% near 0 / 0.5 / 1\n",
      recall(mm, "cold-ood"), recall(pv, "cold-ood"), recall(mm, "ood"), recall(pv, "ood"),
      recall(mm, "iid"), recall(pv, "iid"), above / pairs, mean, iqr,
      100 * near / double(w.size()));
  // `inspect RUN` summarises the same trace: minimum, quartiles and maximum of w_ERM.
  const auto ins = run_program("inspect " + pv);
  ASSERT_EQ(ins.status, 0) << ins.output;
  EXPECT_NE(ins.output.find(
                fmt::format("w_ERM        {} mask steps: min {:.3f}", w.size(), sorted.front())),
            std::string::npos)
      << ins.output;
  EXPECT_NE(ins.output.find(fmt::format("max {:.3f}", sorted.back())), std::string::npos);
  EXPECT_NE(ins.output.find("test set     cold-ood"), std::string::npos) << ins.output;
  // ... and the mask's mean per planted column kind, from the dataset's manifest.
  double by_kind[3] = {0, 0, 0}, n_kind[3] = {0, 0, 0};
  const char* kind_names[3] = {"invariant", "spurious", "noise"};
  for (size_t a = 0; a < mask.size(); ++a) {
    for (int k = 0; k < 3; ++k)
      if (kinds[a] == kind_names[k]) by_kind[k] += mask[a], n_kind[k] += 1;
  }
  EXPECT_NE(ins.output.find(fmt::format(
                "planted columns: invariant {:.3f}  spurious {:.3f}  noise {:.3f}",
                by_kind[0] / n_kind[0], by_kind[1] / n_kind[1], by_kind[2] / n_kind[2])),
            std::string::npos)
      << ins.output;
  EXPECT_GE(above / pairs, 0.8);
  EXPECT_GE(mean, 0.1);
  EXPECT_GT(iqr, 0.05);
  EXPECT_LT(near / double(w.size()), 0.5);
  EXPECT_GT(recall(pv, "cold-ood"), recall(mm, "cold-ood") + 0.1);
  EXPECT_GE(recall(pv, "ood"), recall(mm, "ood") - 0.005);
  EXPECT_GE(recall(pv, "iid"), recall(mm, "iid") - 0.01);
}

// A [[test_set]] is evaluated at the selected model like the test: the test file listed again as
// a test set gives the test's metrics, and with candidates = "cold" those of a run whose test
// ranks among the cold items; the most-popular baseline too.
TEST(Pipeline, TestSetsAreEvaluatedAtTheSelectedModel) {
  TempDir tmp("sets");
  const std::string data = tmp / "synth";
  ASSERT_EQ(run_program("synth --out " + data + " --seed 5 --users 120 --items 90").status, 0);
  std::string toml = read_text_file(data + "/dataset.toml");
  toml +=
      "\n[[test_set]]\nname = \"again\"\nfile = \"test.txt\"\n"
      "\n[[test_set]]\nname = \"cold-again\"\nfile = \"test_cold_ood.txt\"\n"
      "candidates = \"cold\"\n";
  test::write_file(data + "/dataset.toml", toml);
  for (const std::string method : {"ultragcn-mm", "mostpop"}) {
    const std::string run = tmp / method;
    auto r = run_program("train --quiet --method " + method + " --data " + data + " --out " + run +
                         " --set epochs=6 eval_every=2");
    ASSERT_EQ(r.status, 0) << r.output;
    const nlohmann::json s = read_json(run + "/summary.json");
    EXPECT_EQ(s["test_sets_at_best"]["again"], s["test_at_best"]) << method;
    for (const char* name : {"iid", "cold-ood", "cold-iid", "cold-again"})
      EXPECT_TRUE(s["test_sets_at_best"].contains(name)) << method << " " << name;
    EXPECT_EQ(s["test_sets_at_best"]["cold-again"], s["test_sets_at_best"]["cold-ood"]) << method;
  }
}

// mask_file: the final model alone, trained on the given mask (no stage 0, HIM or mask steps);
// a mask of the wrong length, outside [0, 1] or given to a baseline is refused before anything
// is written.
TEST(Pipeline, MaskFileTrainsTheFinalModelOnTheGivenMask) {
  TempDir tmp("maskfile");
  const std::string data = tmp / "synth";
  ASSERT_EQ(run_program("synth --out " + data + " --seed 5 --users 120 --items 90").status, 0);
  const std::string run = tmp / "planted";
  auto r = run_program("train --method painvrl --data " + data + " --out " + run +
                       " --set epochs=4 eval_every=2 mask_file=" + data + "/planted_mask.npy");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_EQ(r.output.find("stage 0"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("HIM outer"), std::string::npos) << r.output;
  EXPECT_EQ(read_npy(run + "/mask.npy").to_float(),
            read_npy(data + "/planted_mask.npy").to_float());
  const nlohmann::json s = read_json(run + "/summary.json");
  EXPECT_NE(std::string(s["mask_file"]).find("planted_mask.npy"), std::string::npos);
  const float wrong[3] = {0.5f, 0.5f, 0.5f}, high[48] = {2.f};
  write_npy(tmp / "wrong.npy", wrong, {3});
  write_npy(tmp / "high.npy", high, {48});
  for (const auto& [flags, needle] : std::vector<std::pair<std::string, std::string>>{
           {"--method painvrl --set mask_file=" + (tmp / "wrong.npy"), "one value per feature"},
           {"--method painvrl --set mask_file=" + (tmp / "high.npy"), "not in [0, 1]"},
           {"--method painvrl --set mask_file=" + (tmp / "none.npy"), "none.npy"},
           {"--method ultragcn-mm --set mask_file=" + data + "/planted_mask.npy",
            "applies to --method painvrl or invrl"}}) {
    r = run_program("train --data " + data + " --out " + (tmp / "bad") + " " + flags);
    EXPECT_EQ(r.status, 1) << flags << ": " << r.output;
    EXPECT_NE(r.output.find(needle), std::string::npos) << r.output;
    EXPECT_FALSE(fs::exists(tmp / "bad")) << flags;
  }
}

// Environment identification with the paper's E = 10 and the default centred comparison never
// leaves almost every pair in one environment (with raw scores one model's higher bias took
// 29,909 of 30,000 pairs; docs/method.md).
TEST(Pipeline, HimWithTenEnvironmentsSpreadsThePairs) {
  TempDir tmp("him10");
  const std::string data = tmp / "synth";
  ASSERT_EQ(run_program("synth --out " + data + " --seed 2 --users 400 --items 300").status, 0);
  const std::string run = tmp / "run";
  const auto r = run_program("train --quiet --method painvrl --data " + data + " --out " + run +
                             " --set envs=10 outer_iterations=1 mask_epochs=0 epochs=1");
  ASSERT_EQ(r.status, 0) << r.output;
  std::map<int, int64_t> sizes;
  int64_t total = 0;
  std::ifstream envs(run + "/environments-0.tsv");
  for (std::string line; std::getline(envs, line);) {
    int u, i, e;
    ASSERT_EQ(std::sscanf(line.c_str(), "%d\t%d\t%d", &u, &i, &e), 3);
    ++sizes[e];
    ++total;
  }
  int64_t largest = 0;
  for (const auto& [e, n] : sizes) largest = std::max(largest, n);
  EXPECT_GE(sizes.size(), 5u);
  EXPECT_LT(double(largest) / double(total), 0.5) << largest << " of " << total;
}

TEST(Pipeline, ObjectiveAndAttentionFlags) {
  TempDir tmp("flags");
  const std::string data = tmp / "synth";
  ASSERT_EQ(run_program("synth --out " + data + " --seed 3 --users 80 --items 60").status, 0);
  const std::string run = tmp / "erm";
  const auto r = run_program("train --method painvrl --objective erm --no-attention --data " +
                             data + " --out " + run + kTiny);
  ASSERT_EQ(r.status, 0) << r.output;
  const nlohmann::json s = read_json(run + "/summary.json");
  EXPECT_EQ(s["objective"], "erm");
  EXPECT_EQ(s["attention"], false);
  std::ifstream trace(run + "/trace.jsonl");
  int64_t steps = 0;
  for (std::string line; std::getline(trace, line);) {
    const auto j = nlohmann::json::parse(line);
    if (!j.contains("L_ERM")) continue;
    ++steps;
    EXPECT_FALSE(j.contains("w_ERM")) << line;  // ERM only: the weights are fixed, not Eq. 17's
  }
  EXPECT_GT(steps, 0);
  EXPECT_EQ(run_program("train --method painvrl --objective best --data " + data + " --out " +
                        (tmp / "bad") + kTiny)
                .status,
            1);
  EXPECT_FALSE(fs::exists(tmp / "bad"));
}

TEST(Pipeline, OodSplitFollowsItsRules) {
  TempDir tmp("split");
  const std::string data = tmp / "synth";
  ASSERT_EQ(run_program("synth --out " + data +
                        " --seed 4 --users 150 --items 100 --mid-share 0 --protocol mixed")
                .status,
            0);
  const std::string out = tmp / "ood";
  const auto r =
      run_program("split --data " + data + " --out " + out + " --protocol ood --environments file");
  ASSERT_EQ(r.status, 0) << r.output;
  LoadOptions no_features;
  no_features.load_features = false;
  const Dataset ood = load_dataset(out + "/ood", no_features);
  const Dataset iid = load_dataset(out + "/iid", no_features);
  EXPECT_EQ(pair_set(ood.train), pair_set(iid.train));
  EXPECT_EQ(pair_set(ood.valid), pair_set(iid.valid));
  // The environments file: every OOD-test pair is from the minority environment, every training
  // and IID-test pair from the majority.
  std::map<std::pair<int32_t, int32_t>, int> env;
  std::ifstream tsv(data + "/environments.tsv");
  std::string line;
  std::getline(tsv, line);
  int64_t count[2] = {0, 0};
  while (std::getline(tsv, line)) {
    int u, i, e;
    ASSERT_EQ(std::sscanf(line.c_str(), "%d\t%d\t%d", &u, &i, &e), 3);
    env[{u, i}] = e;
    ++count[e];
  }
  const int majority = count[0] >= count[1] ? 0 : 1;
  for (const auto& p : pair_set(ood.test)) EXPECT_EQ(env.at(p), 1 - majority);
  for (const auto& p : pair_set(ood.train)) EXPECT_EQ(env.at(p), majority);
  for (const auto& p : pair_set(iid.test)) EXPECT_EQ(env.at(p), majority);
  // IID test and validation are ~10 % each of the majority environment.
  const double big = double(count[majority]);
  EXPECT_NEAR(double(iid.test.size()) / big, 0.1, 0.03);
  EXPECT_NEAR(double(ood.valid.size()) / big, 0.1, 0.03);
  // OOD-test users and items all appear in training.
  std::set<int32_t> users, items;
  for (size_t k = 0; k < ood.train.size(); ++k) {
    users.insert(ood.train.user[k]);
    items.insert(ood.train.item[k]);
  }
  for (size_t k = 0; k < ood.test.size(); ++k) {
    EXPECT_TRUE(users.count(ood.test.user[k]));
    EXPECT_TRUE(items.count(ood.test.item[k]));
  }
  const nlohmann::json m = read_json(out + "/manifest.json");
  EXPECT_EQ(m["protocol"], "ood");
  EXPECT_EQ(int64_t(m["counts"]["ood_test"]), int64_t(ood.test.size()));
}

// Three planted environments: the smallest (the flipped minority) is the test environment and the
// two others make up training, with their environments written beside the split.
TEST(Pipeline, SplitWithThreeEnvironmentsTrainsOnAllButTheTestEnvironment) {
  TempDir tmp("split3");
  const std::string data = tmp / "synth";
  ASSERT_EQ(run_program("synth --out " + data +
                        " --seed 8 --users 150 --items 100 --minority 0.15 --mid-share 0.3")
                .status,
            0);
  const std::string out = tmp / "ood";
  const auto r =
      run_program("split --data " + data + " --out " + out + " --protocol ood --environments file");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_EQ(read_json(out + "/manifest.json")["test_env"], 1);
  std::set<int> train_envs, test_envs;
  std::ifstream tsv(out + "/ood/environments.tsv");
  std::string line;
  std::getline(tsv, line);
  while (std::getline(tsv, line)) {
    int u, i, e;
    char split[16];
    ASSERT_EQ(std::sscanf(line.c_str(), "%d\t%d\t%d\t%15s", &u, &i, &e, split), 4);
    (std::string(split) == "test" ? test_envs : train_envs).insert(e);
  }
  EXPECT_EQ(train_envs, (std::set<int>{0, 2}));
  EXPECT_EQ(test_envs, (std::set<int>{1}));
}

TEST(Pipeline, ColdSplitHoldsItemsOutAndRanksAmongThem) {
  TempDir tmp("cold");
  const std::string data = tmp / "synth";
  ASSERT_EQ(run_program("synth --out " + data +
                        " --seed 6 --users 150 --items 100 --mid-share 0 --protocol mixed")
                .status,
            0);
  const std::string out = tmp / "cold";
  auto r = run_program("split --data " + data + " --out " + out +
                       " --protocol cold --environments file --cold-fraction 0.25");
  ASSERT_EQ(r.status, 0) << r.output;
  LoadOptions no_features;
  no_features.load_features = false;
  const Dataset cold = load_dataset(out + "/cold-ood", no_features);
  std::set<int32_t> train_items, test_items;
  for (int32_t i : cold.train.item) train_items.insert(i);
  for (int32_t i : cold.test.item) test_items.insert(i);
  ASSERT_FALSE(test_items.empty());
  for (int32_t i : test_items) EXPECT_FALSE(train_items.count(i)) << "cold item " << i;
  const nlohmann::json m = read_json(out + "/manifest.json");
  EXPECT_NEAR(double(m["cold_items"]) / 100.0, 0.25, 0.12);
  // Ranking among cold items only: the most-popular baseline gives every cold item the same
  // score 0, so its ranking among them is by id; with candidates = all, warm items fill the
  // top and no cold item can be hit. The split's dataset.toml says test_candidates = "cold",
  // so a plain run ranks among the cold items (candidates = auto).
  EXPECT_NE(read_text_file(out + "/cold-ood/dataset.toml").find("test_candidates = \"cold\""),
            std::string::npos);
  r = run_program("train --method mostpop --data " + out + "/cold-ood --out " + (tmp / "all") +
                  " --set candidates=all");
  ASSERT_EQ(r.status, 0) << r.output;
  r = run_program("train --method mostpop --data " + out + "/cold-ood --out " + (tmp / "coldc"));
  ASSERT_EQ(r.status, 0) << r.output;
  const double all_recall = read_json(tmp / "all/summary.json")["test_at_best"]["recall@20"];
  const double cold_recall = read_json(tmp / "coldc/summary.json")["test_at_best"]["recall@20"];
  EXPECT_EQ(all_recall, 0.0);
  EXPECT_GT(cold_recall, 0.0);
  for (const std::string bad :
       {"--protocol cold --cold-fraction 1.5", "--protocol sideways", "--environments oracle"}) {
    r = run_program("split --data " + data + " --out " + (tmp / "bad") + " " + bad);
    EXPECT_EQ(r.status, 1) << bad << ": " << r.output;
    EXPECT_FALSE(fs::exists(tmp / "bad")) << bad;
  }
}

// environments.tsv: CRLF (blank lines included) and extra columns read like LF; an id that does
// not fit, trailing junk in a field or a missing field is an error naming the line.
TEST(Environments, FileReaderIsLineEndingBlindAndStrict) {
  TempDir tmp("envs");
  PairList pairs;
  pairs.push(0, 1);
  pairs.push(2, 3);
  const std::string path = tmp / "environments.tsv";
  for (const std::string text :
       {std::string("user\titem\tenv\n0\t1\t5\n\n2\t3\t7\n"),
        std::string("user\titem\tenv\r\n0\t1\t5\r\n\r\n2\t3\t7\tvalid\r\n"),
        std::string("user\titem\tenv\n0\t1\t5\n2\t3\t7")}) {
    test::write_file(path, text);
    EXPECT_EQ(environments_from_file(path, pairs), (std::vector<int32_t>{0, 1})) << text;
  }
  for (const std::string bad : {"0\t1\t99999999999\n", "0\t1x\t5\n", "0\t1\n", "0\t-1\t2\n"}) {
    test::write_file(path, "user\titem\tenv\n" + bad + "2\t3\t7\n");
    try {
      environments_from_file(path, pairs);
      ADD_FAILURE() << "accepted " << bad;
    } catch (const InputError& e) {
      EXPECT_NE(std::string(e.what()).find("environments.tsv:2:"), std::string::npos) << e.what();
    }
  }
}

}  // namespace
}  // namespace painvrl
