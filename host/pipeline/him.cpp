// Heterogeneous environment identification (Sec. 3.3, Eq. 9) for Algorithm 1: E environment
// models trained on psi = (1 - m) f, each training pair reassigned to the model that explains it
// best (him_assign), repeated until few pairs move; environments read from a file instead for
// diagnostics (environments = file). The environment models of one round train as one
// computation when only their projections learn (him_train = projection).
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
#include "painvrl/backend/mask_runner.h"
#include "painvrl/backend/mask_step.h"
#include "painvrl/cpu/ultragcn_loss.h"
#include "painvrl/data/error.h"
#include "painvrl/data/io.h"
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

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

}  // namespace

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

HimHooks him_hooks() {
  HimHooks h;
  h.stop = [] { return stop_requested(); };
  h.interrupted = him_interrupted;
  h.diverged = him_diverged;
  return h;
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
          c.device == "cuda"
              ? cuda::train_env_models_projection_on_device(
                    make_train_setup(c, graph.n_users, graph.n_items, feat_dim, true, 0), graph,
                    mine, psi, *backbone, stages, c.him_epochs, him_hooks())
              :
#endif
              train_env_models_projection(c, graph, mine, psi, feat_dim, *backbone, stages,
                                          c.him_epochs);
      const ParamLayout bl = ParamLayout::make(graph.n_users, graph.n_items, c.dim, feat_dim, true);
      // him_assign = centered: each model's bias becomes -W_e mean_j psi_j, so that its score
      // is <Pt_u, T_i> + <Pf_u, W_e (psi_i - mean_j psi_j)>; <Pt_u, T_i> is the same in every
      // model, so the argmax is that of the score minus the model's mean over items for u.
      std::vector<float> wb_assign = wb;
      if (c.him_assign == "centered") centre_env_biases(wb_assign, psi, feat_dim, envs, c.dim);
      const bool host_assign = c.him_assign == "standardized" || c.him_assign == "likelihood";
      // The E models over the frozen stage-0 tables, with the projections `w` (W_all, b_all).
      auto models_view = [&](const std::vector<float>& w) {
        return cpu::EnvModelsView{graph.n_users,
                                  graph.n_items,
                                  c.dim,
                                  envs,
                                  feat_dim,
                                  backbone->data() + bl.pt,
                                  backbone->data() + bl.pf,
                                  backbone->data() + bl.t,
                                  w.data(),
                                  w.data() + size_t(envs) * c.dim * feat_dim};
      };
      const cpu::EnvModelsView raw_view = models_view(wb);
      std::vector<double> offset, scale;
      if (host_assign) assignment_offsets(raw_view, psi, c.him_assign, offset, scale);
      const cpu::EnvModelsView view = models_view(wb_assign);
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
    RunProgress::current().advance(round + 1, c.him_rounds);
    ThreadGovernor::current().adapt();
    log_progress(fmt::format(
        "HIM outer {} round {}: {:.2f}% of pairs moved; sizes [{}] ({:.1f}s){}", outer, round,
        100 * share, fmt::join(sizes, ", "), seconds_since(t0), RunProgress::current().suffix()));
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

std::vector<int32_t> environments_for_round(const Config& c, const Evaluator& eval,
                                            const std::vector<double>& mask,
                                            const std::vector<float>& backbone, int outer,
                                            std::ostream& trace, int64_t* model_epochs) {
  const Dataset& data = eval.data;
  const int64_t d = data.feature_dim;
  if (c.environments == "file")
    return environments_from_file(data.dir + "/environments.tsv", data.train);
  std::vector<float> one_minus(static_cast<size_t>(d));  // psi = (1 - m) f
  for (int64_t j = 0; j < d; ++j) one_minus[j] = float(1.0 - mask[j]);
  const std::vector<float> psi = scale_columns(data.features, d, one_minus);
  int rounds = 0;
  std::vector<int32_t> env = identify_environments(c, eval.graph, data.train, psi, d, c.envs, outer,
                                                   &backbone, &trace, &rounds);
  *model_epochs += int64_t(rounds) * c.envs * c.him_epochs;
  return env;
}

}  // namespace painvrl
