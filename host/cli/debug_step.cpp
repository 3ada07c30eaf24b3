// `painvrl debug-step`: one mask-generation step at a given seed, with every input and output
// written as .npy files and an index.json naming each array and its shape (docs/mask-step.md).
// Stage 0 trains the backbone for `pretrain_epochs` (0 keeps the random initialisation); the
// environments are a seeded uniform assignment (no HIM, so exactly one step is run); the mask is
// mask_init, or uniform in [0.1, 0.9] with --random-mask so that every coordinate differs.
// The step runs in double from the float inputs, as the CPU trainer runs it, or with --float in
// float32 (the arithmetic a GPU kernel would use); outputs are written as float32 either way.
#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "painvrl/cli/commands.h"
#include "painvrl/data/error.h"
#include "painvrl/data/io.h"
#include "painvrl/data/npy.h"
#include "painvrl/pipeline/stages.h"
#include "painvrl/pipeline/trainer.h"

namespace painvrl {

namespace {
std::vector<double> to_double(const float* p, size_t n) { return std::vector<double>(p, p + n); }
std::vector<float> to_float(const std::vector<double>& v) {
  return std::vector<float>(v.begin(), v.end());
}
}  // namespace

void run_debug_step(const Config& asked, const std::string& data_dir, const std::string& out_dir,
                    bool random_mask, bool in_double, const std::vector<double>& pareto_state) {
  // Always on the CPU: the CUDA backend has not passed its device check, and only `train`
  // resolves --device (with its PAINVRL_UNVERIFIED_CUDA gate).
  Config c = asked;
  c.device = "cpu";
  validate(c);
  namespace fs = std::filesystem;
  if (out_dir.empty()) input_error("--out: a dump directory is required");
  if (fs::exists(out_dir)) input_error("--out {}: exists; choose a new directory", out_dir);
  LoadOptions load;
  load.normalize = c.normalize_features;
  const Dataset data = load_dataset(data_dir, load);
  if (data.feature_dim == 0) input_error("debug-step: dataset {} has no feature files", data.dir);
  const int64_t d = data.feature_dim;
  const Graph graph =
      build_graph(data.train, data.n_users, data.n_items, c.kappa > 0 ? c.ii_neighbors : 0,
                  parse_ii_similarity(c.ii_similarity));
  std::unique_ptr<Backend> pre = train_fixed(c, graph, data.train, data.features, d, true,
                                             stage_id::kPretrain, c.pretrain_epochs, "pretrain ");
  const std::vector<float> frozen = pre->parameters();
  const ParamLayout bl = make_train_setup(c, data.n_users, data.n_items, d, true, 0).layout;

  const bool attention = c.method != "invrl" && c.attention;
  const MaskLayout ml = MaskLayout::make(c.dim, d, c.attention_hidden, attention);
  const uint32_t stage = stage_id::mask(0);
  std::vector<float> params = init_mask_params(ml, c.seed, stage, c.init_std, c.attention_bias);
  seed_mask_model(c, frozen, bl, ml, params);
  std::vector<float> mask(size_t(d), float(c.mask_init));
  const math::PhiloxKey split_key =
      math::make_key(c.seed, math::stream_id(math::RngStream::kSplit, stage_id::him_init(0)));
  if (random_mask) {
    for (int64_t j = 0; j < d; ++j) {
      mask[j] = 0.1f + 0.8f * math::uniform_open0<float>(
                                  math::philox(split_key, uint32_t(j), 1, 0, 0).v[0]);
    }
  }
  std::vector<std::vector<int32_t>> env_pairs(size_t(c.envs));
  for (size_t p = 0; p < data.train.size(); ++p) {
    const uint32_t r = math::philox(split_key, uint32_t(p), 0, 0, 0).v[0];
    env_pairs[math::uniform_below(r, uint32_t(c.envs))].push_back(int32_t(p));
  }
  for (int e = 0; e < c.envs; ++e) {
    if (env_pairs[e].empty())
      input_error("debug-step: environment {} drew no pairs; use fewer envs", e);
  }
  const EnvBatches batches = make_mask_batches(
      data.train, env_pairs, c.mask_batch, c.negatives, data.n_items,
      math::make_key(c.seed, math::stream_id(math::RngStream::kNegative, stage)), 0, 0);
  std::vector<float> noise(size_t(c.envs) * d);
  const math::PhiloxKey noise_key =
      math::make_key(c.seed, math::stream_id(math::RngStream::kMaskNoise, stage));
  for (int e = 0; e < c.envs; ++e) {
    draw_noise(noise_key, 0, 0, uint32_t(e), d, float(c.sigma), noise.data() + size_t(e) * d);
  }
  const MaskProblem<float> problem{data.n_users,
                                   data.n_items,
                                   c.dim,
                                   d,
                                   frozen.data() + bl.pt,
                                   frozen.data() + bl.pf,
                                   frozen.data() + bl.t,
                                   data.features.data(),
                                   graph.beta_user.data(),
                                   graph.beta_item.data(),
                                   graph.ii_neighbors.data(),
                                   graph.ii_weights.data(),
                                   graph.ii_k};
  MaskSettings ms = mask_settings_from(c);
  if (!pareto_state.empty()) {  // the stage's normalisation state before this step
    if (pareto_state.size() != 3 || !(pareto_state[0] >= 0) || !(pareto_state[1] >= 0) ||
        !(pareto_state[2] >= 0) || pareto_state[2] != std::floor(pareto_state[2])) {
      input_error("--pareto-state: expected RMS_E,RMS_I,STEPS (two values >= 0 and a count)");
    }
    ms.scale = ParetoScale{pareto_state[0], pareto_state[1], int64_t(pareto_state[2])};
  }
  MaskStepResult<float> r;
  if (!in_double) {
    r = mask_step<float>(ml, params.data(), mask.data(), problem, batches, noise.data(), ms);
  } else {  // the same step from the same float inputs, computed in double
    const size_t nu = size_t(data.n_users) * c.dim, ni = size_t(data.n_items) * c.dim;
    const auto pt = to_double(problem.Pt, nu), pf = to_double(problem.Pf, nu),
               ti = to_double(problem.Ti, ni),
               f = to_double(problem.features, data.features.size()),
               bu = to_double(problem.beta_user, graph.beta_user.size()),
               bi = to_double(problem.beta_item, graph.beta_item.size()),
               iw = to_double(graph.ii_weights.data(), graph.ii_weights.size()),
               pd = to_double(params.data(), params.size()),
               md = to_double(mask.data(), mask.size()), nd = to_double(noise.data(), noise.size());
    const MaskProblem<double> pdbl{data.n_users,
                                   data.n_items,
                                   c.dim,
                                   d,
                                   pt.data(),
                                   pf.data(),
                                   ti.data(),
                                   f.data(),
                                   bu.data(),
                                   bi.data(),
                                   graph.ii_neighbors.data(),
                                   iw.data(),
                                   graph.ii_k};
    const MaskStepResult<double> rd =
        mask_step<double>(ml, pd.data(), md.data(), pdbl, batches, nd.data(), ms);
    r.loss_env = to_float(rd.loss_env);
    r.L_ERM = float(rd.L_ERM);
    r.L_IRM = float(rd.L_IRM);
    r.w_ERM = float(rd.w_ERM);
    r.G = to_float(rd.G);
    r.V = to_float(rd.V);
    r.g_E = to_float(rd.g_E);
    r.g_I = to_float(rd.g_I);
    r.grad = to_float(rd.grad);
    r.mask_grad = to_float(rd.mask_grad);
    r.mask_new = to_float(rd.mask_new);
  }

  // Write into a temporary directory, then rename.
  const std::string tmp = temp_path_for(out_dir);
  fs::create_directories(tmp);
  nlohmann::json inputs = nlohmann::json::object(), outputs = nlohmann::json::object();
  auto put_f = [&](nlohmann::json& where, const std::string& name, const float* p,
                   std::vector<int64_t> shape) {
    write_npy(tmp + "/" + name + ".npy", p, shape);
    where[name] = {{"file", name + ".npy"}, {"shape", shape}, {"dtype", "float32"}};
  };
  auto put_i = [&](nlohmann::json& where, const std::string& name, const std::vector<int32_t>& v,
                   std::vector<int64_t> shape) {
    std::vector<int64_t> w(v.begin(), v.end());
    write_npy(tmp + "/" + name + ".npy", w.data(), shape);
    where[name] = {{"file", name + ".npy"}, {"shape", shape}, {"dtype", "int64"}};
  };
  const int64_t U = data.n_users, I = data.n_items, D = c.dim, E = c.envs, K = graph.ii_k;
  const int64_t rows = int64_t(batches.users.size());
  put_f(inputs, "Pt", frozen.data() + bl.pt, {U, D});
  put_f(inputs, "Pf", frozen.data() + bl.pf, {U, D});
  put_f(inputs, "T", frozen.data() + bl.t, {I, D});
  put_f(inputs, "features", data.features.data(), {I, d});
  put_f(inputs, "beta_user", graph.beta_user.data(), {U});
  put_f(inputs, "beta_item", graph.beta_item.data(), {I});
  if (K > 0) {
    put_i(inputs, "ii_neighbors", graph.ii_neighbors, {I, K});
    put_f(inputs, "ii_weights", graph.ii_weights.data(), {I, K});
  } else {  // no neighbour term: one empty slot per item
    put_i(inputs, "ii_neighbors", std::vector<int32_t>(size_t(I), -1), {I, 1});
    const std::vector<float> zeros(size_t(I), 0.f);
    put_f(inputs, "ii_weights", zeros.data(), {I, 1});
  }
  for (const MaskLayout::Tensor& t : ml.tensors())
    put_f(inputs, t.name, params.data() + t.offset, t.shape);
  put_f(inputs, "mask", mask.data(), {d});
  std::vector<int32_t> offsets(batches.env_offsets.begin(), batches.env_offsets.end());
  put_i(inputs, "env_offsets", offsets, {E + 1});
  put_i(inputs, "batch_users", batches.users, {rows});
  put_i(inputs, "batch_items", batches.items, {rows});
  put_i(inputs, "batch_negatives", batches.negatives, {rows, c.negatives});
  put_f(inputs, "noise", noise.data(), {E, d});

  put_f(outputs, "loss_env", r.loss_env.data(), {E});
  put_f(outputs, "L_ERM", &r.L_ERM, {1});
  put_f(outputs, "G", r.G.data(), {E, D, d});
  put_f(outputs, "V", r.V.data(), {D, d});
  put_f(outputs, "L_IRM", &r.L_IRM, {1});
  put_f(outputs, "g_E", r.g_E.data(), {d});
  put_f(outputs, "g_I", r.g_I.data(), {d});
  put_f(outputs, "w_ERM", &r.w_ERM, {1});
  for (const MaskLayout::Tensor& t : ml.tensors()) {
    put_f(outputs, "grad_" + t.name, r.grad.data() + t.offset, t.shape);
  }
  put_f(outputs, "mask_new", r.mask_new.data(), {d});

  nlohmann::json scalars = {{"E", E},
                            {"N", c.negatives},
                            {"K", K > 0 ? K : 1},
                            {"D", D},
                            {"d", d},
                            {"H", ml.H},
                            {"w1", c.w1},
                            {"w2", c.w2},
                            {"w3", c.w3},
                            {"w4", c.w4},
                            {"neg_weight", c.neg_weight},
                            {"kappa", c.kappa},
                            {"sigma", c.sigma},
                            {"lambda", ms.lambda},
                            {"c", ms.center},
                            {"s", ms.step},
                            {"gamma_w", c.gamma_w},
                            {"attention", attention},
                            {"pareto_normalize", c.pareto_normalize},
                            {"pareto_rms_E", ms.scale.rms_E},
                            {"pareto_rms_I", ms.scale.rms_I},
                            {"pareto_steps", ms.scale.steps},
                            {"mask_optimizer", "sgd"},
                            {"objective", c.method == "invrl" ? "fixed" : c.objective},
                            {"seed", c.seed},
                            {"alpha", ms.fixed_alpha},
                            {"precision", in_double ? "double" : "float"}};
  const nlohmann::json index = {{"scalars", scalars}, {"inputs", inputs}, {"outputs", outputs}};
  write_text_atomic(tmp + "/index.json", index.dump(2) + "\n");
  std::error_code ec;
  fs::rename(tmp, out_dir, ec);
  if (ec) {
    fs::remove_all(tmp, ec);
    input_error("--out {}: cannot rename the dump into place", out_dir);
  }
  log_info(fmt::format("debug-step: L_ERM {:.6g}, L_IRM {:.6g}, w_ERM {:.4f}; dump in {}", r.L_ERM,
                       r.L_IRM, r.w_ERM, out_dir));
}

}  // namespace painvrl
