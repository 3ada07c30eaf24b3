// The PaInvRL mask-generation step on the device (kernels/mask_step.cu): the closed-form step of
// host/cpu/mask_step.cpp (its derivation in include/painvrl/backend/mask_step.h and
// docs/mask-step.md) as a dozen kernels and the dense products between them, in double like the CPU
// step (L_IRM and its derivatives are differences of per-environment gradients that float32 blurs;
// an H200 runs FP64 GEMMs on its tensor cores). The dense products go through a caller-given GEMM
// (cuBLAS DGEMM on a device; a host loop in the emulated-kernel tests), so the whole step also runs
// under tests/kernel_emulation_test.cpp against mask_step<double>.
#pragma once
#include <cstdint>
#include <functional>

#include "painvrl/backend/mask_step.h"
#include "painvrl/cuda/kernels.h"

namespace painvrl::PAINVRL_KERNEL_NS {

// C (m, n) = alpha op(A) op(B) + beta C; row-major, leading dimensions in elements; op(X) = X^T
// when trans_x. A is (m, k) after op, B (k, n) after op.
struct GemmCall {
  bool trans_a = false, trans_b = false;
  int64_t m = 0, n = 0, k = 0;
  double alpha = 1;
  const double* a = nullptr;
  int64_t lda = 0;
  const double* b = nullptr;
  int64_t ldb = 0;
  double beta = 0;
  double* c = nullptr;
  int64_t ldc = 0;
};
using DeviceGemm = std::function<cudaError_t(const GemmCall&)>;

// Row chunks of the g_E, g_I column sums (enough blocks to fill the GPU at the paper's d).
constexpr int kMaskColumnChunks = 32;

// The step's device scratch, carved from one buffer of MaskWorkspace::doubles() doubles.
struct MaskWorkspace {
  double* gate = nullptr;         // (E, d) mu_e
  double* open = nullptr;         // (E, d) 1 where the clip is inactive
  double* pf_rows = nullptr;      // (rows, D) Pf_u of each batch row
  double* ptpf_rows = nullptr;    // (rows, 2D) [Pt_u, Pf_u]
  double* base = nullptr;         // (rows,) <Pf_u, b>
  double* user_pre = nullptr;     // (rows, 2H) w1u_k [Pt_u; Pf_u]
  double* item_pre = nullptr;     // (2, I, H) w1i_k [T_j; f_j] + b1_k
  double* q = nullptr;            // (rows, d) W^T Pf_u
  double* row_vec = nullptr;      // (rows, d) pass 1: sum_t delta_t h_t; pass 2: sum_t gamma_t h_t
  double* row_vec_erm = nullptr;  // (rows, d) sum_t delta_t h_t / E
  double* row_mask_e = nullptr;  // (rows, d) g_E pieces; after the column sums: the combined vector
  double* row_mask_i = nullptr;  // (rows, d) g_I pieces
  double* ru = nullptr;          // (rows, d) R_e^T Pf_u
  double* row_loss = nullptr;    // (rows,)
  double* row_dsum = nullptr;    // (rows,) sum_t delta_t / E
  double* row_gsum = nullptr;    // (rows,) sum_t gamma_t
  double* term_stats =
      nullptr;  // (rows * TPR, 5) c (0: skipped), alpha_phi, alpha_psi, delta, delta2
  double* term_sums = nullptr;    // (rows * TPR, 2) sum_j q_j f_j, sum_j q_j mu_j f_j
  double* term_dalpha = nullptr;  // (rows * TPR, 4) dphi_E, dpsi_E, dphi_I, dpsi_I
  double* radj = nullptr;         // (E, D, d) R_e = dL_IRM / dG_e
  double* lirm_col = nullptr;     // (d,) sum_k (V_kj m_j)^2
  double* gi_direct = nullptr;    // (d,) sum_k 2 m_j V_kj^2
  double* row_dpre = nullptr;     // (rows, 2, H) dJ/d(pre-activation), user half
  double* row_dw2 = nullptr;      // (rows, 2, H)
  double* row_db2 = nullptr;      // (rows, 2)
  double* item_dpre = nullptr;    // (2, I, H) dJ/d(pre-activation) summed per item
  double* col_partial = nullptr;  // (kMaskColumnChunks, 2, d) g_E, g_I of each chunk of rows
  int32_t* term_sort = nullptr;   // (4, rows * TPR) the terms' item keys and indices, sorted

  static int64_t doubles(int64_t rows, int32_t tpr, int32_t E, int32_t D, int64_t d, int32_t H,
                         int32_t n_items);
  static MaskWorkspace carve(double* buffer, int64_t rows, int32_t tpr, int32_t E, int32_t D,
                             int64_t d, int32_t H, int32_t n_items);
};

struct MaskStepArgs {
  MaskLayout layout;  // the parameter buffer's offsets; layout.H = 0 without attention
  MaskSettings settings;
  int32_t n_users = 0, n_items = 0, envs = 0, n_negatives = 0;
  int32_t ii_k = 0;  // row stride of the neighbour tables (neighbours used: ii_k when kappa > 0)
  int64_t rows = 0;
  const int64_t* env_offsets_host = nullptr;  // (E + 1,) host copy, for the per-environment GEMMs
  const int64_t* env_offsets = nullptr;       // (E + 1,) device
  // The frozen backbone, content and graph (device).
  const double* pt = nullptr;        // (U, D)
  const double* pf = nullptr;        // (U, D)
  const double* ti = nullptr;        // (I, D)
  const double* features = nullptr;  // (I, d)
  // The same feature values in float, when every one is exactly a float (features are read as
  // float): the two term passes then read these, half the bytes (variant 2); null: variant 1.
  const float* features_f32 = nullptr;    // (I, d)
  const double* beta_user = nullptr;      // (U,)
  const double* beta_item = nullptr;      // (I,)
  const int32_t* ii_neighbors = nullptr;  // (I, ii_k)
  const double* ii_weights = nullptr;     // (I, ii_k)
  // The step's batch (device).
  const int32_t* users = nullptr;      // (rows,)
  const int32_t* items = nullptr;      // (rows,)
  const int32_t* negatives = nullptr;  // (rows, N)
  const double* noise = nullptr;       // (E, d)
  // The model.
  const double* params = nullptr;  // (layout.total,)
  const double* mask = nullptr;    // (d,)
  MaskWorkspace ws;
  // Outputs (device), every element written.
  double* loss_env = nullptr;  // (E,)
  double* scalars = nullptr;   // (7,) L_ERM, L_IRM, w_ERM, w_IRM, the scale state after
  // The run's normalisation state (3,): rms_E, rms_I, steps; read and updated by the step. Null:
  // the step starts from settings.scale and only reports the state after it (scalars 4-6).
  double* pareto_state = nullptr;
  double* G = nullptr;          // (E, D, d)
  double* V = nullptr;          // (D, d)
  double* g_E = nullptr;        // (d,) before normalisation
  double* g_I = nullptr;        // (d,)
  double* grad = nullptr;       // (layout.total,)
  double* mask_grad = nullptr;  // (d,)
  double* mask_new = nullptr;   // (d,)
};

// Terms per batch row: the positive, N negatives and, when kappa > 0, ii_k neighbours.
inline int32_t mask_terms_per_row(const MaskStepArgs& a) {
  return 1 + a.n_negatives + (a.settings.kappa > 0 ? a.ii_k : 0);
}

// One step: every output of mask_step<double> for the same inputs, the same on every run (no
// atomics: the per-item attention gradient sums terms sorted stably by item). Launches in order
// on `stream` (the GEMM and the sort must run on the same stream); never synchronises.
cudaError_t run_mask_step(const MaskStepArgs& args, const DeviceGemm& gemm,
                          const DeviceSortPairs& sort, cudaStream_t stream);

// The optimiser of the mask model and the mask after a step (kernels/mask_step.cu): Adam on the
// parameters (the L2 gradient already in grad); the mask either takes mask_new (sgd) or an Adam
// step on mask_grad, clipped to [0, 1]; then the step's record (w_ERM, L_ERM, L_IRM, mask mean)
// goes to trace_row (4,), and *halt is set when a loss, gradient or the mask is not finite.
struct MaskUpdateArgs {
  double* params = nullptr;  // (n_params,)
  double* adam_m = nullptr;
  double* adam_v = nullptr;
  const double* grad = nullptr;
  int64_t n_params = 0;
  math::AdamStep param_step{};
  double* mask = nullptr;  // (d,)
  double* mask_m = nullptr;
  double* mask_v = nullptr;
  const double* mask_grad = nullptr;
  const double* mask_new = nullptr;
  int64_t d = 0;
  bool mask_adam = false;
  math::AdamStep mask_adam_step{};
  const double* scalars = nullptr;  // (4,) of the step
  double* trace_row = nullptr;      // (4,) written
  int* halt = nullptr;              // set, never cleared, on a non-finite value
  long long* halt_step = nullptr;   // the step that first set *halt
  long long step = 0;
};
cudaError_t launch_mask_update(const MaskUpdateArgs& args, cudaStream_t stream);

// A mask step's batch from the epoch's shuffled environment pair lists (make_mask_batches,
// stages.h): batch row r of environment e (rows batch_offsets[e] .. batch_offsets[e + 1]) is pair
// env_pairs[pair_offsets[e] + (step * mask_batch + i) % n_e], i = r - batch_offsets[e].
struct MaskBatchArgs {
  const int32_t* env_pairs = nullptr;      // (P,) pair indices, environment after environment
  const int64_t* pair_offsets = nullptr;   // (E + 1,)
  const int64_t* batch_offsets = nullptr;  // (E + 1,)
  int32_t envs = 0;
  const int32_t* train_user = nullptr;  // (P,)
  const int32_t* train_item = nullptr;  // (P,)
  int64_t step = 0;
  int32_t mask_batch = 0;
  int64_t rows = 0;
  int32_t* users = nullptr;  // (rows,) written
  int32_t* items = nullptr;  // (rows,) written
};
cudaError_t launch_mask_batch(const MaskBatchArgs& args, cudaStream_t stream);

// noise (E, d)[e][j] = math::mask_noise(key, epoch, step, e, j, sigma) (float, stored as double).
cudaError_t launch_mask_noise(math::PhiloxKey key, uint32_t epoch, uint32_t step, int32_t envs,
                              int64_t d, float sigma, double* noise, cudaStream_t stream);

// One whole training step of the device runner (kernels/cuda_mask.cpp): the batch rows
// (launch_mask_batch, into args.users and args.items), their negatives (launch_sample_negatives,
// row r of one batch: make_mask_batches' draws), the gate noise (launch_mask_noise), the step
// (run_mask_step) and the update (launch_mask_update, whose gradient, mask direction, mask step
// and scalars are the step's outputs). step is taken from update.step.
struct MaskTrainStep {
  MaskBatchArgs batch;           // users, items: the buffers args.users and args.items point to
  int32_t* negatives = nullptr;  // (rows, N): args.negatives
  double* noise = nullptr;       // (E, d): args.noise
  math::PhiloxKey neg_key{}, noise_key{};
  uint32_t epoch = 0;
  float sigma = 0;
  MaskUpdateArgs update;
};
// After run_mask_step, launch_mask_update or run_mask_train_step returned an error: the kernel
// (or call) that failed, for the message (this thread's last failure).
const char* mask_step_failed_launch();

cudaError_t run_mask_train_step(const MaskStepArgs& args, MaskTrainStep& t, const DeviceGemm& gemm,
                                const DeviceSortPairs& sort, cudaStream_t stream);

}  // namespace painvrl::PAINVRL_KERNEL_NS
