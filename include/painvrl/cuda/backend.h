// The CUDA training backend (kernels/cuda_backend.cpp): the Backend interface of backend.h with
// the step on the device. Per step: negatives (kernels/sampling.cu), X = F W^T + b (cuBLAS),
// the fused loss and gradients (kernels/ultragcn_loss.cu), dW = dX^T F and db (cuBLAS), Adam with
// the L2 value (kernels/adam.cu) and the step end; the host reads the epoch's sums once per
// train_steps call. Gradients are scattered with atomics (or, with TrainSetup::deterministic,
// summed in a fixed order: bit-identical runs), so runs agree with the CPU backend to
// rounding, not bit for bit.
//
// Evaluation ranks on the device (prepare_ranking, rank: the scoring GEMM, the exclusions and the
// top k per user, kernels/topk.cu; only the ranked ids come back). HIM's environment models and
// the mask generation have their own device loops below. Not yet on the device (the CUDA issue
// lists them): the per-row L2 of l2 = touched (refused at setup) and the item-item graph.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "painvrl/backend/backend.h"
#include "painvrl/backend/draws.h"
#include "painvrl/backend/mask_runner.h"
#include "painvrl/backend/mask_step.h"
#include "painvrl/backend/model.h"
#include "painvrl/cpu/ultragcn_loss.h"
#include "painvrl/math/philox.h"

namespace painvrl::cuda {

std::unique_ptr<Backend> make_cuda_backend();

// Device memory estimates, buffer by buffer, each checked against free memory before the
// allocation it describes (setup, the mask runner, HIM's training and reassignment), and each
// held by tests/device_memory_test.cpp against what the code allocates under a fake device
// (tests/fake_cuda.cpp). Every estimate includes kCublasWorkspaceAllowance, which cuBLAS
// allocates for itself; CUB's sort storage comes from CUB's own size query (which needs the CUDA
// runtime but runs nothing).
constexpr int64_t kCublasWorkspaceAllowance = int64_t(64) << 20;
// What the check adds to an estimate for the device allocator, which rounds blocks up (large ones
// to 2 MiB): enough for the few dozen buffers a stage holds.
constexpr int64_t kRoundingAllowance = int64_t(32) << 20;

// What the backend's estimate depends on beyond the setup.
struct BackendMemoryInputs {
  int32_t ii_k = 0;         // item neighbours per item
  int64_t n_pairs = 0;      // training pairs: the epoch's pairs, the ranking's exclusions
                            // (Graph::train_by_user) and HIM's scored pairs (score_pairs)
  int64_t score_block = 0;  // users per scoring block (at most 4,096; at most the users)
  int32_t rank_k = 0;       // the largest k ranked
};
// The CUDA backend for `setup`: the problem, parameters and Adam's moments, one step's buffers,
// the epoch's pairs, the scoring rows and one block, the ranking's exclusions and output, HIM's
// pair scores, and the deterministic mode's buffers.
int64_t backend_device_bytes(const TrainSetup& setup, const BackendMemoryInputs& in);

// HIM's environment models trained on the device (train_env_models_projection_on_device) with
// E = env_sizes.size() environments of these many pairs, and their reassignment of n_pairs pairs
// (assign_environments_on_device).
int64_t him_train_device_bytes(const TrainSetup& setup, int32_t ii_k,
                               const std::vector<int64_t>& env_sizes);
int64_t him_assign_device_bytes(int32_t n_users, int32_t n_items, int32_t dim, int64_t feat_dim,
                                int32_t envs, int64_t n_pairs);

// The device mask runner (make_mask_runner) for `setup` whose environments hold env_sizes pairs.
int64_t mask_runner_device_bytes(const MaskRunSetup& setup, const std::vector<int64_t>& env_sizes);

// One loss and gradient evaluation on the device, for tests and the kernel lab: copies the
// problem in, runs the projection, the fused kernel and dW, db, and copies back the data terms
// (main, item_item; the L2 is the optimiser's) and grad (layout.total, overwritten: the data
// terms' gradient only, as cpu::ultragcn_loss_grad with add_l2_grad = false adds). Throws
// std::runtime_error naming the failing call.
LossTerms<float> loss_grad_on_device(const ParamLayout& layout, const float* params,
                                     const LossProblem<float>& problem, const Batch& batch,
                                     const LossSettings& settings, float* grad);

// HIM's E environment models (cpu::env_projection_loss_grad's problem) evaluated on the device
// in one fused launch (row_env, x of width E * D): per environment the data loss of its rows in
// env_loss (E,), and grad_w_all (E * D, d), grad_b_all (E * D,) overwritten. For tests; the
// trainer's HIM does not call it yet.
void env_projection_loss_grad_on_device(const cpu::EnvModelsView& models,
                                        const LossProblem<float>& problem,
                                        const cpu::EnvBatch& batch, const LossSettings& settings,
                                        double* env_loss, float* grad_w_all, float* grad_b_all);

// HIM's E environment models trained on the device: what train_env_models_projection
// (stages.h) computes on the CPU, step for step (the same rows, negatives and Adam steps per
// model, the loss checked before each update), returning W_all (E D, d) then b_all (E D). Stops
// through `hooks` on a stop request and on a non-finite loss, as the CPU version does. `setup`:
// the backbone stages' settings (layout with the content branch on psi; its stage is unused).
std::vector<float> train_env_models_projection_on_device(
    const TrainSetup& setup, const Graph& graph, const std::vector<PairList>& env_pairs,
    const std::vector<float>& psi, const std::vector<float>& backbone,
    const std::vector<uint32_t>& stages, int epochs, const HimHooks& hooks);

// HIM's reassignment on the device (Eq. 9): for every pair, the environment whose projection
// model (m.w_all, m.b_all on the content psi (n_items, d)) scores it highest, ties to the smaller
// id; what the CPU computes from cpu::env_projection_score_pairs. tf32: the projection on TF32
// tensor cores (TrainSetup::tf32).
std::vector<int32_t> assign_environments_on_device(const cpu::EnvModelsView& m, const float* psi,
                                                   const PairList& pairs, bool tf32 = false);

// negatives (rows, N) drawn on the device (launch_sample_negatives), copied back; for tests.
std::vector<int32_t> negatives_on_device(math::PhiloxKey key, uint32_t epoch, uint32_t step,
                                         int64_t rows, int32_t n_negatives, uint32_t n_items);

// Mask generation on the device (kernels/cuda_mask.cpp): the MaskRunner of mask_runner.h for one
// outer iteration, whose environments' pair lists (for their sizes) are env_pairs. Throws
// std::runtime_error before it allocates when the step would not fit in free device memory.
std::unique_ptr<MaskRunner> make_mask_runner(const MaskRunSetup& setup, const MaskRunState& state,
                                             const std::vector<std::vector<int32_t>>& env_pairs);

// One mask step on the device (kernels/mask_step.cu with cuBLAS DGEMM), copied back: every output
// of mask_step<double> (mask_step.h) for the same inputs. fp32_features: the term passes read the
// features in float when each is exactly a float (as MaskRunSetup::fp32_features). For tests and
// the lab.
MaskStepResult<double> mask_step_on_device(const MaskLayout& layout, const double* params,
                                           const double* mask, const MaskProblem<double>& problem,
                                           const EnvBatches& batches, const double* noise,
                                           const MaskSettings& settings, bool fp32_features = true);

}  // namespace painvrl::cuda
