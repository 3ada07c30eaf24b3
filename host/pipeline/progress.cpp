// Whole-run progress and its ETA (include/painvrl/pipeline/progress.h).
//
// The work model counts floating-point operations per unit of each stage (N negatives, K item
// neighbours when kappa > 0, B = batch_size, D = dim, d = feature columns, H = attention_hidden,
// E = envs, P = training pairs, U x I users x items):
//   backbone epoch  ceil(P / B) steps of  12 D per term (B (1 + N + K) terms: two dots forward,
//                   their gradients backward), 6 d D per touched item (the projection W f_i
//                   forward and backward; touched <= min(I, terms)), 12 D per row of Adam over the
//                   tables (l2 = full touches every row)
//   evaluation      2 (U I 2 D) (validation and test score every user-item pair) + 2 I d D
//   HIM round       him_epochs backbone epochs (the E environment models share the pairs) and the
//                   assignment: E scorings of every user-item pair, 2 U I 2 D each
//   mask epoch      ceil(P / E / mask_batch) steps of (rows = E mask_batch, terms = rows (1+N+K))
//                   terms (16 d + 2 D + 24 H) + 8 rows D d + 16 rows D H + 8 touched (D + d) H
//                   (bench/mask_step_cpu.cpp), counted twice: the mask step runs in float64
// The model sets only the ratios between stages: seconds per operation are measured on the
// pretraining (or a baseline's epochs) and corrected per kind once a kind has run.
#include "painvrl/pipeline/progress.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

namespace painvrl {
namespace {

double seconds_between(std::chrono::steady_clock::time_point a,
                       std::chrono::steady_clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

std::string short_duration(double s) {
  if (s < 100) return fmt::format("{:.1f}s", s);
  if (s < 120) return fmt::format("{:.0f}s", s);
  if (s < 7200) return fmt::format("{:.1f}m", s / 60);
  return fmt::format("{:.1f}h", s / 3600);
}

bool uses_features(const Config& c) { return c.method != "ultragcn" && c.method != "mostpop"; }

double backbone_epoch_work(const Config& c, const ProblemSize& s, double pairs) {
  const double D = c.dim, d = uses_features(c) ? double(s.d) : 0.0;
  const double B = c.batch_size, terms = B * (1 + c.negatives + (c.kappa > 0 ? c.ii_neighbors : 0));
  const double touched = std::min(double(s.n_items), terms);
  const double rows = 2.0 * double(s.n_users) + double(s.n_items);
  const double step = terms * 12 * D + touched * 6 * d * D + rows * 12 * D;
  return std::ceil(pairs / B) * step;
}

double evaluation_work(const Config& c, const ProblemSize& s) {
  const double D = c.dim, d = uses_features(c) ? double(s.d) : 0.0;
  return 2.0 * double(s.n_users) * double(s.n_items) * 2 * D + 2.0 * double(s.n_items) * d * D;
}

}  // namespace

RunProgress& RunProgress::current() {
  static RunProgress progress;
  return progress;
}

double RunProgress::work_per_unit(StageKind kind, const Config& c, const ProblemSize& s) {
  const double P = double(s.n_train), E = std::max(1, c.envs);
  switch (kind) {
    case StageKind::kPretrain:
      return backbone_epoch_work(c, s, P);
    case StageKind::kFinal:
      return backbone_epoch_work(c, s, P) + evaluation_work(c, s) / std::max(1, c.eval_every);
    case StageKind::kHim:
      return c.him_epochs * backbone_epoch_work(c, s, P) +
             E * 2.0 * double(s.n_users) * double(s.n_items) * 2 * c.dim;
    case StageKind::kMask: {
      const double D = c.dim, d = double(s.d), H = c.attention ? c.attention_hidden : 0;
      const double rows = E * c.mask_batch;
      const double terms = rows * (1 + c.negatives + (c.kappa > 0 ? c.ii_neighbors : 0));
      const double touched = std::min(double(s.n_items), terms);
      const double step = terms * (16 * d + 2 * D + 24 * H) + 8 * rows * D * d + 16 * rows * D * H +
                          8 * touched * (D + d) * H;
      return 2 * std::ceil(P / E / std::max(1, c.mask_batch)) * step;
    }
  }
  return 0;
}

void RunProgress::start(const Config& c, const ProblemSize& size) {
  *this = RunProgress{};
  active_ = true;
  c_ = c;
  size_ = size;
  run_start_ = Clock::now();
  if (c.method == "painvrl" || c.method == "invrl") {
    if (c.mask_file.empty()) {
      plan_.push_back({StageKind::kPretrain, 0, double(c.pretrain_epochs)});
      for (int t = 0; t < c.outer_iterations; ++t) {
        plan_.push_back({StageKind::kHim, t, double(c.him_rounds)});
        plan_.push_back({StageKind::kMask, t, double(c.mask_epochs)});
      }
    }
    plan_.push_back({StageKind::kFinal, 0, double(c.epochs)});
  } else if (c.method != "mostpop") {
    plan_.push_back({StageKind::kFinal, 0, double(c.epochs)});
  }
}

void RunProgress::finish() { active_ = false; }

void RunProgress::begin(StageKind kind, int outer) {
  if (!active_) return;
  if (current_ >= 0) {  // fold the stage that ends into the measurements
    const int k = int(plan_[size_t(current_)].kind);
    seconds_[k] += stage_seconds_;
    work_[k] += stage_units_ * work_per_unit(plan_[size_t(current_)].kind, c_, size_);
  }
  current_ = -1;
  for (size_t p = 0; p < plan_.size(); ++p) {
    if (plan_[p].kind == kind && plan_[p].outer == outer) current_ = int(p);
  }
  stage_start_ = Clock::now();
  stage_units_ = stage_seconds_ = 0;
  done_ = total_ = 0;
  first_done_ = -1;
}

void RunProgress::advance(double done, double total) {
  if (!active_ || current_ < 0) return;
  if (first_done_ < 0) first_done_ = done - 1;  // a resumed stage starts past 0
  done_ = done;
  total_ = total;
  stage_units_ = done - first_done_;
  stage_seconds_ = seconds_between(stage_start_, Clock::now());
}

double RunProgress::predicted_seconds(const Planned& p) const {
  // Seconds per operation: from the backbone's epochs (pretraining, else the final model's).
  auto measured = [&](StageKind k, double& sec, double& work) {
    sec = seconds_[int(k)];
    work = work_[int(k)];
    if (current_ >= 0 && plan_[size_t(current_)].kind == k) {
      sec += stage_seconds_;
      work += stage_units_ * work_per_unit(k, c_, size_);
    }
    return work > 0 && sec > 0;
  };
  double sec = 0, work = 0, per_op = -1;
  if (measured(StageKind::kPretrain, sec, work) || measured(StageKind::kFinal, sec, work)) {
    per_op = sec / work;
  } else {
    for (StageKind k : {StageKind::kHim, StageKind::kMask}) {
      if (measured(k, sec, work)) per_op = sec / work;
    }
  }
  if (per_op < 0) return -1;
  if (measured(p.kind, sec, work)) per_op = sec / work;  // this kind's own rate
  return p.units * work_per_unit(p.kind, c_, size_) * per_op;
}

double RunProgress::eta_seconds() const {
  if (!active_ || current_ < 0) return -1;
  const Planned& now = plan_[size_t(current_)];
  double eta = 0;
  if (stage_units_ > 0) {
    eta += stage_seconds_ / stage_units_ * std::max(0.0, (total_ > 0 ? total_ : now.units) - done_);
  } else {
    const double whole = predicted_seconds(now);
    if (whole < 0) return -1;
    eta += std::max(0.0, whole - seconds_between(stage_start_, Clock::now()));
  }
  for (size_t p = size_t(current_) + 1; p < plan_.size(); ++p) {
    const double s = predicted_seconds(plan_[p]);
    if (s < 0) return -1;
    eta += s;
  }
  return eta;
}

double RunProgress::elapsed_seconds() const {
  return active_ ? seconds_between(run_start_, Clock::now()) : 0.0;
}

std::string RunProgress::suffix() const {
  const double eta = eta_seconds();
  if (eta < 0) return "";
  const double elapsed = elapsed_seconds();
  const double share = elapsed + eta > 0 ? elapsed / (elapsed + eta) : 0.0;
  return fmt::format("  [run {:.0f}%, {} in, eta {}]", 100 * share, short_duration(elapsed),
                     short_duration(eta));
}

}  // namespace painvrl
