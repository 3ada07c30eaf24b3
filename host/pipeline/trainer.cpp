// The training scheduler (DESIGN.md section 3: a thin host loop over a backend). Per epoch: a
// Philox-keyed shuffle of the training pairs, one backend epoch, a progress line; on the
// evaluation schedule, full ranking on validation (and test), early stopping with patience.
// Everything that can fail on user input is checked before the run directory is created.
#include "painvrl/pipeline/trainer.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "painvrl/backend/backend.h"
#include "painvrl/data/dataset.h"
#include "painvrl/data/error.h"
#include "painvrl/data/graph.h"
#include "painvrl/data/io.h"
#include "painvrl/data/npy.h"
#include "painvrl/data/output_dir.h"
#include "painvrl/math/philox.h"
#include "painvrl/pipeline/checkpoint.h"
#include "painvrl/pipeline/device_select.h"
#include "painvrl/pipeline/evaluate.h"
#include "painvrl/pipeline/progress.h"
#include "painvrl/pipeline/resources.h"
#include "painvrl/pipeline/signals.h"
#include "painvrl/pipeline/stages.h"
#include "painvrl/pipeline/threads.h"

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

nlohmann::json metrics_json(const Metrics& m) {
  nlohmann::json j = m.as_map();
  j["users"] = m.users;
  return j;
}

bool should_evaluate(const Config& c, int epoch) {
  if (c.eval_dense_after >= 0 && epoch >= c.eval_dense_after) return true;
  return epoch % c.eval_every == 0 || epoch == c.epochs - 1;
}

// Creates the run directory, with its marker, and takes its lock. An old run (check_output_dir
// allowed replacing it) is locked first, so a live run is never replaced, then moved aside; the
// path it was moved to is returned, to be removed once the new run is complete.
std::string create_run_dir(const std::string& dir, DirLock& lock) {
  namespace fs = std::filesystem;
  std::error_code ec;
  std::string aside;
  if (fs::exists(dir, ec)) {
    const DirLock old = DirLock::acquire(dir);
    aside = move_aside("--out", dir);
    log_info(fmt::format("--overwrite: the old run is at {} until this one completes", aside));
  }
  const fs::path parent = fs::absolute(dir).parent_path();
  fs::create_directories(parent, ec);
  if (!fs::create_directory(dir, ec)) {  // a second writer created it since the check
    input_error("--out {}: {}", dir,
                ec ? "cannot create the run directory: " + ec.message()
                   : std::string("created by another process meanwhile; choose another"));
  }
  lock = DirLock::acquire(dir);
  mark_output_dir(dir, "run");
  return aside;
}

std::string epoch_line(const std::string& label, int epoch, int epochs, const EpochStats& st,
                       double dt, double eta) {
  return fmt::format(
      "{}epoch {:>4}/{}  loss {:.6g} (main {:.6g}, ii {:.4g}, l2 {:.4g})  {:.2f}s  {:.0f} pairs/s"
      "  eta {}",
      label, epoch, epochs, st.loss_total / double(std::max<int64_t>(st.steps, 1)),
      st.loss_main / double(std::max<int64_t>(st.steps, 1)),
      st.loss_item_item / double(std::max<int64_t>(st.steps, 1)),
      st.loss_l2 / double(std::max<int64_t>(st.steps, 1)), dt, double(st.pairs) / dt,
      format_duration(eta));
}

}  // namespace

TrainSetup make_train_setup(const Config& c, int32_t n_users, int32_t n_items, int64_t feat_dim,
                            bool content, uint32_t stage) {
  TrainSetup setup;
  setup.layout = ParamLayout::make(n_users, n_items, c.dim, feat_dim, content);
  setup.loss = LossSettings{
      c.w1, c.w2, c.w3, c.w4, c.neg_weight, c.kappa, c.gamma_emb, c.gamma_w, c.l2 == "touched"};
  setup.adam = AdamSettings{c.lr, c.adam_beta1, c.adam_beta2, c.adam_eps};
  setup.negatives = c.negatives;
  setup.batch_size = c.batch_size;
  setup.seed = c.seed;
  setup.stage = stage;
  setup.init_std = c.init_std;
  setup.tf32 = c.tf32;
  setup.deterministic = c.deterministic;
  return setup;
}

void stop_stage(const StageCheckpoints* sc, Checkpoint& ck, const std::string& what) {
  const int sig = stop_signal().load();
  if (sc && sc->store) {
    const std::string path = sc->store->save(ck);
    throw Interrupted(
        fmt::format("stopped by signal {} at {}; the state is saved in {}", sig, what, path));
  }
  throw Interrupted(fmt::format("stopped by signal {} at {}", sig, what));
}

namespace {

// A checkpoint at (epoch, step) of a backbone stage: the caller's context, the optimiser state
// and the epoch's partial sums.
Checkpoint backbone_checkpoint(const StageCheckpoints* sc, const Backend& backend, int epoch,
                               const EpochStats& partial) {
  Checkpoint ck;
  if (sc) {
    ck.position = Position{sc->phase, sc->outer, epoch, partial.steps};
    if (sc->context) sc->context(ck);
  }
  const OptimizerState st = backend.optimizer_state();
  // Never save a non-finite state: the newest checkpoint stays the last finite one.
  for (size_t k = 0; k < st.params.size(); ++k) {
    if (!std::isfinite(st.params[k])) {
      throw Diverged(fmt::format(
          "{}epoch {} step {}: the parameters are not finite ({} at index {}) although the loss "
          "was: the last update diverged; lower lr",
          sc ? sc->phase + " " : "", epoch, partial.steps, st.params[k], k));
    }
  }
  ck.put("params", st.params);
  ck.put("adam_m", st.adam_m);
  ck.put("adam_v", st.adam_v);
  ck.meta["adam_t"] = st.adam_t;
  ck.meta["epoch_stats"] = {{"loss_total", partial.loss_total},
                            {"loss_main", partial.loss_main},
                            {"loss_item_item", partial.loss_item_item},
                            {"loss_l2", partial.loss_l2},
                            {"steps", partial.steps},
                            {"pairs", partial.pairs}};
  return ck;
}

// Restores what backbone_checkpoint saved; returns the epoch's partial sums.
EpochStats restore_backbone(const Checkpoint& ck, Backend& backend) {
  OptimizerState st;
  st.params = ck.get<float>("params");
  st.adam_m = ck.get<float>("adam_m");
  st.adam_v = ck.get<float>("adam_v");
  st.adam_t = ck.meta.at("adam_t").get<long long>();
  backend.set_optimizer_state(st);
  const nlohmann::json& j = ck.meta.at("epoch_stats");
  EpochStats partial;
  partial.loss_total = j.at("loss_total").get<double>();
  partial.loss_main = j.at("loss_main").get<double>();
  partial.loss_item_item = j.at("loss_item_item").get<double>();
  partial.loss_l2 = j.at("loss_l2").get<double>();
  partial.steps = j.at("steps").get<int64_t>();
  partial.pairs = j.at("pairs").get<int64_t>();
  return partial;
}

bool stop_flag() { return stop_requested(); }

// One epoch (or its remainder) of a backbone stage with the stop and divergence checks.
void run_epoch_steps(Backend& backend, const PairList& shuffled, int epoch, EpochStats& st,
                     const StageCheckpoints* sc, const std::string& what) {
  backend.train_steps(shuffled, uint32_t(epoch), st, &stop_flag);
  if (st.diverged) {
    throw Diverged(
        fmt::format("{} epoch {} step {}: the training loss is not finite; lower lr "
                    "or init_std",
                    what, epoch, st.steps));
  }
  if (st.stopped) {
    Checkpoint ck = backbone_checkpoint(sc, backend, epoch, st);
    stop_stage(sc, ck, fmt::format("{} epoch {} step {}", what, epoch, st.steps));
  }
}

}  // namespace

std::unique_ptr<Backend> train_fixed(const Config& c, const Graph& graph, const PairList& pairs,
                                     const std::vector<float>& features, int64_t feat_dim,
                                     bool content, uint32_t stage, int epochs,
                                     const std::string& label, const std::vector<float>* start,
                                     uint8_t frozen, const StageCheckpoints* sc) {
  std::unique_ptr<Backend> backend = make_backend(c.device);
  TrainSetup setup = make_train_setup(c, graph.n_users, graph.n_items, feat_dim, content, stage);
  setup.frozen = frozen;
  backend->setup(setup, graph, features);
  if (start) {
    if (int64_t(start->size()) != setup.layout.total) {
      throw std::logic_error("train_fixed: the start parameters do not match the layout");
    }
    backend->set_parameters(*start);
  }
  int first_epoch = 0;
  EpochStats partial;
  if (sc && sc->resume) {
    partial = restore_backbone(*sc->resume, *backend);
    first_epoch = sc->resume->position.epoch;
  }
  const std::string what = sc ? sc->phase : label.empty() ? std::string("training") : label;
  PairList shuffled;
  double total = 0;
  for (int epoch = first_epoch; epoch < epochs; ++epoch) {
    const auto t0 = Clock::now();
    ThreadGovernor::current().adapt();
    shuffle_pairs(pairs, shuffled, c.seed, stage, uint32_t(epoch));
    EpochStats st = epoch == first_epoch ? partial : EpochStats{};
    run_epoch_steps(*backend, shuffled, epoch, st, sc, what);
    const double dt = seconds_since(t0);
    total += dt;
    if (!label.empty()) {
      const int done = epoch + 1 - first_epoch;
      RunProgress::current().advance(epoch + 1, epochs);
      log_progress(epoch_line(label, epoch, epochs, st, dt, total / done * (epochs - epoch - 1)) +
                   RunProgress::current().suffix());
    }
    if (sc && sc->store && sc->store->due(epoch + 1) && epoch + 1 < epochs) {
      Checkpoint ck = backbone_checkpoint(sc, *backend, epoch + 1, EpochStats{});
      sc->store->save(ck);
    }
  }
  return backend;
}

Evaluator::Evaluator(const Config& c, const Dataset& d, const Graph& g)
    : config(c), data(d), graph(g) {
  cold.assign(size_t(d.n_items), 0);
  for (int32_t i = 0; i < d.n_items; ++i) cold[i] = g.item_degree[i] == 0 ? 1 : 0;
  if (c.candidates == "cold" || (c.candidates == "auto" && d.test_candidates == "cold")) {
    candidates = cold;
  }
}

namespace {

Metrics rank_and_evaluate(const Evaluator& ev, Backend& backend, const PairList& heldout,
                          const std::vector<uint8_t>& cands) {
  const Config& config = ev.config;
  if (backend.prepare_ranking(ev.graph.train_by_user, cands)) {  // ranked on the device
    // Thousands of users per call: each call ends with the ranked ids' copy to the host, and
    // eval_block's 256 (sized for the CPU's score buffer) made that a sync every 256 users. The
    // metrics do not depend on the block (per-user sums, added in a fixed order).
    constexpr int kDeviceRankBlock = 4096;
    return evaluate_ranked([&backend](const int32_t* users, int64_t count, int k,
                                      int32_t* ranked) { backend.rank(users, count, k, ranked); },
                           ev.data.n_users, ev.data.n_items, heldout, config.eval_ks,
                           parse_ndcg(config.ndcg), std::max(config.eval_block, kDeviceRankBlock));
  }
  return evaluate_full_ranking([&backend](const int32_t* users, int64_t count,
                                          float* out) { backend.score(users, count, out); },
                               ev.data.n_users, ev.data.n_items, ev.graph.train_by_user, heldout,
                               config.eval_ks, parse_ndcg(config.ndcg), config.eval_block, cands);
}

}  // namespace

Metrics Evaluator::run(const ScoreFn& score, const PairList& heldout, bool is_test) const {
  return evaluate_full_ranking(score, data.n_users, data.n_items, graph.train_by_user, heldout,
                               config.eval_ks, parse_ndcg(config.ndcg), config.eval_block,
                               is_test ? candidates : std::vector<uint8_t>{});
}

Metrics Evaluator::run(Backend& backend, const PairList& heldout, bool is_test) const {
  static const std::vector<uint8_t> all_items;
  return rank_and_evaluate(*this, backend, heldout, is_test ? candidates : all_items);
}

std::vector<std::pair<std::string, Metrics>> Evaluator::run_test_sets(const ScoreFn& score) const {
  std::vector<std::pair<std::string, Metrics>> out;
  for (const TestSet& set : data.test_sets) {
    out.emplace_back(
        set.name,
        evaluate_full_ranking(score, data.n_users, data.n_items, graph.train_by_user, set.pairs,
                              config.eval_ks, parse_ndcg(config.ndcg), config.eval_block,
                              set.candidates == "cold" ? cold : std::vector<uint8_t>{}));
  }
  return out;
}

std::vector<std::pair<std::string, Metrics>> Evaluator::run_test_sets(Backend& backend) const {
  static const std::vector<uint8_t> all_items;
  std::vector<std::pair<std::string, Metrics>> out;
  for (const TestSet& set : data.test_sets) {
    out.emplace_back(set.name, rank_and_evaluate(*this, backend, set.pairs,
                                                 set.candidates == "cold" ? cold : all_items));
  }
  return out;
}

namespace {

nlohmann::json metrics_state(const Metrics& m) {
  return {{"ks", m.ks},
          {"precision", m.precision},
          {"recall", m.recall},
          {"ndcg", m.ndcg},
          {"users", m.users}};
}
Metrics metrics_from_state(const nlohmann::json& j) {
  Metrics m;
  m.ks = j.at("ks").get<std::vector<int>>();
  m.precision = j.at("precision").get<std::vector<double>>();
  m.recall = j.at("recall").get<std::vector<double>>();
  m.ndcg = j.at("ndcg").get<std::vector<double>>();
  m.users = j.at("users").get<int64_t>();
  return m;
}

// Model selection's running state, saved with a backbone checkpoint of a selection stage.
struct SelectionState {
  double best_value = -1;
  int evals_since_best = 0;
  void save(Checkpoint& ck, const SelectionResult& res) const {
    ck.meta["selection"] = {{"best_value", best_value},
                            {"evals_since_best", evals_since_best},
                            {"best_epoch", res.best_epoch},
                            {"best_valid", metrics_state(res.best_valid)},
                            {"test_at_best", metrics_state(res.test_at_best)},
                            {"epochs_run", res.epochs_run},
                            {"train_seconds", res.train_seconds},
                            {"pairs_trained", res.pairs_trained}};
    ck.put("best_params", res.best_params);
  }
  void load(const Checkpoint& ck, SelectionResult& res) {
    const nlohmann::json& j = ck.meta.at("selection");
    best_value = j.at("best_value").get<double>();
    evals_since_best = j.at("evals_since_best").get<int>();
    res.best_epoch = j.at("best_epoch").get<int>();
    res.best_valid = metrics_from_state(j.at("best_valid"));
    res.test_at_best = metrics_from_state(j.at("test_at_best"));
    res.epochs_run = j.at("epochs_run").get<int>();
    res.train_seconds = j.at("train_seconds").get<double>();
    res.pairs_trained = j.at("pairs_trained").get<int64_t>();
    res.best_params = ck.get<float>("best_params");
  }
};

}  // namespace

SelectionResult train_with_selection(const Config& c, const Evaluator& eval,
                                     const std::vector<float>& features, bool content,
                                     uint32_t stage, const std::string& stage_name,
                                     std::ostream& metrics_out, const StageCheckpoints* sc) {
  const Dataset& data = eval.data;
  const bool has_valid = data.valid.size() > 0;
  std::unique_ptr<Backend> backend = make_backend(c.device);
  const TrainSetup setup =
      make_train_setup(c, data.n_users, data.n_items, data.feature_dim, content, stage);
  backend->setup(setup, eval.graph, features);
  SelectionResult res;
  res.layout = setup.layout;
  SelectionState sel;
  int first_epoch = 0;
  EpochStats partial;
  if (sc && sc->resume) {
    partial = restore_backbone(*sc->resume, *backend);
    sel.load(*sc->resume, res);
    first_epoch = sc->resume->position.epoch;
  }
  // Every checkpoint of this stage: the caller's context, the backbone and the selection state.
  StageCheckpoints own = sc ? *sc : StageCheckpoints{};
  own.context = [&](Checkpoint& ck) {
    if (sc && sc->context) sc->context(ck);
    sel.save(ck, res);
  };
  const std::string what = sc ? sc->phase : stage_name.empty() ? "training" : stage_name;
  PairList shuffled;
  const std::string label = stage_name.empty() ? "" : stage_name + " ";
  for (int epoch = first_epoch; epoch < c.epochs; ++epoch) {
    const auto t0 = Clock::now();
    ThreadGovernor::current().adapt();
    shuffle_pairs(data.train, shuffled, c.seed, stage, uint32_t(epoch));
    EpochStats st = epoch == first_epoch ? partial : EpochStats{};
    run_epoch_steps(*backend, shuffled, epoch, st, &own, what);
    const double dt = seconds_since(t0);
    res.train_seconds += dt;
    res.pairs_trained += st.pairs;
    res.epochs_run = epoch + 1;
    const double eta = res.train_seconds / res.epochs_run * (c.epochs - res.epochs_run);
    RunProgress::current().advance(epoch + 1, c.epochs);
    log_progress(epoch_line(label, epoch, c.epochs, st, dt, eta) + RunProgress::current().suffix());
    bool stop_early = false;
    if (should_evaluate(c, epoch)) {
      const auto te = Clock::now();
      nlohmann::json line = {{"epoch", epoch},
                             {"loss", st.loss_total / double(std::max<int64_t>(st.steps, 1))},
                             {"train_seconds", res.train_seconds}};
      if (!stage_name.empty()) line["stage"] = stage_name;
      Metrics valid, test;
      backend->prepare_scoring();  // item rows once per evaluation, for validation and test
      if (has_valid) {
        valid = eval.run(*backend, data.valid, false);
        line["valid"] = metrics_json(valid);
      }
      const bool improved = !has_valid || valid.get(c.select_metric) > sel.best_value;
      if (c.eval_test_each || improved) {
        test = eval.run(*backend, data.test, true);
        line["test"] = metrics_json(test);
      }
      metrics_out << line.dump() << "\n" << std::flush;
      std::string msg = fmt::format("{}eval epoch {}:", label, epoch);
      if (has_valid) {
        msg += fmt::format(" valid {} {:.4f}", c.select_metric, valid.get(c.select_metric));
      }
      if (line.contains("test")) {
        msg += fmt::format(" | test recall@{} {:.4f} ndcg@{} {:.4f}", c.eval_ks.back(),
                           test.recall.back(), c.eval_ks.back(), test.ndcg.back());
      }
      log_progress(msg + fmt::format(" ({:.1f}s){}", seconds_since(te), improved ? " *" : ""));
      if (improved) {
        sel.best_value = has_valid ? valid.get(c.select_metric) : 0;
        res.best_epoch = epoch;
        res.best_valid = valid;
        res.test_at_best = test;
        res.best_params = backend->parameters();
        sel.evals_since_best = 0;
      } else if (c.patience > 0 && ++sel.evals_since_best >= c.patience) {
        log_info(fmt::format("{}early stop: {} evaluations without a better validation {}", label,
                             sel.evals_since_best, c.select_metric));
        res.stopped_early = true;
        stop_early = true;
      }
    }
    if (stop_early) break;
    if (sc && sc->store && epoch + 1 < c.epochs &&
        (sc->store->due(epoch + 1) || stop_requested())) {
      Checkpoint ck = backbone_checkpoint(&own, *backend, epoch + 1, EpochStats{});
      if (stop_requested()) stop_stage(&own, ck, fmt::format("{} epoch {}", what, epoch + 1));
      sc->store->save(ck);
    }
  }
  if (!data.test_sets.empty() && !res.best_params.empty()) {  // the further test sets
    backend->set_parameters(res.best_params);
    backend->prepare_scoring();
    res.test_sets_at_best = eval.run_test_sets(*backend);
  }
  return res;
}

uint64_t dataset_content_hash(const Dataset& d) {
  uint64_t h = hash64(&d.n_users, sizeof(d.n_users), uint64_t(d.n_items));
  for (const PairList* split : {&d.train, &d.valid, &d.test}) {
    h = hash64(split->user.data(), split->user.size() * sizeof(int32_t), h);
    h = hash64(split->item.data(), split->item.size() * sizeof(int32_t), h);
  }
  return hash64(d.features.data(), d.features.size() * sizeof(float), h);
}

namespace {

// A fresh run (resume == nullptr) or the continuation of one from its checkpoint.
void execute_run(const Config& config, const std::string& data_dir, const std::string& dir,
                 bool overwrite, const LoadedCheckpoint* resume) {
  const auto wall0 = Clock::now();
  validate(config);
  ThreadGovernor::current().start(config.threads);  // fixed, or adapted to the neighbours
  if (dir.empty()) input_error("--out: a run directory is required");
  // The run directory must not be, hold or lie in what the run reads, and --overwrite replaces
  // only a run directory: checked before anything is read or written.
  if (!resume) {
    check_output_dir("--out", dir, {data_dir, config.mask_file}, overwrite, "run", is_run_entry);
  }
  const std::string device = resolve_device(config.device);
  if (device == "cuda" && config.l2 == "touched") {
    input_error("l2 = \"touched\": the CUDA backend implements l2 = \"full\" only");
  }
  if (device == "cuda" && config.dim > 256) {
    input_error("dim = {}: the CUDA backend supports dim <= 256", config.dim);
  }

  // 1. Load and check everything before writing anything.
  const std::string& m = config.method;
  const bool content = m == "ultragcn-mm" || m == "invrl" || m == "painvrl";
  const bool invariant = m == "painvrl" || m == "invrl";
  LoadOptions load;
  load.normalize = config.normalize_features;
  load.load_features = content;
  const Dataset data = load_dataset(data_dir, load);
  if (content && data.feature_dim == 0) {
    input_error("--method {}: dataset {} has no [[modality]] feature files", m, data.dir);
  }
  if (!config.mask_file.empty()) {
    if (!invariant) input_error("mask_file applies to --method painvrl or invrl, not {}", m);
    read_mask_file(config.mask_file, data.feature_dim);  // checked before anything is written
  }
  if (invariant && config.environments == "file" && config.mask_file.empty() &&
      !std::filesystem::exists(data.dir + "/environments.tsv")) {
    input_error("environments = \"file\": {} has no environments.tsv (painvrl synth writes one)",
                data.dir);
  }
  log_info(fmt::format("dataset {}: {} users, {} items, {} train / {} valid / {} test pairs{}",
                       data.name, data.n_users, data.n_items, data.train.size(), data.valid.size(),
                       data.test.size(), content ? fmt::format(", d = {}", data.feature_dim) : ""));
  const char* wait_policy = std::getenv("OMP_WAIT_POLICY");
  log_info(fmt::format("threads: {} (OpenMP wait policy {})", omp_get_max_threads(),
                       wait_policy ? wait_policy : "the runtime's default"));
  // Refuse before allocating the training state if its estimated peak would not fit.
  const ProblemSize size{data.n_users, data.n_items, int64_t(data.train.size()),
                         int64_t(data.valid.size() + data.test.size()), data.feature_dim};
  check_host_memory(config, size);
  RunProgress::current().start(config, size);  // the whole-run ETA of the progress lines
  const uint64_t hash = dataset_content_hash(data);
  LoadedCheckpoint loaded;
  if (resume) {  // the newest checkpoint whose dataset hash matches (older ones if need be)
    loaded = load_newest_checkpoint(dir, hash);
    log_info(fmt::format("resuming {} from {} ({})", dir, loaded.path,
                         loaded.checkpoint.position.describe()));
  }
  const auto t_graph = Clock::now();
  const int32_t ii_k = config.kappa > 0 ? config.ii_neighbors : 0;
  const Graph graph = build_graph(data.train, data.n_users, data.n_items, ii_k,
                                  parse_ii_similarity(config.ii_similarity));
  log_info(fmt::format("graph: degrees and {} item-item neighbours per item ({}) in {:.2f}s", ii_k,
                       config.ii_similarity, seconds_since(t_graph)));
  const bool has_valid = data.valid.size() > 0;
  if (!has_valid) {
    log_warn(
        "the dataset has no validation pairs: no model selection or early stopping; test "
        "metrics are reported at the last evaluation");
  }
  const Evaluator eval(config, data, graph);
  int64_t n_cold = 0;
  for (uint8_t x : eval.cold) n_cold += x;
  bool any_cold = !eval.candidates.empty();
  for (const TestSet& set : data.test_sets) any_cold = any_cold || set.candidates == "cold";
  if (any_cold && n_cold == 0) {
    input_error(
        "{}: ranking among cold items (candidates = cold, or the dataset's "
        "test_candidates / [[test_set]] candidates), but no item lacks training pairs",
        data.dir);
  }
  if (!eval.candidates.empty()) {
    log_info(fmt::format("ranking the test's held-out items among the {} cold items", n_cold));
  }

  // 2. The run directory: created afresh, or its logs cut back to the checkpoint.
  std::string replaced;  // an old run moved aside by --overwrite, removed at the end
  DirLock lock;          // one writer per run directory, held to the end
  const std::ios::openmode mode = resume ? std::ios::app : std::ios::trunc;
  if (resume) {
    lock = DirLock::acquire(dir);
    truncate_logs(dir, loaded.checkpoint);
  } else {
    replaced = create_run_dir(dir, lock);
    write_text_atomic(dir + "/config.toml", to_toml(config));
  }
  // log.txt: what stderr shows, time-stamped, from the start of the run (the lines before this
  // point included). Closed when the run completes; after a failure it stays open for the
  // command's last word (main's log_final).
  set_log_file(dir + "/log.txt");
  std::ofstream metrics_out(dir + "/metrics.jsonl", std::ios::out | mode);
  std::ofstream trace;
  if (invariant) trace.open(dir + "/trace.jsonl", std::ios::out | mode);
  CheckpointStore store(dir, config.checkpoint_every, config.checkpoint_keep, to_toml(config),
                        data.dir, hash);
  store.track("metrics.jsonl", &metrics_out);
  if (invariant) store.track("trace.jsonl", &trace);
  const Checkpoint* from = nullptr;
  if (resume) {
    store.continue_after(loaded.sequence);
    if (loaded.checkpoint.position.phase != "start") from = &loaded.checkpoint;
  } else {
    Checkpoint start;  // position "start": what resuming a run stopped before any stage needs
    store.save(start);
  }

  nlohmann::json summary;
  summary["method"] = m;
  summary["dataset"] = data.dir;
  summary["dataset_path"] = std::filesystem::absolute(data.dir).lexically_normal().string();
  summary["dataset_hash"] = fmt::format("{:016x}", hash);
  summary["backend"] = device;
  summary["threads"] = ThreadGovernor::current().most();
  if (invariant) {
    summary["objective"] = m == "invrl" ? "fixed" : config.objective;
    summary["attention"] = m == "painvrl" && config.attention;
  }
  if (from) summary["resumed_from"] = from->position.describe();

  // The stages below build their backends from run_config.device: the resolved device. (The
  // saved config keeps what was asked for, so that a resumed run resolves it again.)
  Config run_config = config;
  run_config.device = device;
  SelectionResult res;
  if (m == "mostpop") {
    const ScoreFn pop = most_popular_scorer(graph.item_degree);
    nlohmann::json line = {{"epoch", 0}};
    if (has_valid) {
      res.best_valid = eval.run(pop, data.valid, false);
      line["valid"] = metrics_json(res.best_valid);
    }
    res.test_at_best = eval.run(pop, data.test, true);
    line["test"] = metrics_json(res.test_at_best);
    res.test_sets_at_best = eval.run_test_sets(pop);
    metrics_out << line.dump() << "\n" << std::flush;
    res.best_epoch = 0;
  } else if (m == "ultragcn" || m == "ultragcn-mm") {
    RunProgress::current().begin(StageKind::kFinal, 0);
    StageCheckpoints sc;
    sc.store = &store;
    sc.phase = "baseline";
    sc.resume = from;
    res = train_with_selection(run_config, eval, data.features, content, stage_id::kBaseline, "",
                               metrics_out, &sc);
  } else {
    res = run_invariant_pipeline(run_config, eval, dir, metrics_out, trace, summary, &store, from);
  }

  // 3. The outputs: the best-validation model's parameters and the summary (its presence marks
  // the run complete).
  // A last update can leave the selected parameters non-finite although every loss was finite
  // (lr = 1e38 in one step): that run diverged, and no model or summary is written for it.
  const auto bad = std::find_if(res.best_params.begin(), res.best_params.end(),
                                [](float x) { return !std::isfinite(x); });
  if (bad != res.best_params.end()) {
    throw Diverged(fmt::format(
        "the selected model (epoch {}) has non-finite parameters ({} at index {}): the training "
        "diverged; lower lr and train again",
        res.best_epoch, *bad, bad - res.best_params.begin()));
  }
  if (!res.best_params.empty()) {
    write_npy(dir + "/model.npy", res.best_params.data(), {int64_t(res.best_params.size())});
    const ParamLayout& L = res.layout;
    summary["model"] = {{"file", "model.npy"},
                        {"n_users", L.n_users},
                        {"n_items", L.n_items},
                        {"dim", L.dim},
                        {"feat_dim", L.feat_dim},
                        {"content", L.content},
                        {"pt", L.pt},
                        {"pf", L.pf},
                        {"t", L.t},
                        {"w", L.w},
                        {"b", L.b},
                        {"total", L.total}};
  }
  summary["best_epoch"] = res.best_epoch;
  summary["select_metric"] = config.select_metric;
  if (has_valid && res.best_epoch >= 0) summary["best_valid"] = metrics_json(res.best_valid);
  if (res.best_epoch >= 0) summary["test_at_best"] = metrics_json(res.test_at_best);
  if (!res.test_sets_at_best.empty()) {
    nlohmann::json sets = nlohmann::json::object();
    for (const auto& [name, m] : res.test_sets_at_best) sets[name] = metrics_json(m);
    summary["test_sets_at_best"] = sets;
  }
  summary["epochs_run"] = res.epochs_run;
  summary["stopped_early"] = res.stopped_early;
  // train_seconds: the whole pipeline's training (PaInvRL's pretraining, HIM and mask stages
  // and the final model); final_train_seconds: the final model's alone.
  double stage_seconds = 0;
  if (summary.contains("stages")) {
    for (const auto& [name, stage] : summary["stages"].items()) {
      stage_seconds += stage.value("seconds", 0.0);
    }
  }
  summary["train_seconds"] = stage_seconds + res.train_seconds;
  summary["final_train_seconds"] = res.train_seconds;
  summary["pairs_per_second"] =
      res.train_seconds > 0 ? double(res.pairs_trained) / res.train_seconds : 0.0;
  summary["wall_seconds"] = seconds_since(wall0);
  write_text_atomic(dir + "/summary.json", summary.dump(2) + "\n");
  remove_replaced(replaced);
  if (res.best_epoch >= 0) {
    log_info(fmt::format("done: best epoch {}; test {} at that point; run directory {}",
                         res.best_epoch, nlohmann::json(res.test_at_best.as_map()).dump(), dir));
  }
  RunProgress::current().finish();
  set_log_file("");
}

// A run continues with the config it started with (the checkpoint's). A config.toml edited since
// is refused, naming each key that differs, rather than ignored without a word.
void refuse_edited_config(const std::string& path, const Config& recorded) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) return;  // removed: the checkpoint has it all
  Config edited;
  try {
    apply_toml(edited, read_text_file(path), path);
  } catch (const InputError& e) {
    input_error("--resume: {} was edited and no longer reads as the run's config: {}", path,
                e.what());
  }
  auto key_values = [](const Config& c) {
    std::map<std::string, std::string> out;
    std::istringstream lines(to_toml(c));
    for (std::string line; std::getline(lines, line);) {
      const size_t eq = line.find(" = ");
      if (eq != std::string::npos) out[line.substr(0, eq)] = line.substr(eq + 3);
    }
    return out;
  };
  const auto was = key_values(recorded), now = key_values(edited);
  std::vector<std::string> changed;
  for (const auto& [key, value] : now) {
    if (key == "threads") continue;  // may change on resume (--set threads=N)
    const auto it = was.find(key);
    if (it == was.end() || it->second != value) {
      changed.push_back(fmt::format("{} = {} (the run's: {})", key, value,
                                    it == was.end() ? "unset" : it->second));
    }
  }
  if (changed.empty()) return;
  input_error(
      "--resume: {} was edited since the run started ({}); a run continues only with the "
      "config it started with: restore the file, or start a new run with --config {}",
      path, fmt::join(changed, "; "), path);
}

}  // namespace

void run_training(const Config& config, const RunOptions& options) {
  execute_run(config, options.data_dir, options.out_dir, options.overwrite, nullptr);
}

void resume_training(const RunOptions& options, int threads) {
  namespace fs = std::filesystem;
  const std::string& dir = options.out_dir;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) input_error("--resume {}: no such run directory", dir);
  if (fs::exists(dir + "/summary.json", ec)) {
    log_info(fmt::format("{}: the run is complete (summary.json exists); nothing to resume", dir));
    return;
  }
  // The newest checkpoint that decodes names the config and the dataset; the dataset's hash then
  // picks the checkpoint (execute_run).
  const LoadedCheckpoint peek = load_newest_checkpoint(dir, 0, false);
  Config config;
  apply_toml(config, peek.checkpoint.meta.value("config", std::string()), peek.path);
  refuse_edited_config(dir + "/config.toml", config);
  if (threads >= 0) config.threads = threads;
  const std::string data_dir = !options.data_dir.empty()
                                   ? options.data_dir
                                   : peek.checkpoint.meta.value("data_dir", std::string());
  // Leftover temporary files of a write that was cut short.
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    if (entry.path().filename().string().find(".tmp.") != std::string::npos) {
      fs::remove(entry.path(), ec);
    }
  }
  execute_run(config, data_dir, dir, false, &peek);
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
  if (d.test_candidates != "all")
    fmt::print("test         ranked among the {} items\n", d.test_candidates);
  for (const TestSet& set : d.test_sets) {
    fmt::print("test set     {} ({}): {} pairs, ranked among {} items\n", set.name, set.file,
               set.pairs.size(), set.candidates);
  }
}

void inspect_run(const std::string& run_dir) {
  namespace fs = std::filesystem;
  const nlohmann::json s = read_json_file(run_dir + "/summary.json");
  fmt::print("run          {} ({}, {})\n", run_dir, s.value("method", "?"),
             s.value("backend", "cpu"));
  fmt::print("dataset      {}\n", s.value("dataset_path", s.value("dataset", "?")));
  auto metrics = [](const nlohmann::json& m) {
    return fmt::format("recall@20 {:.4f}  ndcg@20 {:.4f}  recall@10 {:.4f}  ndcg@10 {:.4f}",
                       m.value("recall@20", 0.0), m.value("ndcg@20", 0.0),
                       m.value("recall@10", 0.0), m.value("ndcg@10", 0.0));
  };
  fmt::print("best epoch   {} of {} (selected on validation {})\n", s.value("best_epoch", -1),
             s.value("epochs_run", 0), s.value("select_metric", "?"));
  if (s.contains("test_at_best")) fmt::print("test         {}\n", metrics(s["test_at_best"]));
  if (s.contains("test_sets_at_best")) {
    for (const auto& [name, m] : s["test_sets_at_best"].items())
      fmt::print("test set     {:<10} {}\n", name, metrics(m));
  }
  if (s.contains("mask_mean_by_modality")) {
    for (const auto& [name, v] : s["mask_mean_by_modality"].items())
      fmt::print("mask         {}: mean {:.3f}\n", name, v.get<double>());
  }
  if (s.contains("mask_file"))
    fmt::print("mask         from {}\n", s["mask_file"].get<std::string>());
  // On planted data (painvrl synth's manifest names each column's kind): the mask per kind.
  const std::string manifest = s.value("dataset_path", std::string()) + "/manifest.json";
  if (fs::exists(run_dir + "/mask.npy") && fs::exists(manifest)) {
    const nlohmann::json man = read_json_file(manifest);
    const std::vector<double> mask = read_npy(run_dir + "/mask.npy").to_double();  // (d)
    if (man.contains("column_kinds") && man["column_kinds"].size() == mask.size()) {
      std::vector<std::string> kinds;
      std::vector<double> sum, count;
      for (size_t c = 0; c < mask.size(); ++c) {
        const std::string kind = man["column_kinds"][c].get<std::string>();
        const size_t k = size_t(std::find(kinds.begin(), kinds.end(), kind) - kinds.begin());
        if (k == kinds.size()) kinds.push_back(kind), sum.push_back(0), count.push_back(0);
        sum[k] += mask[c], count[k] += 1;
      }
      std::string parts;
      for (size_t k = 0; k < kinds.size(); ++k)
        parts += fmt::format("{}{} {:.3f}", k ? "  " : "", kinds[k], sum[k] / count[k]);
      fmt::print("mask         planted columns: {}\n", parts);
    }
  }
  // w_ERM over the mask steps of trace.jsonl (the Pareto objective only).
  std::vector<double> w;
  std::vector<std::vector<int64_t>> him;
  std::ifstream trace(run_dir + "/trace.jsonl");
  for (std::string line; std::getline(trace, line);) {
    const nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_discarded()) continue;
    if (j.contains("w_ERM") && j["w_ERM"].is_number()) w.push_back(j["w_ERM"]);
    if (j.contains("env_sizes")) him.push_back(j["env_sizes"].get<std::vector<int64_t>>());
  }
  if (!him.empty()) {
    fmt::print("HIM          {} rounds; last round's environment sizes [{}]\n", him.size(),
               fmt::join(him.back(), ", "));
  }
  if (!w.empty()) {
    std::vector<double> q = w;
    std::sort(q.begin(), q.end());
    auto at = [&](double f) { return q[size_t(f * double(q.size() - 1) + 0.5)]; };
    int64_t near = 0;
    for (double x : w)
      near += std::fabs(x) < 0.01 || std::fabs(x - 0.5) < 0.01 || std::fabs(x - 1) < 0.01;
    fmt::print(
        "w_ERM        {} mask steps: min {:.3f}  q1 {:.3f}  median {:.3f}  q3 {:.3f}  max {:.3f}; "
        "{:.0f}% within 0.01 of 0, 0.5 or 1\n",
        w.size(), q.front(), at(0.25), at(0.5), at(0.75), q.back(),
        100.0 * double(near) / double(w.size()));
  } else if (fs::exists(run_dir + "/trace.jsonl")) {
    fmt::print("w_ERM        none: the objective is not pareto (no Pareto weight)\n");
  }
}

}  // namespace painvrl
