// The draws and batch plans the backends share (include/painvrl/backend/draws.h).
#include "painvrl/backend/draws.h"

#include <algorithm>

#include "painvrl/math/sampling.h"

namespace painvrl {

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

HimEpochRows him_epoch_rows(const std::vector<PairList>& env_pairs, uint64_t seed,
                            const std::vector<uint32_t>& stages, uint32_t epoch, int32_t batch) {
  const int E = int(env_pairs.size());
  std::vector<PairList> shuffled(static_cast<size_t>(E));
  int64_t steps = 0;
  for (int e = 0; e < E; ++e) {
    shuffle_pairs(env_pairs[e], shuffled[e], seed, stages[e], epoch);
    steps = std::max<int64_t>(steps, (int64_t(shuffled[e].size()) + batch - 1) / batch);
  }
  HimEpochRows plan;
  plan.step_offsets = {0};
  plan.active.assign(size_t(steps * E), 0);
  for (int64_t step = 0; step < steps; ++step) {
    for (int e = 0; e < E; ++e) {
      const int64_t begin = step * batch, size = int64_t(shuffled[e].size());
      if (begin >= size) continue;
      plan.active[size_t(step * E + e)] = 1;
      for (int64_t p = begin; p < std::min<int64_t>(size, begin + batch); ++p) {
        plan.users.push_back(shuffled[e].user[p]);
        plan.items.push_back(shuffled[e].item[p]);
        plan.envs.push_back(e);
        plan.index.push_back(int32_t(p - begin));
      }
    }
    plan.step_offsets.push_back(int64_t(plan.users.size()));
  }
  return plan;
}

void draw_noise(math::PhiloxKey key, uint32_t epoch, uint32_t step, uint32_t env, int64_t d,
                float sigma, float* eps) {
  for (int64_t j = 0; j < d; ++j)
    eps[j] = math::mask_noise(key, epoch, step, env, uint64_t(j), sigma);
}

EnvBatches make_mask_batches(const PairList& train,
                             const std::vector<std::vector<int32_t>>& env_pairs, int32_t mask_batch,
                             int32_t negatives, int32_t n_items, math::PhiloxKey neg_key,
                             uint32_t epoch, int64_t step) {
  EnvBatches batches;
  batches.env_offsets = {0};
  batches.n_negatives = negatives;
  for (const auto& v : env_pairs) {
    const int64_t n = int64_t(v.size());
    const int64_t rows = std::min<int64_t>(mask_batch, n);
    for (int64_t r = 0; r < rows; ++r) {  // exhausted environments restart (wrap around)
      const int32_t p = v[size_t((step * mask_batch + r) % n)];
      const uint32_t row = uint32_t(batches.users.size());
      batches.users.push_back(train.user[p]);
      batches.items.push_back(train.item[p]);
      for (int32_t s = 0; s < negatives; ++s) {
        batches.negatives.push_back(int32_t(math::negative_item(neg_key, epoch, uint32_t(step), row,
                                                                uint32_t(s), uint32_t(n_items))));
      }
    }
    batches.env_offsets.push_back(int64_t(batches.users.size()));
  }
  return batches;
}

}  // namespace painvrl
