// Mask generation for Algorithm 1 (DESIGN.md section 2, Eq. 10-19): the pieces of one step
// shared with `debug-step` (settings, batches, gate noise, the mask model's initialisation) and
// one outer iteration's mask_epochs of steps on the CPU or the device runner
// (include/painvrl/backend/mask_runner.h), with the trace line of every step.

#include <algorithm>
#include <cmath>
#include <stdexcept>

#ifdef PAINVRL_HAVE_CUDA
#include "painvrl/cuda/backend.h"
#endif
#include "painvrl/backend/mask_runner.h"
#include "painvrl/backend/mask_step.h"
#include "painvrl/data/error.h"
#include "painvrl/data/npy.h"
#include "painvrl/math/adam.h"
#include "painvrl/math/sampling.h"
#include "painvrl/pipeline/algorithm1.h"
#include "painvrl/pipeline/checkpoint.h"
#include "painvrl/pipeline/progress.h"
#include "painvrl/pipeline/signals.h"
#include "painvrl/pipeline/stages.h"
#include "painvrl/pipeline/threads.h"

namespace painvrl {

namespace {
MaskRunnerFactory g_runner_factory = nullptr;
}

void set_mask_runner_factory_for_testing(MaskRunnerFactory factory) { g_runner_factory = factory; }

std::vector<float> scale_columns(const std::vector<float>& f, int64_t d,
                                 const std::vector<float>& factor) {
  std::vector<float> out(f.size());
  const int64_t rows = d > 0 ? int64_t(f.size()) / d : 0;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t j = 0; j < d; ++j) out[size_t(r * d + j)] = f[size_t(r * d + j)] * factor[j];
  }
  return out;
}

// Initial mask-model parameters: W ~ N(0, init_std), b = 0; attention layers N(0, 1/fan_in), the
// output biases +attention_bias (alpha_Phi) and -attention_bias (alpha_Psi).
std::vector<float> init_mask_params(const MaskLayout& L, uint64_t seed, uint32_t stage,
                                    double init_std, double attention_bias) {
  std::vector<float> p(size_t(L.total), 0.f);
  const math::PhiloxKey key = math::make_key(seed, math::stream_id(math::RngStream::kInit, stage));
  auto fill = [&](int64_t off, int64_t n, float std_dev, uint32_t tensor) {
    for (int64_t k = 0; k < n; ++k)
      p[size_t(off + k)] = math::init_normal<float>(key, tensor, uint64_t(k), std_dev);
  };
  fill(L.W, int64_t(L.D) * L.d, float(init_std), 0);
  if (L.attention) {
    for (int k = 0; k < 2; ++k) {
      fill(L.w1u[k], int64_t(L.H) * 2 * L.D, float(1.0 / std::sqrt(double(3 * L.D + L.d))), 10 + k);
      fill(L.w1i[k], int64_t(L.H) * (L.D + L.d), float(1.0 / std::sqrt(double(3 * L.D + L.d))),
           20 + k);
      fill(L.w2[k], L.H, float(1.0 / std::sqrt(double(L.H))), 30 + k);
      p[size_t(L.b2[k])] = float(k == 0 ? attention_bias : -attention_bias);
    }
  }
  return p;
}

MaskRunOptions mask_run_options(const Config& c) {
  MaskRunOptions o;
  o.mask_batch = c.mask_batch;
  o.negatives = c.negatives;
  o.sigma = c.sigma;
  o.lr = c.lr;
  o.adam_beta1 = c.adam_beta1;
  o.adam_beta2 = c.adam_beta2;
  o.adam_eps = c.adam_eps;
  o.mask_adam = c.mask_optimizer != "sgd";
  o.mask_step = c.mask_step;
  return o;
}

MaskSettings mask_settings_from(const Config& c) {
  const bool invrl = c.method == "invrl";
  MaskSettings ms;
  ms.w1 = c.w1;
  ms.w2 = c.w2;
  ms.w3 = c.w3;
  ms.w4 = c.w4;
  ms.neg_weight = c.neg_weight;
  ms.kappa = c.kappa;
  ms.gamma_w = c.gamma_w;
  ms.lambda = c.mask_lambda;
  ms.center = invrl ? 0.5 : c.mask_center;
  ms.step = c.mask_step;
  ms.normalize = c.pareto_normalize == "l2"        ? ParetoNormalize::kL2
                 : c.pareto_normalize == "loss"    ? ParetoNormalize::kLoss
                 : c.pareto_normalize == "initial" ? ParetoNormalize::kInitial
                 : c.pareto_normalize == "running" ? ParetoNormalize::kRunning
                                                   : ParetoNormalize::kNone;
  ms.objective = invrl                  ? MaskObjective::kFixed
                 : c.objective == "erm" ? MaskObjective::kErm
                 : c.objective == "irm" ? MaskObjective::kIrm
                                        : MaskObjective::kPareto;
  ms.fixed_alpha = c.invrl_alpha;
  return ms;
}

namespace {

// Each environment's pairs in a fresh order for `epoch` (applied to the previous epoch's order).
void shuffle_env_pairs(std::vector<std::vector<int32_t>>& env_pairs, math::PhiloxKey order_key,
                       int epoch) {
  for (size_t e = 0; e < env_pairs.size(); ++e) {
    auto& v = env_pairs[e];
    for (int64_t p = int64_t(v.size()) - 1; p > 0; --p) {
      const uint32_t r = math::philox(order_key, uint32_t(p), uint32_t(e), 0, uint32_t(epoch)).v[0];
      std::swap(v[p], v[math::uniform_below(r, uint32_t(p + 1))]);
    }
  }
}

}  // namespace

std::vector<double> read_mask_file(const std::string& path, int64_t d) {
  const NpyArray a = read_npy(path);
  if (a.dtype != NpyDtype::kFloat32 && a.dtype != NpyDtype::kFloat64) {
    input_error("mask_file {}: expected float32 or float64 values", path);
  }
  if (a.size() != d || a.shape.size() > 2 || (a.shape.size() == 2 && a.shape[0] != 1)) {
    input_error("mask_file {}: shape [{}]; expected ({},): one value per feature column", path,
                fmt::join(a.shape, ", "), d);
  }
  std::vector<double> m = a.to_double();
  for (size_t j = 0; j < m.size(); ++j) {
    if (!(m[j] >= 0 && m[j] <= 1)) {
      input_error("mask_file {}: value {} (column {}) is not in [0, 1]", path, m[j], j);
    }
  }
  return m;
}

MaskStageState fresh_mask_model(const Config& c, const Dataset& data,
                                const std::vector<float>& backbone, int outer) {
  const bool attention = c.method != "invrl" && c.attention;
  const ParamLayout bl =
      make_train_setup(c, data.n_users, data.n_items, data.feature_dim, true, 0).layout;
  const MaskLayout ml = MaskLayout::make(c.dim, data.feature_dim, c.attention_hidden, attention);
  // W ~ N(0, init_std) (or stage 0's W, b), attention N(0, 1/fan_in).
  const std::vector<float> init =
      init_mask_params(ml, c.seed, stage_id::mask(outer), c.init_std, c.attention_bias);
  MaskStageState st;
  st.params.assign(init.begin(), init.end());
  seed_mask_model(c, backbone, bl, ml, st.params);
  st.adam_m.assign(st.params.size(), 0.0);
  st.adam_v.assign(st.params.size(), 0.0);
  return st;
}

void generate_mask(const Config& c, const Evaluator& eval, const MaskSettings& ms, PipelineState& s,
                   int outer, std::ostream& trace, const StageCheckpoints& stage) {
  const Dataset& data = eval.data;
  const Graph& graph = eval.graph;
  const int64_t d = data.feature_dim;
  const bool invrl = c.method == "invrl";
  const bool pareto = !invrl && c.objective == "pareto";  // w_ERM from Eq. 17 (else fixed)
  const ParamLayout bl = make_train_setup(c, data.n_users, data.n_items, d, true, 0).layout;
  const MaskLayout ml = MaskLayout::make(c.dim, d, c.attention_hidden, !invrl && c.attention);
  // The mask step runs in double on the CPU: L_IRM and its derivatives are built from
  // differences of per-environment gradients (G_e - Gbar) and from sums whose positive and
  // negative terms nearly cancel, which float32 blurs to ~1e-3 relative error (see
  // tests/reference_test.cpp). The inputs are converted once per outer iteration.
  auto to_double = [](const float* p, size_t n) { return std::vector<double>(p, p + n); };
  const std::vector<float>& frozen = s.backbone;
  const size_t nu = size_t(data.n_users) * c.dim, ni = size_t(data.n_items) * c.dim;
  const std::vector<double> pt_d = to_double(frozen.data() + bl.pt, nu),
                            pf_d = to_double(frozen.data() + bl.pf, nu),
                            ti_d = to_double(frozen.data() + bl.t, ni),
                            f_d = to_double(data.features.data(), data.features.size()),
                            bu_d = to_double(graph.beta_user.data(), graph.beta_user.size()),
                            bi_d = to_double(graph.beta_item.data(), graph.beta_item.size()),
                            iw_d = to_double(graph.ii_weights.data(), graph.ii_weights.size());
  const MaskProblem<double> problem{data.n_users,
                                    data.n_items,
                                    c.dim,
                                    d,
                                    pt_d.data(),
                                    pf_d.data(),
                                    ti_d.data(),
                                    f_d.data(),
                                    bu_d.data(),
                                    bi_d.data(),
                                    graph.ii_neighbors.data(),
                                    iw_d.data(),
                                    graph.ii_k};
  const uint32_t stage_key = stage_id::mask(outer);
  MaskStageState& st = s.mask_model;
  const std::vector<int32_t>& env = s.env;
  const int first_epoch = stage.resume ? stage.resume->position.epoch : 0;
  const int64_t first_step = stage.resume ? stage.resume->position.step : 0;
  // A checkpoint inside this outer iteration's mask generation.
  auto checkpoint_at = [&](int epoch, int64_t step) {
    Checkpoint ck;
    ck.position = Position{"mask", outer, epoch, step};
    stage.context(ck);
    return ck;
  };
  const int32_t n_envs = *std::max_element(env.begin(), env.end()) + 1;
  std::vector<std::vector<int32_t>> env_pairs(static_cast<size_t>(n_envs));
  for (size_t p = 0; p < env.size(); ++p) env_pairs[env[p]].push_back(int32_t(p));
  int64_t largest = 0;
  for (const auto& v : env_pairs) largest = std::max<int64_t>(largest, int64_t(v.size()));

  // One batch of mask_batch positives from every environment per step, on the CPU or the
  // device (include/painvrl/backend/mask_runner.h).
  MaskRunSetup rs;
  rs.options = mask_run_options(c);
  rs.layout = ml;
  rs.settings = ms;
  rs.problem = problem;
  rs.train = &data.train;
  rs.envs = n_envs;
  rs.neg_key = math::make_key(c.seed, math::stream_id(math::RngStream::kNegative, stage_key));
  rs.noise_key = math::make_key(c.seed, math::stream_id(math::RngStream::kMaskNoise, stage_key));
  const MaskRunState run_state{&st.params, &st.adam_m, &st.adam_v, &st.adam_t, &s.mask,
                               &s.mask_m,  &s.mask_v,  &s.mask_t,  &st.scale};
  std::unique_ptr<MaskRunner> runner;
#ifdef PAINVRL_HAVE_CUDA
  if (c.device == "cuda") runner = cuda::make_mask_runner(rs, run_state, env_pairs);
#endif
  if (!runner) {
    runner =
        g_runner_factory ? g_runner_factory(rs, run_state) : make_cpu_mask_runner(rs, run_state);
  }
  const math::PhiloxKey order_key =
      math::make_key(c.seed, math::stream_id(math::RngStream::kShuffle, stage_key));
  const int64_t steps = (largest + c.mask_batch - 1) / c.mask_batch;
  int epoch = first_epoch;
  // The steps' records since the last drain: trace lines and progress sums, or the stop on
  // the first non-finite step (its trace line is not written, as no update was applied).
  auto drain = [&] {
    const MaskDrain dr = runner->drain();
    for (const MaskStepRecord& r : dr.records) {
      nlohmann::json line = {{"outer", outer}, {"epoch", epoch}, {"step", r.step}};
      if (pareto) line["w_ERM"] = r.w_ERM;  // fixed weights (erm, irm, invrl): no w_ERM
      line["L_ERM"] = r.L_ERM;
      line["L_IRM"] = r.L_IRM;
      line["mask_mean"] = r.mask_mean;
      trace << line.dump() << "\n";
      st.sum_w += r.w_ERM;
      st.sum_erm += r.L_ERM;
      st.sum_irm += r.L_IRM;
      ++st.n_steps;
    }
    if (dr.failed) {
      throw Diverged(fmt::format(
          "mask generation, outer {} epoch {} step {}: a non-finite loss, gradient or mask "
          "(L_ERM {}, L_IRM {}); lower lr or mask_step",
          outer, epoch, dr.failed->step, dr.failed->L_ERM, dr.failed->L_IRM));
    }
  };
  for (int e = 0; e < first_epoch; ++e) shuffle_env_pairs(env_pairs, order_key, e);
  for (; epoch < c.mask_epochs; ++epoch) {
    shuffle_env_pairs(env_pairs, order_key, epoch);
    runner->begin_epoch(env_pairs, epoch);
    for (int64_t step = epoch == first_epoch ? first_step : 0; step < steps; ++step) {
      if (stop_requested()) {
        drain();
        runner->sync_state();
        Checkpoint ck = checkpoint_at(epoch, step);
        stop_stage(&stage, ck,
                   fmt::format("mask generation outer {} epoch {} step {}", outer, epoch, step));
      }
      runner->step(step);
      if (!runner->deferred()) drain();
    }
    drain();
    RunProgress::current().advance(epoch + 1, c.mask_epochs);
    ThreadGovernor::current().adapt();
    if (st.n_steps > 0 && (epoch + 1) % std::max(1, c.mask_epochs / 8) == 0) {
      // The device runner keeps the mask on the device; the host copy is current only after
      // sync_state (without it a GPU run logged the initial mask at every line).
      runner->sync_state();
      double mean = 0, lo = 1, hi = 0;
      for (double x : s.mask) {
        mean += x;
        lo = std::min(lo, double(x));
        hi = std::max(hi, double(x));
      }
      log_progress(fmt::format(
          "mask outer {} epoch {:>3}/{}: {}L_ERM {:.4g}, L_IRM {:.4g}; mask mean {:.3f} "
          "[{:.3f}, {:.3f}]{}",
          outer, epoch, c.mask_epochs,
          pareto ? fmt::format("mean w_ERM {:.3f}, ", st.sum_w / st.n_steps) : "",
          st.sum_erm / st.n_steps, st.sum_irm / st.n_steps, mean / double(std::max<int64_t>(d, 1)),
          lo, hi, RunProgress::current().suffix()));
      st.sum_w = st.sum_erm = st.sum_irm = 0;
      st.n_steps = 0;
    }
    if (stage.store && stage.store->due(epoch + 1) && epoch + 1 < c.mask_epochs) {
      runner->sync_state();
      Checkpoint ck = checkpoint_at(epoch + 1, 0);
      stage.store->save(ck);
    }
  }
  runner->sync_state();
  trace << std::flush;
  s.mask_steps += int64_t(c.mask_epochs) * steps;
}

}  // namespace painvrl
