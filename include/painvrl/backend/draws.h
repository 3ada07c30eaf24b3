// The random draws and batch plans every backend shares, so that a seed gives the same run on
// the CPU and on the device: each stage's random-stream number, the epoch's shuffle, the rows
// of HIM's E environment models trained together, the mask step's batches, negatives and gate
// noise. Pure functions of their arguments (Philox4x32-10, include/painvrl/math/philox.h).
#pragma once
#include <cstdint>
#include <vector>

#include "painvrl/backend/mask_step.h"
#include "painvrl/data/dataset.h"
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

// Fisher-Yates shuffle keyed by (seed, stage, epoch): the same order on every backend.
void shuffle_pairs(const PairList& in, PairList& out, uint64_t seed, uint32_t stage,
                   uint32_t epoch);

// One epoch of HIM's E models trained together (CPU and CUDA backends alike): each model's pairs
// shuffled as a backbone stage would (keyed by stages[e]); step s takes batch s of every model
// that still has one, model by model.
struct HimEpochRows {
  std::vector<int32_t> users, items, envs;  // (rows of the epoch,) envs: the row's model
  std::vector<int32_t> index;               // (rows,) the row's position in its model's batch
  std::vector<int64_t> step_offsets;        // (steps + 1,) rows of step s: [offsets[s], [s + 1])
  std::vector<uint8_t> active;              // (steps, E) model e has a batch in step s
  int64_t steps() const { return int64_t(step_offsets.size()) - 1; }
};
HimEpochRows him_epoch_rows(const std::vector<PairList>& env_pairs, uint64_t seed,
                            const std::vector<uint32_t>& stages, uint32_t epoch, int32_t batch);

// How HIM's model training reports back to the pipeline that drives it: `stop` is polled before
// every step; `interrupted` and `diverged` do not return (they throw the pipeline's errors).
struct HimHooks {
  bool (*stop)() = nullptr;
  void (*interrupted)(int epoch, int64_t step) = nullptr;
  void (*diverged)(int epoch, int64_t step) = nullptr;
};

// One batch of `mask_batch` positives per environment (wrapping around an exhausted one), with
// negatives drawn from (epoch, step, row, slot).
EnvBatches make_mask_batches(const PairList& train,
                             const std::vector<std::vector<int32_t>>& env_pairs, int32_t mask_batch,
                             int32_t negatives, int32_t n_items, math::PhiloxKey neg_key,
                             uint32_t epoch, int64_t step);
// Gate noise for environment e: eps (d) ~ N(0, sigma^2) from (epoch, step, e, j).
void draw_noise(math::PhiloxKey key, uint32_t epoch, uint32_t step, uint32_t env, int64_t d,
                float sigma, float* eps);

}  // namespace painvrl
