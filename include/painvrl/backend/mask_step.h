// One PaInvRL mask-generation step in closed form (DESIGN.md section 2, paper Eq. 10-19; every
// detail fixed in docs/mask-step.md). Second-order terms (L_IRM depends on per-environment
// gradients) are derived by hand: with delta_t = dloss_t/ds_t, delta'_t = d^2loss_t/ds_t^2,
// p_t = Pf_u, q_u = W^T Pf_u and R_e = dL_IRM/dG_e = (4/E) m^2 * V * (G_e - Gbar):
//   G_e        = sum_t delta_t p_t h_t^T          (a D x rows x d product: terms share the row's
//   user) gamma_t    = delta'_t <R_e^T p_t, h_t>        (the path h -> s -> delta -> G) a_t =
//   gamma_t q_u + delta_t R_e^T p_t  (dL_IRM/dh_t) dL_IRM/dW  = sum_t gamma_t p_t h_t^T,  dL_IRM/db
//   = sum_t gamma_t p_t g_I        = 2 m sum_k V_k^2 + sum_e open_e * sum_t a_t * (alpha_Phi -
//   alpha_Psi)_t * f_t g_E        = (1/E) sum_e open_e * sum_t delta_t q_u * (alpha_Phi -
//   alpha_Psi)_t * f_t
// and the attention MLPs receive dJ/dalpha from the h-adjoint. Templated on the scalar so the
// tests compare it with finite differences in double.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "painvrl/math/mask.h"

namespace painvrl {

using math::ParetoNormalize;  // pareto_normalize (math/mask.h)
using math::ParetoScale;
enum class MaskObjective { kPareto, kErm, kIrm, kFixed };  // kFixed: L_ERM + alpha L_IRM (InvRL)

// Trainable tensors of the mask model in one buffer: W (D, d), b (D), then for each attention MLP
// k = 0 (alpha_Phi), 1 (alpha_Psi): w1u (H, 2D), w1i (H, D + d), b1 (H), w2 (H), b2 (1).
struct MaskLayout {
  int32_t D = 0, H = 0;
  int64_t d = 0;
  bool attention = true;
  int64_t W = 0, b = 0, total = 0;
  int64_t w1u[2] = {0, 0}, w1i[2] = {0, 0}, b1[2] = {0, 0}, w2[2] = {0, 0}, b2[2] = {0, 0};
  static MaskLayout make(int32_t D, int64_t d, int32_t H, bool attention);
  // Named tensors in order (name, offset, shape) for dumps.
  struct Tensor {
    std::string name;
    int64_t offset;
    std::vector<int64_t> shape;
  };
  std::vector<Tensor> tensors() const;
};

template <class T>
struct MaskProblem {
  int32_t n_users = 0, n_items = 0, D = 0;
  int64_t d = 0;
  const T* Pt = nullptr;        // (U, D) frozen
  const T* Pf = nullptr;        // (U, D) frozen
  const T* Ti = nullptr;        // (I, D) frozen item table
  const T* features = nullptr;  // (I, d)
  const T* beta_user = nullptr;
  const T* beta_item = nullptr;
  const int32_t* ii_neighbors = nullptr;  // (I, K)
  const T* ii_weights = nullptr;          // (I, K)
  int32_t ii_k = 0;
};

struct MaskSettings {
  double w1 = 1, w2 = 0, w3 = 1, w4 = 0, neg_weight = 1, kappa = 0;
  double gamma_w = 0;
  double lambda = 1, center = 0, step = 1e-3;
  ParetoNormalize normalize = ParetoNormalize::kNone;
  MaskObjective objective = MaskObjective::kPareto;
  double fixed_alpha = 1;  // kFixed: weight of L_IRM
  ParetoScale scale;       // kInitial / kRunning: the state before this step
};

// The environments' batches: env e owns rows env_offsets[e] .. env_offsets[e + 1].
struct EnvBatches {
  std::vector<int64_t> env_offsets;   // (E + 1,)
  std::vector<int32_t> users, items;  // (rows,)
  std::vector<int32_t> negatives;     // (rows, N)
  int32_t n_negatives = 0;
  int32_t E() const { return int32_t(env_offsets.size()) - 1; }
};

template <class T>
struct MaskStepResult {
  std::vector<T> loss_env;  // (E,)
  T L_ERM = 0, L_IRM = 0, w_ERM = 0, w_IRM = 0;
  ParetoScale scale;         // the normalisation state after this step
  std::vector<T> G;          // (E, D, d)
  std::vector<T> V;          // (D, d)
  std::vector<T> g_E, g_I;   // (d,) before normalisation
  std::vector<T> grad;       // (layout.total,) dJ/dparams, J = wE L_ERM + wI L_IRM + gamma_w L2
  std::vector<T> mask_grad;  // (d,) wE g_E' + wI g_I' + lambda (m - c) (normalised directions)
  std::vector<T> mask_new;   // (d,) clip(m - step * mask_grad, 0, 1)
};

// Scratch of mask_step, reused from step to step: once warm, a step allocates only a few small
// vectors (per-row scratch of each thread, the rows' environments and term weights).
template <class T>
struct MaskStepWorkspace {
  std::vector<T> gate, open;          // (E, d) mu_e and the unclipped indicator
  std::vector<T> pf_rows, user_in;    // (rows, D) Pf_u; (rows, 2D) [Pt_u, Pf_u]
  std::vector<T> q, ru;               // (rows, d) W^T Pf_u; R_e^T Pf_u
  std::vector<T> s1, s2, s3, s4;      // (rows, d) per-row term sums (see mask_step.cpp)
  std::vector<T> row_vec;             // (rows, d) products' right-hand sides
  std::vector<T> user_pre;            // (rows, 2H) MLP k's w1u_k [Pt_u; Pf_u] in columns kH..
  std::vector<T> item_pre;            // (touched, 2H) MLP k's w1i_k [T_j; f_j] + b1_k likewise
  std::vector<T> w1u_both, w1i_both;  // (2H, 2D), (2H, D + d): both MLPs' first layers stacked
  std::vector<T> item_in;             // (touched, D + d) [T_j, f_j] of the touched items
  std::vector<int32_t> item_slot;     // (n_items,) index among the touched items, or -1
  std::vector<int32_t> touched;       // (touched,) item ids in first-seen order
  std::vector<T> term;                // (rows * terms, kTermFields) per-term values
  std::vector<int32_t> term_item;     // (rows * terms,) item id, -1 for a zero-weight term
  std::vector<double> row_loss, row_dsum, row_gsum;  // (rows,)
  std::vector<T> gbar, radj;                         // (D, d); (E, D, d)
  std::vector<T> row_dpre, item_dpre;                // (2, rows, H); (2, touched, H)
  std::vector<T> row_dw2;                            // (rows, 2H)
  std::vector<T> row_db2;                            // (rows, 2)
  std::vector<int64_t> item_term_offsets;            // (touched + 1,) terms grouped by touched item
  std::vector<int64_t> item_terms;  // (nonzero terms,) term indices, row order per item
};

// noise: (E, d). Returns every intermediate the debug dump records. The production step
// (host/cpu/mask_step.cpp); the overload with a workspace fills `out` and reuses the workspace's
// large buffers once it has seen a step of this size.
template <class T>
MaskStepResult<T> mask_step(const MaskLayout& layout, const T* params, const T* mask,
                            const MaskProblem<T>& problem, const EnvBatches& batches,
                            const T* noise, const MaskSettings& settings);
template <class T>
void mask_step(const MaskLayout& layout, const T* params, const T* mask,
               const MaskProblem<T>& problem, const EnvBatches& batches, const T* noise,
               const MaskSettings& settings, MaskStepWorkspace<T>& ws, MaskStepResult<T>& out);
// Variant 0 (host/cpu/mask_step_v0.cpp): the first implementation, term by term; bench/mask-step's
// baseline and the tests' second oracle.
template <class T>
MaskStepResult<T> mask_step_v0(const MaskLayout& layout, const T* params, const T* mask,
                               const MaskProblem<T>& problem, const EnvBatches& batches,
                               const T* noise, const MaskSettings& settings);

// The weighting shared by every variant: scales g_E and g_I (settings.normalize), sets w_ERM and
// w_IRM (Eq. 17-18, or the objective's fixed weights), the mask direction (on the scaled
// gradients) and the clipped SGD step (Eq. 19), and the normalisation state after the step.
// Reads R.g_E, R.g_I, R.L_ERM, R.L_IRM; writes R.w_ERM, R.w_IRM, R.mask_grad, R.mask_new,
// R.scale.
template <class T>
void weigh_objectives(const MaskSettings& settings, const T* mask, int64_t d, MaskStepResult<T>& R);

// The closed-form Pareto weight (Eq. 17-18): clip(((gI - gE) . gI) / |gE - gI|^2, 0, 1), 0.5 when
// the denominator is below 1e-12.
template <class T>
T pareto_weight(const std::vector<T>& g_E, const std::vector<T>& g_I);

}  // namespace painvrl
