// The training stages the scheduler composes (DESIGN.md section 2, Algorithm 1): a backbone
// trained for fixed epochs (stage 0, environment models), a backbone trained with evaluation and
// validation-based selection (baselines, the final model), heterogeneous environment
// identification, and the PaInvRL / InvRL pipeline.
#pragma once
#include <algorithm>
#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <ostream>
#include <string>
#include <vector>

#include "painvrl/backend.h"
#include "painvrl/checkpoint.h"
#include "painvrl/config.h"
#include "painvrl/dataset.h"
#include "painvrl/evaluate.h"
#include "painvrl/graph.h"
#include "painvrl/mask_step.h"
#include "painvrl/math/philox.h"

namespace painvrl {

// Random-stream stage numbers: every stage draws from its own streams.
namespace stage_id {
constexpr uint32_t kPretrain = 0;
constexpr uint32_t kFinal = 1;
constexpr uint32_t kBaseline = 2;
inline uint32_t him_model(int outer, int round, int env) {
  return 1000000u + uint32_t(outer) * 100000u + uint32_t(round) * 1000u + uint32_t(env);
}
inline uint32_t mask(int outer) { return 3000000u + uint32_t(outer); }
inline uint32_t him_init(int outer) { return 4000000u + uint32_t(outer); }
}  // namespace stage_id

// Columns of f (n_items, d) scaled by a per-column factor (d,): the final model's Phi = m * f,
// which `recommend` and `export` rebuild from mask.npy, and the mask step's Psi = (1 - m) * f.
std::vector<float> scale_columns(const std::vector<float>& f, int64_t d,
                                 const std::vector<float>& factor);

// Checkpointing of one stage. With a store the stage saves its state every
// store->due(epochs) epochs and when a stop is requested (then throws Interrupted); `resume`, when
// set, is a checkpoint inside this stage to continue from. `context` adds the caller's state
// (the mask, the stage-0 backbone, ...) to every checkpoint the stage writes. Without a store a
// stop request still ends the stage (Interrupted) but nothing is saved.
struct StageCheckpoints {
  CheckpointStore* store = nullptr;
  const Checkpoint* resume = nullptr;
  std::string phase;  // recorded in Position
  int outer = 0;
  std::function<void(Checkpoint&)> context;
};

// Saves `ck` through the stage's store (if any) and throws Interrupted naming where the run
// stopped and how to continue.
[[noreturn]] void stop_stage(const StageCheckpoints* sc, Checkpoint& ck, const std::string& what);

TrainSetup make_train_setup(const Config& c, int32_t n_users, int32_t n_items, int64_t feat_dim,
                            bool content, uint32_t stage);

// Fisher-Yates shuffle keyed by (seed, stage, epoch): the same order on every backend.
void shuffle_pairs(const PairList& in, PairList& out, uint64_t seed, uint32_t stage,
                   uint32_t epoch);

// A backbone trained for `epochs` epochs on `pairs`, no evaluation; progress every epoch when
// `label` is not empty. With `start`, the parameters begin from it (same layout) instead of a
// random draw; `frozen` (bits of Frozen) names tensors the optimiser leaves as they are.
std::unique_ptr<Backend> train_fixed(const Config& c, const Graph& graph, const PairList& pairs,
                                     const std::vector<float>& features, int64_t feat_dim,
                                     bool content, uint32_t stage, int epochs,
                                     const std::string& label,
                                     const std::vector<float>* start = nullptr, uint8_t frozen = 0,
                                     const StageCheckpoints* checkpoints = nullptr);

struct SelectionResult {
  int best_epoch = -1;
  Metrics best_valid, test_at_best;
  int epochs_run = 0;
  bool stopped_early = false;
  double train_seconds = 0;
  int64_t pairs_trained = 0;
  std::vector<float> best_params;  // the parameters at best_epoch (layout order)
  ParamLayout layout;
  // The dataset's further test sets ([[test_set]]) at best_epoch, in the dataset's order.
  std::vector<std::pair<std::string, Metrics>> test_sets_at_best;
};

// Evaluation on a held-out split with the configured ranking candidates.
struct Evaluator {
  const Config& config;
  const Dataset& data;
  const Graph& graph;
  // (n_items,) the test's ranking candidates; empty: all items. Validation always ranks among
  // all items: in the cold-item protocol it holds warm items (model selection), the test cold ones.
  std::vector<uint8_t> candidates;
  std::vector<uint8_t> cold;  // (n_items,) 1 for the items without training pairs
  Evaluator(const Config& c, const Dataset& d, const Graph& g);
  Metrics run(const ScoreFn& score, const PairList& heldout, bool is_test) const;
  // The backend must have been through prepare_scoring() since its last update.
  Metrics run(Backend& backend, const PairList& heldout, bool is_test) const;
  // Every further test set of the dataset, each with its own candidates.
  std::vector<std::pair<std::string, Metrics>> run_test_sets(const ScoreFn& score) const;
  std::vector<std::pair<std::string, Metrics>> run_test_sets(Backend& backend) const;
};

// Trains a backbone with periodic evaluation, early stopping on the validation metric, and test
// metrics at the best validation point; one metrics.jsonl line per evaluation.
SelectionResult train_with_selection(const Config& c, const Evaluator& eval,
                                     const std::vector<float>& features, bool content,
                                     uint32_t stage, const std::string& stage_name,
                                     std::ostream& metrics_out,
                                     const StageCheckpoints* checkpoints = nullptr);

// Heterogeneous environment identification (Sec. 3.3, Eq. 9): E backbones on psi = (1 - m) f,
// random initial assignment, rounds of train-then-reassign by argmax, stop at <= tol moved or
// after the maximum rounds; an emptied environment is re-seeded from the largest. With
// c.him_train = content | projection the models start from `backbone` (a stage-0 parameter
// vector, required then) with its ID branch frozen (see config.h). Returns the environment of
// each pair; appends one trace line per round.
std::vector<int32_t> identify_environments(const Config& c, const Graph& graph,
                                           const PairList& pairs, const std::vector<float>& psi,
                                           int64_t feat_dim, int envs, int outer,
                                           const std::vector<float>* backbone, std::ostream* trace,
                                           int* rounds_run = nullptr);

// The mask of mask_file: d values in [0, 1] (InputError naming the file otherwise).
std::vector<double> read_mask_file(const std::string& path, int64_t d);

// HIM's environment models with him_train = projection, trained as one computation: model e
// starts from the stage-0 backbone's W, b, trains `epochs` epochs on env_pairs[e] (shuffle and
// negatives keyed by stages[e], as train_fixed would) with Pt, Pf, T frozen; all models' rows go
// through one loss evaluation per step (cpu::env_projection_loss_grad). Returns W_all (E * D, d)
// followed by b_all (E * D).
std::vector<float> train_env_models_projection(const Config& c, const Graph& graph,
                                               const std::vector<PairList>& env_pairs,
                                               const std::vector<float>& psi, int64_t feat_dim,
                                               const std::vector<float>& backbone,
                                               const std::vector<uint32_t>& stages, int epochs);

// One epoch of HIM's E models trained together (CPU and CUDA backends alike): each model's pairs
// shuffled as train_fixed would (keyed by stages[e]); step s takes batch s of every model that
// still has one, model by model.
struct HimEpochRows {
  std::vector<int32_t> users, items, envs;  // (rows of the epoch,) envs: the row's model
  std::vector<int32_t> index;               // (rows,) the row's position in its model's batch
  std::vector<int64_t> step_offsets;        // (steps + 1,) rows of step s: [offsets[s], [s + 1])
  std::vector<uint8_t> active;              // (steps, E) model e has a batch in step s
  int64_t steps() const { return int64_t(step_offsets.size()) - 1; }
};
HimEpochRows him_epoch_rows(const std::vector<PairList>& env_pairs, uint64_t seed,
                            const std::vector<uint32_t>& stages, uint32_t epoch, int32_t batch);
// The stop-request exit of HIM's training (it keeps no checkpoint of its own), and its exit on a
// non-finite loss.
[[noreturn]] void him_interrupted(int epoch, int64_t step);
[[noreturn]] void him_diverged(int epoch, int64_t step);

// Environments read from a `user item env ...` table (e.g. the synthetic data's planted ones,
// for diagnostics), for each of `pairs`; ids renumbered 0.. in order.
std::vector<int32_t> environments_from_file(const std::string& path, const PairList& pairs);

// Pieces of one mask-generation step, shared by the pipeline and `debug-step`.
MaskSettings mask_settings_from(const Config& c);
// One batch of `mask_batch` positives per environment (wrapping around an exhausted one), with
// negatives drawn from (epoch, step, row, slot).
EnvBatches make_mask_batches(const PairList& train,
                             const std::vector<std::vector<int32_t>>& env_pairs, int32_t mask_batch,
                             int32_t negatives, int32_t n_items, math::PhiloxKey neg_key,
                             uint32_t epoch, int64_t step);
// Gate noise for environment e: eps (d) ~ N(0, sigma^2) from (epoch, step, e, j).
void draw_noise(math::PhiloxKey key, uint32_t epoch, uint32_t step, uint32_t env, int64_t d,
                float sigma, float* eps);
// W ~ N(0, init_std), b = 0; attention layers N(0, 1 / fan_in), their hidden biases 0 and their
// output biases +attention_bias (alpha_Phi's MLP) and -attention_bias (alpha_Psi's).
std::vector<float> init_mask_params(const MaskLayout& L, uint64_t seed, uint32_t stage,
                                    double init_std, double attention_bias);

// With mask_w_init = pretrained: the mask model's W and b start from the stage-0 backbone's (the
// mask gradients are proportional to W; a near-zero random W gives the mask no signal at first).
template <class P>
void seed_mask_model(const Config& c, const std::vector<float>& backbone, const ParamLayout& bl,
                     const MaskLayout& ml, std::vector<P>& params) {
  if (c.mask_w_init != "pretrained") return;
  std::copy(backbone.begin() + bl.w, backbone.begin() + bl.b, params.begin() + ml.W);
  std::copy(backbone.begin() + bl.b, backbone.begin() + bl.total, params.begin() + ml.b);
}

// The invrl / painvrl pipeline: stage 0, T outer iterations of HIM and mask generation, the
// final model on Phi = m * f. Writes mask.npy and environments-<t>.tsv into run_dir, one line
// per HIM round and mask step into `trace`. With a store it checkpoints at every stage's end and
// within stages; `resume` (any phase of this pipeline) continues from that checkpoint.
SelectionResult run_invariant_pipeline(const Config& c, const Evaluator& eval,
                                       const std::string& run_dir, std::ostream& metrics_out,
                                       std::ostream& trace, nlohmann::json& summary,
                                       CheckpointStore* store = nullptr,
                                       const Checkpoint* resume = nullptr);

}  // namespace painvrl
