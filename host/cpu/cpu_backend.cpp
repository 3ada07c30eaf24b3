// The CPU backend: the UltraGCN step (negatives, forward/backward, fused L2 + Adam) with OpenMP,
// deterministic for any thread count (see cpu/ultragcn_loss.h), and BLAS scoring.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>

#include "painvrl/backend/backend.h"
#include "painvrl/cpu/ultragcn_loss.h"
#include "painvrl/math/adam.h"
#include "painvrl/math/sampling.h"

namespace painvrl {

ParamLayout ParamLayout::make(int32_t n_users, int32_t n_items, int32_t dim, int64_t feat_dim,
                              bool content) {
  ParamLayout L;
  L.n_users = n_users;
  L.n_items = n_items;
  L.dim = dim;
  L.content = content;
  L.feat_dim = content ? feat_dim : 0;
  const int64_t D = dim;
  int64_t off = 0;
  L.pt = off;
  off += int64_t(n_users) * D;
  L.pf = off;
  if (content) off += int64_t(n_users) * D;
  L.t = off;
  off += int64_t(n_items) * D;
  L.w = off;  // embeddings end here
  if (content) off += D * L.feat_dim;
  L.b = off;
  if (content) off += D;
  L.total = off;
  return L;
}

namespace {

class CpuBackend final : public Backend {
 public:
  std::string name() const override { return "cpu"; }

  void setup(const TrainSetup& setup, const Graph& graph,
             const std::vector<float>& features) override {
    // Measured: ultragcn-mm on ML-100K 3.5x slower per epoch with OpenBLAS's threads active too.
    cpu::use_single_threaded_blas();
    setup_ = setup;
    graph_ = &graph;
    features_ = &features;
    const ParamLayout& L = setup.layout;
    params_ = initial_parameters(setup);
    grad_.assign(size_t(L.total), 0.f);
    adam_m_.assign(size_t(L.total), 0.f);
    adam_v_.assign(size_t(L.total), 0.f);
    adam_t_ = 0;
    problem_.beta_user = graph.beta_user.data();
    problem_.beta_item = graph.beta_item.data();
    problem_.ii_neighbors = graph.ii_neighbors.data();
    problem_.ii_weights = graph.ii_weights.data();
    problem_.ii_k = graph.ii_k;
    problem_.features = L.content ? features.data() : nullptr;
    negatives_.resize(size_t(setup.batch_size) * setup.negatives);
    // The optimiser's chunks: each tensor (Pt, Pf, T, W and b) cut into pieces of kChunk.
    chunks_.clear();
    frozen_sums_valid_ = false;
    const int64_t bounds[5] = {L.pt, L.pf, L.t, L.w, L.total};
    const uint8_t bits[4] = {kFrozenPt, kFrozenPf, kFrozenT, kFrozenWb};
    for (int k = 0; k < 4; ++k) {
      for (int64_t b = bounds[k]; b < bounds[k + 1]; b += kChunk) {
        chunks_.push_back(
            Chunk{b, std::min(b + kChunk, bounds[k + 1]), (setup.frozen & bits[k]) != 0, k < 3});
      }
    }
  }

  void train_steps(const PairList& shuffled, uint32_t epoch, EpochStats& stats,
                   bool (*stop)()) override {
    const ParamLayout& L = setup_.layout;
    const int64_t P = int64_t(shuffled.size());
    const int64_t B = setup_.batch_size;
    const int32_t N = setup_.negatives;
    const math::PhiloxKey neg_key =
        math::make_key(setup_.seed, math::stream_id(math::RngStream::kNegative, setup_.stage));
    stats.stopped = stats.diverged = false;
    const bool touched = setup_.loss.l2_touched;
    const float emb_l2 = touched ? 0.f : float(2 * setup_.loss.gamma_emb);
    const float w_l2 = float(2 * setup_.loss.gamma_w);
    for (int64_t step = stats.steps, begin = step * B; begin < P; begin += B, ++step) {
      if (stop && stop()) {
        stats.stopped = true;
        return;
      }
      const int64_t rows = std::min(B, P - begin);
      // Negatives for this step, drawn from (epoch, step, row, slot).
#pragma omp parallel for schedule(static)
      for (int64_t r = 0; r < rows; ++r) {
        math::negative_row(neg_key, epoch, uint32_t(step), uint32_t(r), uint32_t(N),
                           uint32_t(L.n_items), negatives_.data() + size_t(r) * N);
      }
      Batch batch{shuffled.user.data() + begin, shuffled.item.data() + begin, negatives_.data(),
                  rows, N};
      LossTerms<float> t = cpu::ultragcn_loss_grad<float>(L, params_.data(), problem_, batch,
                                                          setup_.loss, grad_.data(), false, ws_);
      // Full-table L2: its value comes from the Adam pass (the parameters this step used).
      const L2Sums l2 = adam_step(emb_l2, w_l2);
      double l2_term = setup_.loss.gamma_emb * t.l2_emb + setup_.loss.gamma_w * t.l2_w;
      if (!touched) {
        l2_term = setup_.loss.gamma_emb * l2.emb + setup_.loss.gamma_w * l2.w;
        t.total += float(l2_term);
      }
      // A non-finite loss (or, through the full-table L2, non-finite parameters left by the
      // previous step's gradient) ends the epoch; the caller stops the run.
      if (!std::isfinite(t.total)) {
        stats.diverged = true;
        return;
      }
      stats.loss_total += t.total;
      stats.loss_main += t.main;
      stats.loss_item_item += setup_.loss.kappa * t.item_item;
      stats.loss_l2 += l2_term;
      stats.steps += 1;
      stats.pairs += rows;
    }
  }

  void prepare_scoring() override {
    cpu::build_item_rows<float>(setup_.layout, params_.data(), features_->data(), item_rows_);
  }

  void score(const int32_t* users, int64_t count, float* out) override {
    cpu::score_users<float>(setup_.layout, params_.data(), item_rows_, users, count, out);
  }

  void score_pairs(const int32_t* users, const int32_t* items, int64_t count, float* out) override {
    const ParamLayout& L = setup_.layout;
    const int32_t D = L.dim;
    const int32_t width = L.content ? 2 * D : D;
#pragma omp parallel for schedule(static)
    for (int64_t p = 0; p < count; ++p) {
      const float* item = item_rows_.data() + size_t(items[p]) * width;
      const float* pt = params_.data() + L.pt + size_t(users[p]) * D;
      float s = 0;
      for (int32_t k = 0; k < D; ++k) s += pt[k] * item[k];
      if (L.content) {
        const float* pf = params_.data() + L.pf + size_t(users[p]) * D;
        for (int32_t k = 0; k < D; ++k) s += pf[k] * item[D + k];
      }
      out[p] = s;
    }
  }

  std::vector<float> parameters() const override { return params_; }
  void set_parameters(const std::vector<float>& params) override {
    params_ = params;
    frozen_sums_valid_ = false;
  }
  OptimizerState optimizer_state() const override {
    return OptimizerState{params_, adam_m_, adam_v_, adam_t_};
  }
  void set_optimizer_state(const OptimizerState& state) override {
    const size_t n = size_t(setup_.layout.total);
    if (state.params.size() != n || state.adam_m.size() != n || state.adam_v.size() != n) {
      throw std::invalid_argument("set_optimizer_state: the state does not match the layout");
    }
    params_ = state.params;
    adam_m_ = state.adam_m;
    adam_v_ = state.adam_v;
    adam_t_ = state.adam_t;
    frozen_sums_valid_ = false;
  }

 private:
  struct L2Sums {
    double emb = 0, w = 0;  // sum of squares of the embeddings and of W, b before the update
  };

  // Fused L2 gradient + Adam + gradient zeroing + the L2 value, one pass over the parameters.
  // The sums of squares are taken in fixed chunks of kChunk parameters added in order, so the
  // value is the same for any thread count (like the parameters themselves).
  L2Sums adam_step(float emb_l2_coef, float w_l2_coef) {
    ++adam_t_;
    const AdamSettings& a = setup_.adam;
    const math::AdamStep s =
        math::make_adam_step(float(a.lr), float(a.beta1), float(a.beta2), float(a.eps), adam_t_);
    float* p = params_.data();
    float* g = grad_.data();
    float* m = adam_m_.data();
    float* v = adam_v_.data();
    const int64_t n_chunks = int64_t(chunks_.size());
    chunk_sums_.resize(chunks_.size());
#pragma omp parallel for schedule(static)
    for (int64_t c = 0; c < n_chunks; ++c) {
      const Chunk& ch = chunks_[size_t(c)];
      float sum = 0.f;
      if (ch.frozen) {  // constant until set_parameters(): summed once
        if (frozen_sums_valid_) {
          sum = chunk_sums_[size_t(c)];
        } else {
#pragma omp simd reduction(+ : sum)
          for (int64_t k = ch.begin; k < ch.end; ++k) sum += p[k] * p[k];
        }
        std::memset(g + ch.begin, 0, size_t(ch.end - ch.begin) * sizeof(float));
      } else {
        const float l2_coef = ch.embedding ? emb_l2_coef : w_l2_coef;
#pragma omp simd reduction(+ : sum)
        for (int64_t k = ch.begin; k < ch.end; ++k) {
          sum += p[k] * p[k];
          math::adam_update(p[k], m[k], v[k], g[k], l2_coef, s);
          g[k] = 0.f;
        }
      }
      chunk_sums_[size_t(c)] = sum;
    }
    frozen_sums_valid_ = true;
    L2Sums out;
    for (size_t c = 0; c < chunks_.size(); ++c) {
      (chunks_[c].embedding ? out.emb : out.w) += double(chunk_sums_[c]);
    }
    return out;
  }

  TrainSetup setup_;
  const Graph* graph_ = nullptr;
  const std::vector<float>* features_ = nullptr;
  LossProblem<float> problem_;
  std::vector<float> params_, grad_, adam_m_, adam_v_;  // (layout.total,) each
  long long adam_t_ = 0;
  std::vector<int32_t> negatives_;  // (batch_size, N)
  cpu::LossWorkspace<float> ws_;
  std::vector<float> item_rows_;  // (n_items, D or 2D)
  struct Chunk {
    int64_t begin, end;
    bool frozen, embedding;
  };
  std::vector<Chunk> chunks_;      // the parameter buffer in pieces of at most kChunk
  std::vector<float> chunk_sums_;  // (chunks_.size(),) sums of squares
  static constexpr int64_t kChunk = 16384;
  bool frozen_sums_valid_ = false;  // chunk_sums_ of frozen chunks are current
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend() { return std::make_unique<CpuBackend>(); }

std::vector<float> initial_parameters(const TrainSetup& setup) {
  const ParamLayout& L = setup.layout;
  std::vector<float> params(size_t(L.total), 0.f);
  const math::PhiloxKey key =
      math::make_key(setup.seed, math::stream_id(math::RngStream::kInit, setup.stage));
  const float std_dev = float(setup.init_std);
  // Tensors 0..3: Pt, Pf, T, W; b stays 0.
  const int64_t starts[4] = {L.pt, L.pf, L.t, L.w};
  const int64_t ends[4] = {L.pf, L.t, L.w, L.b};
  for (uint32_t tensor = 0; tensor < 4; ++tensor) {
#pragma omp parallel for schedule(static)
    for (int64_t k = starts[tensor]; k < ends[tensor]; ++k) {
      params[size_t(k)] =
          math::init_normal<float>(key, tensor, uint64_t(k - starts[tensor]), std_dev);
    }
  }
  return params;
}

}  // namespace painvrl
