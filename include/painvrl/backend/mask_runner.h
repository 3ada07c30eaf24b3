// The mask-generation steps of one outer iteration (DESIGN.md section 2, Eq. 10-19), on the CPU
// (host/cpu/mask_runner.cpp: mask_step<double> and the optimisers on the host) or on the device
// (kernels/cuda_mask.cpp: kernels/mask_step.cu). Both draw the same batches, negatives and gate
// noise for a seed and apply the same updates; the pipeline (host/pipeline/mask_stage.cpp) drives
// either one step at a time and reads the steps' records (the trace) with drain(): after every step
// on the CPU, once per epoch on the device, where the per-step scalars stay until then.
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "painvrl/backend/mask_step.h"
#include "painvrl/data/dataset.h"
#include "painvrl/math/philox.h"

namespace painvrl {

// The host copies of the state a mask run reads and updates (owned by the pipeline; saved in
// its checkpoints).
struct MaskRunState {
  std::vector<double>* params = nullptr;  // (layout.total,) the mask model
  std::vector<double>* adam_m = nullptr;
  std::vector<double>* adam_v = nullptr;
  long long* adam_t = nullptr;
  std::vector<double>* mask = nullptr;  // (d,)
  std::vector<double>* mask_m = nullptr;
  std::vector<double>* mask_v = nullptr;
  long long* mask_t = nullptr;
  ParetoScale* scale = nullptr;  // the stage-relative normalisation (pareto_normalize)
};

// The run's settings a mask runner reads (from Config: mask_batch, negatives, sigma, lr,
// adam_beta1, adam_beta2, adam_eps, mask_optimizer, mask_step).
struct MaskRunOptions {
  int32_t mask_batch = 512;  // positives per environment per step
  int32_t negatives = 1;     // N per positive
  double sigma = 0.01;       // gate noise std (Eq. 10)
  double lr = 1e-3, adam_beta1 = 0.9, adam_beta2 = 0.999, adam_eps = 1e-8;  // the mask model
  bool mask_adam = false;   // the mask by Adam on Eq. 19's direction (else sgd with step)
  double mask_step = 0.01;  // s of Eq. 19, or Adam's learning rate for the mask
};

// What one outer iteration's mask generation needs besides its state.
struct MaskRunSetup {
  MaskRunOptions options;
  MaskLayout layout;
  MaskSettings settings;
  MaskProblem<double> problem;  // the frozen backbone, content and graph, in double
  const PairList* train = nullptr;
  int32_t envs = 0;
  math::PhiloxKey neg_key{}, noise_key{};
  // The device runner's term passes read the feature rows in float when every value is exactly a
  // float (variant 2 of bench/mask_step_gpu.cpp; the same results); false: always in double.
  bool fp32_features = true;
};

struct MaskStepRecord {
  int64_t step = 0;
  double w_ERM = 0, L_ERM = 0, L_IRM = 0, mask_mean = 0;
};

// The records of the steps run since the last drain, in order; `failed` names the first step whose
// loss, gradient or mask was not finite (its update was not applied, later steps did nothing).
struct MaskDrain {
  std::vector<MaskStepRecord> records;
  struct Failure {
    int64_t step = 0;
    double L_ERM = 0, L_IRM = 0;
  };
  std::optional<Failure> failed;
};

class MaskRunner {
 public:
  virtual ~MaskRunner() = default;
  // The epoch's environment pair lists (indices into train), in this epoch's shuffled order.
  virtual void begin_epoch(const std::vector<std::vector<int32_t>>& env_pairs, int epoch) = 0;
  virtual void step(int64_t step) = 0;
  // Whether records wait for drain() (the device); the CPU's are ready after every step.
  virtual bool deferred() const = 0;
  virtual MaskDrain drain() = 0;
  // Brings the host state (MaskRunState) up to date: before a checkpoint and at the end.
  virtual void sync_state() = 0;
};

std::unique_ptr<MaskRunner> make_cpu_mask_runner(const MaskRunSetup& setup,
                                                 const MaskRunState& state);

}  // namespace painvrl
