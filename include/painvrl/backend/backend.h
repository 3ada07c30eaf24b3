// The backend interface the scheduler drives. The CPU backend (host/cpu/cpu_backend.cpp) implements
// it completely; the CUDA backend implements the same functions with kernels. A backend owns the
// parameters (one contiguous buffer with a ParamLayout), the gradients and Adam moments, and
// draws its own negatives from the shared counter-based generator, so per-step data never
// crosses from the host; the host sees one summary per epoch.
#pragma once
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "painvrl/backend/model.h"
#include "painvrl/data/dataset.h"
#include "painvrl/data/graph.h"

namespace painvrl {

struct AdamSettings {
  double lr = 1e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
};

struct TrainSetup {
  ParamLayout layout;
  LossSettings loss;
  AdamSettings adam;
  int32_t negatives = 1;  // N
  int32_t batch_size = 512;
  uint64_t seed = 0;
  uint32_t stage = 0;  // keys the random streams of this training stage
  double init_std = 1e-3;
  // Parameter tensors held fixed (bits of Frozen): the optimiser skips them. HIM's environment
  // models with him_train = content | projection share the stage-0 ID branch this way.
  uint8_t frozen = 0;
  bool tf32 = false;           // the CUDA backend's fp32 GEMMs on TF32 tensor cores (Config::tf32)
  bool deterministic = false;  // the CUDA backend's fixed-order gradient sums
};

enum Frozen : uint8_t { kFrozenPt = 1, kFrozenPf = 2, kFrozenT = 4, kFrozenWb = 8 };

struct EpochStats {
  double loss_total = 0;  // sum over the epoch's steps of the batch loss
  double loss_main = 0, loss_item_item = 0, loss_l2 = 0;
  int64_t steps = 0;  // steps done; train_steps continues from here
  int64_t pairs = 0;
  bool stopped = false;   // train_steps returned early because a stop was requested
  bool diverged = false;  // the loss of step `steps` was not finite (the run stops there)
};

// The optimiser's whole state (a checkpoint of a backbone stage).
struct OptimizerState {
  std::vector<float> params, adam_m, adam_v;  // (layout.total,) each
  long long adam_t = 0;                       // Adam steps taken
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;
  // Binds the problem (graph and features must outlive the backend) and initialises parameters.
  virtual void setup(const TrainSetup& setup, const Graph& graph,
                     const std::vector<float>& features) = 0;
  // Steps of an epoch over the given (already shuffled) positives, in batches of
  // setup.batch_size, from step `stats.steps` on, adding to `stats`. Returns at the epoch's end,
  // after a step once `stop` returns true (stats.stopped), or at a step whose loss is not finite
  // (stats.diverged; that step is not counted, though its update was applied: the run stops).
  virtual void train_steps(const PairList& shuffled, uint32_t epoch, EpochStats& stats,
                           bool (*stop)() = nullptr) = 0;
  // One whole epoch.
  EpochStats train_epoch(const PairList& shuffled, uint32_t epoch) {
    EpochStats stats;
    train_steps(shuffled, epoch, stats);
    return stats;
  }
  // Scoring for evaluation: prepare once per evaluation, then score blocks of users.
  virtual void prepare_scoring() = 0;
  virtual void score(const int32_t* users, int64_t count, float* out) = 0;  // (count, n_items)
  // Scores of individual pairs (after prepare_scoring): out[p] = s(users[p], items[p]).
  virtual void score_pairs(const int32_t* users, const int32_t* items, int64_t count,
                           float* out) = 0;
  // Ranking on the backend's device (after prepare_scoring), for evaluate_ranked: returns false
  // when the backend does not rank (the caller ranks score()'s output on the host); otherwise
  // binds each user's excluded items and the candidates (n_items, or empty: all) for rank(),
  // which fills ranked (count, k) in host_ranker's order (evaluate.h). Both must outlive the
  // evaluation.
  virtual bool prepare_ranking(const UserItemCsr& /*exclude*/,
                               const std::vector<uint8_t>& /*candidates*/) {
    return false;
  }
  virtual void rank(const int32_t* /*users*/, int64_t /*count*/, int /*k*/, int32_t* /*ranked*/) {
    throw std::logic_error("rank(): this backend ranks on the host (prepare_ranking is false)");
  }
  // Host copy of the parameters (layout order).
  virtual std::vector<float> parameters() const = 0;
  virtual void set_parameters(const std::vector<float>& params) = 0;
  // Parameters with the Adam moments and step count, for checkpoints.
  virtual OptimizerState optimizer_state() const = 0;
  virtual void set_optimizer_state(const OptimizerState& state) = 0;
};

std::unique_ptr<Backend> make_cpu_backend();

// The initial parameters of a stage (layout order): Pt, Pf, T and W drawn N(0, init_std^2) from
// the counter-based generator keyed by (seed, stage), b zero. Every backend starts from these.
std::vector<float> initial_parameters(const TrainSetup& setup);

}  // namespace painvrl
