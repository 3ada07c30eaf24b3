// The invariant-learning pipeline and the protocols end to end through the program: painvrl and
// invrl runs write the mask, the trace and the summary; `split` writes the OOD/IID and cold-item
// datasets by its documented rules; cold-candidate evaluation ranks among cold items only.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "painvrl/dataset.h"
#include "painvrl/error.h"
#include "painvrl/npy.h"
#include "painvrl/stages.h"
#include "test_util.h"

namespace painvrl {
namespace {

namespace fs = std::filesystem;
using test::run_program;
using test::TempDir;

using test::read_json;

// Recall@K of a finished run on the test split of another dataset directory with the same
// training data (the OOD/IID split's iid/ shares ood/'s training and validation pairs, so a model
// trained on ood/ is the model an iid/ run would select), from `painvrl recommend`, whose lists
// are the program's own ranking (tests/serve_test.cpp).
double recall_on(const std::string& run, const std::string& heldout_dir, int k,
                 const TempDir& tmp) {
  const Dataset d = load_dataset(heldout_dir, LoadOptions{false, -1});
  std::map<int32_t, std::set<int32_t>> held;
  for (size_t p = 0; p < d.test.size(); ++p) held[d.test.user[p]].insert(d.test.item[p]);
  std::string users;
  for (const auto& [u, items] : held) users += std::to_string(u) + "\n";
  test::write_file(tmp / "users.txt", users);
  const std::string out = tmp / "recommended.tsv";
  const auto r = run_program("recommend " + run + " --users " + (tmp / "users.txt") + " --k " +
                             std::to_string(k) + " --out " + out);
  EXPECT_EQ(r.status, 0) << r.output;
  std::map<int32_t, int> hits;
  std::ifstream in(out);
  std::string header;
  std::getline(in, header);
  int32_t u = 0, rank = 0, item = 0;
  double score = 0;
  while (in >> u >> rank >> item >> score) hits[u] += int(held[u].count(item));
  double recall = 0;
  for (const auto& [user, items] : held) recall += double(hits[user]) / double(items.size());
  return held.empty() ? 0.0 : recall / double(held.size());
}

std::set<std::pair<int32_t, int32_t>> pair_set(const PairList& p) {
  std::set<std::pair<int32_t, int32_t>> s;
  for (size_t k = 0; k < p.size(); ++k) s.insert({p.user[k], p.item[k]});
  return s;
}

// The small instance of the must-show-4 test.
// (bench/synthetic_table.py's settings and its seed 2, the seed with the smallest margins there;
// at 500 users and 400 items no setting we tried separated the blocks reliably.)
const char* kMust4Synth = " --seed 2 --users 1000 --items 800 --minority 0.2 --mid-share 0.3";
const char* kMust4Train =
    " --set seed=2 epochs=30 pretrain_epochs=10 outer_iterations=2 him_epochs=3 him_rounds=2 "
    "mask_epochs=8 negatives=20 envs=2";

const char* kTiny =
    " --set dim=8 negatives=4 batch_size=128 epochs=3 eval_every=1 pretrain_epochs=1 "
    "outer_iterations=2 envs=3 him_epochs=1 him_rounds=2 mask_epochs=2 mask_batch=64 "
    "attention_hidden=4";

TEST(Pipeline, PainvrlAndInvrlWriteMaskTraceAndSummary) {
  TempDir tmp("pipe");
  const std::string data = tmp / "synth";
  ASSERT_EQ(run_program("synth --out " + data + " --seed 2 --users 100 --items 80").status, 0);
  for (const std::string method : {"painvrl", "invrl"}) {
    const std::string run = tmp / method;
    const auto r =
        run_program("train --method " + method + " --data " + data + " --out " + run + kTiny);
    ASSERT_EQ(r.status, 0) << r.output;
    EXPECT_NE(r.output.find("HIM outer 1 round"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("final eval epoch"), std::string::npos) << r.output;
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
        EXPECT_GE(double(j["w_ERM"]), 0.0);
        EXPECT_LE(double(j["w_ERM"]), method == "invrl" ? 1.0 : 1.0);
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

// Must-show 4 of the PaInvRL issue on a small planted instance (bench/synthetic_table.py runs
// the larger version over several seeds; bench/RESULTS.md). Training holds the majority and a
// middle environment, the OOD test the flipped minority. painvrl identifies its environments by
// HIM (E = 2) with the default him_train = projection.
TEST(Pipeline, PainvrlFindsTheInvariantBlockAndWinsOnOodItems) {
  TempDir tmp("must4");
  const std::string data = tmp / "synth";
  ASSERT_EQ(run_program("synth --out " + data + kMust4Synth).status, 0);
  for (const std::string proto : {"cold", "ood"}) {
    const auto r = run_program("split --data " + data + " --out " + (tmp / proto) + " --protocol " +
                               proto + " --environments file --set seed=2");
    ASSERT_EQ(r.status, 0) << r.output;
  }
  struct Result {
    double recall20 = 0, iid_recall20 = 0;
    std::vector<float> mask;
  };
  // ood/ and iid/ share the training and validation pairs: one run is ranked for both tests.
  auto train = [&](const std::string& method, const std::string& task, const char* cand) {
    const std::string run = tmp / (method + "-" + fs::path(task).filename().string());
    const auto r = run_program("train --quiet --method " + method + " --data " + (tmp / task) +
                               " --out " + run + kMust4Train + " candidates=" + cand);
    EXPECT_EQ(r.status, 0) << r.output;
    Result out;
    out.recall20 = read_json(run + "/summary.json")["test_at_best"]["recall@20"];
    if (method == "painvrl") out.mask = read_npy(run + "/mask.npy").to_float();
    if (task == "ood/ood") out.iid_recall20 = recall_on(run, tmp / "ood/iid", 20, tmp);
    return out;
  };
  const Result mm_cold = train("ultragcn-mm", "cold/cold-ood", "cold");
  const Result pv_cold = train("painvrl", "cold/cold-ood", "cold");
  const Result mm_ood = train("ultragcn-mm", "ood/ood", "all");
  const Result pv_ood = train("painvrl", "ood/ood", "all");
  Result mm_iid = mm_ood, pv_iid = pv_ood;
  mm_iid.recall20 = mm_ood.iid_recall20;
  pv_iid.recall20 = pv_ood.iid_recall20;
  // Blocks of the default synth layout: 16 invariant, 16 spurious, 16 noise columns.
  auto block_mean = [](const std::vector<float>& m, int begin) {
    double s = 0;
    for (int j = begin; j < begin + 16; ++j) s += m[size_t(j)];
    return s / 16;
  };
  std::printf(
      "recall@20 ultragcn-mm / painvrl: cold-OOD %.4f / %.4f, OOD %.4f / %.4f, IID %.4f "
      "/ %.4f\n",
      mm_cold.recall20, pv_cold.recall20, mm_ood.recall20, pv_ood.recall20, mm_iid.recall20,
      pv_iid.recall20);
  for (const Result* r : {&pv_cold, &pv_ood}) {
    ASSERT_EQ(r->mask.size(), 48u);
    std::printf("mask invariant %.3f spurious %.3f noise %.3f\n", block_mean(r->mask, 0),
                block_mean(r->mask, 16), block_mean(r->mask, 32));
    EXPECT_GT(block_mean(r->mask, 0), block_mean(r->mask, 16) + 0.1)
        << "invariant " << block_mean(r->mask, 0) << " spurious " << block_mean(r->mask, 16);
  }
  EXPECT_GT(pv_cold.recall20, mm_cold.recall20 + 0.02)
      << "cold-OOD painvrl " << pv_cold.recall20 << " ultragcn-mm " << mm_cold.recall20;
  EXPECT_GT(pv_ood.recall20, mm_ood.recall20 - 0.01)
      << "OOD painvrl " << pv_ood.recall20 << " ultragcn-mm " << mm_ood.recall20;
  EXPECT_GT(pv_iid.recall20, mm_iid.recall20 - 0.03)
      << "IID painvrl " << pv_iid.recall20 << " ultragcn-mm " << mm_iid.recall20;
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
  for (std::string line; std::getline(trace, line);) {
    const auto j = nlohmann::json::parse(line);
    if (j.contains("w_ERM")) EXPECT_EQ(double(j["w_ERM"]), 1.0);  // ERM only
  }
  EXPECT_EQ(run_program("train --method painvrl --objective best --data " + data + " --out " +
                        (tmp / "bad") + kTiny)
                .status,
            1);
  EXPECT_FALSE(fs::exists(tmp / "bad"));
}

TEST(Pipeline, OodSplitFollowsItsRules) {
  TempDir tmp("split");
  const std::string data = tmp / "synth";
  ASSERT_EQ(run_program("synth --out " + data + " --seed 4 --users 150 --items 100").status, 0);
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
  ASSERT_EQ(run_program("synth --out " + data + " --seed 6 --users 150 --items 100").status, 0);
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
  // top and no cold item can be hit.
  r = run_program("train --method mostpop --data " + out + "/cold-ood --out " + (tmp / "all"));
  ASSERT_EQ(r.status, 0) << r.output;
  r = run_program("train --method mostpop --data " + out + "/cold-ood --out " + (tmp / "coldc") +
                  " --set candidates=cold");
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
