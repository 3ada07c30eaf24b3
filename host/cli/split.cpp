// `painvrl split`: the evaluation protocols of DESIGN.md, written as dataset directories.
//
// --protocol ood (Sec. 4.2.2): two environments over all pairs of the source dataset (HIM with
//   E = 2 on psi = 0.5 f, or the environments recorded in environments.tsv); the smallest (or
//   --test-env) is the OOD-test environment, all others OOD-train; OOD-test is restricted to users
//   and items seen in OOD-train. IID-test is a per-user random 10 % of OOD-train and validation a
//   further per-user 10 % (users with at least 3 pairs keep at least one training pair). Writes
//   OUT/ood and OUT/iid: the same train and validation, different tests.
// --protocol cold (beyond the paper): a random `cold_fraction` of the items is held out of
//   training entirely. Training keeps the training environments' pairs of warm items (minus
//   validation); OUT/cold-ood tests on the test environment's pairs of cold items,
//   OUT/cold-iid on the training environments'. Train with `--set candidates=cold` to rank among
//   cold items.
// Every choice is recorded in OUT/manifest.json. Features are referenced by absolute path.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "painvrl/cli/commands.h"
#include "painvrl/data/error.h"
#include "painvrl/data/io.h"
#include "painvrl/data/output_dir.h"
#include "painvrl/math/philox.h"
#include "painvrl/pipeline/stages.h"
#include "painvrl/pipeline/trainer.h"

namespace painvrl {
namespace {

namespace fs = std::filesystem;

// Per-user random split of `pairs` into (kept, held out): ~share held out, at least one kept.
void per_user_holdout(const PairList& pairs, int32_t n_users, double share, math::PhiloxKey key,
                      uint32_t purpose, PairList& kept, PairList& held) {
  std::vector<std::vector<int32_t>> by_user(static_cast<size_t>(n_users));
  for (size_t p = 0; p < pairs.size(); ++p) by_user[pairs.user[p]].push_back(int32_t(p));
  for (int32_t u = 0; u < n_users; ++u) {
    auto& v = by_user[u];
    for (int64_t k = int64_t(v.size()) - 1; k > 0; --k) {
      const uint32_t r = math::philox(key, uint32_t(k), uint32_t(u), purpose, 0).v[0];
      std::swap(v[k], v[math::uniform_below(r, uint32_t(k + 1))]);
    }
    const int64_t n = int64_t(v.size());
    int64_t n_held = int64_t(std::floor(share * double(n) + 0.5));
    if (n < 3) n_held = 0;
    n_held = std::min(n_held, n - 1);
    for (int64_t k = 0; k < n; ++k) {
      const int32_t p = v[k];
      (k < n_held ? held : kept).push(pairs.user[p], pairs.item[p]);
    }
  }
}

// Text for inside a TOML basic string.
std::string toml_escaped(const std::string& s) {
  std::string out;
  for (char ch : s) {
    if (ch == '"' || ch == '\\') out += '\\';
    if (static_cast<unsigned char>(ch) >= 0x20) out += ch;
  }
  return out;
}

void write_split_dataset(const std::string& dir, const Dataset& src, const PairList& train,
                         const PairList& valid, const PairList& test, const std::string& note,
                         const std::map<std::pair<int32_t, int32_t>, int32_t>& env_of,
                         const char* test_candidates = "all") {
  fs::create_directories(dir);
  // The environment of every pair, for `environments = file` runs (diagnostics, oracle envs).
  std::string tsv = "user\titem\tenv\tsplit\n";
  const std::pair<const PairList*, const char*> parts[3] = {
      {&train, "train"}, {&valid, "valid"}, {&test, "test"}};
  for (const auto& [list, name] : parts) {
    for (size_t p = 0; p < list->size(); ++p) {
      tsv += fmt::format("{}\t{}\t{}\t{}\n", list->user[p], list->item[p],
                         env_of.at({list->user[p], list->item[p]}), name);
    }
  }
  write_text_atomic(dir + "/environments.tsv", tsv);
  write_lightgcn(dir + "/train.txt", train, src.n_users);
  write_lightgcn(dir + "/val.txt", valid, src.n_users);
  write_lightgcn(dir + "/test.txt", test, src.n_users);
  std::string toml = fmt::format(
      "# Written by `painvrl split` ({}); see ../manifest.json.\nname = \"{}\"\n"
      "format = \"lightgcn\"\ntrain = \"train.txt\"\nvalid = \"val.txt\"\ntest = \"test.txt\"\n"
      "n_users = {}\nn_items = {}\nnormalize = {}\ntest_candidates = \"{}\"\n",
      note, toml_escaped(src.name + "-" + fs::path(dir).filename().string()), src.n_users,
      src.n_items, src.normalized ? "true" : "false", test_candidates);
  for (const Modality& m : src.modalities) {
    toml += fmt::format("[[modality]]\nname = \"{}\"\nfile = \"{}\"\n", m.name,
                        fs::absolute(m.file).string());
  }
  write_text_atomic(dir + "/dataset.toml", toml);
}

}  // namespace

void run_split(const Config& asked, const std::string& data_dir, const std::string& out_dir,
               const std::string& protocol, const std::string& env_source, double cold_fraction,
               int test_env) {
  // Always on the CPU: the CUDA backend has not passed its device check, and only `train`
  // resolves --device (with its PAINVRL_UNVERIFIED_CUDA gate).
  Config c = asked;
  c.device = "cpu";
  validate(c);
  if (protocol != "ood" && protocol != "cold") {
    input_error("--protocol: expected ood or cold, got `{}`", protocol);
  }
  if (env_source != "him" && env_source != "file") {
    input_error("--environments: expected him or file, got `{}`", env_source);
  }
  if (protocol == "cold" && !(cold_fraction > 0 && cold_fraction < 1)) {
    input_error("--cold-fraction: expected a value in (0, 1), got {}", cold_fraction);
  }
  // A new directory, apart from the dataset it reads (split never replaces one).
  if (fs::exists(out_dir)) input_error("--out {}: exists; choose a new directory", out_dir);
  check_output_dir("--out", out_dir, {data_dir}, false, "split", is_run_entry);
  LoadOptions load;
  load.normalize = c.normalize_features;
  load.load_features = env_source == "him";
  const Dataset src = load_dataset(data_dir, load);
  // All pairs of the source dataset.
  PairList all = src.train;
  for (const PairList* part : {&src.valid, &src.test}) {
    for (size_t p = 0; p < part->size(); ++p) all.push(part->user[p], part->item[p]);
  }
  for (const TestSet& set : src.test_sets) {
    for (size_t p = 0; p < set.pairs.size(); ++p) all.push(set.pairs.user[p], set.pairs.item[p]);
  }

  // 1. Two environments.
  std::vector<int32_t> env;
  if (env_source == "file") {
    env = environments_from_file(src.dir + "/environments.tsv", all);
  } else {
    if (src.feature_dim == 0) input_error("split: HIM needs item features; {} has none", src.dir);
    const int64_t d = src.feature_dim;
    std::vector<float> psi(src.features.size());
    for (size_t k = 0; k < psi.size(); ++k) psi[k] = 0.5f * src.features[k];
    const Graph g = build_graph(all, src.n_users, src.n_items, c.kappa > 0 ? c.ii_neighbors : 0,
                                parse_ii_similarity(c.ii_similarity));
    std::vector<float> backbone;
    if (c.him_train != "all") {  // the environment models start from a stage-0 backbone
      log_info(fmt::format("split: backbone on the full features, {} epochs", c.pretrain_epochs));
      backbone = train_fixed(c, g, all, src.features, d, true, stage_id::kPretrain,
                             c.pretrain_epochs, "pretrain ")
                     ->parameters();
    }
    log_info(fmt::format("split: HIM with E = 2 on {} pairs", all.size()));
    env = identify_environments(c, g, all, psi, d, 2, 0, backbone.empty() ? nullptr : &backbone,
                                nullptr);
  }
  int32_t n_env = 0;
  for (int32_t e : env) n_env = std::max(n_env, e + 1);
  std::vector<int64_t> count(size_t(n_env), 0);
  for (int32_t e : env) ++count[e];
  // The OOD test environment: --test-env, or the smallest one. Training keeps all the others.
  int32_t minority = test_env;
  if (minority < 0) {
    minority = 0;
    for (int32_t e = 1; e < n_env; ++e) {
      if (count[e] > 0 && (count[minority] == 0 || count[e] < count[minority])) minority = e;
    }
  }
  if (minority >= n_env || count[minority] == 0) {
    input_error("--test-env {}: no pair has that environment ({} environments)", minority, n_env);
  }
  std::map<std::pair<int32_t, int32_t>, int32_t> env_of;
  for (size_t p = 0; p < all.size(); ++p) env_of[{all.user[p], all.item[p]}] = env[p];
  const math::PhiloxKey key = math::make_key(c.seed, math::stream_id(math::RngStream::kSplit, 7));

  nlohmann::json manifest = {{"protocol", protocol},       {"source", src.dir},
                             {"environments", env_source}, {"seed", c.seed},
                             {"env_sizes", count},         {"test_env", minority}};
  const std::string tmp = temp_path_for(out_dir);
  fs::create_directories(tmp);
  try {
    if (protocol == "ood") {
      PairList big, small;
      for (size_t p = 0; p < all.size(); ++p) {
        (env[p] != minority ? big : small).push(all.user[p], all.item[p]);
      }
      PairList rest, iid_test, train, valid;
      per_user_holdout(big, src.n_users, 0.1, key, 1, rest, iid_test);
      per_user_holdout(rest, src.n_users, 0.1 / 0.9, key, 2, train, valid);
      std::vector<uint8_t> seen_user(static_cast<size_t>(src.n_users), 0),
          seen_item(static_cast<size_t>(src.n_items), 0);
      for (size_t p = 0; p < train.size(); ++p)
        seen_user[train.user[p]] = seen_item[train.item[p]] = 1;
      PairList ood_test;
      int64_t dropped = 0;
      for (size_t p = 0; p < small.size(); ++p) {
        if (seen_user[small.user[p]] && seen_item[small.item[p]]) {
          ood_test.push(small.user[p], small.item[p]);
        } else {
          ++dropped;
        }
      }
      write_split_dataset(tmp + "/ood", src, train, valid, ood_test, "OOD test: the test env",
                          env_of);
      write_split_dataset(tmp + "/iid", src, train, valid, iid_test,
                          "IID test: 10% of the training envs", env_of);
      manifest["counts"] = {{"train", train.size()},
                            {"valid", valid.size()},
                            {"iid_test", iid_test.size()},
                            {"ood_test", ood_test.size()},
                            {"ood_test_dropped_unseen", dropped}};
      manifest["rules"] =
          "the training envs (all but the test env) = OOD-train; the test env = OOD-test, "
          "restricted to users and items in "
          "train; IID-test = per-user 10% of OOD-train; valid = a further per-user 10% (of the "
          "whole OOD-train); users with < 3 pairs keep all in train";
    } else {
      std::vector<uint8_t> cold(static_cast<size_t>(src.n_items), 0);
      int64_t n_cold = 0;
      for (int32_t i = 0; i < src.n_items; ++i) {
        const double u = math::uniform_open0<double>(math::philox(key, uint32_t(i), 3, 0, 0).v[0]);
        cold[i] = u <= cold_fraction;
        n_cold += cold[i];
      }
      PairList warm_major, cold_major, cold_minor;
      for (size_t p = 0; p < all.size(); ++p) {
        const bool is_cold = cold[all.item[p]];
        if (env[p] != minority) {
          (is_cold ? cold_major : warm_major).push(all.user[p], all.item[p]);
        } else if (is_cold) {
          cold_minor.push(all.user[p], all.item[p]);
        }
      }
      PairList train, valid;
      per_user_holdout(warm_major, src.n_users, 0.1, key, 4, train, valid);
      std::vector<uint8_t> seen_user(static_cast<size_t>(src.n_users), 0);
      for (size_t p = 0; p < train.size(); ++p) seen_user[train.user[p]] = 1;
      auto seen_only = [&](const PairList& in) {
        PairList out;
        for (size_t p = 0; p < in.size(); ++p) {
          if (seen_user[in.user[p]]) out.push(in.user[p], in.item[p]);
        }
        return out;
      };
      const PairList ood_test = seen_only(cold_minor), iid_test = seen_only(cold_major);
      write_split_dataset(tmp + "/cold-ood", src, train, valid, ood_test,
                          "cold items, test env, ranked among the cold items", env_of, "cold");
      write_split_dataset(tmp + "/cold-iid", src, train, valid, iid_test,
                          "cold items, training envs, ranked among the cold items", env_of, "cold");
      manifest["cold_fraction"] = cold_fraction;
      manifest["cold_items"] = n_cold;
      // What training sees as items without pairs: the cold ones, and warm items whose pairs all
      // went to the test environment or to validation.
      std::vector<uint8_t> in_train(static_cast<size_t>(src.n_items), 0);
      for (size_t p = 0; p < train.size(); ++p) in_train[train.item[p]] = 1;
      manifest["items_without_training_pairs"] =
          std::count(in_train.begin(), in_train.end(), uint8_t{0});
      manifest["counts"] = {{"train", train.size()},
                            {"valid", valid.size()},
                            {"cold_iid_test", iid_test.size()},
                            {"cold_ood_test", ood_test.size()}};
      manifest["rules"] =
          "cold items: each item independently with probability cold_fraction; train = the "
          "training "
          "envs' pairs of warm items minus a per-user 10% validation; cold-ood test = minority env "
          "pairs of cold items, cold-iid test = the training envs' pairs of cold items, both "
          "restricted "
          "to users in train; ranked among the cold items (dataset.toml test_candidates)";
    }
    write_text_atomic(tmp + "/manifest.json", manifest.dump(2) + "\n");
    fs::rename(tmp, out_dir);
  } catch (...) {
    std::error_code ec;
    fs::remove_all(tmp, ec);
    throw;
  }
  log_info(fmt::format("split ({}): environment sizes [{}], test environment {}; wrote {}",
                       protocol, fmt::join(count, ", "), minority, out_dir));
}

}  // namespace painvrl
