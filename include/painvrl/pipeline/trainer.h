// The host-side scheduler for a training run: load and check everything, then create the run
// directory, train with periodic full-ranking evaluation, early stopping on the validation
// metric, and write config.toml, metrics.jsonl and summary.json.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "painvrl/data/dataset.h"
#include "painvrl/pipeline/config.h"

namespace painvrl {

struct RunOptions {
  std::string data_dir;
  std::string out_dir;
  bool overwrite = false;
};

// Runs `config.method` on the dataset. Throws InputError (nothing written) for bad input,
// Interrupted after a stop signal (the state checkpointed), Diverged for a non-finite loss.
void run_training(const Config& config, const RunOptions& options);

// Continues the run in options.out_dir from its newest usable checkpoint, with the config it
// recorded (threads >= 0 overrides the thread count, which does not change results) and its
// dataset (options.data_dir, when set, replaces the recorded path; the content must match).
void resume_training(const RunOptions& options, int threads);

// The content hash runs and checkpoints record: counts, the three splits and the (normalised)
// features. Resume, recommend and export refuse a dataset whose hash differs.
uint64_t dataset_content_hash(const Dataset& d);

// Prints counts, sparsity, degree summaries and feature widths of a dataset.
void inspect_dataset(const std::string& data_dir);
// A finished run's summary: its tests, the mask, HIM's last environments and w_ERM's minimum,
// quartiles and maximum over the mask steps (trace.jsonl).
void inspect_run(const std::string& run_dir);

}  // namespace painvrl
