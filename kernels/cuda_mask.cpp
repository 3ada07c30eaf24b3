// Mask generation on the device (include/painvrl/backend/mask_runner.h,
// include/painvrl/cuda/backend.h): host code that uploads one outer iteration's frozen problem
// once, the epoch's shuffled pair lists once per epoch, and enqueues per step: the batch rows, the
// negatives (kernels/sampling.cu), the gate noise, the step (kernels/mask_step.cu, its dense
// products by cuBLAS DGEMM) and the update, with no allocation, no host copy and no synchronisation
// inside a step. The steps' records (w_ERM, L_ERM, L_IRM, mask mean) and the halt flag are read
// once per drain (an epoch). Row-major products are passed to column-major cuBLAS as their
// transposes (kernels/cuda_backend.cpp).
#include <fmt/format.h>

#include <algorithm>
#include <stdexcept>
#include <vector>

#include "device_support.h"
#include "painvrl/cuda/backend.h"
#include "painvrl/cuda/kernels.h"
#include "painvrl/cuda/mask_kernels.h"
#include "painvrl/math/adam.h"

namespace painvrl::cuda {
namespace {

// Row-major C = alpha op(A) op(B) + beta C as column-major C^T = op(B)^T op(A)^T.
DeviceGemm dgemm_on(cublasHandle_t handle) {
  return [handle](const GemmCall& g) -> cudaError_t {
    if (g.m == 0 || g.n == 0) return cudaSuccess;
    const cublasStatus_t st =
        cublas_api().dgemm(handle, g.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N,
                           g.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, int(g.n), int(g.m), int(g.k),
                           &g.alpha, g.b, int(g.ldb), g.a, int(g.lda), &g.beta, g.c, int(g.ldc));
    if (st != CUBLAS_STATUS_SUCCESS) {
      throw std::runtime_error(fmt::format("cuBLAS error in cublasDgemm ({} x {} x {}): {}", g.m,
                                           g.n, g.k, cublas_api().status_string(st)));
    }
    return cudaSuccess;
  };
}

// Whether every feature value is exactly a float (the float copy is then made and used).
bool features_exact_in_float(const MaskProblem<double>& P) {
  const int64_t n = int64_t(P.n_items) * P.d;
  for (int64_t k = 0; k < n; ++k) {
    if (double(float(P.features[k])) != P.features[k]) return false;
  }
  return true;
}

// The frozen problem of one outer iteration on the device, in double.
struct DeviceMaskProblem {
  DeviceBuffer<double> pt, pf, ti, features, beta_user, beta_item, ii_weights;
  DeviceBuffer<int32_t> ii_neighbors;
  DeviceBuffer<float> features_f32;  // when has_f32: the features, each exactly a float
  bool has_f32 = false;

  // fp32_features: also a float copy of the features when they round-trip exactly.
  void upload(const MaskProblem<double>& P, cudaStream_t s, bool fp32_features) {
    has_f32 = fp32_features && features_exact_in_float(P);
    if (has_f32) {
      const int64_t n = int64_t(P.n_items) * P.d;
      std::vector<float> f(static_cast<size_t>(n));
      for (int64_t k = 0; k < n; ++k) f[size_t(k)] = float(P.features[k]);
      features_f32.upload(f, s);
      PAINVRL_CUDA_CHECK(cudaStreamSynchronize(s));  // f is freed on return
    }
    const int64_t nu = int64_t(P.n_users) * P.D, ni = int64_t(P.n_items) * P.D;
    pt.upload(P.Pt, nu, s);
    pf.upload(P.Pf, nu, s);
    ti.upload(P.Ti, ni, s);
    features.upload(P.features, int64_t(P.n_items) * P.d, s);
    beta_user.upload(P.beta_user, P.n_users, s);
    beta_item.upload(P.beta_item, P.n_items, s);
    ii_weights.upload(P.ii_weights, int64_t(P.n_items) * P.ii_k, s);
    ii_neighbors.upload(P.ii_neighbors, int64_t(P.n_items) * P.ii_k, s);
  }
};

// One step's buffers: the workspace and every output of run_mask_step.
struct DeviceMaskStep {
  DeviceBuffer<double> workspace, loss_env, scalars, G, V, g_E, g_I, grad, mask_grad, mask_new;

  static int64_t doubles(const MaskLayout& L, int64_t rows, int32_t tpr, int32_t E,
                         int32_t n_items) {
    return MaskWorkspace::doubles(rows, tpr, E, L.D, L.d, L.H, n_items) + E + 7 +
           (int64_t(E) + 1) * L.D * L.d + 4 * L.d + L.total;
  }

  // Fills the pointers of `a` (sizes already set) after allocating.
  void bind(MaskStepArgs& a) {
    const MaskLayout& L = a.layout;
    const int32_t tpr = mask_terms_per_row(a);
    workspace.reserve(MaskWorkspace::doubles(a.rows, tpr, a.envs, L.D, L.d, L.H, a.n_items));
    a.ws = MaskWorkspace::carve(workspace.data(), a.rows, tpr, a.envs, L.D, L.d, L.H, a.n_items);
    auto out = [](DeviceBuffer<double>& b, int64_t n) {
      b.reserve(n);
      return b.data();
    };
    a.loss_env = out(loss_env, a.envs);
    a.scalars = out(scalars, 7);
    a.G = out(G, int64_t(a.envs) * L.D * L.d);
    a.V = out(V, int64_t(L.D) * L.d);
    a.g_E = out(g_E, L.d);
    a.g_I = out(g_I, L.d);
    a.grad = out(grad, L.total);
    a.mask_grad = out(mask_grad, L.d);
    a.mask_new = out(mask_new, L.d);
  }
};

MaskStepArgs step_args(const MaskLayout& L, const MaskSettings& S, const MaskProblem<double>& P,
                       int32_t envs, int32_t n_negatives, int64_t rows) {
  MaskStepArgs a;
  a.layout = L;
  if (!L.attention) a.layout.H = 0;
  a.settings = S;
  a.n_users = P.n_users;
  a.n_items = P.n_items;
  a.envs = envs;
  a.n_negatives = n_negatives;
  a.ii_k = P.ii_k;
  a.rows = rows;
  return a;
}

void bind_problem(MaskStepArgs& a, const DeviceMaskProblem& dp) {
  a.pt = dp.pt.data();
  a.pf = dp.pf.data();
  a.ti = dp.ti.data();
  a.features = dp.features.data();
  a.beta_user = dp.beta_user.data();
  a.beta_item = dp.beta_item.data();
  a.ii_neighbors = dp.ii_neighbors.data();
  a.ii_weights = dp.ii_weights.data();
  a.features_f32 = dp.has_f32 ? dp.features_f32.data() : nullptr;
}

// A step's batch, noise and model on the device; bind() points the step's arguments at them.
struct DeviceMaskInputs {
  DeviceBuffer<int64_t> offsets;                  // (E + 1,) the batch's environment offsets
  DeviceBuffer<int32_t> users, items, negatives;  // (rows,), (rows,), (rows, N)
  DeviceBuffer<double> noise, params, mask;       // (E, d), (layout.total,), (d,)

  void bind(MaskStepArgs& a, const int64_t* offsets_host) {
    a.env_offsets_host = offsets_host;
    a.env_offsets = offsets.data();
    a.users = users.data();
    a.items = items.data();
    a.negatives = negatives.data();
    a.noise = noise.data();
    a.params = params.data();
    a.mask = mask.data();
  }
};

// A failed mask step names the kernel or call that failed.
void check_mask_step(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    throw std::runtime_error(fmt::format("CUDA error in {}, at {}: {}", what,
                                         mask_step_failed_launch(), cudaGetErrorString(e)));
  }
}

class DeviceMaskRunner final : public MaskRunner {
 public:
  DeviceMaskRunner(const MaskRunSetup& setup, const MaskRunState& state,
                   const std::vector<std::vector<int32_t>>& env_pairs)
      : S_(setup), st_(state) {
    const MaskRunOptions& c = S_.options;
    const int32_t E = S_.envs;
    pair_offsets_.assign(1, 0);
    batch_offsets_.assign(1, 0);
    int64_t largest = 0;
    for (const auto& v : env_pairs) {
      const int64_t n = int64_t(v.size());
      pair_offsets_.push_back(pair_offsets_.back() + n);
      batch_offsets_.push_back(batch_offsets_.back() + std::min<int64_t>(c.mask_batch, n));
      largest = std::max(largest, n);
    }
    rows_ = batch_offsets_.back();
    steps_per_epoch_ = (largest + c.mask_batch - 1) / c.mask_batch;
    args_ = step_args(S_.layout, S_.settings, S_.problem, E, c.negatives, rows_);
    std::vector<int64_t> sizes;
    for (const auto& v : env_pairs) sizes.push_back(int64_t(v.size()));
    check_device_fits(mask_runner_device_bytes(S_, sizes), "mask generation on the GPU",
                      "lower mask_batch or negatives");
    const MaskProblem<double>& P = S_.problem;
    const MaskLayout& L = S_.layout;
    const cudaStream_t s = ctx_.stream();
    problem_.upload(P, s, S_.fp32_features);
    train_user_.upload(S_.train->user, s);
    train_item_.upload(S_.train->item, s);
    d_pair_offsets_.upload(pair_offsets_, s);
    in_.offsets.upload(batch_offsets_, s);
    in_.users.reserve(rows_);
    in_.items.reserve(rows_);
    in_.negatives.reserve(rows_ * std::max(c.negatives, 1));
    in_.noise.reserve(int64_t(E) * L.d);
    in_.params.upload(*st_.params, s);
    adam_m_.upload(*st_.adam_m, s);
    adam_v_.upload(*st_.adam_v, s);
    in_.mask.upload(*st_.mask, s);
    mask_m_.upload(*st_.mask_m, s);
    mask_v_.upload(*st_.mask_v, s);
    trace_.reserve(4 * std::max<int64_t>(steps_per_epoch_, 1));
    halt_.reserve(1);
    halt_.zero(1, s);
    halt_step_.reserve(1);
    halt_step_.zero(1, s);
    const ParetoScale sc = st_.scale ? *st_.scale : S_.settings.scale;
    pareto_state_.upload(std::vector<double>{sc.rms_E, sc.rms_I, double(sc.steps)}, s);

    bind_problem(args_, problem_);
    in_.bind(args_, batch_offsets_.data());
    step_.bind(args_);
    args_.pareto_state = pareto_state_.data();
    gemm_ = dgemm_on(ctx_.cublas());
    sort_ = stable_sort_on(ctx_.stream(), sort_temp_, rows_ * mask_terms_per_row(args_));
  }

  void begin_epoch(const std::vector<std::vector<int32_t>>& env_pairs, int epoch) override {
    epoch_ = epoch;
    flat_.clear();
    for (const auto& v : env_pairs) flat_.insert(flat_.end(), v.begin(), v.end());
    env_pairs_.upload(flat_, ctx_.stream());
  }

  void step(int64_t step) override {
    const MaskRunOptions& c = S_.options;
    MaskTrainStep t;
    MaskBatchArgs& b = t.batch;
    b.env_pairs = env_pairs_.data();
    b.pair_offsets = d_pair_offsets_.data();
    b.batch_offsets = in_.offsets.data();
    b.envs = S_.envs;
    b.train_user = train_user_.data();
    b.train_item = train_item_.data();
    b.mask_batch = c.mask_batch;
    b.rows = rows_;
    b.users = in_.users.data();
    b.items = in_.items.data();
    t.negatives = in_.negatives.data();
    t.noise = in_.noise.data();
    t.neg_key = S_.neg_key;
    t.noise_key = S_.noise_key;
    t.epoch = uint32_t(epoch_);
    t.sigma = float(c.sigma);
    MaskUpdateArgs& u = t.update;
    u.params = in_.params.data();
    u.adam_m = adam_m_.data();
    u.adam_v = adam_v_.data();
    u.n_params = S_.layout.total;
    u.param_step = math::make_adam_step(float(c.lr), float(c.adam_beta1), float(c.adam_beta2),
                                        float(c.adam_eps), ++*st_.adam_t);
    u.mask = in_.mask.data();
    u.mask_m = mask_m_.data();
    u.mask_v = mask_v_.data();
    u.d = S_.layout.d;
    u.mask_adam = c.mask_adam;
    if (u.mask_adam) {
      u.mask_adam_step =
          math::make_adam_step(float(c.mask_step), float(c.adam_beta1), float(c.adam_beta2),
                               float(c.adam_eps), ++*st_.mask_t);
    }
    u.trace_row = trace_.data() + 4 * int64_t(pending_steps_.size());
    u.halt = halt_.data();
    u.halt_step = halt_step_.data();
    u.step = step;
    check_mask_step(run_mask_train_step(args_, t, gemm_, sort_, ctx_.stream()), "the mask step");
    pending_steps_.push_back(step);
  }

  bool deferred() const override { return true; }

  MaskDrain drain() override {
    MaskDrain out;
    const int64_t n = int64_t(pending_steps_.size());
    std::vector<double> rows(size_t(4 * n));
    int halted = 0;
    long long halt_step = 0;
    const cudaStream_t s = ctx_.stream();
    trace_.download(rows.data(), 4 * n, s);
    halt_.download(&halted, 1, s);
    halt_step_.download(&halt_step, 1, s);
    ctx_.sync();
    for (int64_t k = 0; k < n; ++k) {
      const double* r = rows.data() + 4 * k;
      if (halted && pending_steps_[size_t(k)] == halt_step) {
        out.failed = MaskDrain::Failure{halt_step, r[1], r[2]};
        // The failing step and the ones after it applied nothing: the optimisers' step counts
        // go back to what the CPU runner's would be.
        *st_.adam_t -= n - k;
        if (S_.options.mask_adam) *st_.mask_t -= n - k;
        break;
      }
      out.records.push_back(MaskStepRecord{pending_steps_[size_t(k)], r[0], r[1], r[2], r[3]});
    }
    pending_steps_.clear();
    return out;
  }

  void sync_state() override {
    const cudaStream_t s = ctx_.stream();
    in_.params.download(st_.params->data(), int64_t(st_.params->size()), s);
    adam_m_.download(st_.adam_m->data(), int64_t(st_.adam_m->size()), s);
    adam_v_.download(st_.adam_v->data(), int64_t(st_.adam_v->size()), s);
    in_.mask.download(st_.mask->data(), int64_t(st_.mask->size()), s);
    mask_m_.download(st_.mask_m->data(), int64_t(st_.mask_m->size()), s);
    mask_v_.download(st_.mask_v->data(), int64_t(st_.mask_v->size()), s);
    double sc[3];
    pareto_state_.download(sc, 3, s);
    ctx_.sync();
    if (st_.scale) *st_.scale = ParetoScale{sc[0], sc[1], int64_t(sc[2])};
  }

 private:
  MaskRunSetup S_;
  MaskRunState st_;
  StreamContext ctx_;
  DeviceGemm gemm_;
  DeviceSortPairs sort_;
  DeviceBuffer<char> sort_temp_;                       // CUB's storage for sort_
  std::vector<int64_t> pair_offsets_, batch_offsets_;  // (E + 1,) each
  int64_t rows_ = 0, steps_per_epoch_ = 0;
  int epoch_ = 0;
  std::vector<int32_t> flat_;  // the epoch's pair lists, environment after environment
  DeviceMaskProblem problem_;
  DeviceBuffer<int32_t> train_user_, train_item_, env_pairs_;  // (P,)
  DeviceBuffer<int64_t> d_pair_offsets_;                       // (E + 1,)
  DeviceMaskInputs in_;  // the batch (offsets, rows, negatives), noise, parameters and mask
  DeviceBuffer<double> adam_m_, adam_v_;  // (layout.total,)
  DeviceBuffer<double> mask_m_, mask_v_;  // (d,)
  DeviceBuffer<double> trace_;            // (steps per epoch, 4)
  DeviceBuffer<int> halt_;
  DeviceBuffer<long long> halt_step_;
  DeviceBuffer<double> pareto_state_;  // (3,) the normalisation state (MaskStepArgs)
  MaskStepArgs args_;
  DeviceMaskStep step_;
  std::vector<int64_t> pending_steps_;  // the steps enqueued since the last drain
};

}  // namespace

int64_t mask_runner_device_bytes(const MaskRunSetup& setup, const std::vector<int64_t>& env_sizes) {
  const MaskRunOptions& c = setup.options;
  const MaskLayout& L = setup.layout;
  const MaskProblem<double>& P = setup.problem;
  const int64_t E = int64_t(env_sizes.size());
  int64_t rows = 0, largest = 0, pairs = 0;
  for (int64_t n : env_sizes) {
    rows += std::min<int64_t>(c.mask_batch, n);
    largest = std::max(largest, n);
    pairs += n;
  }
  const int64_t steps = std::max<int64_t>((largest + c.mask_batch - 1) / c.mask_batch, 1);
  const MaskStepArgs a = step_args(L, setup.settings, P, int32_t(E), c.negatives, rows);
  const int64_t items = P.n_items, users = P.n_users;
  int64_t doubles = 2 * users * P.D + items * P.D + items * P.d  // Pt, Pf, Ti, F
                    + users + items + items * P.ii_k;            // betas, neighbour weights
  doubles += 3 * L.total + 3 * L.d + E * L.d;  // params, m, v; mask, its m, v; the noise
  doubles += DeviceMaskStep::doubles(L, rows, mask_terms_per_row(a), int32_t(E), P.n_items);
  doubles += 4 * steps + 3;  // the trace, the normalisation state
  int64_t words = items * P.ii_k + 2 * int64_t(setup.train->size()) + pairs     // ids, pairs
                  + rows * (2 + std::max(c.negatives, 1));                      // the batch
  if (setup.fp32_features && features_exact_in_float(P)) words += items * P.d;  // F in float
  return 8 * doubles + 4 * words + 16 * (E + 1)  // the environments' and the batch's offsets
         + sizeof(int) + sizeof(long long) +
         sort_temp_bytes(rows * mask_terms_per_row(a), nullptr) + kCublasWorkspaceAllowance;
}

std::unique_ptr<MaskRunner> make_mask_runner(const MaskRunSetup& setup, const MaskRunState& state,
                                             const std::vector<std::vector<int32_t>>& env_pairs) {
  return std::make_unique<DeviceMaskRunner>(setup, state, env_pairs);
}

MaskStepResult<double> mask_step_on_device(const MaskLayout& layout, const double* params,
                                           const double* mask, const MaskProblem<double>& problem,
                                           const EnvBatches& batches, const double* noise,
                                           const MaskSettings& settings, bool fp32_features) {
  StreamContext ctx;
  const cudaStream_t s = ctx.stream();
  const int32_t E = batches.E();
  const int64_t d = layout.d;
  MaskStepArgs a =
      step_args(layout, settings, problem, E, batches.n_negatives, batches.env_offsets.back());
  DeviceMaskProblem dp;
  dp.upload(problem, s, fp32_features);
  bind_problem(a, dp);
  DeviceMaskInputs in;
  in.offsets.upload(batches.env_offsets, s);
  in.users.upload(batches.users, s);
  in.items.upload(batches.items, s);
  in.negatives.upload(batches.negatives, s);
  in.noise.upload(noise, int64_t(E) * d, s);
  in.params.upload(params, layout.total, s);
  in.mask.upload(mask, d, s);
  in.bind(a, batches.env_offsets.data());
  DeviceMaskStep step;
  step.bind(a);
  DeviceBuffer<char> sort_temp;
  const DeviceSortPairs sort = stable_sort_on(s, sort_temp, a.rows * mask_terms_per_row(a));
  check_mask_step(run_mask_step(a, dgemm_on(ctx.cublas()), sort, s), "the mask step");
  MaskStepResult<double> r;
  auto fetch = [&](const double* p, std::vector<double>& v, int64_t n) {
    v.resize(size_t(n));
    PAINVRL_CUDA_CHECK(
        cudaMemcpyAsync(v.data(), p, sizeof(double) * size_t(n), cudaMemcpyDeviceToHost, s));
  };
  std::vector<double> scalars;
  fetch(a.loss_env, r.loss_env, E);
  fetch(a.scalars, scalars, 7);
  fetch(a.G, r.G, int64_t(E) * layout.D * d);
  fetch(a.V, r.V, int64_t(layout.D) * d);
  fetch(a.g_E, r.g_E, d);
  fetch(a.g_I, r.g_I, d);
  fetch(a.grad, r.grad, layout.total);
  fetch(a.mask_grad, r.mask_grad, d);
  fetch(a.mask_new, r.mask_new, d);
  ctx.sync();
  r.L_ERM = scalars[0];
  r.L_IRM = scalars[1];
  r.w_ERM = scalars[2];
  r.w_IRM = scalars[3];
  r.scale = ParetoScale{scalars[4], scalars[5], int64_t(scalars[6])};
  return r;
}

}  // namespace painvrl::cuda
