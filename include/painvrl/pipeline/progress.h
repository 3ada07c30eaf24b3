// Whole-run progress: which stage of the pipeline runs, how far the run is, and when it will end.
// The run's plan (pretraining, T rounds of HIM and mask generation, the final model; or a
// baseline's one stage) comes from the config and the problem size. A stage's remaining time is
// measured once it has done a unit (an epoch, a HIM round); a stage not yet begun is predicted
// from a count of its floating-point work (progress.cpp) times the seconds per unit of work that
// the stages run so far measured, corrected per kind of stage once that kind has run.
#pragma once
#include <chrono>
#include <string>
#include <vector>

#include "painvrl/pipeline/config.h"
#include "painvrl/pipeline/resources.h"

namespace painvrl {

enum class StageKind { kPretrain, kHim, kMask, kFinal };

class RunProgress {
 public:
  // The process's run (one at a time).
  static RunProgress& current();

  // A run starts (fresh or resumed) / ends.
  void start(const Config& c, const ProblemSize& size);
  void finish();
  // A stage starts (outer: its outer iteration; 0 for pretraining and the final model), and how
  // far it is: `done` of `total` units (epochs; HIM rounds).
  void begin(StageKind kind, int outer);
  void advance(double done, double total);

  // "  [run 34% 12s, eta 23s]", or "" before anything has been measured or outside a run.
  std::string suffix() const;
  // Seconds to the end of the run (negative when not yet estimable), and the seconds since its
  // start in this process.
  double eta_seconds() const;
  double elapsed_seconds() const;

  // The work model (floating-point operations of one unit of each stage kind), for the tests.
  static double work_per_unit(StageKind kind, const Config& c, const ProblemSize& size);

 private:
  struct Planned {
    StageKind kind;
    int outer;
    double units;
  };
  using Clock = std::chrono::steady_clock;
  bool active_ = false;
  Config c_;
  ProblemSize size_;
  std::vector<Planned> plan_;
  int current_ = -1;  // index into plan_
  double done_ = 0, total_ = 0;
  Clock::time_point run_start_, stage_start_;
  // Measured: seconds and work done so far, per kind and in all (finished stages and the
  // finished units of the current one).
  double seconds_[4] = {0, 0, 0, 0}, work_[4] = {0, 0, 0, 0};
  double stage_units_ = 0;    // units of the current stage done in this process at its last advance
  double stage_seconds_ = 0;  // and the seconds they took
  double first_done_ = -1;    // the units done before this process began the stage (resume)

  double predicted_seconds(const Planned& p) const;
};

}  // namespace painvrl
