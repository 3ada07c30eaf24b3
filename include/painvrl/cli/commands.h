// The commands of the command line that are not training (host/cli/): `debug-step` and `split`.
#pragma once
#include <string>
#include <vector>

#include "painvrl/pipeline/config.h"

namespace painvrl {

// One mask-generation step with every input and output dumped (docs/mask-step.md).
// pareto_state, when not empty: (rms_E, rms_I, steps), the stage's normalisation state before the
// step (pareto_normalize = initial | running; empty: the first step of a stage).
void run_debug_step(const Config& config, const std::string& data_dir, const std::string& out_dir,
                    bool random_mask, bool in_double, const std::vector<double>& pareto_state = {});

// Writes the OOD/IID or cold-item protocol datasets (host/cli/split.cpp).
void run_split(const Config& config, const std::string& data_dir, const std::string& out_dir,
               const std::string& protocol, const std::string& env_source, double cold_fraction,
               int test_env);

}  // namespace painvrl
