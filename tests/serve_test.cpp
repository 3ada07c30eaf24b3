// `painvrl recommend` and `painvrl export` through the real program: the recommendation lists
// reproduce the run's own test Recall@20 and Precision@20 (so model.npy holds the selected model
// and the scores are evaluation's), never contain a training item, and equal the scores rebuilt
// here from the exported tables and the dataset's features (s = Pt T + Pf (W (m * f) + b));
// bad input exits 1 with one message and writes nothing.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "painvrl/data/dataset.h"
#include "painvrl/data/npy.h"
#include "test_util.h"

namespace painvrl {
namespace {

using test::run_program;
using test::TempDir;
namespace fs = std::filesystem;

const char* kSmall =
    " --set dim=8 negatives=4 batch_size=128 epochs=4 eval_every=1 pretrain_epochs=1 "
    "outer_iterations=1 envs=2 him_epochs=1 him_rounds=1 mask_epochs=2 mask_batch=64 "
    "attention_hidden=4 seed=5";

using test::read_json;

struct Row {
  int32_t user, rank, item;
  double score;
};

std::vector<Row> read_recommendations(const std::string& path) {
  std::ifstream in(path);
  std::string line;
  std::getline(in, line);
  EXPECT_EQ(line, "user\trank\titem\tscore");
  std::vector<Row> rows;
  while (std::getline(in, line)) {
    std::istringstream ss(line);
    Row r{};
    ss >> r.user >> r.rank >> r.item >> r.score;
    EXPECT_FALSE(ss.fail()) << line;
    rows.push_back(r);
  }
  return rows;
}

std::map<int32_t, std::set<int32_t>> by_user(const PairList& pairs) {
  std::map<int32_t, std::set<int32_t>> m;
  for (size_t p = 0; p < pairs.size(); ++p) m[pairs.user[p]].insert(pairs.item[p]);
  return m;
}

class Serve : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    tmp_ = new TempDir("serve");
    data_ = *tmp_ / "data";
    ASSERT_EQ(run_program("synth --out " + data_ + " --seed 4 --users 120 --items 90").status, 0);
    for (const char* m : {"ultragcn", "ultragcn-mm", "painvrl", "mostpop"}) {
      const auto r = run_program(std::string("train --quiet --method ") + m + " --data " + data_ +
                                 " --out " + (*tmp_ / m) + kSmall);
      ASSERT_EQ(r.status, 0) << r.output;
    }
  }
  static void TearDownTestSuite() { delete tmp_; }
  static TempDir* tmp_;
  static std::string data_;
};
TempDir* Serve::tmp_ = nullptr;
std::string Serve::data_;

// Recall@20 and Precision@20 recomputed from `recommend --k 20` over every test user equal the
// figures the trainer's evaluator recorded for the selected epoch.
TEST_F(Serve, RecommendationsReproduceTheRunsTestMetrics) {
  const Dataset data = load_dataset(data_, LoadOptions{false, -1});
  const auto test = by_user(data.test);
  const auto train = by_user(data.train);
  std::string ids;
  for (const auto& [u, items] : test) ids += std::to_string(u) + "\n";
  test::write_file(*tmp_ / "test-users.txt", ids);
  for (const char* m : {"ultragcn", "ultragcn-mm", "painvrl", "mostpop"}) {
    const std::string run = *tmp_ / m, out = *tmp_ / (std::string(m) + "-rec.tsv");
    const auto r = run_program("recommend " + run + " --users " + (*tmp_ / "test-users.txt") +
                               " --k 20 --out " + out);
    ASSERT_EQ(r.status, 0) << r.output;
    const std::vector<Row> rows = read_recommendations(out);
    ASSERT_EQ(rows.size(), test.size() * 20) << m;
    std::map<int32_t, std::vector<Row>> lists;
    for (const Row& row : rows) lists[row.user].push_back(row);
    double recall = 0, precision = 0;
    for (const auto& [u, held] : test) {
      const std::vector<Row>& list = lists[u];
      ASSERT_EQ(list.size(), 20u);
      int hits = 0;
      for (size_t k = 0; k < list.size(); ++k) {
        EXPECT_EQ(list[k].rank, int(k) + 1);
        if (k > 0) EXPECT_LE(list[k].score, list[k - 1].score) << m << " user " << u;
        const auto seen = train.find(u);
        if (seen != train.end()) EXPECT_EQ(seen->second.count(list[k].item), 0u) << "seen item";
        hits += int(held.count(list[k].item));
      }
      recall += double(hits) / double(held.size());
      precision += hits / 20.0;
    }
    recall /= double(test.size());
    precision /= double(test.size());
    const nlohmann::json s = read_json(run + "/summary.json");
    EXPECT_EQ(int64_t(s["test_at_best"]["users"]), int64_t(test.size())) << m;
    EXPECT_NEAR(recall, double(s["test_at_best"]["recall@20"]), 1e-12) << m;
    EXPECT_NEAR(precision, double(s["test_at_best"]["precision@20"]), 1e-12) << m;
  }
}

// The exported tables, with the dataset's normalised features and the mask, give back the scores
// recommend printed; W (m * f) + b is formed here, independently of the program.
TEST_F(Serve, ExportedTablesGiveTheRecommendedScores) {
  const Dataset data = load_dataset(data_, LoadOptions{true, -1});
  for (const char* m : {"ultragcn", "painvrl"}) {
    const std::string run = *tmp_ / m, ex = *tmp_ / (std::string(m) + "-export");
    auto r = run_program("export " + run + " --out " + ex);
    ASSERT_EQ(r.status, 0) << r.output;
    const nlohmann::json manifest = read_json(ex + "/export.json");
    EXPECT_EQ(manifest["method"], m);
    const std::vector<float> pt = read_npy(ex + "/user_id_embeddings.npy").to_float();
    const std::vector<float> t = read_npy(ex + "/item_id_embeddings.npy").to_float();
    const int64_t D = read_npy(ex + "/item_id_embeddings.npy").shape.at(1);
    ASSERT_EQ(int64_t(t.size()), int64_t(data.n_items) * D);
    const bool content = std::string(m) == "painvrl";
    EXPECT_EQ(fs::exists(ex + "/W.npy"), content);
    EXPECT_EQ(fs::exists(ex + "/mask.npy"), content);
    std::vector<float> pf, ic;
    if (content) {
      pf = read_npy(ex + "/user_content_embeddings.npy").to_float();
      const NpyArray w_arr = read_npy(ex + "/W.npy");
      const std::vector<float> w = w_arr.to_float(), b = read_npy(ex + "/b.npy").to_float();
      const std::vector<float> mask = read_npy(ex + "/mask.npy").to_float();
      const int64_t d = data.feature_dim;
      ASSERT_EQ(w_arr.shape, (std::vector<int64_t>{D, d}));
      ASSERT_EQ(int64_t(mask.size()), d);
      ic = read_npy(ex + "/item_content_embeddings.npy").to_float();
      for (int32_t j = 0; j < data.n_items; ++j) {
        for (int64_t k = 0; k < D; ++k) {
          double x = b[size_t(k)];
          for (int64_t c = 0; c < d; ++c) {
            x += double(w[size_t(k * d + c)]) * mask[size_t(c)] * data.features[size_t(j * d + c)];
          }
          ASSERT_NEAR(ic[size_t(j * D + k)], x, 1e-5 * (1 + std::abs(x))) << m << " item " << j;
        }
      }
    }
    const std::string out = *tmp_ / (std::string(m) + "-few.tsv");
    r = run_program("recommend " + run + " --user 0 --user 7 --user 0 --k 5 --out " + out);
    ASSERT_EQ(r.status, 0) << r.output;
    const std::vector<Row> rows = read_recommendations(out);
    ASSERT_EQ(rows.size(), 15u);
    EXPECT_EQ(rows[0].user, 0);
    EXPECT_EQ(rows[5].user, 7);
    EXPECT_EQ(rows[10].user, 0);
    for (const Row& row : rows) {
      double s = 0;
      for (int64_t k = 0; k < D; ++k) {
        s += double(pt[size_t(row.user * D + k)]) * t[size_t(row.item * D + k)];
        if (content) s += double(pf[size_t(row.user * D + k)]) * ic[size_t(row.item * D + k)];
      }
      EXPECT_NEAR(row.score, s, 1e-6 * (1 + std::abs(s))) << m << " user " << row.user;
    }
  }
}

// Every refusal: exit 1, one "error:" line naming the problem, nothing written.
TEST_F(Serve, BadInputIsRefusedAndWritesNothing) {
  const std::string run = *tmp_ / "painvrl", out = *tmp_ / "bad.tsv";
  struct Case {
    std::string args, expect;
  };
  test::write_file(*tmp_ / "users-bad.txt", "user\n3\n\n# a comment\n12x\n");
  test::write_file(*tmp_ / "users-range.txt", "3\r\n400\r\n");
  test::write_file(*tmp_ / "users-empty.txt", "# nobody\n");
  // A run stopped before its end has config.toml but no summary.json.
  fs::create_directories(*tmp_ / "unfinished");
  fs::copy_file(run + "/config.toml", *tmp_ / "unfinished/config.toml");
  // The same dataset with one training line changed.
  const std::string moved = *tmp_ / "changed";
  fs::copy(data_, moved);
  {
    std::ifstream in(moved + "/train.txt");
    std::stringstream all;
    all << in.rdbuf();
    std::string text = all.str();
    text = text.substr(text.find('\n') + 1);  // user 0 loses its training items
    test::write_file(moved + "/train.txt", text);
  }
  const std::vector<Case> cases = {
      {"recommend " + run + " --user 120", "unknown user 120 (the dataset has users 0 to 119)"},
      {"recommend " + run + " --user -1", "unknown user -1"},
      {"recommend " + (*tmp_ / "no-such-run") + " --user 1", "no such run directory"},
      {"recommend " + (*tmp_ / "unfinished") + " --user 1", "has not finished"},
      {"recommend " + data_ + " --user 1", "not a painvrl run directory"},
      {"recommend " + run, "give --user U or --users FILE"},
      {"recommend " + run + " --user 1 --k 0", "--k 0: expected 1 to 90"},
      {"recommend " + run + " --users " + (*tmp_ / "users-bad.txt"),
       "users-bad.txt line 5: '12x' is not a user id"},
      {"recommend " + run + " --users " + (*tmp_ / "users-range.txt"),
       "users-range.txt line 2: unknown user 400"},
      {"recommend " + run + " --users " + (*tmp_ / "users-empty.txt"), "no user ids"},
      {"recommend " + run + " --users " + (*tmp_ / "missing.txt"), "missing.txt"},
      {"recommend " + run + " --user 1 --data " + moved, "not the same data"},
      {"export " + (*tmp_ / "mostpop") + " --out " + out, "no learned parameters"},
      {"export " + (*tmp_ / "no-such-run") + " --out " + out, "no such run directory"},
      {"export " + run + " --data " + moved + " --out " + out, "not the same data"},
  };
  for (const Case& c : cases) {
    const bool is_recommend = c.args.rfind("recommend", 0) == 0;
    const auto r = run_program(c.args + (is_recommend ? " --out " + out : ""));
    EXPECT_EQ(r.status, 1) << c.args << "\n" << r.output;
    EXPECT_NE(r.output.find(c.expect), std::string::npos) << c.args << "\n" << r.output;
    size_t errors = 0;
    for (size_t at = r.output.find("error:"); at != std::string::npos;
         at = r.output.find("error:", at + 1)) {
      ++errors;
    }
    EXPECT_EQ(errors, 1u) << r.output;
    EXPECT_FALSE(fs::exists(out)) << c.args;
  }
  // An existing export is kept unless --overwrite.
  const std::string ex = *tmp_ / "export-twice";
  ASSERT_EQ(run_program("export " + run + " --out " + ex).status, 0);
  const auto again = run_program("export " + run + " --out " + ex);
  EXPECT_EQ(again.status, 1);
  EXPECT_NE(again.output.find("exists"), std::string::npos) << again.output;
  EXPECT_EQ(run_program("export " + run + " --out " + ex + " --overwrite").status, 0);
  for (const auto& e : fs::directory_iterator(tmp_->path)) {
    EXPECT_EQ(e.path().filename().string().find(".tmp."), std::string::npos) << e.path();
  }
  // The dataset moved (same content): --data finds it.
  const std::string copy = *tmp_ / "moved-data";
  fs::copy(data_, copy);
  const auto r = run_program("recommend " + run + " --user 2 --k 3 --data " + copy);
  EXPECT_EQ(r.status, 0) << r.output;
}

}  // namespace
}  // namespace painvrl
