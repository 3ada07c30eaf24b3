// The invariant-learning pipeline of Algorithm 1 (DESIGN.md section 2) on the CPU backend:
//   stage 0: a backbone on the full features f; its Pt, Pf, T are frozen for the mask model;
//   for t in 0..T-1: environment identification (HIM, Eq. 9) on psi = (1 - m) f, then
//     `mask_epochs` epochs of mask generation (host/mask_step.cpp, Eq. 10-19);
//   final model: a fresh backbone on Phi = m f with validation-based selection (Eq. 24-26).
// `painvrl` weights L_ERM and L_IRM by the closed-form w_ERM (or objective = erm | irm); `invrl`
// uses L_ERM + alpha L_IRM without attention, with InvRL's regulariser and the 1.05 growth of
// alpha and lambda per outer iteration.
//
// Environment models (him_train, a departure from DESIGN.md's "fresh full backbone"). The
// argmax of Eq. 9 can only split the data by how users respond to item content if the models
// differ in that response and in nothing else. A fresh backbone has ID embeddings that fit each
// pair of its own environment, so every pair scores highest under the model that trained on it
// and stays where the random start put it: on the synthetic data (bench/RESULTS.md,
// 2026-11-29) two rounds left both environments at the planted mix of the whole training set.
// Per-user content tastes (him_train = content) memorise the same way. With him_train =
// projection every model starts from the stage-0 backbone and trains only W and b, which all
// users and items share, so a model can only change how features map into the frozen user
// tastes; the environments then separate by the sign of the spurious response and the learned
// mask puts the spurious block below the invariant one on every seed we ran. InvRL's code has
// a never-called init_frontmodel() that loads and freezes the pretrained model in the same
// spirit. him_train = all keeps the DESIGN.md / InvRL behaviour (configs/invrl.toml).
#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <numeric>
#include <stdexcept>

#ifdef PAINVRL_HAVE_CUDA
#include "painvrl/cuda/backend.h"
#endif
#include "painvrl/checkpoint.h"
#include "painvrl/cpu/ultragcn_loss.h"
#include "painvrl/error.h"
#include "painvrl/io.h"
#include "painvrl/mask_runner.h"
#include "painvrl/mask_step.h"
#include "painvrl/math/adam.h"
#include "painvrl/math/sampling.h"
#include "painvrl/npy.h"
#include "painvrl/signals.h"
#include "painvrl/stages.h"

namespace painvrl {
namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

}  // namespace

std::vector<float> scale_columns(const std::vector<float>& f, int64_t d,
                                 const std::vector<float>& factor) {
  std::vector<float> out(f.size());
  const int64_t rows = d > 0 ? int64_t(f.size()) / d : 0;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t j = 0; j < d; ++j) out[size_t(r * d + j)] = f[size_t(r * d + j)] * factor[j];
  }
  return out;
}

// Gate noise for environment e in a step: eps (d), N(0, sigma^2), from (epoch, step, e, j).
void draw_noise(math::PhiloxKey key, uint32_t epoch, uint32_t step, uint32_t env, int64_t d,
                float sigma, float* eps) {
  for (int64_t j = 0; j < d; ++j)
    eps[j] = math::mask_noise(key, epoch, step, env, uint64_t(j), sigma);
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

std::vector<int32_t> environments_from_file(const std::string& path, const PairList& pairs) {
  const std::string text = read_text_file(path);
  std::map<std::pair<int32_t, int32_t>, int32_t> env_of;
  int64_t line_no = 0;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string::npos) end = text.size();
    std::string line = text.substr(pos, end - pos);
    pos = end + 1;
    if (!line.empty() && line.back() == '\r') line.pop_back();  // CRLF reads like LF
    if (++line_no == 1 || line.find_first_not_of(" \t") == std::string::npos) continue;  // header
    // The first three tab-separated fields, each a whole integer (later fields are ignored).
    int32_t field[3];
    size_t at = 0;
    bool ok = true;
    for (int k = 0; k < 3 && ok; ++k) {
      const size_t tab = std::min(line.find('\t', at), line.size());
      const char* first = line.data() + at;
      const auto [ptr, ec] = std::from_chars(first, line.data() + tab, field[k]);
      ok = ec == std::errc() && ptr == line.data() + tab && tab > at &&
           (k == 2 || tab < line.size());
      at = tab + 1;
    }
    if (!ok || field[0] < 0 || field[1] < 0 || field[2] < 0 || field[2] > 1000) {
      input_error("{}:{}: expected `user<TAB>item<TAB>env` with ids >= 0 and env <= 1000", path,
                  line_no);
    }
    env_of[{field[0], field[1]}] = field[2];
  }
  std::vector<int32_t> env(pairs.size());
  std::map<int32_t, int32_t> compact;  // environment ids present in training, renumbered 0..
  for (size_t p = 0; p < pairs.size(); ++p) {
    const auto it = env_of.find({pairs.user[p], pairs.item[p]});
    if (it == env_of.end()) {
      input_error("{}: no environment for training pair ({}, {})", path, pairs.user[p],
                  pairs.item[p]);
    }
    compact.emplace(it->second, 0);
    env[p] = it->second;
  }
  int32_t next = 0;
  for (auto& [id, index] : compact) index = next++;
  for (int32_t& e : env) e = compact[e];
  return env;
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

void him_interrupted(int epoch, int64_t step) {
  throw Interrupted(fmt::format(
      "stopped by signal {} in environment identification (HIM epoch {} step {}); resuming "
      "restarts it from the checkpoint at its start",
      stop_signal().load(), epoch, step));
}

void him_diverged(int epoch, int64_t step) {
  throw Diverged(fmt::format(
      "HIM environment models, epoch {} step {}: the training loss is not finite; lower lr", epoch,
      step));
}

std::vector<float> train_env_models_projection(const Config& c, const Graph& graph,
                                               const std::vector<PairList>& env_pairs,
                                               const std::vector<float>& psi, int64_t feat_dim,
                                               const std::vector<float>& backbone,
                                               const std::vector<uint32_t>& stages, int epochs) {
  const int E = int(env_pairs.size());
  const ParamLayout bl = ParamLayout::make(graph.n_users, graph.n_items, c.dim, feat_dim, true);
  if (int64_t(backbone.size()) != bl.total || int(stages.size()) != E) {
    throw std::logic_error("train_env_models_projection: backbone or stages do not match");
  }
  const int32_t D = c.dim;
  const int64_t wsize = int64_t(D) * feat_dim;  // one model's W
  // params: W_all (E D, d), then b_all (E D); every model starts from the backbone's W, b.
  std::vector<float> params(size_t(E) * size_t(wsize + D));
  float* w_all = params.data();
  float* b_all = params.data() + size_t(E) * wsize;
  for (int e = 0; e < E; ++e) {
    std::copy(backbone.begin() + bl.w, backbone.begin() + bl.b, w_all + size_t(e) * wsize);
    std::copy(backbone.begin() + bl.b, backbone.begin() + bl.total, b_all + size_t(e) * D);
  }
  std::vector<float> grad(params.size()), adam_m(params.size(), 0.f), adam_v(params.size(), 0.f);
  std::vector<long long> adam_t(static_cast<size_t>(E), 0);
  const cpu::EnvModelsView view{graph.n_users,
                                graph.n_items,
                                D,
                                E,
                                feat_dim,
                                backbone.data() + bl.pt,
                                backbone.data() + bl.pf,
                                backbone.data() + bl.t,
                                w_all,
                                b_all};
  const LossProblem<float> problem{graph.beta_user.data(),
                                   graph.beta_item.data(),
                                   graph.ii_neighbors.data(),
                                   graph.ii_weights.data(),
                                   graph.ii_k,
                                   psi.data()};
  const TrainSetup ts = make_train_setup(c, graph.n_users, graph.n_items, feat_dim, true, 0);
  const int32_t B = c.batch_size, N = c.negatives;
  std::vector<math::PhiloxKey> neg_keys;
  for (uint32_t s : stages) {
    neg_keys.push_back(math::make_key(c.seed, math::stream_id(math::RngStream::kNegative, s)));
  }
  std::vector<int32_t> negatives;
  std::vector<double> env_loss(static_cast<size_t>(E));
  cpu::LossWorkspace<float> ws;
  const float w_l2 = float(2 * c.gamma_w);
  for (int epoch = 0; epoch < epochs; ++epoch) {
    const HimEpochRows plan = him_epoch_rows(env_pairs, c.seed, stages, uint32_t(epoch), B);
    double epoch_loss = 0;
    for (int64_t step = 0; step < plan.steps(); ++step) {
      if (stop_requested()) him_interrupted(epoch, step);
      const int64_t first = plan.step_offsets[size_t(step)];
      const int64_t rows = plan.step_offsets[size_t(step + 1)] - first;
      const uint8_t* active = plan.active.data() + step * E;
      negatives.resize(size_t(rows) * N);
#pragma omp parallel for schedule(static)
      for (int64_t r = 0; r < rows; ++r) {  // row r is row index[r] of its model's batch
        const int e = plan.envs[size_t(first + r)];
        math::negative_row(neg_keys[e], uint32_t(epoch), uint32_t(step),
                           uint32_t(plan.index[size_t(first + r)]), uint32_t(N),
                           uint32_t(graph.n_items), negatives.data() + size_t(r) * N);
      }
      const cpu::EnvBatch batch{plan.users.data() + first,
                                plan.items.data() + first,
                                plan.envs.data() + first,
                                negatives.data(),
                                rows,
                                N};
      cpu::env_projection_loss_grad(view, problem, batch, ts.loss, env_loss.data(), grad.data(),
                                    grad.data() + size_t(E) * wsize, ws);
      for (int e = 0; e < E; ++e) epoch_loss += env_loss[e];
      if (!std::isfinite(epoch_loss)) him_diverged(epoch, step);
      // Adam for the models that had a batch, with the L2 gradient 2 gamma_w theta fused.
      for (int e = 0; e < E; ++e) {
        if (!active[e]) continue;
        const math::AdamStep as = math::make_adam_step(
            float(c.lr), float(c.adam_beta1), float(c.adam_beta2), float(c.adam_eps), ++adam_t[e]);
        for (const auto& [begin, size] : {std::pair<int64_t, int64_t>{e * wsize, wsize},
                                          std::pair<int64_t, int64_t>{E * wsize + e * D, D}}) {
#pragma omp parallel for schedule(static)
          for (int64_t k = begin; k < begin + size; ++k) {
            math::adam_update(params[k], adam_m[k], adam_v[k], grad[k], w_l2, as);
          }
        }
      }
    }
  }
  return params;
}

namespace {

// mean_j psi_j over all items (d,), in double.
std::vector<double> mean_item_row(const std::vector<float>& psi, int64_t d) {
  std::vector<double> mean(static_cast<size_t>(d), 0.0);
  const int64_t n = d > 0 ? int64_t(psi.size()) / d : 0;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < d; ++j) mean[j] += psi[size_t(i * d + j)];
  for (double& x : mean) x /= double(std::max<int64_t>(n, 1));
  return mean;
}

// W_all (E D, d) then b_all (E D): b_e <- -W_e mean_j psi_j.
void centre_env_biases(std::vector<float>& wb, const std::vector<float>& psi, int64_t d, int envs,
                       int32_t D) {
  const std::vector<double> mean = mean_item_row(psi, d);
  float* b_all = wb.data() + size_t(envs) * D * d;
  for (int64_t r = 0; r < int64_t(envs) * D; ++r) {
    double acc = 0;
    for (int64_t j = 0; j < d; ++j) acc += double(wb[size_t(r * d + j)]) * mean[j];
    b_all[r] = float(-acc);
  }
}

// Per user and model (U, E): the offset and the scale Eq. 9's comparison divides by, for the
// projection models of `m` (raw W_all, b_all): centered: mean_j s_e(u, j) and 1; standardized:
// the mean and the standard deviation over items; likelihood: log sum_j exp s_e(u, j) and 1
// (the score becomes the model's log-probability of the item among all items, a softmax choice).
void assignment_offsets(const cpu::EnvModelsView& m, const std::vector<float>& psi,
                        const std::string& mode, std::vector<double>& offset,
                        std::vector<double>& scale) {
  const int32_t U = m.n_users, I = m.n_items, D = m.dim, E = m.envs;
  const int64_t d = m.feat_dim, D2 = 2 * int64_t(D);
  offset.assign(size_t(U) * E, 0.0);
  scale.assign(size_t(U) * E, 1.0);
  // Item rows [T_j, X_e[j]] (I, 2D) per model, X_e = psi W_e^T + b_e.
  std::vector<float> rows(size_t(I) * D2);
  std::vector<double> mean(static_cast<size_t>(D2)), cov;
  for (int32_t e = 0; e < E; ++e) {
#pragma omp parallel for schedule(static)
    for (int32_t j = 0; j < I; ++j) {
      float* r = rows.data() + size_t(j) * D2;
      std::copy(m.t + size_t(j) * D, m.t + size_t(j + 1) * D, r);
      for (int32_t k = 0; k < D; ++k) {
        const float* w = m.w_all + (size_t(e) * D + k) * d;
        double acc = m.b_all[size_t(e) * D + k];
        for (int64_t x = 0; x < d; ++x) acc += double(w[x]) * psi[size_t(j) * d + x];
        r[D + k] = float(acc);
      }
    }
    std::fill(mean.begin(), mean.end(), 0.0);
    for (int32_t j = 0; j < I; ++j)
      for (int64_t k = 0; k < D2; ++k) mean[k] += rows[size_t(j) * D2 + k];
    for (double& v : mean) v /= double(std::max(I, 1));
    if (mode == "standardized") {
      cov.assign(size_t(D2 * D2), 0.0);
#pragma omp parallel for schedule(static)
      for (int64_t a = 0; a < D2; ++a) {
        for (int64_t b = 0; b < D2; ++b) {
          double acc = 0;
          for (int32_t j = 0; j < I; ++j) {
            acc += (rows[size_t(j) * D2 + a] - mean[a]) * (rows[size_t(j) * D2 + b] - mean[b]);
          }
          cov[size_t(a * D2 + b)] = acc / double(std::max(I, 1));
        }
      }
    }
#pragma omp parallel
    {
      std::vector<double> x(static_cast<size_t>(D2));
#pragma omp for schedule(static)
      for (int32_t u = 0; u < U; ++u) {
        for (int32_t k = 0; k < D; ++k) {
          x[k] = m.pt[size_t(u) * D + k];
          x[D + k] = m.pf[size_t(u) * D + k];
        }
        double mu = 0;
        for (int64_t k = 0; k < D2; ++k) mu += x[k] * mean[k];
        double& off = offset[size_t(u) * E + e];
        if (mode == "centered" || mode == "standardized") off = mu;
        if (mode == "standardized") {
          double var = 0;
          for (int64_t a = 0; a < D2; ++a) {
            double row = 0;
            for (int64_t b = 0; b < D2; ++b) row += cov[size_t(a * D2 + b)] * x[b];
            var += x[a] * row;
          }
          scale[size_t(u) * E + e] = var > 0 ? std::sqrt(var) : 1.0;
        }
      }
    }
    if (mode == "likelihood") {
      // log sum_j exp s_e(u, j): the scores of a block of users by one GEMM, then per user the
      // log-sum-exp over the items (in double, from the largest score).
      constexpr int32_t kBlock = 256;
      std::vector<float> xu(size_t(kBlock) * D2), sc(size_t(kBlock) * I);
      for (int32_t u0 = 0; u0 < U; u0 += kBlock) {
        const int32_t nb = std::min(kBlock, U - u0);
        for (int32_t r = 0; r < nb; ++r) {
          std::copy(m.pt + size_t(u0 + r) * D, m.pt + size_t(u0 + r + 1) * D,
                    xu.data() + size_t(r) * D2);
          std::copy(m.pf + size_t(u0 + r) * D, m.pf + size_t(u0 + r + 1) * D,
                    xu.data() + size_t(r) * D2 + D);
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nb, I, int(D2), 1.f, xu.data(),
                    int(D2), rows.data(), int(D2), 0.f, sc.data(), I);
#pragma omp parallel for schedule(static)
        for (int32_t r = 0; r < nb; ++r) {
          const float* row = sc.data() + size_t(r) * I;
          double top = -INFINITY;
          for (int32_t j = 0; j < I; ++j) top = std::max(top, double(row[j]));
          double z = 0;
          for (int32_t j = 0; j < I; ++j) z += std::exp(double(row[j]) - top);
          offset[size_t(u0 + r) * E + e] = top + std::log(z);
        }
      }
    }
  }
}

// scores[p] -= the model's mean score over all items for pairs.user[p]:
// <Pt_u, mean_j T_j> + <Pf_u, W mean_j psi_j + b>.
void subtract_user_mean_scores(const Backend& model, const Graph& graph,
                               const std::vector<float>& psi, int64_t d, int32_t D,
                               const PairList& pairs, std::vector<float>& scores) {
  const std::vector<float> prm = model.parameters();
  const ParamLayout L = ParamLayout::make(graph.n_users, graph.n_items, D, d, true);
  const std::vector<double> mean_psi = mean_item_row(psi, d);
  std::vector<double> mean_t(static_cast<size_t>(D), 0.0), x(static_cast<size_t>(D), 0.0);
  for (int32_t i = 0; i < graph.n_items; ++i)
    for (int32_t k = 0; k < D; ++k) mean_t[k] += prm[size_t(L.t + int64_t(i) * D + k)];
  for (double& v : mean_t) v /= double(std::max(graph.n_items, 1));
  for (int32_t k = 0; k < D; ++k) {
    double acc = prm[size_t(L.b + k)];
    for (int64_t j = 0; j < d; ++j) acc += double(prm[size_t(L.w + k * d + j)]) * mean_psi[j];
    x[k] = acc;
  }
  std::vector<float> user_mean(static_cast<size_t>(graph.n_users));
  for (int32_t u = 0; u < graph.n_users; ++u) {
    double acc = 0;
    for (int32_t k = 0; k < D; ++k) {
      acc += double(prm[size_t(L.pt + int64_t(u) * D + k)]) * mean_t[k] +
             double(prm[size_t(L.pf + int64_t(u) * D + k)]) * x[k];
    }
    user_mean[u] = float(acc);
  }
  for (size_t p = 0; p < pairs.size(); ++p) scores[p] -= user_mean[pairs.user[p]];
}

}  // namespace

std::vector<int32_t> identify_environments(const Config& c, const Graph& graph,
                                           const PairList& pairs, const std::vector<float>& psi,
                                           int64_t feat_dim, int envs, int outer,
                                           const std::vector<float>* backbone, std::ostream* trace,
                                           int* rounds_run) {
  const int64_t P = int64_t(pairs.size());
  const uint8_t frozen = c.him_train == "content"      ? uint8_t(kFrozenPt | kFrozenT)
                         : c.him_train == "projection" ? uint8_t(kFrozenPt | kFrozenPf | kFrozenT)
                                                       : uint8_t(0);
  if (frozen && !backbone) {
    throw std::logic_error("identify_environments: him_train needs the stage-0 backbone");
  }
  std::vector<int32_t> env(static_cast<size_t>(P));
  const math::PhiloxKey key =
      math::make_key(c.seed, math::stream_id(math::RngStream::kSplit, stage_id::him_init(outer)));
  for (int64_t p = 0; p < P; ++p) {
    env[p] =
        int32_t(math::uniform_below(math::philox(key, uint32_t(p), 0, 0, 0).v[0], uint32_t(envs)));
  }
  std::vector<float> scores(static_cast<size_t>(P));
  std::vector<float> best(static_cast<size_t>(P));
  if (rounds_run) *rounds_run = 0;
  for (int round = 0; round < c.him_rounds; ++round) {
    const auto t0 = Clock::now();
    if (rounds_run) *rounds_run = round + 1;
    // Re-seed emptied environments from the largest one (half of its pairs, chosen at random).
    std::vector<int64_t> sizes(size_t(envs), 0);
    for (int32_t e : env) ++sizes[e];
    for (int e = 0; e < envs; ++e) {
      if (sizes[e] > 0) continue;
      const int largest = int(std::max_element(sizes.begin(), sizes.end()) - sizes.begin());
      log_warn(fmt::format("HIM round {}: environment {} is empty; re-seeded from environment {}",
                           round, e, largest));
      for (int64_t p = 0; p < P; ++p) {
        if (env[p] == largest &&
            (math::philox(key, uint32_t(p), uint32_t(round + 1), uint32_t(e), 1).v[0] & 1u)) {
          env[p] = e;
        }
      }
      std::fill(sizes.begin(), sizes.end(), 0);
      for (int32_t x : env) ++sizes[x];
    }
    std::vector<int32_t> new_env(static_cast<size_t>(P), 0);
    std::fill(best.begin(), best.end(), -INFINITY);
    if (c.him_train == "projection") {  // the E models in one computation
      std::vector<PairList> mine(static_cast<size_t>(envs));
      std::vector<uint32_t> stages;
      for (int64_t p = 0; p < P; ++p) mine[env[p]].push(pairs.user[p], pairs.item[p]);
      for (int e = 0; e < envs; ++e) stages.push_back(stage_id::him_model(outer, round, e));
      const std::vector<float> wb =
#ifdef PAINVRL_HAVE_CUDA
          c.device == "cuda" ? cuda::train_env_models_projection_on_device(
                                   c, graph, mine, psi, feat_dim, *backbone, stages, c.him_epochs)
                             :
#endif
                             train_env_models_projection(c, graph, mine, psi, feat_dim, *backbone,
                                                         stages, c.him_epochs);
      const ParamLayout bl = ParamLayout::make(graph.n_users, graph.n_items, c.dim, feat_dim, true);
      // him_assign = centered: each model's bias becomes -W_e mean_j psi_j, so that its score
      // is <Pt_u, T_i> + <Pf_u, W_e (psi_i - mean_j psi_j)>; <Pt_u, T_i> is the same in every
      // model, so the argmax is that of the score minus the model's mean over items for u.
      std::vector<float> wb_assign = wb;
      if (c.him_assign == "centered") centre_env_biases(wb_assign, psi, feat_dim, envs, c.dim);
      const bool host_assign = c.him_assign == "standardized" || c.him_assign == "likelihood";
      const cpu::EnvModelsView raw_view{graph.n_users,
                                        graph.n_items,
                                        c.dim,
                                        envs,
                                        feat_dim,
                                        backbone->data() + bl.pt,
                                        backbone->data() + bl.pf,
                                        backbone->data() + bl.t,
                                        wb.data(),
                                        wb.data() + size_t(envs) * c.dim * feat_dim};
      std::vector<double> offset, scale;
      if (host_assign) assignment_offsets(raw_view, psi, c.him_assign, offset, scale);
      const cpu::EnvModelsView view{graph.n_users,
                                    graph.n_items,
                                    c.dim,
                                    envs,
                                    feat_dim,
                                    backbone->data() + bl.pt,
                                    backbone->data() + bl.pf,
                                    backbone->data() + bl.t,
                                    wb_assign.data(),
                                    wb_assign.data() + size_t(envs) * c.dim * feat_dim};
#ifdef PAINVRL_HAVE_CUDA
      if (c.device == "cuda" && !host_assign)
        new_env = cuda::assign_environments_on_device(view, psi.data(), pairs, c.tf32);
#endif
      if (c.device != "cuda" || host_assign) {
        std::vector<float> all_scores(static_cast<size_t>(P) * envs);  // (P, E)
        cpu::LossWorkspace<float> ws;
        cpu::env_projection_score_pairs(host_assign ? raw_view : view, psi.data(),
                                        pairs.user.data(), pairs.item.data(), P, all_scores.data(),
                                        ws);
        for (int64_t p = 0; p < P; ++p) {
          for (int e = 0; e < envs; ++e) {
            float v = all_scores[size_t(p) * envs + e];
            if (host_assign) {
              const size_t ue = size_t(pairs.user[p]) * envs + e;
              v = float((double(v) - offset[ue]) / scale[ue]);
            }
            if (v > best[p]) {  // ties keep the smaller id
              best[p] = v;
              new_env[p] = e;
            }
          }
        }
      }
    }
    for (int e = 0; e < envs && c.him_train != "projection"; ++e) {
      PairList mine;
      for (int64_t p = 0; p < P; ++p) {
        if (env[p] == e) mine.push(pairs.user[p], pairs.item[p]);
      }
      std::unique_ptr<Backend> model =
          train_fixed(c, graph, mine, psi, feat_dim, true, stage_id::him_model(outer, round, e),
                      c.him_epochs, "", frozen ? backbone : nullptr, frozen);
      model->prepare_scoring();
      model->score_pairs(pairs.user.data(), pairs.item.data(), P, scores.data());
      if (c.him_assign == "centered") {
        subtract_user_mean_scores(*model, graph, psi, feat_dim, c.dim, pairs, scores);
      }
      for (int64_t p = 0; p < P; ++p) {
        if (scores[p] > best[p]) {  // ties keep the smaller environment id
          best[p] = scores[p];
          new_env[p] = e;
        }
      }
    }
    int64_t moved = 0;
    for (int64_t p = 0; p < P; ++p) moved += new_env[p] != env[p];
    env.swap(new_env);
    std::fill(sizes.begin(), sizes.end(), 0);
    for (int32_t e : env) ++sizes[e];
    const double share = double(moved) / double(std::max<int64_t>(P, 1));
    log_info(fmt::format("HIM outer {} round {}: {:.2f}% of pairs moved; sizes [{}] ({:.1f}s)",
                         outer, round, 100 * share, fmt::join(sizes, ", "), seconds_since(t0)));
    if (trace) {
      *trace << nlohmann::json{{"outer", outer},
                               {"him_round", round},
                               {"moved", moved},
                               {"moved_share", share},
                               {"env_sizes", sizes}}
                    .dump()
             << "\n"
             << std::flush;
    }
    if (share <= c.him_move_tol) break;
  }
  return env;
}

namespace {

// What the pipeline carries from stage to stage; saved in every checkpoint it writes.
struct PipelineState {
  std::vector<float> backbone;               // (bl.total,) stage-0 parameters; empty once final
  std::vector<double> mask, mask_m, mask_v;  // (d,) m and its Adam moments (mask_optimizer adam)
  long long mask_t = 0;
  double pretrain_seconds = 0, him_seconds = 0, mask_seconds = 0;  // for the summary
  int64_t him_model_epochs = 0, mask_steps = 0;

  void save(Checkpoint& ck) const {
    ck.put("backbone", backbone);
    ck.put("mask", mask);
    ck.put("mask_adam_m", mask_m);
    ck.put("mask_adam_v", mask_v);
    ck.meta["pipeline"] = {{"mask_t", mask_t},
                           {"pretrain_seconds", pretrain_seconds},
                           {"him_seconds", him_seconds},
                           {"mask_seconds", mask_seconds},
                           {"him_model_epochs", him_model_epochs},
                           {"mask_steps", mask_steps}};
  }
  void load(const Checkpoint& ck) {
    backbone = ck.get<float>("backbone");
    mask = ck.get<double>("mask");
    mask_m = ck.get<double>("mask_adam_m");
    mask_v = ck.get<double>("mask_adam_v");
    const nlohmann::json& j = ck.meta.at("pipeline");
    mask_t = j.at("mask_t").get<long long>();
    pretrain_seconds = j.at("pretrain_seconds").get<double>();
    him_seconds = j.at("him_seconds").get<double>();
    mask_seconds = j.at("mask_seconds").get<double>();
    him_model_epochs = j.at("him_model_epochs").get<int64_t>();
    mask_steps = j.at("mask_steps").get<int64_t>();
  }
};

// The mask model of one outer iteration with its optimiser and the progress-line sums.
struct MaskStageState {
  std::vector<double> params, adam_m, adam_v;  // (ml.total,)
  long long adam_t = 0;
  ParetoScale scale;  // pareto_normalize = initial | running
  double sum_w = 0, sum_erm = 0, sum_irm = 0;
  int64_t n_steps = 0;

  void save(Checkpoint& ck) const {
    ck.put("mask_params", params);
    ck.put("mask_params_adam_m", adam_m);
    ck.put("mask_params_adam_v", adam_v);
    ck.meta["mask_stage"] = {{"adam_t", adam_t},
                             {"pareto_rms_E", scale.rms_E},
                             {"pareto_rms_I", scale.rms_I},
                             {"pareto_steps", scale.steps},
                             {"sum_w", sum_w},
                             {"sum_erm", sum_erm},
                             {"sum_irm", sum_irm},
                             {"n_steps", n_steps}};
  }
  void load(const Checkpoint& ck) {
    params = ck.get<double>("mask_params");
    adam_m = ck.get<double>("mask_params_adam_m");
    adam_v = ck.get<double>("mask_params_adam_v");
    const nlohmann::json& j = ck.meta.at("mask_stage");
    adam_t = j.at("adam_t").get<long long>();
    scale.rms_E = j.value("pareto_rms_E", 0.0);
    scale.rms_I = j.value("pareto_rms_I", 0.0);
    scale.steps = j.value("pareto_steps", int64_t(0));
    sum_w = j.at("sum_w").get<double>();
    sum_erm = j.at("sum_erm").get<double>();
    sum_irm = j.at("sum_irm").get<double>();
    n_steps = j.at("n_steps").get<int64_t>();
  }
};

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

SelectionResult run_invariant_pipeline(const Config& c, const Evaluator& eval,
                                       const std::string& run_dir, std::ostream& metrics_out,
                                       std::ostream& trace, nlohmann::json& summary,
                                       CheckpointStore* store, const Checkpoint* resume) {
  const Dataset& data = eval.data;
  const Graph& graph = eval.graph;
  const int64_t d = data.feature_dim;
  const bool invrl = c.method == "invrl";
  const bool attention = !invrl && c.attention;
  const bool pareto = !invrl && c.objective == "pareto";  // w_ERM from Eq. 17 (else fixed)
  const Position at = resume ? resume->position : Position{};
  PipelineState ps;
  ps.mask.assign(size_t(d), c.mask_init);
  ps.mask_m.assign(size_t(d), 0.0);
  ps.mask_v.assign(size_t(d), 0.0);
  // A checkpoint at `pos` with the pipeline's state and what `more` adds.
  auto save_at = [&](const Position& pos, const std::function<void(Checkpoint&)>& more) {
    Checkpoint ck;
    ck.position = pos;
    ps.save(ck);
    if (more) more(ck);
    return ck;
  };
  const Position after_outer_end =
      c.outer_iterations > 0 ? Position{"him", 0, 0, 0} : Position{"final", 0, 0, 0};
  // A given mask (mask_file): no stage 0, HIM or mask generation; the final model trains on it.
  const bool fixed_mask = !c.mask_file.empty();
  if (fixed_mask) {
    ps.mask = read_mask_file(c.mask_file, d);
    summary["mask_file"] = std::filesystem::absolute(c.mask_file).lexically_normal().string();
    log_info(fmt::format("mask from {}: the final model only", c.mask_file));
  }

  // Stage 0: the backbone on the full features; Pt, Pf, T frozen for the mask model.
  if (fixed_mask) {
    if (resume) ps.load(*resume);
  } else if (at.phase == "start" || at.phase == "pretrain") {
    log_info(fmt::format("stage 0: backbone on the full features, {} epochs", c.pretrain_epochs));
    const auto t_pre = Clock::now();
    StageCheckpoints sc;
    sc.store = store;
    sc.resume = at.phase == "pretrain" ? resume : nullptr;
    sc.phase = "pretrain";
    sc.context = [&](Checkpoint& ck) { ps.save(ck); };
    ps.backbone = train_fixed(c, graph, data.train, data.features, d, true, stage_id::kPretrain,
                              c.pretrain_epochs, "pretrain ", nullptr, 0, &sc)
                      ->parameters();
    ps.pretrain_seconds = seconds_since(t_pre);
    if (store) {
      Checkpoint ck = save_at(after_outer_end, nullptr);
      store->save(ck);
    }
  } else {
    ps.load(*resume);
  }
  const ParamLayout bl = make_train_setup(c, data.n_users, data.n_items, d, true, 0).layout;
  const MaskLayout ml = MaskLayout::make(c.dim, d, c.attention_hidden, attention);
  MaskSettings ms = mask_settings_from(c);
  const int first_outer = fixed_mask                                ? c.outer_iterations
                          : at.phase == "him" || at.phase == "mask" ? at.outer
                          : at.phase == "final"                     ? c.outer_iterations
                                                                    : 0;
  for (int outer = 0; outer < first_outer && invrl; ++outer) {  // the growth so far, in order
    ms.fixed_alpha *= c.invrl_growth;
    ms.lambda *= c.invrl_growth;
  }

  if (first_outer < c.outer_iterations) {
    // The mask step runs in double on the CPU: L_IRM and its derivatives are built from
    // differences of per-environment gradients (G_e - Gbar) and from sums whose positive and
    // negative terms nearly cancel, which float32 blurs to ~1e-3 relative error (see
    // tests/reference_test.cpp). The inputs are converted once.
    auto to_double = [](const float* p, size_t n) { return std::vector<double>(p, p + n); };
    const std::vector<float>& frozen = ps.backbone;
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
    std::vector<double>& mask = ps.mask;
    for (int outer = first_outer; outer < c.outer_iterations; ++outer) {
      const auto t_outer = Clock::now();
      const bool resume_mask = resume && at.phase == "mask" && at.outer == outer;
      const uint32_t stage = stage_id::mask(outer);
      MaskStageState st;
      std::vector<int32_t> env;
      if (resume_mask) {
        env = resume->get<int32_t>("env");
        st.load(*resume);
      } else {
        // HIM on psi = (1 - m) f.
        std::vector<float> one_minus(static_cast<size_t>(d));
        for (int64_t j = 0; j < d; ++j) one_minus[j] = float(1.0 - mask[j]);
        const std::vector<float> psi = scale_columns(data.features, d, one_minus);
        const auto t_him = Clock::now();
        int him_rounds_run = 0;
        env = c.environments == "file"
                  ? environments_from_file(data.dir + "/environments.tsv", data.train)
                  : identify_environments(c, graph, data.train, psi, d, c.envs, outer, &frozen,
                                          &trace, &him_rounds_run);
        ps.him_seconds += seconds_since(t_him);
        ps.him_model_epochs += int64_t(him_rounds_run) * c.envs * c.him_epochs;
        {  // environments-<outer>.tsv: `user item env`, one line per training pair, in train order
          std::string text;
          text.reserve(env.size() * 16);
          for (size_t p = 0; p < env.size(); ++p) {
            text += fmt::format("{}\t{}\t{}\n", data.train.user[p], data.train.item[p], env[p]);
          }
          write_text_atomic(fmt::format("{}/environments-{}.tsv", run_dir, outer), text);
        }
        // The mask model: W ~ N(0, init_std) (or stage 0's W, b), attention N(0, 1/fan_in).
        const std::vector<float> params_init =
            init_mask_params(ml, c.seed, stage, c.init_std, c.attention_bias);
        st.params.assign(params_init.begin(), params_init.end());
        seed_mask_model(c, frozen, bl, ml, st.params);
        st.adam_m.assign(st.params.size(), 0.0);
        st.adam_v.assign(st.params.size(), 0.0);
      }
      const int first_epoch = resume_mask ? at.epoch : 0;
      const int64_t first_step = resume_mask ? at.step : 0;
      // A checkpoint inside this outer iteration's mask generation.
      auto mask_checkpoint = [&](int epoch, int64_t step) {
        return save_at(Position{"mask", outer, epoch, step}, [&](Checkpoint& ck) {
          ck.put("env", env);
          st.save(ck);
        });
      };
      if (store && !resume_mask) {  // the end of HIM
        Checkpoint ck = mask_checkpoint(0, 0);
        store->save(ck);
      }
      const auto t_mask = Clock::now();
      const int32_t n_envs = *std::max_element(env.begin(), env.end()) + 1;
      std::vector<std::vector<int32_t>> env_pairs(static_cast<size_t>(n_envs));
      for (size_t p = 0; p < env.size(); ++p) env_pairs[env[p]].push_back(int32_t(p));
      int64_t largest = 0;
      for (const auto& v : env_pairs) largest = std::max<int64_t>(largest, int64_t(v.size()));

      // Mask generation: one batch of mask_batch positives from every environment per step, on
      // the CPU or the device (include/painvrl/mask_runner.h).
      MaskRunSetup rs;
      rs.config = &c;
      rs.layout = ml;
      rs.settings = ms;
      rs.problem = problem;
      rs.train = &data.train;
      rs.envs = n_envs;
      rs.neg_key = math::make_key(c.seed, math::stream_id(math::RngStream::kNegative, stage));
      rs.noise_key = math::make_key(c.seed, math::stream_id(math::RngStream::kMaskNoise, stage));
      const MaskRunState run_state{&st.params, &st.adam_m, &st.adam_v, &st.adam_t, &mask,
                                   &ps.mask_m, &ps.mask_v, &ps.mask_t, &st.scale};
      std::unique_ptr<MaskRunner> runner;
#ifdef PAINVRL_HAVE_CUDA
      if (c.device == "cuda") runner = cuda::make_mask_runner(rs, run_state, env_pairs);
#endif
      if (!runner) runner = make_cpu_mask_runner(rs, run_state);
      const math::PhiloxKey order_key =
          math::make_key(c.seed, math::stream_id(math::RngStream::kShuffle, stage));
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
            Checkpoint ck = mask_checkpoint(epoch, step);
            StageCheckpoints sc;
            sc.store = store;
            stop_stage(
                &sc, ck,
                fmt::format("mask generation outer {} epoch {} step {}", outer, epoch, step));
          }
          runner->step(step);
          if (!runner->deferred()) drain();
        }
        drain();
        if (st.n_steps > 0 && (epoch + 1) % std::max(1, c.mask_epochs / 8) == 0) {
          double mean = 0, lo = 1, hi = 0;
          for (double x : mask) {
            mean += x;
            lo = std::min(lo, double(x));
            hi = std::max(hi, double(x));
          }
          log_info(fmt::format(
              "mask outer {} epoch {:>3}/{}: {}L_ERM {:.4g}, L_IRM {:.4g}; mask mean {:.3f} "
              "[{:.3f}, {:.3f}]",
              outer, epoch, c.mask_epochs,
              pareto ? fmt::format("mean w_ERM {:.3f}, ", st.sum_w / st.n_steps) : "",
              st.sum_erm / st.n_steps, st.sum_irm / st.n_steps,
              mean / double(std::max<int64_t>(d, 1)), lo, hi));
          st.sum_w = st.sum_erm = st.sum_irm = 0;
          st.n_steps = 0;
        }
        if (store && store->due(epoch + 1) && epoch + 1 < c.mask_epochs) {
          runner->sync_state();
          Checkpoint ck = mask_checkpoint(epoch + 1, 0);
          store->save(ck);
        }
      }
      runner->sync_state();
      trace << std::flush;
      ps.mask_seconds += seconds_since(t_mask);
      ps.mask_steps += int64_t(c.mask_epochs) * steps;
      if (invrl) {  // InvRL grows the penalty weight and the regulariser each outer iteration
        ms.fixed_alpha *= c.invrl_growth;
        ms.lambda *= c.invrl_growth;
      }
      log_info(fmt::format("outer iteration {} done in {:.1f}s", outer, seconds_since(t_outer)));
      if (store) {  // the start of the next HIM, or of the final model
        Checkpoint ck = save_at(outer + 1 < c.outer_iterations ? Position{"him", outer + 1, 0, 0}
                                                               : Position{"final", 0, 0, 0},
                                nullptr);
        store->save(ck);
      }
    }
  }
  const std::vector<float> mask_f(ps.mask.begin(), ps.mask.end());
  write_npy(run_dir + "/mask.npy", mask_f.data(), {d});

  // Per-modality mask means for the summary.
  nlohmann::json per_modality = nlohmann::json::object();
  for (const Modality& mod : data.modalities) {
    double s = 0;
    for (int64_t j = mod.offset; j < mod.offset + mod.width; ++j) s += ps.mask[j];
    per_modality[mod.name] = mod.width > 0 ? s / double(mod.width) : 0.0;
  }
  summary["mask_mean_by_modality"] = per_modality;
  summary["stages"] = {
      {"pretrain", {{"seconds", ps.pretrain_seconds}, {"epochs", c.pretrain_epochs}}},
      {"him", {{"seconds", ps.him_seconds}, {"model_epochs", ps.him_model_epochs}}},
      {"mask",
       {{"seconds", ps.mask_seconds},
        {"epochs", int64_t(c.mask_epochs) * c.outer_iterations},
        {"steps", ps.mask_steps}}}};

  // Final model on Phi = m * f; the stage-0 backbone is no longer needed in checkpoints.
  log_info("final model on Phi = m * f");
  ps.backbone.clear();
  const std::vector<float> phi = scale_columns(data.features, d, mask_f);
  StageCheckpoints sc;
  sc.store = store;
  sc.resume = resume && at.phase == "final" && resume->has("params") ? resume : nullptr;
  sc.phase = "final";
  sc.context = [&](Checkpoint& ck) { ps.save(ck); };
  return train_with_selection(c, eval, phi, true, stage_id::kFinal, "final", metrics_out, &sc);
}

}  // namespace painvrl
