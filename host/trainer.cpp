// The training scheduler (DESIGN.md section 3: a thin host loop over a backend). Per epoch: a
// Philox-keyed shuffle of the training pairs, one backend epoch, a progress line; on the
// evaluation schedule, full ranking on validation (and test), early stopping with patience.
// Everything that can fail on user input is checked before the run directory is created.
#include "painvrl/trainer.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "painvrl/backend.h"
#include "painvrl/dataset.h"
#include "painvrl/error.h"
#include "painvrl/evaluate.h"
#include "painvrl/graph.h"
#include "painvrl/io.h"
#include "painvrl/math/philox.h"

namespace painvrl {
namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

std::string format_duration(double s) {
  if (s < 120) return fmt::format("{:.0f}s", s);
  if (s < 7200) return fmt::format("{:.1f}m", s / 60);
  return fmt::format("{:.1f}h", s / 3600);
}

// Fisher-Yates shuffle keyed by (seed, stage, epoch): the same order on every backend.
void shuffle_pairs(const PairList& in, PairList& out, uint64_t seed, uint32_t stage,
                   uint32_t epoch) {
  out = in;
  const math::PhiloxKey key =
      math::make_key(seed, math::stream_id(math::RngStream::kShuffle, stage));
  for (int64_t p = int64_t(out.size()) - 1; p > 0; --p) {
    const math::U32x4 r = math::philox(key, uint32_t(p), uint32_t(uint64_t(p) >> 32), 0, epoch);
    const int64_t j = math::uniform_below(r.v[0], uint32_t(p + 1));
    std::swap(out.user[p], out.user[j]);
    std::swap(out.item[p], out.item[j]);
  }
}

nlohmann::json metrics_json(const Metrics& m) {
  nlohmann::json j = m.as_map();
  j["users"] = m.users;
  return j;
}

bool should_evaluate(const Config& c, int epoch) {
  if (c.eval_dense_after >= 0 && epoch >= c.eval_dense_after) return true;
  return epoch % c.eval_every == 0 || epoch == c.epochs - 1;
}

// Prepares the run directory; refuses to overwrite unless told to.
void create_run_dir(const RunOptions& o) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (fs::exists(o.out_dir, ec)) {
    if (!o.overwrite) {
      input_error("--out {}: the run directory exists; choose another or pass --overwrite",
                  o.out_dir);
    }
    fs::remove_all(o.out_dir, ec);
    if (ec) input_error("--out {}: cannot remove the old run: {}", o.out_dir, ec.message());
  }
  fs::create_directories(o.out_dir, ec);
  if (ec) input_error("--out {}: cannot create the run directory: {}", o.out_dir, ec.message());
}

}  // namespace

void run_training(const Config& config, const RunOptions& options) {
  const auto wall0 = Clock::now();
  validate(config);
  if (config.threads > 0) omp_set_num_threads(config.threads);
  if (options.out_dir.empty()) input_error("--out: a run directory is required");

  // 1. Load and check everything before writing anything.
  LoadOptions load;
  load.normalize = config.normalize_features;
  load.load_features = config.method == "ultragcn-mm";
  const Dataset data = load_dataset(options.data_dir, load);
  if (config.method == "ultragcn-mm" && data.feature_dim == 0) {
    input_error("--method ultragcn-mm: dataset {} has no [[modality]] feature files", data.dir);
  }
  const bool content = config.method == "ultragcn-mm";
  log_info(fmt::format("dataset {}: {} users, {} items, {} train / {} valid / {} test pairs{}",
                       data.name, data.n_users, data.n_items, data.train.size(), data.valid.size(),
                       data.test.size(), content ? fmt::format(", d = {}", data.feature_dim) : ""));
  const auto t_graph = Clock::now();
  const int32_t ii_k = config.kappa > 0 ? config.ii_neighbors : 0;
  const Graph graph = build_graph(data.train, data.n_users, data.n_items, ii_k,
                                  parse_ii_similarity(config.ii_similarity));
  log_info(fmt::format("graph: degrees and {} item-item neighbours per item ({}) in {:.2f}s", ii_k,
                       config.ii_similarity, seconds_since(t_graph)));
  const NdcgVariant ndcg = parse_ndcg(config.ndcg);
  const bool has_valid = data.valid.size() > 0;
  if (!has_valid) {
    log_warn(
        "the dataset has no validation pairs: no model selection or early stopping; test "
        "metrics are reported at the last evaluation");
  }

  create_run_dir(options);
  const std::string dir = options.out_dir;
  write_text_atomic(dir + "/config.toml", to_toml(config));
  std::ofstream metrics_out(dir + "/metrics.jsonl");

  nlohmann::json summary;
  summary["method"] = config.method;
  summary["dataset"] = data.dir;
  summary["backend"] = "cpu";
  summary["threads"] = omp_get_max_threads();

  std::unique_ptr<Backend> backend;
  ScoreFn scorer;
  if (config.method == "mostpop") {
    scorer = most_popular_scorer(graph.item_degree);
  } else {
    TrainSetup setup;
    setup.layout =
        ParamLayout::make(data.n_users, data.n_items, config.dim, data.feature_dim, content);
    setup.loss = LossSettings{config.w1,        config.w2,         config.w3,
                              config.w4,        config.neg_weight, config.kappa,
                              config.gamma_emb, config.gamma_w,    config.l2 == "touched"};
    setup.adam = AdamSettings{config.lr, config.adam_beta1, config.adam_beta2, config.adam_eps};
    setup.negatives = config.negatives;
    setup.batch_size = config.batch_size;
    setup.seed = config.seed;
    setup.stage = 0;
    setup.init_std = config.init_std;
    backend = make_cpu_backend();
    backend->setup(setup, graph, data.features);
    scorer = [&backend](const int32_t* users, int64_t count, float* out) {
      backend->score(users, count, out);
    };
  }

  auto evaluate = [&](const PairList& heldout) {
    if (backend) backend->prepare_scoring();
    return evaluate_full_ranking(scorer, data.n_users, data.n_items, graph.train_by_user, heldout,
                                 config.eval_ks, ndcg, config.eval_block);
  };

  double train_seconds = 0;
  int64_t pairs_trained = 0;
  int best_epoch = -1, evals_since_best = 0, epochs_run = 0;
  double best_value = -1;
  Metrics best_valid, test_at_best;
  bool stopped_early = false;

  if (!backend) {  // most popular: nothing to train
    best_valid = has_valid ? evaluate(data.valid) : Metrics{};
    test_at_best = evaluate(data.test);
    nlohmann::json line = {{"epoch", 0}, {"test", metrics_json(test_at_best)}};
    if (has_valid) line["valid"] = metrics_json(best_valid);
    metrics_out << line.dump() << "\n" << std::flush;
    best_epoch = 0;
  }
  PairList shuffled;
  for (int epoch = 0; backend && epoch < config.epochs; ++epoch) {
    const auto t0 = Clock::now();
    shuffle_pairs(data.train, shuffled, config.seed, 0, uint32_t(epoch));
    const EpochStats st = backend->train_epoch(shuffled, uint32_t(epoch));
    const double dt = seconds_since(t0);
    train_seconds += dt;
    pairs_trained += st.pairs;
    epochs_run = epoch + 1;
    if (!std::isfinite(st.loss_total)) {
      input_error("epoch {}: the training loss is not finite ({}); lower lr or init_std", epoch,
                  st.loss_total);
    }
    const double eta = train_seconds / epochs_run * (config.epochs - epochs_run);
    log_info(
        fmt::format("epoch {:>4}/{}  loss {:.6g} (main {:.6g}, ii {:.4g}, l2 {:.4g})  "
                    "{:.2f}s  {:.0f} pairs/s  eta {}",
                    epoch, config.epochs, st.loss_total / st.steps, st.loss_main / st.steps,
                    st.loss_item_item / st.steps, st.loss_l2 / st.steps, dt, st.pairs / dt,
                    format_duration(eta)));
    if (!should_evaluate(config, epoch)) continue;
    const auto te = Clock::now();
    nlohmann::json line = {
        {"epoch", epoch}, {"loss", st.loss_total / st.steps}, {"train_seconds", train_seconds}};
    Metrics valid, test;
    if (has_valid) {
      valid = evaluate(data.valid);
      line["valid"] = metrics_json(valid);
    }
    const bool improved = !has_valid || valid.get(config.select_metric) > best_value;
    if (config.eval_test_each || improved) {
      test = evaluate(data.test);
      line["test"] = metrics_json(test);
    }
    metrics_out << line.dump() << "\n" << std::flush;
    std::string msg = fmt::format("eval epoch {}:", epoch);
    if (has_valid)
      msg += fmt::format(" valid {} {:.4f}", config.select_metric, valid.get(config.select_metric));
    if (line.contains("test")) {
      msg += fmt::format(" | test recall@{} {:.4f} ndcg@{} {:.4f}", config.eval_ks.back(),
                         test.recall.back(), config.eval_ks.back(), test.ndcg.back());
    }
    log_info(msg + fmt::format(" ({:.1f}s){}", seconds_since(te), improved ? " *" : ""));
    if (improved) {
      best_value = has_valid ? valid.get(config.select_metric) : 0;
      best_epoch = epoch;
      best_valid = valid;
      test_at_best = test;
      evals_since_best = 0;
    } else if (config.patience > 0 && ++evals_since_best >= config.patience) {
      log_info(fmt::format("early stop: {} evaluations without a better validation {}",
                           evals_since_best, config.select_metric));
      stopped_early = true;
      break;
    }
  }

  summary["best_epoch"] = best_epoch;
  summary["select_metric"] = config.select_metric;
  if (has_valid && best_epoch >= 0) summary["best_valid"] = metrics_json(best_valid);
  if (best_epoch >= 0) summary["test_at_best"] = metrics_json(test_at_best);
  summary["epochs_run"] = epochs_run;
  summary["stopped_early"] = stopped_early;
  summary["train_seconds"] = train_seconds;
  summary["pairs_per_second"] = train_seconds > 0 ? double(pairs_trained) / train_seconds : 0.0;
  summary["wall_seconds"] = seconds_since(wall0);
  write_text_atomic(dir + "/summary.json", summary.dump(2) + "\n");
  if (best_epoch >= 0) {
    log_info(fmt::format("done: best epoch {}; test {} at that point; run directory {}", best_epoch,
                         nlohmann::json(test_at_best.as_map()).dump(), dir));
  }
}

void inspect_dataset(const std::string& data_dir) {
  LoadOptions load;
  const Dataset d = load_dataset(data_dir, load);
  const Graph g = build_graph(d.train, d.n_users, d.n_items, 0, IiSimilarity::kPaper);
  auto summary = [](std::vector<float> v) {
    if (v.empty()) return std::string("-");
    std::sort(v.begin(), v.end());
    double mean = 0;
    for (float x : v) mean += x;
    mean /= double(v.size());
    return fmt::format("min {:.0f}  median {:.0f}  mean {:.2f}  max {:.0f}", v.front(),
                       v[v.size() / 2], mean, v.back());
  };
  const double density = double(d.train.size()) / (double(d.n_users) * double(d.n_items));
  fmt::print("dataset      {} ({} format)\n", d.name, d.format);
  fmt::print("users        {}\nitems        {}\n", d.n_users, d.n_items);
  fmt::print("pairs        train {}  valid {}  test {}\n", d.train.size(), d.valid.size(),
             d.test.size());
  fmt::print("sparsity     {:.4f}% of user-item pairs in train\n", 100.0 * density);
  fmt::print("user degree  {}\nitem degree  {}\n", summary(g.user_degree), summary(g.item_degree));
  fmt::print(
      "dropped      {} duplicate train, {} duplicate valid, {} duplicate test, {} held-out "
      "pairs repeating train\n",
      d.report.duplicate_train, d.report.duplicate_valid, d.report.duplicate_test,
      d.report.heldout_in_train);
  fmt::print("no train     {} users, {} items\n", d.report.users_without_train,
             d.report.items_without_train);
  if (d.modalities.empty()) fmt::print("features     none\n");
  for (const Modality& m : d.modalities) {
    fmt::print("modality     {} ({}): columns {}..{} (width {})\n", m.name, m.file, m.offset,
               m.offset + m.width - 1, m.width);
  }
  if (!d.modalities.empty()) {
    fmt::print("features     d = {}, {}\n", d.feature_dim,
               d.normalized ? "each block L2-normalised per row" : "not normalised");
  }
}

}  // namespace painvrl
