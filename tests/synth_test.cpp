// Tests of the synthetic dataset generator (host/data/synth.cpp), checked through the files it
// writes: the dataset loads with the counts it declares, output is a pure function of the options,
// the planted environment shift is really there, and bad requests fail with InputError.
//
// Statistics used (see host/data/synth.cpp for the model):
//  * Readout mean. manifest.json "truth.spurious_readout" is a vector w over the spurious block
//    with w . f_spurious(i) = c_i1 + view noise, the item's shared spurious property. Over the
//    pairs of each environment, the mean of w . f_spurious(item) is > 0 in the majority
//    environment and < 0 in the minority one (the flip), while over all items it is ~ 0.
//  * Profile cosine. For a pair (u, i) and one feature block, let x_j be block j's row minus the
//    block's mean over items, and profile = sum of x_j over u's majority-environment pairs
//    j != i. The statistic is the mean of cos(profile, x_i) over the pairs of an environment: > 0
//    where the block predicts the user's choices the way it did in the majority environment.
//    Invariant block: > 0 in both environments. Spurious block: > 0 in the majority, < 0 in the
//    minority environment. Noise block: ~ 0 in both.
//  * Control: with spurious_strength = 0 both environments choose alike, so the readout means of
//    the two environments agree and the spurious block's profile cosine is ~ 0 in both.
#include <gtest/gtest.h>
#include <unistd.h>

#include <array>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "painvrl/data/dataset.h"
#include "painvrl/data/error.h"
#include "painvrl/data/io.h"
#include "painvrl/data/npy.h"
#include "painvrl/data/synth.h"
#include "test_util.h"

namespace painvrl {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using test::TempDir;

const char* const kFiles[] = {"dataset.toml",     "train.txt",    "val.txt",
                              "test.txt",         "features.npy", "planted_mask.npy",
                              "environments.tsv", "manifest.json"};

struct EnvRow {
  int32_t user = 0, item = 0;
  int env = 0;
  std::string split;
};

std::vector<EnvRow> read_env_rows(const std::string& path) {
  std::istringstream in(read_text_file(path));
  std::string line;
  std::getline(in, line);
  EXPECT_EQ(line, "user\titem\tenv\tsplit");
  std::vector<EnvRow> rows;
  while (std::getline(in, line)) {
    std::istringstream ls(line);
    EnvRow r;
    ls >> r.user >> r.item >> r.env >> r.split;
    EXPECT_FALSE(ls.fail()) << "bad environments.tsv line: " << line;
    rows.push_back(r);
  }
  return rows;
}

// A generated dataset, read back from its files (features not normalised).
struct Synth {
  Dataset ds;
  json manifest;
  std::vector<EnvRow> rows;
};

Synth generate(const std::string& dir, const SynthOptions& o) {
  write_synthetic_dataset(dir, o);
  Synth s;
  LoadOptions lo;
  lo.normalize = 0;
  s.ds = load_dataset(dir, lo);
  s.manifest = json::parse(read_text_file(dir + "/manifest.json"));
  s.rows = read_env_rows(dir + "/environments.tsv");
  return s;
}

// The two-environment data these statistics were written for: majority (+1) and minority (-1),
// every pair split at random (protocol mixed).
SynthOptions two_env_mixed() {
  SynthOptions o;
  o.mid_share = 0;
  o.protocol = "mixed";
  return o;
}

SynthOptions small_options() {
  SynthOptions o = two_env_mixed();
  o.users = 150;
  o.items = 90;
  o.per_user = 12;
  o.latent = 4;
  o.invariant = 6;
  o.spurious = 5;
  o.noise = 3;
  return o;
}

// Mean of w . f_spurious(item) over the pairs of each environment.
std::array<double, 2> readout_means(const Synth& s) {
  const json& w = s.manifest.at("truth").at("spurious_readout");
  const int64_t begin = s.manifest.at("blocks").at("spurious")[0].get<int64_t>();
  const int64_t d = s.ds.feature_dim;
  std::array<double, 2> sum{0, 0}, count{0, 0};
  for (const EnvRow& r : s.rows) {
    double v = 0;
    for (size_t j = 0; j < w.size(); ++j)
      v += w[j].get<double>() * s.ds.features[size_t(r.item) * d + begin + j];
    sum[r.env] += v;
    count[r.env] += 1;
  }
  return {sum[0] / count[0], sum[1] / count[1]};
}

// The profile cosine (file comment) of block `name`, per environment.
std::array<double, 2> profile_cosine(const Synth& s, const std::string& name) {
  const int64_t begin = s.manifest.at("blocks").at(name)[0].get<int64_t>();
  const int64_t end = s.manifest.at("blocks").at(name)[1].get<int64_t>();
  const int64_t width = end - begin, d = s.ds.feature_dim, n = s.ds.n_items;
  std::vector<double> mean(width, 0.0);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < width; ++j) mean[j] += s.ds.features[i * d + begin + j] / double(n);
  auto centred = [&](int32_t item, int64_t j) {
    return s.ds.features[size_t(item) * d + begin + j] - mean[j];
  };
  std::array<double, 2> sum{0, 0}, count{0, 0};
  std::vector<double> profile(width), p(width);
  size_t first = 0;
  while (first < s.rows.size()) {  // rows come grouped by user
    size_t last = first;
    while (last < s.rows.size() && s.rows[last].user == s.rows[first].user) ++last;
    std::fill(profile.begin(), profile.end(), 0.0);
    for (size_t k = first; k < last; ++k)
      if (s.rows[k].env == 0)
        for (int64_t j = 0; j < width; ++j) profile[j] += centred(s.rows[k].item, j);
    for (size_t k = first; k < last; ++k) {
      const EnvRow& r = s.rows[k];
      double dot = 0, pp = 0, xx = 0;
      for (int64_t j = 0; j < width; ++j) {
        const double x = centred(r.item, j);
        p[j] = profile[j] - (r.env == 0 ? x : 0.0);
        dot += p[j] * x;
        pp += p[j] * p[j];
        xx += x * x;
      }
      if (pp <= 0 || xx <= 0) continue;
      sum[r.env] += dot / std::sqrt(pp * xx);
      count[r.env] += 1;
    }
    first = last;
  }
  EXPECT_GT(count[0], 0);
  EXPECT_GT(count[1], 0);
  return {sum[0] / count[0], sum[1] / count[1]};
}

TEST(Synth, WritesLoadableDatasetWithDeclaredCounts) {
  TempDir tmp("synth");
  const SynthOptions o = small_options();
  const std::string dir = tmp / "data";
  const Synth s = generate(dir, o);

  for (const char* f : kFiles) EXPECT_TRUE(fs::is_regular_file(dir + "/" + f)) << f;
  int entries = 0;
  for (const auto& e : fs::directory_iterator(tmp.path)) {
    ++entries;
    EXPECT_EQ(e.path().filename(), "data");  // no temporary directory left behind
  }
  EXPECT_EQ(entries, 1);

  const int64_t d = o.invariant + o.spurious + o.noise;
  EXPECT_EQ(s.ds.n_users, o.users);
  EXPECT_EQ(s.ds.n_items, o.items);
  EXPECT_EQ(s.ds.feature_dim, d);
  EXPECT_EQ(s.ds.features.size(), size_t(o.items * d));
  ASSERT_EQ(s.ds.modalities.size(), 1u);
  EXPECT_EQ(s.ds.modalities[0].name, "content");
  EXPECT_EQ(s.ds.modalities[0].width, d);
  EXPECT_EQ(s.ds.report.duplicate_train + s.ds.report.duplicate_valid + s.ds.report.duplicate_test +
                s.ds.report.heldout_in_train,
            0);
  EXPECT_EQ(s.ds.report.users_without_train, 0);

  // The dataset's default load normalises the content rows.
  const Dataset normalised = load_dataset(dir);
  EXPECT_TRUE(normalised.normalized);

  const json& m = s.manifest;
  EXPECT_EQ(m.at("blocks").at("invariant"), json::array({0, 6}));
  EXPECT_EQ(m.at("blocks").at("spurious"), json::array({6, 11}));
  EXPECT_EQ(m.at("blocks").at("noise"), json::array({11, 14}));
  EXPECT_EQ(m.at("options").at("seed").get<uint64_t>(), o.seed);
  EXPECT_EQ(m.at("options").at("users").get<int>(), o.users);
  const json& c = m.at("counts");
  const int64_t pairs = c.at("pairs").get<int64_t>();
  EXPECT_EQ(int64_t(s.rows.size()), pairs);
  EXPECT_EQ(int64_t(s.ds.train.size()), c.at("per_split").at("train").get<int64_t>());
  EXPECT_EQ(int64_t(s.ds.valid.size()), c.at("per_split").at("valid").get<int64_t>());
  EXPECT_EQ(int64_t(s.ds.test.size()), c.at("per_split").at("test").get<int64_t>());
  EXPECT_EQ(int64_t(s.ds.train.size() + s.ds.valid.size() + s.ds.test.size()), pairs);
  const int64_t n0 = c.at("per_environment")[0].get<int64_t>();
  const int64_t n1 = c.at("per_environment")[1].get<int64_t>();
  EXPECT_EQ(n0 + n1, pairs);

  // environments.tsv agrees with the split files, pair by pair.
  std::set<std::pair<int32_t, int32_t>> split_pairs[3];
  const PairList* lists[3] = {&s.ds.train, &s.ds.valid, &s.ds.test};
  for (int k = 0; k < 3; ++k)
    for (size_t j = 0; j < lists[k]->size(); ++j)
      split_pairs[k].insert({lists[k]->user[j], lists[k]->item[j]});
  std::vector<int> per_user(o.users, 0), train_per_user(o.users, 0);
  std::set<std::pair<int32_t, int32_t>> seen;
  int64_t env_count[2] = {0, 0};
  for (const EnvRow& r : s.rows) {
    ASSERT_GE(r.user, 0);
    ASSERT_LT(r.user, o.users);
    ASSERT_GE(r.item, 0);
    ASSERT_LT(r.item, o.items);
    ASSERT_TRUE(r.env == 0 || r.env == 1);
    EXPECT_TRUE(seen.insert({r.user, r.item}).second) << "pair drawn twice";
    const int k = r.split == "train" ? 0 : r.split == "valid" ? 1 : r.split == "test" ? 2 : -1;
    ASSERT_GE(k, 0) << r.split;
    EXPECT_TRUE(split_pairs[k].count({r.user, r.item}));
    ++per_user[r.user];
    train_per_user[r.user] += k == 0;
    ++env_count[r.env];
  }
  EXPECT_EQ(env_count[0], n0);
  EXPECT_EQ(env_count[1], n1);
  for (int32_t u = 0; u < o.users; ++u) {
    EXPECT_GE(per_user[u], 5) << "user " << u;
    EXPECT_LE(per_user[u], o.items / 2) << "user " << u;
    EXPECT_GE(train_per_user[u], 1) << "user " << u;
  }
  // Shares near what was asked (about 1800 pairs; the bounds are several standard deviations).
  EXPECT_NEAR(double(pairs) / o.users, o.per_user, 2.0);
  EXPECT_NEAR(double(n1) / pairs, o.minority, 0.05);
  EXPECT_NEAR(double(s.ds.valid.size()) / pairs, o.valid_share, 0.03);
  EXPECT_NEAR(double(s.ds.test.size()) / pairs, o.test_share, 0.03);
}

TEST(Synth, OutputIsAPureFunctionOfTheOptions) {
  TempDir tmp("synth");
  SynthOptions o = small_options();
  write_synthetic_dataset(tmp / "a", o);
  write_synthetic_dataset(tmp / "b", o);
#ifdef _OPENMP
  const int threads = omp_get_max_threads();
  omp_set_num_threads(threads == 1 ? 3 : 1);
  write_synthetic_dataset(tmp / "c", o);
  omp_set_num_threads(threads);
#else
  write_synthetic_dataset(tmp / "c", o);
#endif
  o.seed = 2;
  write_synthetic_dataset(tmp / "d", o);
  for (const char* f : kFiles) {
    const std::string a = read_text_file(tmp / "a" + "/" + f);
    EXPECT_EQ(a, read_text_file(tmp / "b" + "/" + f)) << f;
    EXPECT_EQ(a, read_text_file(tmp / "c" + "/" + f)) << f << " (other thread count)";
  }
  for (const char* f : {"train.txt", "features.npy", "environments.tsv"})
    EXPECT_NE(read_text_file(tmp / "a" + "/" + f), read_text_file(tmp / "d" + "/" + f)) << f;
}

TEST(Synth, SpuriousPreferenceFlipsBetweenEnvironments) {
  TempDir tmp("synth");
  const SynthOptions o = two_env_mixed();  // 1000 users x 800 items
  const Synth s = generate(tmp / "data", o);
  ASSERT_TRUE(s.manifest.at("truth").at("spurious_readout").is_array());
  ASSERT_EQ(s.manifest.at("truth").at("spurious_readout").size(), size_t(o.spurious));

  // The readout recovers a standard normal property: mean ~ 0, variance ~ 1 over items.
  const json& w = s.manifest.at("truth").at("spurious_readout");
  const int64_t d = s.ds.feature_dim;
  double sum = 0, sq = 0;
  for (int32_t i = 0; i < o.items; ++i) {
    double v = 0;
    for (int j = 0; j < o.spurious; ++j)
      v += w[j].get<double>() * s.ds.features[size_t(i) * d + o.invariant + j];
    sum += v;
    sq += v * v;
  }
  EXPECT_NEAR(sum / o.items, 0.0, 0.15);
  EXPECT_NEAR(sq / o.items - (sum / o.items) * (sum / o.items), 1.0, 0.25);

  const auto means = readout_means(s);
  EXPECT_GT(means[0], 0.3) << "majority pairs should favour c_1 > 0";
  EXPECT_LT(means[1], -0.3) << "minority pairs should favour c_1 < 0";
}

TEST(Synth, InvariantBlockPredictsChoicesInBothEnvironments) {
  TempDir tmp("synth");
  const SynthOptions o = two_env_mixed();
  const Synth s = generate(tmp / "data", o);
  const auto inv = profile_cosine(s, "invariant");
  const auto spu = profile_cosine(s, "spurious");
  const auto noise = profile_cosine(s, "noise");
  EXPECT_GT(inv[0], 0.1);
  EXPECT_GT(inv[1], 0.1);
  EXPECT_GT(spu[0], 0.1);
  EXPECT_LT(spu[1], -0.1);
  EXPECT_NEAR(noise[0], 0.0, 0.03);
  EXPECT_NEAR(noise[1], 0.0, 0.03);
}

TEST(Synth, NoSpuriousStrengthPlantsNoShift) {
  TempDir tmp("synth");
  SynthOptions o = two_env_mixed();
  o.spurious_strength = 0;  // the control: the same statistics must then see nothing
  const Synth s = generate(tmp / "data", o);
  // Both environments now choose alike: their readout means agree (they need not be 0: pairs
  // concentrate on the items most users like, a finite sample of c_1).
  const auto means = readout_means(s);
  EXPECT_NEAR(means[0], means[1], 0.1);
  EXPECT_NEAR(means[0], 0.0, 0.3);
  const auto spu = profile_cosine(s, "spurious");
  EXPECT_NEAR(spu[0], 0.0, 0.03);
  EXPECT_NEAR(spu[1], 0.0, 0.03);
  const auto inv = profile_cosine(s, "invariant");
  EXPECT_GT(inv[0], 0.1);
  EXPECT_GT(inv[1], 0.1);
}

TEST(Synth, TinyCatalogueCapsUserCounts) {
  TempDir tmp("synth");
  SynthOptions o = small_options();
  o.users = 7;
  o.items = 9;  // at most 4 pairs per user, fewer than the usual minimum of 5
  write_synthetic_dataset(tmp / "data", o);
  const std::vector<EnvRow> rows = read_env_rows(tmp / "data/environments.tsv");
  EXPECT_EQ(rows.size(), size_t(7 * 4));
  std::vector<int> train(7, 0);
  for (const EnvRow& r : rows) train[r.user] += r.split == "train";
  for (int u = 0; u < 7; ++u) EXPECT_GE(train[u], 1) << "user " << u;
}

TEST(Synth, RefusesAnExistingOutputDirectory) {
  TempDir tmp("synth");
  const std::string dir = tmp / "data";
  fs::create_directories(dir);
  test::write_file(dir + "/keep.txt", "mine");
  for (const std::string& target : {dir, dir + "/"}) {
    try {
      write_synthetic_dataset(target, small_options());
      ADD_FAILURE() << "expected InputError for " << target;
    } catch (const InputError& e) {
      EXPECT_NE(std::string(e.what()).find("exists"), std::string::npos) << e.what();
    }
  }
  test::write_file(tmp / "file", "x");
  EXPECT_THROW(write_synthetic_dataset(tmp / "file", small_options()), InputError);
  EXPECT_EQ(read_text_file(dir + "/keep.txt"), "mine");
  int entries = 0;
  for (const auto& e : fs::directory_iterator(dir)) {
    (void)e;
    ++entries;
  }
  EXPECT_EQ(entries, 1);
  entries = 0;
  for (const auto& e : fs::directory_iterator(tmp.path)) {
    (void)e;
    ++entries;
  }
  EXPECT_EQ(entries, 2);  // data and file: no temporary directory left behind
}

// The benchmark layout (protocol ood, the default): training and validation never see the OOD
// environment or a cold item; test.txt holds the OOD environment's pairs of warm items, the
// [[test_set]]s the training environments' held-out pairs (iid) and the pairs of cold items
// ranked among them (cold-ood, cold-iid); environments.tsv names what became of every pair.
TEST(Synth, OodLayoutHoldsOutTheOodEnvironmentAndColdItems) {
  TempDir tmp("synth");
  SynthOptions o;  // the defaults: majority +1, middle 0, minority -1 (the OOD environment)
  o.users = 300;
  o.items = 240;
  o.seed = 3;
  const std::string dir = tmp / "data";
  write_synthetic_dataset(dir, o);
  for (const char* f : {"test_iid.txt", "test_cold_ood.txt", "test_cold_iid.txt"})
    EXPECT_TRUE(fs::is_regular_file(dir + "/" + f)) << f;
  const Dataset ds = load_dataset(dir);
  const json m = json::parse(read_text_file(dir + "/manifest.json"));
  EXPECT_EQ(m.at("ood_env").get<int>(), 1);
  ASSERT_EQ(ds.test_sets.size(), 3u);
  EXPECT_EQ(ds.test_sets[0].name, "iid");
  EXPECT_EQ(ds.test_sets[0].candidates, "all");
  EXPECT_EQ(ds.test_sets[1].name, "cold-ood");
  EXPECT_EQ(ds.test_sets[1].candidates, "cold");
  EXPECT_EQ(ds.test_sets[2].name, "cold-iid");
  EXPECT_EQ(ds.test_sets[2].candidates, "cold");
  std::map<std::pair<int32_t, int32_t>, EnvRow> row_of;
  for (const EnvRow& r : read_env_rows(dir + "/environments.tsv")) row_of[{r.user, r.item}] = r;
  std::set<int32_t> train_items, train_users;
  for (size_t p = 0; p < ds.train.size(); ++p) {
    train_items.insert(ds.train.item[p]);
    train_users.insert(ds.train.user[p]);
  }
  auto check = [&](const PairList& pairs, const char* split, bool ood_env, bool cold) {
    ASSERT_GT(pairs.size(), 0u) << split;
    for (size_t p = 0; p < pairs.size(); ++p) {
      const EnvRow& r = row_of.at({pairs.user[p], pairs.item[p]});
      EXPECT_EQ(r.split, split);
      EXPECT_EQ(r.env == 1, ood_env) << split;
      if (std::string(split) != "train") {
        EXPECT_TRUE(train_users.count(pairs.user[p])) << split;
        EXPECT_NE(train_items.count(pairs.item[p]) > 0, cold) << split;
      }
    }
  };
  check(ds.train, "train", false, false);
  check(ds.valid, "valid", false, false);
  check(ds.test, "test", true, false);
  check(ds.test_sets[0].pairs, "iid", false, false);
  check(ds.test_sets[1].pairs, "cold-ood", true, true);
  check(ds.test_sets[2].pairs, "cold-iid", false, true);
  // Every cold item is absent from training; about cold_fraction of the items are cold.
  const int64_t cold = m.at("counts").at("cold_items").get<int64_t>();
  EXPECT_NEAR(double(cold) / o.items, o.cold_fraction, 0.06);
  EXPECT_GE(o.items - int64_t(train_items.size()), cold);
  // The planted mask: 1 on the invariant columns, 0 elsewhere, in the columns' order.
  const NpyArray pm = read_npy(dir + "/planted_mask.npy");
  const std::vector<double> mask = pm.to_double();
  const json& kinds = m.at("column_kinds");
  ASSERT_EQ(mask.size(), kinds.size());
  for (size_t j = 0; j < mask.size(); ++j)
    EXPECT_EQ(mask[j], kinds[j].get<std::string>() == "invariant" ? 1.0 : 0.0) << j;
}

// A list of environments: shares close to those asked, the OOD environment the one with the
// lowest strength, and with no personal taste (every user's spurious taste the same, a
// popularity-like property) the readout mean of each environment has its strength's sign.
TEST(Synth, EnvironmentListsAndAPopularityLikeTaste) {
  TempDir tmp("synth");
  SynthOptions o = small_options();
  o.users = 400;
  o.items = 300;
  o.env_strengths = {1.0, 0.5, -1.0, 0.0};
  o.env_shares = {0.0, 0.25, 0.2, 0.15};  // environment 0 takes 0.4
  o.personal_taste = 0;
  const Synth s = generate(tmp / "data", o);
  const json& c = s.manifest.at("counts").at("per_environment");
  ASSERT_EQ(c.size(), 4u);
  const double pairs = s.manifest.at("counts").at("pairs").get<double>();
  const double want[4] = {0.4, 0.25, 0.2, 0.15};
  for (int e = 0; e < 4; ++e) EXPECT_NEAR(c[e].get<double>() / pairs, want[e], 0.04) << e;
  const json& w = s.manifest.at("truth").at("spurious_readout");
  const int64_t begin = s.manifest.at("blocks").at("spurious")[0].get<int64_t>();
  const int64_t d = s.ds.feature_dim;
  double sum[4] = {0, 0, 0, 0}, count[4] = {0, 0, 0, 0};
  for (const EnvRow& r : s.rows) {
    double v = 0;
    for (size_t j = 0; j < w.size(); ++j)
      v += w[j].get<double>() * s.ds.features[size_t(r.item) * d + begin + j];
    sum[r.env] += v;
    count[r.env] += 1;
  }
  EXPECT_GT(sum[0] / count[0], 0.3);
  EXPECT_GT(sum[1] / count[1], 0.1);
  EXPECT_LT(sum[2] / count[2], -0.3);
  EXPECT_GT(sum[0] / count[0], sum[1] / count[1]);  // strength 1 above 0.5 above 0
  EXPECT_GT(sum[1] / count[1], sum[3] / count[3]);

  SynthOptions ood = o;
  ood.protocol = "ood";
  write_synthetic_dataset(tmp / "ood", ood);
  EXPECT_EQ(json::parse(read_text_file(tmp / "ood/manifest.json")).at("ood_env").get<int>(), 2);
}

// Three modalities: the acoustic one is the whole spurious block; visual and textual share the
// invariant and noise columns. The features are those of the one-modality layout, reordered.
TEST(Synth, ThreeModalitiesSplitTheColumns) {
  TempDir tmp("synth");
  SynthOptions o = small_options();
  const Synth one = generate(tmp / "one", o);
  o.modalities = 3;
  const Synth three = generate(tmp / "three", o);
  ASSERT_EQ(three.ds.modalities.size(), 3u);
  EXPECT_EQ(three.ds.modalities[0].name, "visual");
  EXPECT_EQ(three.ds.modalities[1].name, "acoustic");
  EXPECT_EQ(three.ds.modalities[2].name, "textual");
  const json& kinds = three.manifest.at("column_kinds");
  const Modality& ac = three.ds.modalities[1];
  EXPECT_EQ(ac.width, o.spurious);
  int64_t inv = 0, noise = 0;
  for (int64_t j = 0; j < int64_t(kinds.size()); ++j) {
    const std::string k = kinds[j];
    const bool in_acoustic = j >= ac.offset && j < ac.offset + ac.width;
    EXPECT_EQ(k == "spurious", in_acoustic) << j;
    inv += k == "invariant";
    noise += k == "noise";
  }
  EXPECT_EQ(inv, o.invariant);
  EXPECT_EQ(noise, o.noise);
  EXPECT_FALSE(three.manifest.contains("blocks"));
  // Column by column, the three-modality features are the one-modality ones (same draws).
  const int64_t d = one.ds.feature_dim;
  ASSERT_EQ(three.ds.feature_dim, d);
  std::multiset<std::vector<float>> cols_one, cols_three;
  for (int64_t j = 0; j < d; ++j) {
    std::vector<float> a, b;
    for (int32_t i = 0; i < o.items; ++i) {
      a.push_back(one.ds.features[size_t(i) * d + j]);
      b.push_back(three.ds.features[size_t(i) * d + j]);
    }
    cols_one.insert(a);
    cols_three.insert(b);
  }
  EXPECT_EQ(cols_one, cols_three);
}

TEST(Synth, RejectsBadOptionsNamingThem) {
  struct Case {
    std::string option;
    std::function<void(SynthOptions&)> set;
  };
  const std::vector<Case> cases = {
      {"users", [](SynthOptions& o) { o.users = 0; }},
      {"items", [](SynthOptions& o) { o.items = -3; }},
      {"latent", [](SynthOptions& o) { o.latent = 0; }},
      {"invariant", [](SynthOptions& o) { o.invariant = -1; }},
      {"spurious", [](SynthOptions& o) { o.spurious = -1; }},
      {"noise", [](SynthOptions& o) { o.noise = -2; }},
      {"per_user", [](SynthOptions& o) { o.per_user = 0; }},
      {"per_user", [](SynthOptions& o) { o.per_user = NAN; }},
      {"minority", [](SynthOptions& o) { o.minority = 1.5; }},
      {"minority", [](SynthOptions& o) { o.minority = -0.1; }},
      {"spurious_strength", [](SynthOptions& o) { o.spurious_strength = INFINITY; }},
      {"temperature", [](SynthOptions& o) { o.temperature = 0; }},
      {"valid_share", [](SynthOptions& o) { o.valid_share = -0.1; }},
      {"test_share", [](SynthOptions& o) { o.test_share = 1.0; }},
      {"valid_share", [](SynthOptions& o) { o.valid_share = o.test_share = 0.5; }},
      {"invariant", [](SynthOptions& o) { o.invariant = o.spurious = o.noise = 0; }},
      {"env_strengths",
       [](SynthOptions& o) {
         o.env_strengths = {1, -1};
       }},
      {"env_shares",
       [](SynthOptions& o) {
         o.env_strengths = {1, -1, 0};
         o.env_shares = {0, 0.6, 0.4};
       }},
      {"env_strengths",
       [](SynthOptions& o) {
         o.env_strengths = {1, NAN};
         o.env_shares = {0, 0.3};
       }},
      {"mid_share", [](SynthOptions& o) { o.mid_share = 0.9; }},
      {"personal_taste", [](SynthOptions& o) { o.shared_taste = o.personal_taste = 0; }},
      {"view_noise", [](SynthOptions& o) { o.view_noise = -1; }},
      {"modalities", [](SynthOptions& o) { o.modalities = 2; }},
      {"protocol", [](SynthOptions& o) { o.protocol = "random"; }},
      {"cold_fraction", [](SynthOptions& o) { o.cold_fraction = 1; }},
      {"test_env", [](SynthOptions& o) { o.test_env = 3; }},
  };
  TempDir tmp("synth");
  for (const Case& c : cases) {
    SynthOptions o = small_options();
    c.set(o);
    try {
      write_synthetic_dataset(tmp / "data", o);
      ADD_FAILURE() << "expected InputError for " << c.option;
    } catch (const InputError& e) {
      EXPECT_NE(std::string(e.what()).find("`" + c.option + "`"), std::string::npos) << e.what();
    }
    EXPECT_FALSE(fs::exists(tmp / "data")) << c.option;
  }
  EXPECT_TRUE(fs::is_empty(tmp.path));
}

}  // namespace
}  // namespace painvrl
