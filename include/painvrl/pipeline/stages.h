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

#include "painvrl/backend/backend.h"
#include "painvrl/backend/draws.h"
#include "painvrl/backend/mask_runner.h"
#include "painvrl/backend/mask_step.h"
#include "painvrl/data/dataset.h"
#include "painvrl/data/graph.h"
#include "painvrl/math/philox.h"
#include "painvrl/pipeline/checkpoint.h"
#include "painvrl/pipeline/config.h"
#include "painvrl/pipeline/evaluate.h"

namespace painvrl {

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

// The stop-request exit of HIM's training (it keeps no checkpoint of its own), and its exit on a
// non-finite loss.
[[noreturn]] void him_interrupted(int epoch, int64_t step);
[[noreturn]] void him_diverged(int epoch, int64_t step);
// The pipeline's hooks for HIM training on the device: stop_requested and the two above.
HimHooks him_hooks();

// Environments read from a `user item env ...` table (e.g. the synthetic data's planted ones,
// for diagnostics), for each of `pairs`; ids renumbered 0.. in order.
std::vector<int32_t> environments_from_file(const std::string& path, const PairList& pairs);

// Tests: the runner the mask stage uses where it would use the CPU's (nullptr: the CPU's), e.g.
// one that, like the device runner, updates the host state only in sync_state().
using MaskRunnerFactory = std::unique_ptr<MaskRunner> (*)(const MaskRunSetup&, const MaskRunState&);
void set_mask_runner_factory_for_testing(MaskRunnerFactory factory);

// Pieces of one mask-generation step, shared by the pipeline and `debug-step`.
MaskSettings mask_settings_from(const Config& c);
MaskRunOptions mask_run_options(const Config& c);
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
