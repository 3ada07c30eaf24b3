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

namespace painvrl {

enum class ParetoNormalize { kNone, kL2, kLoss };
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
  T L_ERM = 0, L_IRM = 0, w_ERM = 0;
  std::vector<T> G;          // (E, D, d)
  std::vector<T> V;          // (D, d)
  std::vector<T> g_E, g_I;   // (d,) before normalisation
  std::vector<T> grad;       // (layout.total,) dJ/dparams, J = wE L_ERM + wI L_IRM + gamma_w L2
  std::vector<T> mask_grad;  // (d,) wE g_E' + wI g_I' + lambda (m - c) (normalised directions)
  std::vector<T> mask_new;   // (d,) clip(m - step * mask_grad, 0, 1)
};

// noise: (E, d). Returns every intermediate the debug dump records.
template <class T>
MaskStepResult<T> mask_step(const MaskLayout& layout, const T* params, const T* mask,
                            const MaskProblem<T>& problem, const EnvBatches& batches,
                            const T* noise, const MaskSettings& settings);

// The closed-form Pareto weight (Eq. 17-18): clip(((gI - gE) . gI) / |gE - gI|^2, 0, 1), 0.5 when
// the denominator is below 1e-12.
template <class T>
T pareto_weight(const std::vector<T>& g_E, const std::vector<T>& g_I);

}  // namespace painvrl
