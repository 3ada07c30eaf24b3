// Configuration keys, TOML reading, `key=value` overrides, validation and presets.
// Each key is declared once in the table below (name, member, description); reading, writing
// and the "did you mean" suggestion all come from that table.
#include "painvrl/pipeline/config.h"

#include <toml++/toml.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <limits>
#include <sstream>
#include <variant>

#include "painvrl/data/error.h"

namespace painvrl {
namespace {

using Member = std::variant<std::string Config::*, uint64_t Config::*, int Config::*,
                            double Config::*, bool Config::*, std::vector<int> Config::*>;

struct Key {
  const char* name;
  Member member;
  const char* help;
};

const std::vector<Key>& keys() {
  static const std::vector<Key> k = {
      {"method", &Config::method, "ultragcn | ultragcn-mm | mostpop | invrl | painvrl"},
      {"seed", &Config::seed, "seed of every random draw"},
      {"threads", &Config::threads,
       "CPU threads (0: all cores, fewer while other processes keep cores busy)"},
      {"device", &Config::device,
       "cpu | cuda | auto (auto: the CPU until the CUDA backend has passed its device check)"},
      {"deterministic", &Config::deterministic,
       "CUDA backend: gradient rows summed in a fixed order instead of by atomics, so that runs "
       "are bit-identical (the CPU backend always is)"},
      {"tf32", &Config::tf32,
       "CUDA backend: the content projection's and the scoring's fp32 GEMMs on TF32 tensor cores "
       "(10-bit mantissa inputs; the CPU backend ignores it)"},
      {"checkpoint_every", &Config::checkpoint_every,
       "also checkpoint every this many epochs of a stage (0: only at stage ends and signals)"},
      {"checkpoint_keep", &Config::checkpoint_keep, "newest checkpoints kept (0: all)"},
      {"memory_limit_gb", &Config::memory_limit_gb,
       "host memory the run may use, GiB (0: MemAvailable or the cgroup limit)"},
      {"dim", &Config::dim, "embedding size D"},
      {"init_std", &Config::init_std, "std of the normal initialisation of Pt, Pf, T, W"},
      {"batch_size", &Config::batch_size, "positives per step"},
      {"negatives", &Config::negatives, "uniform negatives N per positive"},
      {"neg_weight", &Config::neg_weight, "weight of the mean over negatives"},
      {"w1", &Config::w1, "positive weight, constant part"},
      {"w2", &Config::w2, "positive weight, beta_u beta_i part"},
      {"w3", &Config::w3, "negative weight, constant part"},
      {"w4", &Config::w4, "negative weight, beta_u beta_j part"},
      {"kappa", &Config::kappa, "weight of the item-item constraint loss L_I"},
      {"ii_neighbors", &Config::ii_neighbors, "item-item neighbours K"},
      {"ii_similarity", &Config::ii_similarity, "paper | ultragcn (omega formula)"},
      {"gamma_emb", &Config::gamma_emb, "L2 weight of the embedding tables"},
      {"gamma_w", &Config::gamma_w, "L2 weight of W and b"},
      {"l2", &Config::l2, "full | touched (rows the L2 term covers)"},
      {"lr", &Config::lr, "Adam learning rate"},
      {"adam_beta1", &Config::adam_beta1, "Adam beta1"},
      {"adam_beta2", &Config::adam_beta2, "Adam beta2"},
      {"adam_eps", &Config::adam_eps, "Adam epsilon"},
      {"epochs", &Config::epochs, "maximum training epochs"},
      {"eval_every", &Config::eval_every, "evaluate after epochs e with e % eval_every == 0"},
      {"eval_dense_after", &Config::eval_dense_after,
       "from this epoch on evaluate every epoch (-1: never)"},
      {"patience", &Config::patience, "evaluations without improvement before stopping (0: off)"},
      {"select_metric", &Config::select_metric, "validation metric for model selection"},
      {"eval_test_each", &Config::eval_test_each, "record test metrics at every evaluation"},
      {"eval_ks", &Config::eval_ks, "list of K for P/R/NDCG@K"},
      {"ndcg", &Config::ndcg, "standard | invrl"},
      {"eval_block", &Config::eval_block,
       "users scored per block (the GPU ranks at least 4,096 users per call)"},
      {"candidates", &Config::candidates,
       "auto | all | cold: the test's ranking candidates (auto: the dataset's test_candidates; "
       "cold: the items without training pairs; validation always ranks all)"},
      {"normalize_features", &Config::normalize_features,
       "-1: as the dataset says; 0/1: off/on (row L2 per modality)"},
      {"pretrain_epochs", &Config::pretrain_epochs, "stage 0 epochs (backbone on full features)"},
      {"outer_iterations", &Config::outer_iterations, "T outer iterations of Algorithm 1"},
      {"environments", &Config::environments,
       "him (identify, Sec. 3.3) | file (the dataset's environments.tsv, for diagnostics)"},
      {"envs", &Config::envs, "E environments"},
      {"him_epochs", &Config::him_epochs, "epochs per environment model per HIM round"},
      {"him_rounds", &Config::him_rounds, "maximum HIM reassignment rounds"},
      {"him_move_tol", &Config::him_move_tol, "HIM stops when at most this share of pairs moved"},
      {"him_train", &Config::him_train,
       "what an environment model trains: all (fresh backbone, InvRL) | content (stage-0 start, "
       "ID branch frozen) | projection (stage-0 start, only W, b)"},
      {"him_assign", &Config::him_assign,
       "Eq. 9's comparison of the environment models: likelihood (log-probability of the item "
       "among all items) | standardized (z-score over the items) | centered (minus the mean over "
       "the items) | score (the raw score)"},
      {"mask_epochs", &Config::mask_epochs, "mask-generation epochs per outer iteration"},
      {"mask_batch", &Config::mask_batch, "positives per environment per mask step"},
      {"mask_init", &Config::mask_init, "initial mask value"},
      {"sigma", &Config::sigma, "gate noise std (Eq. 10)"},
      {"mask_lambda", &Config::mask_lambda, "lambda of the mask regulariser"},
      {"mask_center", &Config::mask_center, "c: 0 (paper) or 0.5 (InvRL)"},
      {"mask_step", &Config::mask_step, "s: mask step size (sgd) or Adam learning rate"},
      {"mask_optimizer", &Config::mask_optimizer, "sgd | adam"},
      {"objective", &Config::objective, "pareto | erm | irm"},
      {"pareto_normalize", &Config::pareto_normalize,
       "none | l2 | loss | initial | running: the scale of g_E, g_I in Eq. 17"},
      {"mask_w_init", &Config::mask_w_init,
       "mask model's W, b: pretrained (stage 0's) | random (N(0, init_std), InvRL's choice)"},
      {"attention", &Config::attention, "attention MLPs of Eq. 13-14"},
      {"attention_hidden", &Config::attention_hidden, "hidden units H of each attention MLP"},
      {"attention_bias", &Config::attention_bias,
       "initial output bias of the attention MLPs: +b for alpha_Phi, -b for alpha_Psi"},
      {"mask_file", &Config::mask_file,
       "painvrl/invrl: train the final model on this fixed mask (.npy, d values in [0, 1]) "
       "instead of learning one"},
      {"invrl_alpha", &Config::invrl_alpha, "invrl: weight of L_IRM"},
      {"invrl_growth", &Config::invrl_growth, "invrl: growth of alpha and lambda per iteration"},
  };
  return k;
}

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] != b[j - 1])});
    }
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

}  // namespace

std::string nearest_name(const std::string& name, const std::vector<std::string>& candidates) {
  const std::string head = name.substr(0, 40);
  const std::string* best = &candidates.front();
  size_t best_d = SIZE_MAX;
  for (const std::string& c : candidates) {
    const size_t d = edit_distance(head, c);
    if (d < best_d) {
      best_d = d;
      best = &c;
    }
  }
  return *best;
}

namespace {

const Key& find_key(const std::string& name, const std::string& origin) {
  for (const Key& k : keys()) {
    if (name == k.name) return k;
  }
  // What other trainers (UltraGCN's and InvRL's configs, RecBole, MMRec) call our keys: their
  // names are far from ours by edit distance (learning_rate is nearer to init_std than to lr).
  static const std::pair<const char*, const char*> kOtherNames[] = {
      {"learning_rate", "lr"},
      {"learning-rate", "lr"},
      {"learningrate", "lr"},
      {"embedding_dim", "dim"},
      {"embedding_size", "dim"},
      {"embed_dim", "dim"},
      {"emb_dim", "dim"},
      {"latent_dim", "dim"},
      {"num_epochs", "epochs"},
      {"n_epochs", "epochs"},
      {"max_epoch", "epochs"},
      {"max_epochs", "epochs"},
      {"weight_decay", "gamma_emb"},
      {"reg_weight", "gamma_emb"},
      {"num_negatives", "negatives"},
      {"negative_num", "negatives"},
      {"neg_num", "negatives"},
      {"random_seed", "seed"},
      {"num_threads", "threads"},
      {"train_batch_size", "batch_size"}};
  std::string lower = name;
  std::transform(lower.begin(), lower.end(), lower.begin(),
                 [](unsigned char ch) { return char(std::tolower(ch)); });
  for (const auto& [other, ours] : kOtherNames) {
    if (lower == other) {
      input_error("{}: unknown config key `{}`; did you mean `{}`? (`painvrl keys` lists them all)",
                  origin, name, ours);
    }
  }
  // The nearest key by edit distance, over the name's first 40 characters: every key is under 20,
  // so a longer name is nobody's typo, and the search costs time in the name's length.
  const std::string head = name.substr(0, 40);
  const Key* best = &keys()[0];
  size_t best_d = SIZE_MAX;
  for (const Key& k : keys()) {
    const size_t d = edit_distance(head, k.name);
    if (d < best_d) {
      best_d = d;
      best = &k;
    }
  }
  input_error("{}: unknown config key `{}`; did you mean `{}`? (`painvrl keys` lists them all)",
              origin, name, best->name);
}

template <class Int>
Int parse_int(const std::string& text, const std::string& what) {
  Int v{};
  const char* end = text.data() + text.size();
  auto [p, ec] = std::from_chars(text.data(), end, v);
  if (ec != std::errc() || p != end) input_error("{}: expected an integer, got `{}`", what, text);
  return v;
}

double parse_double(const std::string& text, const std::string& what) {
  double v = 0;
  const char* end = text.data() + text.size();
  auto [p, ec] = std::from_chars(text.data(), end, v);
  if (ec != std::errc() || p != end) input_error("{}: expected a number, got `{}`", what, text);
  if (!std::isfinite(v)) input_error("{}: expected a finite number, got `{}`", what, text);
  return v;
}

bool parse_bool(const std::string& text, const std::string& what) {
  if (text == "true" || text == "1") return true;
  if (text == "false" || text == "0") return false;
  input_error("{}: expected true or false, got `{}`", what, text);
}

// Sets a key from text (the --set form). Lists are comma separated, brackets optional.
void set_from_text(Config& c, const Key& key, std::string text, const std::string& what) {
  std::visit(
      [&](auto member) {
        using M = std::remove_cvref_t<decltype(c.*member)>;
        if constexpr (std::is_same_v<M, std::string>) {
          if (text.size() >= 2 && text.front() == '"' && text.back() == '"') {
            text = text.substr(1, text.size() - 2);
          }
          c.*member = text;
        } else if constexpr (std::is_same_v<M, bool>) {
          c.*member = parse_bool(text, what);
        } else if constexpr (std::is_same_v<M, double>) {
          c.*member = parse_double(text, what);
        } else if constexpr (std::is_same_v<M, std::vector<int>>) {
          std::string s = text;
          s.erase(std::remove_if(s.begin(), s.end(),
                                 [](char ch) { return ch == '[' || ch == ']' || ch == ' '; }),
                  s.end());
          std::vector<int> out;
          std::stringstream ss(s);
          std::string item;
          while (std::getline(ss, item, ',')) out.push_back(parse_int<int>(item, what));
          c.*member = out;
        } else {
          c.*member = parse_int<M>(text, what);
        }
      },
      key.member);
}

// A TOML integer (64-bit) as the key's type; out of its range is an error, not a wrapped value.
template <class Int>
Int int_in_range(int64_t value, const std::string& what) {
  constexpr int64_t lowest = std::numeric_limits<Int>::min();
  constexpr int64_t highest = static_cast<int64_t>(
      std::min<uint64_t>(std::numeric_limits<Int>::max(), std::numeric_limits<int64_t>::max()));
  if (value < lowest || value > highest) {
    input_error("{}: {} is out of range; expected an integer from {} to {}", what, value, lowest,
                highest);
  }
  return static_cast<Int>(value);
}

void set_from_toml(Config& c, const Key& key, const toml::node& node, const std::string& what) {
  std::visit(
      [&](auto member) {
        using M = std::remove_cvref_t<decltype(c.*member)>;
        if constexpr (std::is_same_v<M, std::string>) {
          if (!node.is_string()) input_error("{}: expected a string", what);
          c.*member = *node.value<std::string>();
        } else if constexpr (std::is_same_v<M, bool>) {
          if (!node.is_boolean()) input_error("{}: expected true or false", what);
          c.*member = *node.value<bool>();
        } else if constexpr (std::is_same_v<M, double>) {
          // Not node.value<double>(): it is empty for an integer a double cannot hold exactly.
          if (const auto* f = node.as_floating_point()) {
            if (!std::isfinite(f->get())) {
              input_error("{}: expected a finite number, got {}", what, f->get());
            }
            c.*member = f->get();
          } else if (const auto* i = node.as_integer()) {
            c.*member = static_cast<double>(i->get());
          } else {
            input_error("{}: expected a number", what);
          }
        } else if constexpr (std::is_same_v<M, std::vector<int>>) {
          const toml::array* arr = node.as_array();
          if (!arr) input_error("{}: expected a list of integers, e.g. [10, 20]", what);
          std::vector<int> out;
          for (const toml::node& e : *arr) {
            if (!e.is_integer()) input_error("{}: expected a list of integers", what);
            out.push_back(int_in_range<int>(e.as_integer()->get(), what));
          }
          c.*member = out;
        } else {
          if (!node.is_integer()) input_error("{}: expected an integer", what);
          c.*member = int_in_range<M>(node.as_integer()->get(), what);
        }
      },
      key.member);
}

}  // namespace

const std::vector<std::pair<std::string, std::string>>& config_keys() {
  static const std::vector<std::pair<std::string, std::string>> out = [] {
    std::vector<std::pair<std::string, std::string>> v;
    for (const Key& k : keys()) v.emplace_back(k.name, k.help);
    return v;
  }();
  return out;
}

void apply_toml(Config& config, const std::string& toml_text, const std::string& origin) {
  toml::table table;
  try {
    table = toml::parse(toml_text, origin);
  } catch (const toml::parse_error& e) {
    input_error("{}:{}:{}: TOML syntax error: {}", origin, e.source().begin.line,
                e.source().begin.column, e.description());
  }
  for (const auto& [name, node] : table) {
    const std::string key_name(name.str());
    const Key& key = find_key(key_name, origin);
    set_from_toml(config, key, node, fmt::format("{}: key `{}`", origin, key_name));
  }
}

void apply_override(Config& config, const std::string& assignment) {
  const auto eq = assignment.find('=');
  if (eq == std::string::npos || eq == 0) {
    input_error("--set `{}`: expected key=value", assignment);
  }
  const std::string name = assignment.substr(0, eq);
  const Key& key = find_key(name, "--set");
  set_from_text(config, key, assignment.substr(eq + 1), fmt::format("--set {}", name));
}

void validate(const Config& c) {
  auto need = [](bool ok, const char* key, const char* expected) {
    if (!ok) input_error("config key `{}`: expected {}", key, expected);
  };
  for (const Key& k : keys()) {  // every number finite (inf and nan pass the range checks below)
    if (const auto* m = std::get_if<double Config::*>(&k.member)) {
      if (!std::isfinite(c.**m)) {
        input_error("config key `{}`: expected a finite number, got {}", k.name, c.**m);
      }
    }
  }
  need(c.method == "ultragcn" || c.method == "ultragcn-mm" || c.method == "mostpop" ||
           c.method == "invrl" || c.method == "painvrl",
       "method", "ultragcn, ultragcn-mm, mostpop, invrl or painvrl");
  need(c.candidates == "auto" || c.candidates == "all" || c.candidates == "cold", "candidates",
       "auto, all or cold");
  need(c.pretrain_epochs >= 0, "pretrain_epochs", "an integer >= 0");
  need(c.outer_iterations >= 1, "outer_iterations", "an integer >= 1");
  need(c.envs >= 1 && c.envs <= 1000, "envs", "an integer in [1, 1000]");
  need(c.environments == "him" || c.environments == "file", "environments", "him or file");
  need(c.him_epochs >= 0, "him_epochs", "an integer >= 0");
  need(c.him_rounds >= 1, "him_rounds", "an integer >= 1");
  need(c.him_move_tol >= 0 && c.him_move_tol <= 1, "him_move_tol", "a value in [0, 1]");
  need(c.him_train == "all" || c.him_train == "content" || c.him_train == "projection", "him_train",
       "all, content or projection");
  need(c.him_assign == "centered" || c.him_assign == "score" || c.him_assign == "standardized" ||
           c.him_assign == "likelihood",
       "him_assign", "centered, score, standardized or likelihood");
  need(c.mask_epochs >= 0, "mask_epochs", "an integer >= 0");
  need(c.mask_batch > 0, "mask_batch", "a positive integer");
  need(c.mask_init >= 0 && c.mask_init <= 1, "mask_init", "a value in [0, 1]");
  need(c.sigma >= 0, "sigma", "a value >= 0");
  need(c.mask_lambda >= 0, "mask_lambda", "a value >= 0");
  need(c.mask_step >= 0, "mask_step", "a value >= 0");
  need(c.mask_optimizer == "sgd" || c.mask_optimizer == "adam", "mask_optimizer", "sgd or adam");
  need(c.objective == "pareto" || c.objective == "erm" || c.objective == "irm", "objective",
       "pareto, erm or irm");
  need(c.pareto_normalize == "none" || c.pareto_normalize == "l2" || c.pareto_normalize == "loss" ||
           c.pareto_normalize == "initial" || c.pareto_normalize == "running",
       "pareto_normalize", "none, l2, loss, initial or running");
  need(c.attention_hidden > 0, "attention_hidden", "a positive integer");
  need(c.mask_w_init == "pretrained" || c.mask_w_init == "random", "mask_w_init",
       "pretrained or random");
  need(c.invrl_alpha >= 0 && c.invrl_growth > 0, "invrl_alpha/invrl_growth",
       "alpha >= 0 and growth > 0");
  need(c.dim > 0 && c.dim <= 4096, "dim", "an integer in [1, 4096]");
  need(c.init_std >= 0, "init_std", "a value >= 0");
  need(c.batch_size > 0, "batch_size", "a positive integer");
  need(c.negatives >= 0 && c.negatives <= 100000, "negatives", "an integer in [0, 100000]");
  need(c.neg_weight >= 0, "neg_weight", "a value >= 0");
  need(c.w1 >= 0 && c.w2 >= 0 && c.w3 >= 0 && c.w4 >= 0, "w1/w2/w3/w4", "values >= 0");
  need(c.mask_center >= 0 && c.mask_center <= 1, "mask_center", "a value in [0, 1]");
  need(c.kappa >= 0, "kappa", "a value >= 0");
  need(c.ii_neighbors >= 0 && c.ii_neighbors <= 1000, "ii_neighbors", "an integer in [0, 1000]");
  need(c.ii_similarity == "paper" || c.ii_similarity == "ultragcn", "ii_similarity",
       "paper or ultragcn");
  need(c.gamma_emb >= 0 && c.gamma_w >= 0, "gamma_emb/gamma_w", "values >= 0");
  need(c.l2 == "full" || c.l2 == "touched", "l2", "full or touched");
  need(c.lr > 0, "lr", "a positive value");
  need(c.adam_beta1 >= 0 && c.adam_beta1 < 1, "adam_beta1", "a value in [0, 1)");
  need(c.adam_beta2 >= 0 && c.adam_beta2 < 1, "adam_beta2", "a value in [0, 1)");
  need(c.adam_eps > 0, "adam_eps", "a positive value");
  // epochs = 0 would report a complete run with no trained model (mostpop trains nothing).
  need(c.epochs >= 1 || c.method == "mostpop", "epochs", "an integer >= 1");
  need(c.eval_every > 0, "eval_every", "a positive integer");
  need(c.patience >= 0, "patience", "an integer >= 0");
  need(!c.eval_ks.empty(), "eval_ks", "a non-empty list of positive integers");
  for (int k : c.eval_ks) need(k > 0, "eval_ks", "a non-empty list of positive integers");
  need(c.ndcg == "standard" || c.ndcg == "invrl", "ndcg", "standard or invrl");
  need(c.eval_block > 0, "eval_block", "a positive integer");
  need(c.threads >= 0, "threads", "an integer >= 0");
  need(c.device == "cpu" || c.device == "cuda" || c.device == "auto", "device",
       "cpu, cuda or auto");
  need(c.checkpoint_every >= 0, "checkpoint_every", "an integer >= 0");
  need(c.checkpoint_keep >= 0, "checkpoint_keep", "an integer >= 0");
  need(c.memory_limit_gb >= 0, "memory_limit_gb", "a number >= 0");
  need(c.normalize_features >= -1 && c.normalize_features <= 1, "normalize_features", "-1, 0 or 1");
  const auto at = c.select_metric.find('@');
  bool metric_ok = at != std::string::npos;
  if (metric_ok) {
    const std::string kind = c.select_metric.substr(0, at);
    metric_ok = kind == "recall" || kind == "precision" || kind == "ndcg";
    int k = 0;
    const std::string ks = c.select_metric.substr(at + 1);
    auto [p, ec] = std::from_chars(ks.data(), ks.data() + ks.size(), k);
    metric_ok = metric_ok && ec == std::errc() && p == ks.data() + ks.size() &&
                std::find(c.eval_ks.begin(), c.eval_ks.end(), k) != c.eval_ks.end();
  }
  need(metric_ok, "select_metric", "recall@K, precision@K or ndcg@K with K in eval_ks");
}

std::string to_toml(const Config& c, bool seventeen_digits) {
  std::string out = "# painvrl resolved configuration\n";
  for (const Key& key : keys()) {
    std::visit(
        [&](auto member) {
          using M = std::remove_cvref_t<decltype(c.*member)>;
          const auto& v = c.*member;
          if constexpr (std::is_same_v<M, std::string>) {
            out += fmt::format("{} = \"{}\"\n", key.name, v);
          } else if constexpr (std::is_same_v<M, bool>) {
            out += fmt::format("{} = {}\n", key.name, v ? "true" : "false");
          } else if constexpr (std::is_same_v<M, double>) {
            // The shortest text that reads back as the same double (0.9, not
            // 0.90000000000000002), unless the caller wants the 17-digit form.
            std::string text = seventeen_digits ? fmt::format("{:.17g}", v) : fmt::format("{}", v);
            if (text.find_first_of(".en") == std::string::npos) text += ".0";  // stays a float
            out += fmt::format("{} = {}\n", key.name, text);
          } else if constexpr (std::is_same_v<M, std::vector<int>>) {
            out += fmt::format("{} = [{}]\n", key.name, fmt::join(v, ", "));
          } else {
            out += fmt::format("{} = {}\n", key.name, v);
          }
        },
        key.member);
  }
  return out;
}

void apply_preset(Config& config, const std::string& name) {
  std::string names;
  for (const auto& [preset, text] : shipped_presets()) {
    if (preset == name) {
      apply_toml(config, text, "preset " + name);
      return;
    }
    names += (names.empty() ? "" : ", ") + preset;
  }
  input_error("--preset {}: no such preset (shipped: {})", name, names);
}

}  // namespace painvrl
