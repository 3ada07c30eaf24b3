// Algorithm 1 of the paper (DESIGN.md section 2), the scheduler of `painvrl` and `invrl`:
//   stage 0: a backbone on the full features f; its Pt, Pf, T are frozen for the mask model;
//   for t in 0..T-1: environment identification (HIM, Eq. 9) on psi = (1 - m) f, then
//     mask_epochs epochs of mask generation (Eq. 10-19) weighted by the closed-form w_ERM (Eq. 17)
//     for `painvrl` (or objective = erm | irm), by L_ERM + alpha L_IRM for `invrl`;
//   the final model: a fresh backbone on Phi = m f with validation-based selection (Eq. 24-26).
// Resume, checkpoints, outputs and timing are the StageRunner's (host/pipeline/stage_runner.cpp);
// nothing here reads or writes a file.
#include "painvrl/pipeline/algorithm1.h"

#include "painvrl/data/error.h"

namespace painvrl {

SelectionResult run_algorithm1(const Config& c, const Evaluator& eval, StageRunner& run) {
  const Dataset& data = eval.data;
  PipelineState& s = run.state();
  const bool learn_mask = c.mask_file.empty();  // else a given mask: the final model only

  // Stage 0: the backbone on the full features.
  if (learn_mask) {
    run.stage({StageKey::kPretrain}, [&](const auto& stage) {
      log_info(fmt::format("stage 0: backbone on the full features, {} epochs", c.pretrain_epochs));
      s.backbone =
          train_fixed(c, eval.graph, data.train, data.features, data.feature_dim, true,
                      stage_id::kPretrain, c.pretrain_epochs, "pretrain ", nullptr, 0, &stage)
              ->parameters();
    });
  }
  MaskSettings ms = mask_settings_from(c);
  for (int t = 0; learn_mask && t < c.outer_iterations; ++t) {
    // Eq. 9: environments on psi = (1 - m) f, and a fresh mask model for this round.
    run.stage({StageKey::kHim, t}, [&](const auto&) {
      s.env =
          environments_for_round(c, eval, s.mask, s.backbone, t, run.trace(), &s.him_model_epochs);
      s.mask_model = fresh_mask_model(c, data, s.backbone, t);
    });
    // Eq. 10-19: the mask, one batch of every environment per step.
    run.stage({StageKey::kMask, t},
              [&](const auto& stage) { generate_mask(c, eval, ms, s, t, run.trace(), stage); });
    if (c.method == "invrl") {  // InvRL grows the penalty's weight and the regulariser
      ms.fixed_alpha *= c.invrl_growth;
      ms.lambda *= c.invrl_growth;
    }
  }

  // The final model on Phi = m * f.
  return run.final_stage([&](const auto& stage) {
    log_info("final model on Phi = m * f");
    const std::vector<float> mask(s.mask.begin(), s.mask.end());
    const std::vector<float> phi = scale_columns(data.features, data.feature_dim, mask);
    return train_with_selection(c, eval, phi, true, stage_id::kFinal, "final", run.metrics(),
                                &stage);
  });
}

}  // namespace painvrl
