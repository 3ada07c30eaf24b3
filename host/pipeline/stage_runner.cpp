// The layer Algorithm 1's stages run under (include/painvrl/pipeline/algorithm1.h): resume,
// checkpoints at stage boundaries, the stages' outputs and their timing, so that the scheduler
// (host/pipeline/algorithm1.cpp) holds only the algorithm.
//
// Stages in order: pretrain (0), then for outer iteration t HIM (1 + 2t) and mask generation
// (2 + 2t), then the final model (1 + 2T). A checkpoint's Position names where the run stopped:
// "pretrain" and "mask" inside those stages, "him" at the start of HIM t, "final" inside the final
// model when it holds its parameters and at its start otherwise. Boundary checkpoints: after
// stage 0 at the start of HIM 0 (or the final model when T = 0); after HIM t inside mask
// generation t at epoch 0 step 0, with the environments and the fresh mask model; after mask
// generation t at the start of HIM t + 1 (or the final model).
#include <chrono>
#include <filesystem>

#include "painvrl/data/error.h"
#include "painvrl/data/io.h"
#include "painvrl/data/npy.h"
#include "painvrl/pipeline/algorithm1.h"
#include "painvrl/pipeline/progress.h"

namespace painvrl {

void MaskStageState::save(Checkpoint& ck) const {
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

void MaskStageState::load(const Checkpoint& ck) {
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

void PipelineState::save(Checkpoint& ck) const {
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

void PipelineState::load(const Checkpoint& ck) {
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

StageRunner::StageRunner(const Config& c, const Evaluator& eval, const std::string& run_dir,
                         std::ostream& metrics_out, std::ostream& trace, nlohmann::json& summary,
                         CheckpointStore* store, const Checkpoint* resume)
    : c_(c),
      eval_(eval),
      run_dir_(run_dir),
      metrics_out_(metrics_out),
      trace_(trace),
      summary_(summary),
      store_(store),
      resume_(resume) {
  const int64_t d = eval.data.feature_dim;
  s_.mask.assign(size_t(d), c.mask_init);
  s_.mask_m.assign(size_t(d), 0.0);
  s_.mask_v.assign(size_t(d), 0.0);
  if (!c.mask_file.empty()) {  // a given mask: no stage 0, HIM or mask generation
    s_.mask = read_mask_file(c.mask_file, d);
    summary["mask_file"] = std::filesystem::absolute(c.mask_file).lexically_normal().string();
    log_info(fmt::format("mask from {}: the final model only", c.mask_file));
  }
  if (!resume) return;
  const Position& at = resume->position;
  if (at.phase != "start") s_.load(*resume);
  if (at.phase == "pretrain") {
    resume_order_ = order({StageKey::kPretrain}), resume_inside_ = true;
  } else if (at.phase == "him") {
    resume_order_ = order({StageKey::kHim, at.outer});
  } else if (at.phase == "mask") {
    resume_order_ = order({StageKey::kMask, at.outer}), resume_inside_ = true;
    s_.env = resume->get<int32_t>("env");
    s_.mask_model.load(*resume);
  } else if (at.phase == "final") {
    resume_order_ = order({StageKey::kFinal}), resume_inside_ = resume->has("params");
  }
}

int StageRunner::order(StageKey key) const {
  switch (key.kind) {
    case StageKey::kPretrain:
      return 0;
    case StageKey::kHim:
      return 1 + 2 * key.outer;
    case StageKey::kMask:
      return 2 + 2 * key.outer;
    case StageKey::kFinal:
      break;
  }
  return 1 + 2 * c_.outer_iterations;
}

void StageRunner::save_at(const Position& pos, bool with_mask_stage) {
  if (!store_) return;
  Checkpoint ck;
  ck.position = pos;
  s_.save(ck);
  if (with_mask_stage) {
    ck.put("env", s_.env);
    s_.mask_model.save(ck);
  }
  store_->save(ck);
}

void StageRunner::stage(StageKey key, const std::function<void(const StageCheckpoints&)>& body) {
  const int me = order(key);
  if (me < resume_order_) return;  // finished before the run stopped
  const bool mask_stage = key.kind == StageKey::kMask;
  StageCheckpoints sc;
  sc.store = store_;
  sc.resume = me == resume_order_ && resume_inside_ ? resume_ : nullptr;
  sc.phase = key.kind == StageKey::kPretrain ? "pretrain"
             : key.kind == StageKey::kHim    ? "him"
                                             : "mask";
  sc.outer = key.outer;
  sc.context = [this, mask_stage](Checkpoint& ck) {
    s_.save(ck);
    if (mask_stage) {
      ck.put("env", s_.env);
      s_.mask_model.save(ck);
    }
  };
  RunProgress::current().begin(key.kind == StageKey::kPretrain ? StageKind::kPretrain
                               : key.kind == StageKey::kHim    ? StageKind::kHim
                                                               : StageKind::kMask,
                               key.outer);
  const auto t0 = std::chrono::steady_clock::now();
  body(sc);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const int T = c_.outer_iterations;
  const Position next_round =
      key.outer + 1 < T ? Position{"him", key.outer + 1, 0, 0} : Position{"final", 0, 0, 0};
  switch (key.kind) {
    case StageKey::kPretrain:
      s_.pretrain_seconds += seconds;
      save_at(T > 0 ? Position{"him", 0, 0, 0} : Position{"final", 0, 0, 0}, false);
      break;
    case StageKey::kHim: {
      s_.him_seconds += seconds;
      round_seconds_ = seconds;
      // environments-<t>.tsv: `user item env`, one line per training pair, in train order.
      const PairList& train = eval_.data.train;
      std::string text;
      text.reserve(s_.env.size() * 16);
      for (size_t p = 0; p < s_.env.size(); ++p)
        text += fmt::format("{}\t{}\t{}\n", train.user[p], train.item[p], s_.env[p]);
      write_text_atomic(fmt::format("{}/environments-{}.tsv", run_dir_, key.outer), text);
      save_at(Position{"mask", key.outer, 0, 0}, true);
      break;
    }
    case StageKey::kMask:
      s_.mask_seconds += seconds;
      log_info(
          fmt::format("outer iteration {} done in {:.1f}s", key.outer, round_seconds_ + seconds));
      round_seconds_ = 0;
      save_at(next_round, false);
      break;
    case StageKey::kFinal:
      break;
  }
}

SelectionResult StageRunner::final_stage(
    const std::function<SelectionResult(const StageCheckpoints&)>& body) {
  const Dataset& data = eval_.data;
  const int64_t d = data.feature_dim;
  const std::vector<float> mask_f(s_.mask.begin(), s_.mask.end());
  write_npy(run_dir_ + "/mask.npy", mask_f.data(), {d});
  nlohmann::json per_modality = nlohmann::json::object();  // mask means for the summary
  for (const Modality& mod : data.modalities) {
    double sum = 0;
    for (int64_t j = mod.offset; j < mod.offset + mod.width; ++j) sum += s_.mask[j];
    per_modality[mod.name] = mod.width > 0 ? sum / double(mod.width) : 0.0;
  }
  summary_["mask_mean_by_modality"] = per_modality;
  summary_["stages"] = {
      {"pretrain", {{"seconds", s_.pretrain_seconds}, {"epochs", c_.pretrain_epochs}}},
      {"him", {{"seconds", s_.him_seconds}, {"model_epochs", s_.him_model_epochs}}},
      {"mask",
       {{"seconds", s_.mask_seconds},
        {"epochs", int64_t(c_.mask_epochs) * c_.outer_iterations},
        {"steps", s_.mask_steps}}}};
  s_.backbone.clear();  // no longer needed in the final model's checkpoints
  s_.env.clear();
  StageCheckpoints sc;
  sc.store = store_;
  sc.resume = resume_order_ == order({StageKey::kFinal}) && resume_inside_ ? resume_ : nullptr;
  sc.phase = "final";
  sc.context = [this](Checkpoint& ck) { s_.save(ck); };
  RunProgress::current().begin(StageKind::kFinal, 0);
  return body(sc);
}

SelectionResult run_invariant_pipeline(const Config& c, const Evaluator& eval,
                                       const std::string& run_dir, std::ostream& metrics_out,
                                       std::ostream& trace, nlohmann::json& summary,
                                       CheckpointStore* store, const Checkpoint* resume) {
  StageRunner run(c, eval, run_dir, metrics_out, trace, summary, store, resume);
  return run_algorithm1(c, eval, run);
}

}  // namespace painvrl
