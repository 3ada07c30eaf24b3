// The CPU mask runner (include/painvrl/backend/mask_runner.h): per step the batch of
// make_mask_batches, the gate noise of draw_noise, mask_step<double> (host/cpu/mask_step.cpp), then
// Adam on the mask model (the L2 term already in the gradient) and the mask update of Eq. 19 (sgd)
// or Adam on the same direction, clipped to [0, 1]. A non-finite loss, gradient or mask stops it
// before the update, as the device runner does.
#include "painvrl/backend/mask_runner.h"

#include <algorithm>
#include <cmath>

#include "painvrl/backend/draws.h"
#include "painvrl/math/adam.h"

namespace painvrl {
namespace {

bool all_finite(const std::vector<double>& v) {
  return std::all_of(v.begin(), v.end(), [](double x) { return std::isfinite(x); });
}

class CpuMaskRunner final : public MaskRunner {
 public:
  CpuMaskRunner(const MaskRunSetup& setup, const MaskRunState& state)
      : S_(setup),
        st_(state),
        noise_(size_t(setup.envs) * setup.layout.d),
        noise_d_(noise_.size()) {}

  void begin_epoch(const std::vector<std::vector<int32_t>>& env_pairs, int epoch) override {
    env_pairs_ = &env_pairs;
    epoch_ = epoch;
  }

  void step(int64_t step) override {
    if (pending_.failed) return;
    const MaskRunOptions& c = S_.options;
    const int64_t d = S_.layout.d;
    const EnvBatches batches =
        make_mask_batches(*S_.train, *env_pairs_, c.mask_batch, c.negatives, S_.problem.n_items,
                          S_.neg_key, uint32_t(epoch_), step);
    for (int32_t e = 0; e < S_.envs; ++e) {
      draw_noise(S_.noise_key, uint32_t(epoch_), uint32_t(step), uint32_t(e), d, float(c.sigma),
                 noise_.data() + size_t(e) * d);
    }
    std::copy(noise_.begin(), noise_.end(), noise_d_.begin());
    std::vector<double>& params = *st_.params;
    std::vector<double>& mask = *st_.mask;
    MaskSettings settings = S_.settings;
    if (st_.scale) settings.scale = *st_.scale;
    MaskStepResult<double>& r = result_;
    mask_step<double>(S_.layout, params.data(), mask.data(), S_.problem, batches, noise_d_.data(),
                      settings, ws_, r);
    if (!std::isfinite(r.L_ERM) || !std::isfinite(r.L_IRM) || !all_finite(r.grad) ||
        !all_finite(r.mask_grad) || !all_finite(r.mask_new)) {
      pending_.failed = MaskDrain::Failure{step, r.L_ERM, r.L_IRM};
      return;
    }
    if (st_.scale) *st_.scale = r.scale;
    const math::AdamStep as = math::make_adam_step(
        float(c.lr), float(c.adam_beta1), float(c.adam_beta2), float(c.adam_eps), ++*st_.adam_t);
    for (size_t k = 0; k < params.size(); ++k) {
      math::adam_update(params[k], (*st_.adam_m)[k], (*st_.adam_v)[k], r.grad[k], 0.0, as);
    }
    if (!c.mask_adam) {
      mask = r.mask_new;
    } else {
      const math::AdamStep ma =
          math::make_adam_step(float(c.mask_step), float(c.adam_beta1), float(c.adam_beta2),
                               float(c.adam_eps), ++*st_.mask_t);
      for (int64_t j = 0; j < d; ++j) {
        math::adam_update(mask[j], (*st_.mask_m)[j], (*st_.mask_v)[j], r.mask_grad[j], 0.0, ma);
        mask[j] = std::clamp(mask[j], 0.0, 1.0);
      }
    }
    double mean = 0;
    for (double x : mask) mean += x;
    mean /= double(std::max<int64_t>(d, 1));
    pending_.records.push_back(MaskStepRecord{step, r.w_ERM, r.L_ERM, r.L_IRM, mean});
  }

  bool deferred() const override { return false; }

  MaskDrain drain() override {
    MaskDrain out = std::move(pending_);
    pending_ = MaskDrain{};
    return out;
  }

  void sync_state() override {}

 private:
  MaskRunSetup S_;
  MaskRunState st_;
  const std::vector<std::vector<int32_t>>* env_pairs_ = nullptr;
  int epoch_ = 0;
  std::vector<float> noise_;     // (E, d) as drawn
  std::vector<double> noise_d_;  // (E, d) for the double step
  MaskDrain pending_;
  MaskStepWorkspace<double> ws_;
  MaskStepResult<double> result_;
};

}  // namespace

std::unique_ptr<MaskRunner> make_cpu_mask_runner(const MaskRunSetup& setup,
                                                 const MaskRunState& state) {
  return std::make_unique<CpuMaskRunner>(setup, state);
}

}  // namespace painvrl
