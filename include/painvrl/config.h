// Run configuration: every knob of DESIGN.md that the foundation uses, with defaults, a TOML
// reader (presets and --config files) and `key=value` overrides. Unknown keys and mistyped values
// are errors that name the key and suggest the nearest valid one.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace painvrl {

struct Config {
  // run
  std::string method = "ultragcn";  // ultragcn | ultragcn-mm | mostpop
  uint64_t seed = 2233;
  int threads = 0;  // 0: all cores (OMP default)
  // model
  int dim = 64;            // D
  double init_std = 1e-3;  // N(0, init_std) for Pt, Pf, T, W; b = 0
  // UltraGCN loss
  int batch_size = 512;
  int negatives = 50;       // N per positive, uniform with replacement
  double neg_weight = 1.0;  // multiplies the mean over negatives
  double w1 = 1.0, w2 = 1e-4, w3 = 1.0, w4 = 1e-4;
  double kappa = 0.01;  // weight of the item-item term L_I
  int ii_neighbors = 10;
  std::string ii_similarity = "paper";  // paper | ultragcn
  double gamma_emb = 1e-4;              // gamma_emb * (|Pt|^2 + |Pf|^2 + |T|^2)
  double gamma_w = 1e-2;                // gamma_W * (|W|^2 + |b|^2)
  std::string l2 = "full";              // full | touched
  // optimiser
  double lr = 1e-3;
  double adam_beta1 = 0.9, adam_beta2 = 0.999, adam_eps = 1e-8;
  // schedule
  int epochs = 100;
  int eval_every = 5;
  int eval_dense_after = -1;  // from this epoch on, evaluate every epoch (-1: never)
  int patience = 10;          // evaluations without improvement before stopping (0: never stop)
  std::string select_metric = "ndcg@10";  // validation metric for model selection
  bool eval_test_each = true;             // also record test metrics at every evaluation
  // evaluation
  std::vector<int> eval_ks = {10, 20};
  std::string ndcg = "standard";  // standard | invrl
  int eval_block = 256;           // users per scoring block
  // data
  int normalize_features = -1;  // -1: as the dataset says; 0/1 override
};

// Key names in the order `--help-config` prints them, each with its one-line description.
const std::vector<std::pair<std::string, std::string>>& config_keys();

// Applies a TOML document (a preset or a config file). `origin` names it in errors.
void apply_toml(Config& config, const std::string& toml_text, const std::string& origin);
// Applies one `key=value` override.
void apply_override(Config& config, const std::string& assignment);
// Checks values and their combinations; throws InputError naming the key.
void validate(const Config& config);
// The resolved configuration as TOML (written into the run directory; re-readable).
std::string to_toml(const Config& config);

// Presets shipped in configs/*.toml, compiled into the program.
const std::vector<std::pair<std::string, std::string>>& shipped_presets();
void apply_preset(Config& config, const std::string& name);

}  // namespace painvrl
