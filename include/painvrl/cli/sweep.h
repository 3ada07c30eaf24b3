// Sweeps: many runs from one spec, on the local machine or on Slurm (README "Running on a
// cluster"). A spec (TOML) names a base config, fixed overrides, axes (any config key, plus
// `dataset`), and the resources one run needs:
//
//   base = "configs/paper.toml"      # optional, relative to the spec; or preset = "paper"
//   data = "/data/ml1m"              # the dataset, unless `dataset` is an axis
//   [set]                            # applied to every run
//   epochs = 30
//   [axes]                           # the runs are the product of these lists
//   method = ["ultragcn-mm", "painvrl"]
//   seed = [1, 2, 3]
//   [resources]                      # per run
//   gpus = 0, cpus = 2, mem_gb = 8, time = "02:00:00", partition = "", account = ""
//   signal_seconds = 120             # SIGTERM this long before the time limit (checkpoint)
//
// `plan` writes DIR/manifest.json and DIR/runs/<id>/{config.toml, run.json}; the id is a hash
// of the resolved config (threads aside) and the dataset path, so planning the same spec twice
// gives the same ids and adding axis values only adds runs. Each run trains into
// DIR/runs/<id>/out, logs to DIR/runs/<id>/log.txt and records its state in status.json.
#pragma once
#include <string>

namespace painvrl {

void sweep_plan(const std::string& spec_path, const std::string& dir);
// Runs the pending and interrupted runs with `jobs` workers (one GPU each when GPUs are present).
void sweep_run_local(const std::string& dir, int jobs);
// Writes an sbatch array script for the runs not done, submits it, records the job id.
void sweep_run_slurm(const std::string& dir, bool submit);
// Starts, resumes or skips one run (what each worker and each array task executes). Returns the
// exit status of `painvrl train` for it.
int sweep_exec(const std::string& dir, const std::string& id);
void sweep_status(const std::string& dir);
// DIR/results.csv (one row per run) and DIR/results.md (means and standard deviations over seeds).
void sweep_collect(const std::string& dir);

}  // namespace painvrl
