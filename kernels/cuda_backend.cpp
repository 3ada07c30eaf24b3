// The CUDA backend (include/painvrl/cuda/backend.h): host code that owns the device buffers and
// enqueues one training step as negatives -> projection -> fused loss -> dW, db -> Adam -> step
// end on one stream, with no allocation and no synchronisation inside a step; the epoch's sums
// are read once at the end of train_steps. Matrix products go through cuBLAS in full fp32
// (CUBLAS_DEFAULT_MATH), or on TF32 tensor cores with TrainSetup::tf32. Row-major tables are passed
// to column-major cuBLAS as their transposes: row-major X (n_items, D) is column-major X^T (D,
// n_items), and so on.
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <dlfcn.h>
#include <fmt/format.h>

#include <algorithm>
#include <stdexcept>
#include <vector>

#include "device_support.h"
#include "painvrl/backend/draws.h"
#include "painvrl/cuda/backend.h"
#include "painvrl/cuda/kernels.h"
#include "painvrl/math/sampling.h"

namespace painvrl::cuda {
namespace {

// The problem on the device: graph weights, neighbour tables and item features.
struct DeviceProblem {
  DeviceBuffer<float> beta_user, beta_item, ii_weights, features;
  DeviceBuffer<int32_t> ii_neighbors;
  int32_t ii_k = 0;
};

// Per-step buffers, sized once.
struct StepBuffers {
  DeviceBuffer<float> x;            // (n_items, D) W f_j + b
  DeviceBuffer<float> grad_x;       // (n_items, D) dL/dX
  DeviceBuffer<float> ones;         // (n_items,) for db = dX^T 1
  DeviceBuffer<float> row_loss;     // (B * term_chunks, 2): at most (4096 + B, 2)
  DeviceBuffer<int32_t> negatives;  // (B, N)
  // Deterministic mode (Config::deterministic): the fused launch's coefficients, keys and warp
  // user rows, the reduction's scratch and CUB's sort storage.
  bool deterministic = false;
  DeviceBuffer<float> term_coef, warp_user_grad;
  DeviceBuffer<int32_t> term_key, reduce_scratch;
  DeviceBuffer<char> sort_temp;
  DeviceSortPairs sort;  // on the step's stream, storage in sort_temp (size_deterministic)
};

// Terms per batch row of the fused loss: the positive, the negatives, the item neighbours.
int32_t loss_terms(const TrainSetup& setup, int32_t ii_k) {
  return 1 + setup.negatives + (setup.loss.kappa != 0 ? ii_k : 0);
}

// The pairs the deterministic mode sorts for batches of up to max_rows rows (a fused launch has
// fewer than 4096 + rows warps: fused_loss_term_chunks).
int64_t deterministic_pairs(int64_t max_rows, int32_t terms) {
  return std::max<int64_t>(max_rows * terms, 4096 + max_rows);
}

// Sizes the deterministic mode's buffers once for batches of up to max_rows rows, so that no
// step allocates.
void size_deterministic(StepBuffers& sb, int64_t max_rows, int32_t terms, int32_t dim,
                        cudaStream_t stream) {
  if (!sb.deterministic) return;
  const int64_t warps = 4096 + max_rows, n = deterministic_pairs(max_rows, terms);
  sb.term_coef.reserve(max_rows * terms);
  sb.term_key.reserve(max_rows * terms);
  sb.warp_user_grad.reserve(warps * 2 * dim);
  sb.reduce_scratch.reserve(4 * n);
  sb.sort = stable_sort_on(stream, sb.sort_temp, n);
}

// The bytes size_deterministic allocates, CUB's storage included.
int64_t deterministic_bytes(int64_t max_rows, int32_t terms, int32_t dim) {
  const int64_t n = deterministic_pairs(max_rows, terms);
  return 4 * (2 * max_rows * terms + (4096 + max_rows) * 2 * int64_t(dim) + 4 * n) +
         sort_temp_bytes(n, nullptr);
}

// The fused loss of `a` on ctx's stream: by atomics, or in the deterministic mode through the
// coefficient buffers and the fixed-order sums (launch_fused_loss_reduce).
void launch_loss(const StreamContext& ctx, FusedLossArgs a, StepBuffers& sb) {
  if (!sb.deterministic) {
    PAINVRL_CUDA_CHECK(launch_fused_ultragcn_loss(a, ctx.stream()));
    return;
  }
  if (!sb.sort) throw std::logic_error("launch_loss: size_deterministic was not called");
  a.term_coef = sb.term_coef.data();
  a.term_key = sb.term_key.data();
  a.warp_user_grad = sb.warp_user_grad.data();
  PAINVRL_CUDA_CHECK(launch_fused_ultragcn_loss(a, ctx.stream()));
  PAINVRL_CUDA_CHECK(launch_fused_loss_reduce(a, sb.reduce_scratch.data(), sb.sort, ctx.stream()));
}

// X (n_items, D) = F (n_items, d) W^T + b into x with row stride `ldx` (D, or 2D when writing the
// right half of the scoring rows).
// The content projection of `width` outputs (D, or E * D for HIM's models side by side):
// X (n_items, width; row stride ldx) = F (n_items, d) W^T + b, with W (width, d) and b (width,).
void project(const StreamContext& ctx, const float* w, const float* b, int32_t width,
             int32_t n_items, int64_t feat_dim, const float* features, float* x, int64_t ldx) {
  PAINVRL_CUDA_CHECK(launch_broadcast_rows(b, width, n_items, ldx, x, ctx.stream()));
  if (feat_dim == 0) return;
  const float one = 1.f;
  // Column-major: X^T (width x n_items, ld ldx) += W (d x width as stored, transposed) * F^T.
  PAINVRL_CUBLAS_CHECK(cublas_api().sgemm(ctx.cublas(), CUBLAS_OP_T, CUBLAS_OP_N, width, n_items,
                                          int(feat_dim), &one, w, int(feat_dim), features,
                                          int(feat_dim), &one, x, int(ldx)));
}

// Its backward: dW (width, d) += dX^T F and db (width) += sum_j dX[j], with dX (n_items, width).
void project_backward(const StreamContext& ctx, const float* grad_x, int32_t width, int32_t n_items,
                      int64_t feat_dim, const float* features, const float* ones, float* grad_w,
                      float* grad_b) {
  const float one = 1.f;
  if (feat_dim > 0) {
    // Column-major: dW^T (d x width) += F^T (d x n_items) * dX (n_items x width, stored as its
    // transpose).
    PAINVRL_CUBLAS_CHECK(cublas_api().sgemm(ctx.cublas(), CUBLAS_OP_N, CUBLAS_OP_T, int(feat_dim),
                                            width, n_items, &one, features, int(feat_dim), grad_x,
                                            width, &one, grad_w, int(feat_dim)));
  }
  // db += dX^T 1: column-major dX^T (width x n_items) times ones (n_items).
  PAINVRL_CUBLAS_CHECK(cublas_api().sgemv(ctx.cublas(), CUBLAS_OP_N, width, n_items, &one, grad_x,
                                          width, ones, 1, &one, grad_b, 1));
}

// X (n_items, D) of the model's own W, b, into x with row stride ldx (D, or 2D when writing the
// right half of the scoring rows).
void project_items(const StreamContext& ctx, const ParamLayout& L, const float* params,
                   const float* features, float* x, int64_t ldx) {
  project(ctx, params + L.w, params + L.b, L.dim, L.n_items, L.feat_dim, features, x, ldx);
}

struct DeviceBatch {
  const int32_t* users;  // (rows,)
  const int32_t* items;  // (rows,)
  int64_t rows;
};

// Enqueues X, the fused kernel and dW, db for one batch (its negatives already in sb.negatives);
// grad must hold zeros (or what the step adds to) for the tables this writes. Returns the number
// of (main, item-item) pairs the kernel wrote into sb.row_loss.
// The fused kernel's arguments that do not depend on which tables it reads and writes: the
// graph, the batch (negatives in sb.negatives), the loss weights, the term chunks, the output.
FusedLossArgs batch_args(const LossSettings& S, const DeviceProblem& P, StepBuffers& sb,
                         int32_t dim, const DeviceBatch& batch, int32_t n_negatives) {
  FusedLossArgs a = fused_loss_args(S, dim, P.beta_user.data(), P.beta_item.data(),
                                    P.ii_neighbors.data(), P.ii_weights.data(), P.ii_k, batch.users,
                                    batch.items, sb.negatives.data(), batch.rows, n_negatives);
  a.row_loss = sb.row_loss.data();
  return a;
}

int64_t enqueue_loss_grad(const StreamContext& ctx, const ParamLayout& L, const LossSettings& S,
                          const DeviceProblem& P, StepBuffers& sb, const float* params, float* grad,
                          const DeviceBatch& batch, int32_t n_negatives, const int* halt) {
  const int32_t D = L.dim;
  if (L.content) {
    project_items(ctx, L, params, P.features.data(), sb.x.data(), D);
    sb.grad_x.zero(int64_t(L.n_items) * D, ctx.stream());
  }
  FusedLossArgs a = batch_args(S, P, sb, D, batch, n_negatives);
  a.pt = params + L.pt;
  a.pf = L.content ? params + L.pf : nullptr;
  a.t = params + L.t;
  a.x = L.content ? sb.x.data() : nullptr;
  a.grad_pt = grad + L.pt;
  a.grad_pf = L.content ? grad + L.pf : nullptr;
  a.grad_t = grad + L.t;
  a.grad_x = L.content ? sb.grad_x.data() : nullptr;
  a.halt = halt;
  launch_loss(ctx, a, sb);
  const int64_t entries = batch.rows * a.term_chunks;
  if (L.content) {
    project_backward(ctx, sb.grad_x.data(), D, L.n_items, L.feat_dim, P.features.data(),
                     sb.ones.data(), grad + L.w, grad + L.b);
  }
  return entries;
}

void upload_loss_problem(const LossProblem<float>& problem, int32_t n_users, int32_t n_items,
                         int64_t feat_dim, DeviceProblem& P, cudaStream_t s) {
  P.beta_user.upload(problem.beta_user, n_users, s);
  P.beta_item.upload(problem.beta_item, n_items, s);
  P.ii_k = problem.ii_k;
  P.ii_neighbors.upload(problem.ii_neighbors, int64_t(n_items) * problem.ii_k, s);
  P.ii_weights.upload(problem.ii_weights, int64_t(n_items) * problem.ii_k, s);
  if (feat_dim > 0) P.features.upload(problem.features, int64_t(n_items) * feat_dim, s);
}

// The graph (and the features, when given: d of them per item) on the device.
void upload_problem(const Graph& graph, const std::vector<float>* features, int64_t feat_dim,
                    DeviceProblem& P, cudaStream_t stream) {
  const LossProblem<float> problem{graph.beta_user.data(),
                                   graph.beta_item.data(),
                                   graph.ii_neighbors.data(),
                                   graph.ii_weights.data(),
                                   graph.ii_k,
                                   features ? features->data() : nullptr};
  upload_loss_problem(problem, graph.n_users, graph.n_items, features ? feat_dim : 0, P, stream);
}

void size_step_buffers(const ParamLayout& L, int64_t batch, int32_t n_negatives, StepBuffers& sb,
                       cudaStream_t stream) {
  sb.x.reserve(int64_t(L.n_items) * L.dim);
  sb.grad_x.reserve(int64_t(L.n_items) * L.dim);
  const std::vector<float> ones(size_t(L.n_items), 1.f);
  sb.ones.upload(ones, stream);
  sb.row_loss.reserve(2 * (4096 + batch));  // fused_loss_term_chunks keeps rows * chunks below
  sb.negatives.reserve(batch * std::max(n_negatives, 1));
}

constexpr int64_t kScoreBlock = 4096;  // users scored per GEMM (the evaluation's block)
// The k that setup's memory check allows for ranking; a larger k is checked when it is asked for.
constexpr int32_t kRankKAllowance = 100;

class CudaBackend final : public Backend {
 public:
  std::string name() const override { return "cuda"; }

  void setup(const TrainSetup& setup, const Graph& graph,
             const std::vector<float>& features) override {
    const ParamLayout& L = setup.layout;
    if (setup.loss.l2_touched) {
      throw std::invalid_argument(
          "the CUDA backend does not implement l2 = \"touched\" yet; use l2 = \"full\" or "
          "--device cpu");
    }
    if (L.dim > kFusedLossMaxDim) {
      throw std::invalid_argument(
          fmt::format("the CUDA backend supports dim <= {} (dim = {})", kFusedLossMaxDim, L.dim));
    }
    ctx_ = std::make_unique<StreamContext>(setup.tf32);
    BackendMemoryInputs mem;
    mem.ii_k = graph.ii_k;
    mem.n_pairs = int64_t(graph.train_by_user.items.size());
    mem.score_block = std::min<int64_t>(kScoreBlock, L.n_users);
    mem.rank_k = kRankKAllowance;
    check_device_fits(backend_device_bytes(setup, mem), "training on the GPU",
                      "lower batch_size or negatives");
    setup_ = setup;
    const cudaStream_t s = ctx_->stream();
    for (DeviceBuffer<float>* buf : {&grad_, &adam_m_, &adam_v_}) {
      buf->reserve(L.total);
      buf->zero(L.total, s);
    }
    adam_t_ = 0;
    // Drawn on the host: the device's logf and cosf may differ from glibc's in the last bit, and
    // both backends must start from the same parameters.
    const std::vector<float> initial = initial_parameters(setup);
    params_.upload(initial, s);

    upload_problem(graph, L.content ? &features : nullptr, L.feat_dim, problem_, s);
    size_step_buffers(L, setup.batch_size, setup.negatives, step_, s);
    step_.deterministic = setup.deterministic;
    size_deterministic(step_, setup.batch_size, loss_terms(setup, graph.ii_k), L.dim, s);
    block_sums_.reserve(2 * kAdamBlocks);
    acc_.reserve(1);
    halt_.reserve(1);
    ctx_->sync();
  }

  void train_steps(const PairList& shuffled, uint32_t epoch, EpochStats& stats,
                   bool (*stop)()) override {
    const ParamLayout& L = setup_.layout;
    const cudaStream_t s = ctx_->stream();
    const int64_t P = int64_t(shuffled.size());
    const int64_t B = setup_.batch_size;
    const int32_t N = setup_.negatives;
    const math::PhiloxKey neg_key =
        math::make_key(setup_.seed, math::stream_id(math::RngStream::kNegative, setup_.stage));
    stats.stopped = stats.diverged = false;
    pair_user_.upload(shuffled.user, s);
    pair_item_.upload(shuffled.item, s);
    acc_.zero(1, s);
    halt_.zero(1, s);
    const long long adam_t_start = adam_t_;
    AdamArgs adam;
    adam.params = params_.data();
    adam.m = adam_m_.data();
    adam.v = adam_v_.data();
    adam.grad = grad_.data();
    const int64_t bounds[5] = {L.pt, L.pf, L.t, L.w, L.total};
    std::copy(bounds, bounds + 5, adam.bounds);
    adam.frozen = setup_.frozen;
    adam.emb_l2_coef = float(2 * setup_.loss.gamma_emb);
    adam.w_l2_coef = float(2 * setup_.loss.gamma_w);
    adam.block_sums = block_sums_.data();
    adam.halt = halt_.data();
    StepEndArgs end;
    end.row_loss = step_.row_loss.data();
    end.block_sums = block_sums_.data();
    end.kappa = float(setup_.loss.kappa);
    end.gamma_emb = float(setup_.loss.gamma_emb);
    end.gamma_w = float(setup_.loss.gamma_w);
    end.acc = acc_.data();
    end.halt = halt_.data();
    for (int64_t step = stats.steps, begin = step * B; begin < P; begin += B, ++step) {
      if (stop && stop()) {
        stats.stopped = true;
        break;
      }
      const int64_t rows = std::min(B, P - begin);
      PAINVRL_CUDA_CHECK(launch_sample_negatives(neg_key, epoch, uint32_t(step), rows, N,
                                                 uint32_t(L.n_items), step_.negatives.data(), s));
      const int64_t entries = enqueue_loss_grad(
          *ctx_, L, setup_.loss, problem_, step_, params_.data(), grad_.data(),
          DeviceBatch{pair_user_.data() + begin, pair_item_.data() + begin, rows}, N, halt_.data());
      adam.step = math::make_adam_step(float(setup_.adam.lr), float(setup_.adam.beta1),
                                       float(setup_.adam.beta2), float(setup_.adam.eps), ++adam_t_);
      PAINVRL_CUDA_CHECK(launch_adam(adam, s));
      end.entries = entries;
      end.pairs = rows;
      PAINVRL_CUDA_CHECK(launch_step_end(end, s));
    }
    EpochAccumulators acc;
    int halted = 0;
    acc_.download(&acc, 1, s);
    halt_.download(&halted, 1, s);
    ctx_->sync();
    stats.loss_total += acc.total;
    stats.loss_main += acc.main;
    stats.loss_item_item += acc.item_item;
    stats.loss_l2 += acc.l2;
    stats.steps += acc.steps;
    stats.pairs += acc.pairs;
    // The diverged step's update was applied (as on the CPU); the later ones did nothing.
    adam_t_ = adam_t_start + acc.steps + (halted ? 1 : 0);
    if (halted) {
      stats.diverged = true;
      stats.stopped = false;
    }
  }

  void prepare_scoring() override {
    const ParamLayout& L = setup_.layout;
    const cudaStream_t s = ctx_->stream();
    const int32_t D = L.dim;
    const int64_t width = L.content ? 2 * D : D;
    item_rows_.reserve(int64_t(L.n_items) * width);
    PAINVRL_CUDA_CHECK(cudaMemcpy2DAsync(item_rows_.data(), sizeof(float) * width,
                                         params_.data() + L.t, sizeof(float) * D, sizeof(float) * D,
                                         L.n_items, cudaMemcpyDeviceToDevice, s));
    if (L.content) {
      project_items(*ctx_, L, params_.data(), problem_.features.data(), item_rows_.data() + D,
                    width);
    }
  }

  void score(const int32_t* users, int64_t count, float* out) override {
    const int32_t n_items = setup_.layout.n_items;
    for (int64_t first = 0; first < count; first += kScoreBlock) {
      const int64_t n = std::min(kScoreBlock, count - first);
      score_block(users + first, n);
      scores_.download(out + first * n_items, n * n_items, ctx_->stream());
      ctx_->sync();
    }
  }

  bool prepare_ranking(const UserItemCsr& exclude,
                       const std::vector<uint8_t>& candidates) override {
    const cudaStream_t s = ctx_->stream();
    exclude_offsets_.upload(exclude.offsets, s);
    exclude_items_.upload(exclude.items, s);
    has_candidates_ = !candidates.empty();
    if (has_candidates_) candidates_.upload(candidates, s);
    return true;
  }

  // Per block: the scoring GEMM, the exclusions, the top k (kernels/topk.cu); only the ranked ids
  // come back.
  void rank(const int32_t* users, int64_t count, int k, int32_t* ranked) override {
    const int32_t n_items = setup_.layout.n_items;
    const cudaStream_t s = ctx_->stream();
    for (int64_t first = 0; first < count; first += kScoreBlock) {
      const int64_t n = std::min(kScoreBlock, count - first);
      score_block(users + first, n);
      PAINVRL_CUDA_CHECK(launch_exclude_items(
          exclude_offsets_.data(), exclude_items_.data(), score_users_.data(), n, n_items,
          has_candidates_ ? candidates_.data() : nullptr, scores_.data(), s));
      if (k > kRankKAllowance) {  // beyond what setup's check allowed for
        check_device_fits(4 * n * (k - kRankKAllowance), "ranking on the GPU",
                          "lower the largest of eval_ks");
      }
      ranked_.reserve(n * k);
      PAINVRL_CUDA_CHECK(launch_top_k(scores_.data(), n, n_items, k, ranked_.data(), s));
      ranked_.download(ranked + first * k, n * k, s);
      ctx_->sync();
    }
  }

  void score_pairs(const int32_t* users, const int32_t* items, int64_t count, float* out) override {
    const ParamLayout& L = setup_.layout;
    const cudaStream_t s = ctx_->stream();
    score_users_.upload(users, count, s);
    score_items_.upload(items, count, s);
    scores_.reserve(count);
    PAINVRL_CUDA_CHECK(launch_score_pairs(
        params_.data() + L.pt, L.content ? params_.data() + L.pf : nullptr, L.dim,
        item_rows_.data(), score_users_.data(), score_items_.data(), count, scores_.data(), s));
    scores_.download(out, count, s);
    ctx_->sync();
  }

  std::vector<float> parameters() const override {
    std::vector<float> out(size_t(setup_.layout.total));
    params_.download(out.data(), setup_.layout.total, ctx_->stream());
    ctx_->sync();
    return out;
  }
  void set_parameters(const std::vector<float>& params) override {
    check_size(params, "set_parameters");
    params_.upload(params, ctx_->stream());
    ctx_->sync();
  }
  OptimizerState optimizer_state() const override {
    const int64_t n = setup_.layout.total;
    OptimizerState st;
    st.params.resize(size_t(n));
    st.adam_m.resize(size_t(n));
    st.adam_v.resize(size_t(n));
    params_.download(st.params.data(), n, ctx_->stream());
    adam_m_.download(st.adam_m.data(), n, ctx_->stream());
    adam_v_.download(st.adam_v.data(), n, ctx_->stream());
    ctx_->sync();
    st.adam_t = adam_t_;
    return st;
  }
  void set_optimizer_state(const OptimizerState& state) override {
    check_size(state.params, "set_optimizer_state");
    check_size(state.adam_m, "set_optimizer_state");
    check_size(state.adam_v, "set_optimizer_state");
    params_.upload(state.params, ctx_->stream());
    adam_m_.upload(state.adam_m, ctx_->stream());
    adam_v_.upload(state.adam_v, ctx_->stream());
    adam_t_ = state.adam_t;
    ctx_->sync();
  }

 private:
  // scores_ (n, n_items) = the users' rows [Pt_u, Pf_u] times the item rows (prepare_scoring);
  // score_users_ holds the users. Enqueued only.
  void score_block(const int32_t* users, int64_t n) {
    const ParamLayout& L = setup_.layout;
    const cudaStream_t s = ctx_->stream();
    const int32_t D = L.dim;
    const int32_t width = L.content ? 2 * D : D;
    const float* pf = L.content ? params_.data() + L.pf : nullptr;
    score_users_.upload(users, n, s);
    user_rows_.reserve(n * width);
    scores_.reserve(n * L.n_items);
    PAINVRL_CUDA_CHECK(launch_gather_user_rows(params_.data() + L.pt, pf, D, score_users_.data(), n,
                                               user_rows_.data(), s));
    const float one = 1.f, zero = 0.f;
    // Column-major: scores^T (n_items x n) = item_rows (width x n_items, transposed) * U^T.
    PAINVRL_CUBLAS_CHECK(cublas_api().sgemm(
        ctx_->cublas(), CUBLAS_OP_T, CUBLAS_OP_N, L.n_items, int(n), width, &one, item_rows_.data(),
        width, user_rows_.data(), width, &zero, scores_.data(), L.n_items));
  }

  void check_size(const std::vector<float>& v, const char* what) const {
    if (int64_t(v.size()) != setup_.layout.total) {
      throw std::invalid_argument(
          fmt::format("{}: {} values for a layout of {}", what, v.size(), setup_.layout.total));
    }
  }

  std::unique_ptr<StreamContext> ctx_;
  TrainSetup setup_;
  DeviceProblem problem_;
  StepBuffers step_;
  DeviceBuffer<float> params_, grad_, adam_m_, adam_v_;  // (layout.total,) each
  long long adam_t_ = 0;
  DeviceBuffer<float> block_sums_;               // (kAdamBlocks, 2)
  DeviceBuffer<EpochAccumulators> acc_;          // (1,)
  DeviceBuffer<int> halt_;                       // (1,)
  DeviceBuffer<int32_t> pair_user_, pair_item_;  // (P,) the epoch's shuffled pairs
  DeviceBuffer<float> item_rows_;                // (n_items, D or 2D) [T_j, X_j]
  DeviceBuffer<int32_t> score_users_, score_items_;
  DeviceBuffer<float> user_rows_, scores_;        // (block, width), (block, n_items)
  DeviceBuffer<int64_t> exclude_offsets_;         // (n_users + 1,) ranking: excluded items
  DeviceBuffer<int32_t> exclude_items_, ranked_;  // (pairs,), (block, k)
  DeviceBuffer<uint8_t> candidates_;              // (n_items,) when has_candidates_
  bool has_candidates_ = false;
};

}  // namespace

std::unique_ptr<Backend> make_cuda_backend() { return std::make_unique<CudaBackend>(); }

int64_t backend_device_bytes(const TrainSetup& setup, const BackendMemoryInputs& in) {
  const ParamLayout& L = setup.layout;
  const int64_t items = L.n_items, users = L.n_users, D = L.dim;
  const int64_t width = L.content ? 2 * D : D;
  const int64_t B = setup.batch_size, N = std::max(setup.negatives, 1);
  const int64_t pairs = in.n_pairs, block = in.score_block;
  int64_t words = 4 * L.total;                        // params, grad, m, v
  words += users + items + 2 * items * in.ii_k;       // betas, neighbour weights and ids
  if (L.content) words += items * L.feat_dim;         // F
  words += 2 * items * D + items;                     // X, dX, ones
  words += 2 * (4096 + B) + B * N + 2 * kAdamBlocks;  // row losses, negatives, Adam's block sums
  words += 2 * pairs;                                 // the epoch's shuffled pairs
  words += items * width;                             // the scoring rows
  words += std::max(block, pairs) + pairs;  // users scored (a block, or HIM's pairs), items
  words += block * width + std::max(block * items, pairs);  // a block's user rows, its scores
  words += pairs + block * in.rank_k;                       // the exclusions, the ranked ids
  int64_t bytes = 4 * words + sizeof(EpochAccumulators) + sizeof(int);
  bytes += 8 * (users + 1) + items;  // the exclusions' offsets, the candidate flags
  if (setup.deterministic) bytes += deterministic_bytes(B, loss_terms(setup, in.ii_k), L.dim);
  return bytes + kCublasWorkspaceAllowance;
}

int64_t him_train_device_bytes(const TrainSetup& setup, int32_t ii_k,
                               const std::vector<int64_t>& env_sizes) {
  const ParamLayout& L = setup.layout;
  const int64_t E = int64_t(env_sizes.size()), items = L.n_items, D = L.dim;
  const int64_t width = E * D, B = setup.batch_size, N = std::max(setup.negatives, 1);
  int64_t rows = 0, steps = 0;
  for (int64_t n : env_sizes) {
    rows += n;
    steps = std::max(steps, (n + B - 1) / B);
  }
  const int64_t n_params = E * (D * L.feat_dim + D);
  int64_t words = L.n_users + items + 2 * items * ii_k + items * L.feat_dim;  // graph, psi
  words += L.total + 4 * n_params;                         // the backbone; W_all|b_all, m, v, grad
  words += 2 * items * width + items;                      // X_all, dX_all, ones
  words += 2 * (4096 + E * B) + E * B * N;                 // row losses, negatives
  words += 4 * rows;                                       // the epoch's users, items, envs, index
  int64_t bytes = 4 * words + E * sizeof(math::PhiloxKey)  // the models' negative keys
                  + sizeof(double) + sizeof(int) + sizeof(long long) +
                  steps * E * (sizeof(math::AdamStep) + 1);  // Adam steps, active flags
  if (setup.deterministic) bytes += deterministic_bytes(E * B, loss_terms(setup, ii_k), L.dim);
  return bytes + kCublasWorkspaceAllowance;
}

int64_t him_assign_device_bytes(int32_t n_users, int32_t n_items, int32_t dim, int64_t feat_dim,
                                int32_t envs, int64_t n_pairs) {
  const int64_t width = int64_t(envs) * dim;
  const int64_t words = 2 * int64_t(n_users) * dim + int64_t(n_items) * dim       // Pt, Pf, T
                        + width * feat_dim + width                                // W_all, b_all
                        + int64_t(n_items) * feat_dim + int64_t(n_items) * width  // psi, X_all
                        + 3 * n_pairs;  // users, items, envs
  return 4 * words + kCublasWorkspaceAllowance;
}

LossTerms<float> loss_grad_on_device(const ParamLayout& L, const float* params,
                                     const LossProblem<float>& problem, const Batch& batch,
                                     const LossSettings& settings, float* grad) {
  if (L.dim > kFusedLossMaxDim) {
    throw std::invalid_argument(fmt::format("dim {} > {}", L.dim, kFusedLossMaxDim));
  }
  if (settings.l2_touched) {
    throw std::invalid_argument("loss_grad_on_device: l2 = \"touched\" is not implemented");
  }
  StreamContext ctx;
  const cudaStream_t s = ctx.stream();
  DeviceProblem P;
  upload_loss_problem(problem, L.n_users, L.n_items, L.content ? L.feat_dim : 0, P, s);
  StepBuffers sb;
  size_step_buffers(L, batch.size, batch.n_negatives, sb, s);
  sb.negatives.upload(batch.negatives, batch.size * batch.n_negatives, s);
  DeviceBuffer<float> d_params, d_grad;
  d_params.upload(params, L.total, s);
  d_grad.reserve(L.total);
  d_grad.zero(L.total, s);
  DeviceBuffer<int32_t> users, items;
  users.upload(batch.users, batch.size, s);
  items.upload(batch.items, batch.size, s);
  const int64_t entries = enqueue_loss_grad(ctx, L, settings, P, sb, d_params.data(), d_grad.data(),
                                            DeviceBatch{users.data(), items.data(), batch.size},
                                            batch.n_negatives, nullptr);
  std::vector<float> row_loss(size_t(2 * entries));
  sb.row_loss.download(row_loss.data(), 2 * entries, s);
  d_grad.download(grad, L.total, s);
  ctx.sync();
  double main = 0, item_item = 0;
  for (int64_t r = 0; r < entries; ++r) {
    main += row_loss[size_t(2 * r)];
    item_item += row_loss[size_t(2 * r + 1)];
  }
  LossTerms<float> out;
  out.main = float(main);
  out.item_item = float(item_item);
  out.total = float(main + settings.kappa * item_item);
  return out;
}

void env_projection_loss_grad_on_device(const cpu::EnvModelsView& m,
                                        const LossProblem<float>& problem,
                                        const cpu::EnvBatch& batch, const LossSettings& settings,
                                        double* env_loss, float* grad_w_all, float* grad_b_all) {
  const int32_t D = m.dim, E = m.envs;
  const int32_t width = E * D;
  if (D > kFusedLossMaxDim) {
    throw std::invalid_argument(fmt::format("dim {} > {}", D, kFusedLossMaxDim));
  }
  StreamContext ctx;
  const cudaStream_t s = ctx.stream();
  DeviceProblem P;
  upload_loss_problem(problem, m.n_users, m.n_items, m.feat_dim, P, s);
  DeviceBuffer<float> pt, pf, t, w_all, b_all, x, grad_x, grad_w, grad_b, ones;
  pt.upload(m.pt, int64_t(m.n_users) * D, s);
  pf.upload(m.pf, int64_t(m.n_users) * D, s);
  t.upload(m.t, int64_t(m.n_items) * D, s);
  w_all.upload(m.w_all, int64_t(width) * m.feat_dim, s);
  b_all.upload(m.b_all, width, s);
  x.reserve(int64_t(m.n_items) * width);
  grad_x.reserve(int64_t(m.n_items) * width);
  grad_x.zero(int64_t(m.n_items) * width, s);
  grad_w.reserve(int64_t(width) * m.feat_dim);
  grad_w.zero(int64_t(width) * m.feat_dim, s);
  grad_b.reserve(width);
  grad_b.zero(width, s);
  ones.upload(std::vector<float>(size_t(m.n_items), 1.f), s);
  StepBuffers sb;
  sb.row_loss.reserve(2 * (4096 + batch.size));
  sb.negatives.upload(batch.negatives, batch.size * batch.n_negatives, s);
  DeviceBuffer<int32_t> users, items, envs;
  users.upload(batch.users, batch.size, s);
  items.upload(batch.items, batch.size, s);
  envs.upload(batch.envs, batch.size, s);
  // X_all (n_items, E * D) = F W_all^T + b_all; Pt, Pf, T frozen: only dX_all is accumulated.
  project(ctx, w_all.data(), b_all.data(), width, m.n_items, m.feat_dim, P.features.data(),
          x.data(), width);
  FusedLossArgs a = batch_args(
      settings, P, sb, D, DeviceBatch{users.data(), items.data(), batch.size}, batch.n_negatives);
  a.pt = pt.data();
  a.pf = pf.data();
  a.t = t.data();
  a.x = x.data();
  a.row_env = envs.data();
  a.x_stride = width;
  a.grad_x = grad_x.data();
  PAINVRL_CUDA_CHECK(launch_fused_ultragcn_loss(a, s));
  project_backward(ctx, grad_x.data(), width, m.n_items, m.feat_dim, P.features.data(), ones.data(),
                   grad_w.data(), grad_b.data());
  const int64_t entries = batch.size * a.term_chunks;
  std::vector<float> row_loss(size_t(2 * entries));
  sb.row_loss.download(row_loss.data(), 2 * entries, s);
  grad_w.download(grad_w_all, int64_t(width) * m.feat_dim, s);
  grad_b.download(grad_b_all, width, s);
  ctx.sync();
  for (int32_t e = 0; e < E; ++e) env_loss[e] = 0;
  for (int64_t k = 0; k < entries; ++k) {
    const int32_t e = batch.envs[k / a.term_chunks];
    env_loss[e] += double(row_loss[size_t(2 * k)]) + settings.kappa * row_loss[size_t(2 * k + 1)];
  }
}

std::vector<float> train_env_models_projection_on_device(const TrainSetup& ts, const Graph& graph,
                                                         const std::vector<PairList>& env_pairs,
                                                         const std::vector<float>& psi,
                                                         const std::vector<float>& backbone,
                                                         const std::vector<uint32_t>& stages,
                                                         int epochs, const HimHooks& hooks) {
  const int32_t E = int32_t(env_pairs.size());
  const ParamLayout& bl = ts.layout;
  const int64_t feat_dim = bl.feat_dim;
  if (int64_t(backbone.size()) != bl.total || int32_t(stages.size()) != E) {
    throw std::logic_error(
        "train_env_models_projection_on_device: backbone or stages do not match");
  }
  const int32_t D = bl.dim;
  if (D > kFusedLossMaxDim) {
    throw std::invalid_argument(fmt::format("dim {} > {}", D, kFusedLossMaxDim));
  }
  const int32_t width = E * D;
  const int64_t wsize = int64_t(D) * feat_dim;  // one model's W
  // params: W_all (E D, d), then b_all (E D); every model starts from the backbone's W, b.
  std::vector<float> params(size_t(E) * size_t(wsize + D));
  for (int32_t e = 0; e < E; ++e) {
    std::copy(backbone.begin() + bl.w, backbone.begin() + bl.b, params.begin() + e * wsize);
    std::copy(backbone.begin() + bl.b, backbone.begin() + bl.total,
              params.begin() + E * wsize + e * D);
  }
  const int64_t n = int64_t(params.size());
  StreamContext ctx(ts.tf32);
  const cudaStream_t s = ctx.stream();
  const int32_t B = ts.batch_size, N = ts.negatives;
  const int32_t terms = loss_terms(ts, graph.ii_k);
  {
    std::vector<int64_t> sizes;
    for (const PairList& p : env_pairs) sizes.push_back(int64_t(p.size()));
    check_device_fits(him_train_device_bytes(ts, graph.ii_k, sizes),
                      "HIM's environment models on the GPU", "lower batch_size or envs");
  }
  DeviceProblem P;
  upload_problem(graph, &psi, feat_dim, P, s);
  DeviceBuffer<float> d_backbone, d_params, d_m, d_v, d_grad, x, grad_x, ones;
  d_backbone.upload(backbone, s);
  d_params.upload(params, s);
  for (DeviceBuffer<float>* buf : {&d_m, &d_v, &d_grad}) {
    buf->reserve(n);
    buf->zero(n, s);
  }
  x.reserve(int64_t(graph.n_items) * width);
  grad_x.reserve(int64_t(graph.n_items) * width);
  ones.upload(std::vector<float>(size_t(graph.n_items), 1.f), s);
  std::vector<math::PhiloxKey> neg_keys;
  for (uint32_t stage : stages) {
    neg_keys.push_back(math::make_key(ts.seed, math::stream_id(math::RngStream::kNegative, stage)));
  }
  DeviceBuffer<math::PhiloxKey> d_keys;
  d_keys.upload(neg_keys, s);
  StepBuffers sb;
  sb.deterministic = ts.deterministic;
  size_deterministic(sb, int64_t(E) * B, terms, D, s);
  sb.row_loss.reserve(2 * (4096 + int64_t(E) * B));
  sb.negatives.reserve(int64_t(E) * B * std::max(N, 1));
  DeviceBuffer<double> epoch_loss;
  DeviceBuffer<int> halt;
  DeviceBuffer<long long> halt_step;
  epoch_loss.reserve(1);
  halt.reserve(1);
  halt_step.reserve(1);
  DeviceBuffer<int32_t> d_users, d_items, d_envs, d_index;
  DeviceBuffer<math::AdamStep> d_steps;
  DeviceBuffer<uint8_t> d_active;
  std::vector<long long> adam_t(static_cast<size_t>(E), 0);
  for (int epoch = 0; epoch < epochs; ++epoch) {
    // The epoch's rows (the CPU's plan) and each step's Adam step per model (a model counts only
    // the steps it takes part in), uploaded once per epoch.
    const HimEpochRows plan = him_epoch_rows(env_pairs, ts.seed, stages, uint32_t(epoch), B);
    const int64_t max_steps = plan.steps();
    std::vector<math::AdamStep> steps(size_t(max_steps * E));
    for (int64_t step = 0; step < max_steps; ++step) {
      for (int32_t e = 0; e < E; ++e) {
        if (!plan.active[size_t(step * E + e)]) continue;
        steps[size_t(step * E + e)] =
            math::make_adam_step(float(ts.adam.lr), float(ts.adam.beta1), float(ts.adam.beta2),
                                 float(ts.adam.eps), ++adam_t[size_t(e)]);
      }
    }
    d_users.upload(plan.users, s);
    d_items.upload(plan.items, s);
    d_envs.upload(plan.envs, s);
    d_index.upload(plan.index, s);
    d_steps.upload(steps, s);
    d_active.upload(plan.active, s);
    epoch_loss.zero(1, s);
    halt.zero(1, s);
    for (int64_t step = 0; step < max_steps; ++step) {
      if (hooks.stop && hooks.stop()) {
        hooks.interrupted(epoch, step);
        throw std::logic_error("HimHooks::interrupted returned");
      }
      const int64_t first = plan.step_offsets[size_t(step)];
      const int64_t rows = plan.step_offsets[size_t(step + 1)] - first;
      PAINVRL_CUDA_CHECK(launch_sample_negatives_rows(
          d_keys.data(), d_envs.data() + first, d_index.data() + first, uint32_t(epoch),
          uint32_t(step), rows, N, uint32_t(graph.n_items), sb.negatives.data(), s));
      project(ctx, d_params.data(), d_params.data() + E * wsize, width, graph.n_items, feat_dim,
              P.features.data(), x.data(), width);
      grad_x.zero(int64_t(graph.n_items) * width, s);
      FusedLossArgs a = batch_args(
          ts.loss, P, sb, D, DeviceBatch{d_users.data() + first, d_items.data() + first, rows}, N);
      a.pt = d_backbone.data() + bl.pt;
      a.pf = d_backbone.data() + bl.pf;
      a.t = d_backbone.data() + bl.t;
      a.x = x.data();
      a.row_env = d_envs.data() + first;
      a.x_stride = width;
      a.grad_x = grad_x.data();
      a.halt = halt.data();
      launch_loss(ctx, a, sb);
      project_backward(ctx, grad_x.data(), width, graph.n_items, feat_dim, P.features.data(),
                       ones.data(), d_grad.data(), d_grad.data() + E * wsize);
      // The loss is checked before the update, as on the CPU: a diverged step is not applied.
      EnvStepEndArgs end;
      end.row_loss = sb.row_loss.data();
      end.entries = rows * a.term_chunks;
      end.kappa = float(ts.loss.kappa);
      end.step = step;
      end.epoch_loss = epoch_loss.data();
      end.halt = halt.data();
      end.halt_step = halt_step.data();
      PAINVRL_CUDA_CHECK(launch_env_step_end(end, s));
      EnvAdamArgs adam;
      adam.params = d_params.data();
      adam.m = d_m.data();
      adam.v = d_v.data();
      adam.grad = d_grad.data();
      adam.envs = E;
      adam.dim = D;
      adam.w_size = wsize;
      adam.steps = d_steps.data() + step * E;
      adam.active = d_active.data() + step * E;
      adam.l2_coef = float(2 * ts.loss.gamma_w);
      adam.halt = halt.data();
      PAINVRL_CUDA_CHECK(launch_env_adam(adam, s));
    }
    int halted = 0;
    long long at_step = 0;
    halt.download(&halted, 1, s);
    halt_step.download(&at_step, 1, s);
    ctx.sync();
    if (halted) {
      hooks.diverged(epoch, at_step);
      throw std::logic_error("HimHooks::diverged returned");
    }
  }
  d_params.download(params.data(), n, s);
  ctx.sync();
  return params;
}

std::vector<int32_t> assign_environments_on_device(const cpu::EnvModelsView& m, const float* psi,
                                                   const PairList& pairs, bool tf32) {
  const int32_t D = m.dim, E = m.envs, width = E * D;
  const int64_t P = int64_t(pairs.size());
  StreamContext ctx(tf32);
  const cudaStream_t s = ctx.stream();
  check_device_fits(him_assign_device_bytes(m.n_users, m.n_items, D, m.feat_dim, E, P),
                    "HIM's reassignment on the GPU", "lower envs");
  DeviceBuffer<float> pt, pf, t, w_all, b_all, features, x;
  pt.upload(m.pt, int64_t(m.n_users) * D, s);
  pf.upload(m.pf, int64_t(m.n_users) * D, s);
  t.upload(m.t, int64_t(m.n_items) * D, s);
  w_all.upload(m.w_all, int64_t(width) * m.feat_dim, s);
  b_all.upload(m.b_all, width, s);
  features.upload(psi, int64_t(m.n_items) * m.feat_dim, s);
  x.reserve(int64_t(m.n_items) * width);
  project(ctx, w_all.data(), b_all.data(), width, m.n_items, m.feat_dim, features.data(), x.data(),
          width);
  DeviceBuffer<int32_t> users, items, env;
  users.upload(pairs.user, s);
  items.upload(pairs.item, s);
  env.reserve(P);
  PAINVRL_CUDA_CHECK(launch_assign_environments(pt.data(), pf.data(), t.data(), D, E, x.data(),
                                                users.data(), items.data(), P, env.data(), s));
  std::vector<int32_t> out(static_cast<size_t>(P));
  env.download(out.data(), P, s);
  ctx.sync();
  return out;
}

std::vector<int32_t> negatives_on_device(math::PhiloxKey key, uint32_t epoch, uint32_t step,
                                         int64_t rows, int32_t n_negatives, uint32_t n_items) {
  StreamContext ctx;
  DeviceBuffer<int32_t> d_out;
  d_out.reserve(rows * n_negatives);
  PAINVRL_CUDA_CHECK(launch_sample_negatives(key, epoch, step, rows, n_negatives, n_items,
                                             d_out.data(), ctx.stream()));
  std::vector<int32_t> out(size_t(rows * n_negatives));
  d_out.download(out.data(), rows * n_negatives, ctx.stream());
  ctx.sync();
  return out;
}

}  // namespace painvrl::cuda
