// Algorithm 1 (DESIGN.md section 2) in two layers. The scheduler, run_algorithm1
// (host/pipeline/algorithm1.cpp), is the paper's loop and nothing else: stage 0, T rounds of
// environment identification and mask generation, the final model. Each stage runs under a
// StageRunner (host/pipeline/stage_runner.cpp), the layer that owns resume and checkpoints: it
// skips the stages a resumed run had finished, hands a stage its checkpoint when the run stopped
// inside it, saves the pipeline's state at every stage boundary, writes each stage's outputs
// (environments-<t>.tsv, mask.npy) and times the stages for the summary.
#pragma once
#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <ostream>
#include <string>
#include <vector>

#include "painvrl/backend/mask_step.h"
#include "painvrl/pipeline/checkpoint.h"
#include "painvrl/pipeline/config.h"
#include "painvrl/pipeline/stages.h"

namespace painvrl {

// The mask model of one outer iteration with its optimiser and the progress-line sums.
struct MaskStageState {
  std::vector<double> params, adam_m, adam_v;  // (ml.total,)
  long long adam_t = 0;
  ParetoScale scale;  // pareto_normalize = initial | running
  double sum_w = 0, sum_erm = 0, sum_irm = 0;
  int64_t n_steps = 0;

  void save(Checkpoint& ck) const;
  void load(const Checkpoint& ck);
};

// What the pipeline carries from stage to stage; saved in every checkpoint it writes (env and
// mask_model only in those of mask generation).
struct PipelineState {
  std::vector<float> backbone;               // (bl.total,) stage-0 parameters; empty once final
  std::vector<double> mask, mask_m, mask_v;  // (d,) m and its Adam moments (mask_optimizer adam)
  long long mask_t = 0;
  double pretrain_seconds = 0, him_seconds = 0, mask_seconds = 0;  // for the summary
  int64_t him_model_epochs = 0, mask_steps = 0;
  std::vector<int32_t> env;   // (training pairs,) this outer iteration's environments
  MaskStageState mask_model;  // this outer iteration's mask model

  void save(Checkpoint& ck) const;
  void load(const Checkpoint& ck);
};

// A stage's place in Algorithm 1.
struct StageKey {
  enum Kind { kPretrain, kHim, kMask, kFinal } kind = kPretrain;
  int outer = 0;
};

class StageRunner {
 public:
  StageRunner(const Config& c, const Evaluator& eval, const std::string& run_dir,
              std::ostream& metrics_out, std::ostream& trace, nlohmann::json& summary,
              CheckpointStore* store, const Checkpoint* resume);
  PipelineState& state() { return s_; }
  std::ostream& trace() { return trace_; }
  std::ostream& metrics() { return metrics_out_; }
  // Runs `body` unless the resumed run had finished this stage; `body` checkpoints through the
  // StageCheckpoints it gets (with the resume checkpoint when the run stopped inside the stage).
  void stage(StageKey key, const std::function<void(const StageCheckpoints&)>& body);
  // The final model: writes mask.npy and the summary's mask and stage fields first.
  SelectionResult final_stage(const std::function<SelectionResult(const StageCheckpoints&)>& body);

 private:
  int order(StageKey key) const;
  void save_at(const Position& pos, bool with_mask_stage);
  const Config& c_;
  const Evaluator& eval_;
  std::string run_dir_;
  std::ostream& metrics_out_;
  std::ostream& trace_;
  nlohmann::json& summary_;
  CheckpointStore* store_;
  const Checkpoint* resume_;
  int resume_order_ = 0;        // the stage the resumed run stopped in (or before)
  bool resume_inside_ = false;  // it stopped inside that stage (else at its start)
  double round_seconds_ = 0;    // HIM and mask generation of the current outer iteration
  PipelineState s_;
};

// The scheduler: Algorithm 1 as the paper writes it, every stage under `run`.
SelectionResult run_algorithm1(const Config& c, const Evaluator& eval, StageRunner& run);

// The stages it calls (besides train_fixed and train_with_selection of stages.h).
// HIM on psi = (1 - m) f (or the dataset's environments.tsv with environments = file); adds the
// environment models' epochs to *model_epochs.
std::vector<int32_t> environments_for_round(const Config& c, const Evaluator& eval,
                                            const std::vector<double>& mask,
                                            const std::vector<float>& backbone, int outer,
                                            std::ostream& trace, int64_t* model_epochs);
// A fresh mask model for outer iteration `outer` (init_mask_params, then stage 0's W, b with
// mask_w_init = pretrained), its Adam moments zero.
MaskStageState fresh_mask_model(const Config& c, const Dataset& data,
                                const std::vector<float>& backbone, int outer);
// mask_epochs epochs of mask generation on s.env with s.mask_model, updating s.mask; one trace
// line per step. Checkpoints (s and the stage's position) through `stage`.
void generate_mask(const Config& c, const Evaluator& eval, const MaskSettings& ms, PipelineState& s,
                   int outer, std::ostream& trace, const StageCheckpoints& stage);

}  // namespace painvrl
