// Synthetic dataset with a planted environment shift (`painvrl synth`; DESIGN.md section 4).
//
// The model. L = options.latent, C = kSpuriousFactors (2), T = temperature, lambda =
// spurious_strength, s = view_noise (0.1), a = shared_taste (1), b = personal_taste (1). Every
// variable below is drawn independently.
//
//   items  i:  z_i ~ N(0, I_L)                 latent invariant factors
//              c_i ~ N(0, I_C)                 latent spurious property
//   users  u:  p_u ~ N(0, I_L)                 invariant preference
//              q_u = a e_1 + b n_u,  n_u ~ N(0, I_C)   spurious taste: a taste shared by all
//                                              users (e_1, the first axis) plus a personal one;
//                                              b = 0 makes it a popularity-like property of the
//                                              item that every user responds to alike
//   maps:      A ~ N(0, 1/L)^(invariant x L),  B ~ N(0, 1/C)^(spurious x C)
//   features:  f_i = [ A z_i + s eps_i ;  B c_i + s eps'_i ;  eta_i ]   (float32, items x d)
//              eps, eps', eta ~ N(0, I): the invariant block is a noisy linear view of z_i (so
//              z_i is recoverable from it), the spurious block one of c_i, the noise block
//              carries nothing. Columns: [0, inv) invariant, [inv, inv + sp) spurious, the rest
//              noise (recorded in manifest.json "blocks").
//   counts:    n_u = min(max(1, items / 2), n0 + G_u),  n0 = min(5, max(1, floor(per_user))),
//              G_u ~ Geometric on {0, 1, ...} with mean per_user - n0 (so E n_u = per_user
//              before the cap).
//   pairs:     user u makes n_u draws k = 0 .. n_u - 1. Draw k picks its environment e with
//              the environments' shares (by default 0 majority, sign +1; 1 minority, -1; 2
//              middle, mid_strength; or env_strengths / env_shares) and then an item from
//              P(i | u, e) = exp(score_e(u, i) / T) / sum_(j not yet drawn) exp(score_e(u, j) / T)
//              score_e(u, i) = <p_u, z_i> / sqrt(L) + sign_e * lambda * <q_u, c_i> / sqrt(a^2 + C
//              b^2) Both terms have unit variance over (u, i). The invariant term drives choices
//              the same way in every environment; the spurious term changes sign: in the majority
//              environment users (on average) pick items with c_i1 > 0, in the minority
//              environment items with c_i1 < 0.
//   split:     (protocol mixed) each user's pairs are shuffled; the first round_s(test_share *
//              n_u) are test, the next round_s(valid_share * n_u) valid, the rest train
//              (round_s: stochastic rounding, so the expected shares are exact); valid, then
//              test, is shortened until at least one training pair remains. Items may end up
//              without a training pair. (protocol ood, the default) each item is cold with
//              probability cold_fraction; the same per-user rule splits a user's pairs of warm
//              items from the training environments (all but the OOD test environment) into
//              train / valid / iid; the OOD environment's pairs of warm items are the test, its
//              pairs of cold items `cold-ood`, the training environments' pairs of cold items
//              `cold-iid`; every test keeps only users with a training pair, and the OOD test
//              only items with one.
//
// Sampling without replacement uses one Fenwick tree of exp(logit - max) per environment and
// user (O(log items) per draw); a tree whose remaining mass has shrunk below 1e-6 of its mass at
// build time is rebuilt from the exact logits of the remaining items, so rounding never drifts.
//
// Every random number comes from Philox (math/philox.h), stream RngStream::kSynth, stage 0, with
// the counter (index, sub, entity, what): `what` names the variable (enum Draw), `entity` the item,
// user or matrix row, `index` the element. The output is a pure function of the options,
// whatever the number of threads.
//
// Outputs (written to a temporary sibling directory, then renamed to out_dir): dataset.toml,
// train.txt / val.txt / test.txt (LightGCN text; with protocol ood also test_iid.txt,
// test_cold_ood.txt and test_cold_iid.txt, listed as [[test_set]]s), features.npy (or
// visual.npy, acoustic.npy, textual.npy), planted_mask.npy (1 on the invariant columns, 0
// elsewhere: the oracle mask), environments.tsv (`user item env split`, one row per pair, users
// in order, each user's pairs in draw order) and manifest.json (options, model constants, the
// kind of every column, block column ranges for one modality, counts, and under "truth" the
// spurious readout w: a vector over the spurious block with w . (B c) = c_1, so w . f_spurious is
// an item's shared spurious property up to the view noise; null when the block has < C columns).
#include "painvrl/data/synth.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <bit>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <iterator>
#include <nlohmann/json.hpp>
#include <vector>

#include "painvrl/data/dataset.h"
#include "painvrl/data/error.h"
#include "painvrl/data/io.h"
#include "painvrl/data/npy.h"
#include "painvrl/math/philox.h"

namespace painvrl {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr int kGeneratorVersion = 2;
constexpr int kSpuriousFactors = 2;  // C, the dimension of c_i and q_u
constexpr int kMinPerUser = 5;
constexpr double kRebuildShrink = 1e-6;

// What a Philox draw is for (the counter's last word).
enum class Draw : uint32_t {
  kItemLatent = 1,      // z_i[k]:  entity i, normal index k
  kItemSpurious = 2,    // c_i[k]
  kUserPreference = 3,  // p_u[k]
  kUserSpurious = 4,    // n_u[k]
  kInvariantMap = 5,    // A[j, k]: entity j (row), normal index k
  kSpuriousMap = 6,     // B[j, k]
  kInvariantNoise = 7,  // eps_i[j]: entity i, normal index j
  kSpuriousNoise = 8,   // eps'_i[j]
  kNoiseBlock = 9,      // eta_i[j]
  kUserCount = 10,      // G_u: entity u
  kInteraction = 11,    // draw k of user u: entity u, index k (environment, item)
  kSplitShuffle = 12,   // Fisher-Yates step k of user u
  kSplitRound = 13,     // stochastic rounding of user u's split sizes
  kColdItem = 14,       // whether item i is cold (protocol ood): entity i
};

// One environment: its share of the draws and the sign/strength of its spurious preference.
struct EnvSpec {
  double share = 0, strength = 0;
};

// The environments the options describe: env_strengths / env_shares, or majority (+1),
// minority (-1) and middle (mid_strength) with the minority / mid_share shares.
std::vector<EnvSpec> environments_of(const SynthOptions& o) {
  std::vector<EnvSpec> envs;
  if (!o.env_strengths.empty()) {
    double rest = 1;
    for (size_t k = 1; k < o.env_shares.size(); ++k) rest -= o.env_shares[k];
    for (size_t k = 0; k < o.env_strengths.size(); ++k)
      envs.push_back({k == 0 ? rest : o.env_shares[k], o.env_strengths[k]});
    return envs;
  }
  return {{1 - o.minority - o.mid_share, 1.0}, {o.minority, -1.0}, {o.mid_share, o.mid_strength}};
}

// The OOD test environment: test_env, or the lowest strength among the environments with pairs
// (the smaller id on a tie).
int32_t ood_env_of(const SynthOptions& o, const std::vector<EnvSpec>& envs) {
  if (o.test_env >= 0) return o.test_env;
  int32_t best = -1;
  for (int32_t e = 0; e < int32_t(envs.size()); ++e) {
    if (envs[e].share > 0 && (best < 0 || envs[e].strength < envs[best].strength)) best = e;
  }
  return best;
}

class Rng {
 public:
  explicit Rng(uint64_t seed)
      : key_(math::make_key(seed, math::stream_id(math::RngStream::kSynth, 0))) {}

  math::U32x4 words(Draw what, uint32_t entity, uint32_t index, uint32_t sub = 0) const {
    return math::philox(key_, index, sub, entity, uint32_t(what));
  }
  // The index-th standard normal of `entity` (two per Philox block).
  double normal(Draw what, uint32_t entity, uint32_t index) const {
    const math::U32x4 r = words(what, entity, index >> 1);
    const uint32_t half = (index & 1u) * 2u;
    return math::normal_from<double>(r.v[half], r.v[half + 1]);
  }
  static double unit(uint32_t r) { return (double(r) + 0.5) * 0x1p-32; }  // in (0, 1)
  static double unit53(uint32_t hi, uint32_t lo) {                        // in (0, 1)
    return (double((uint64_t(hi) << 21) | (lo >> 11)) + 0.5) * 0x1p-53;
  }

 private:
  math::PhiloxKey key_;
};

void validate(const SynthOptions& o) {
  auto positive = [](const char* name, int64_t v) {
    if (v <= 0) input_error("synth: option `{}` must be positive (got {})", name, v);
  };
  auto non_negative = [](const char* name, int64_t v) {
    if (v < 0) input_error("synth: option `{}` must be >= 0 (got {})", name, v);
  };
  positive("users", o.users);
  positive("items", o.items);
  positive("latent", o.latent);
  non_negative("invariant", o.invariant);
  non_negative("spurious", o.spurious);
  non_negative("noise", o.noise);
  if (int64_t(o.invariant) + o.spurious + o.noise <= 0)
    input_error(
        "synth: options `invariant`, `spurious`, `noise`: at least one feature column "
        "is needed");
  if (int64_t(o.invariant) + o.spurious + o.noise > (int64_t(1) << 20))
    input_error("synth: options `invariant`, `spurious`, `noise`: over 2^20 feature columns");
  if (!(std::isfinite(o.per_user) && o.per_user > 0))
    input_error("synth: option `per_user` must be positive and finite (got {})", o.per_user);
  if (!(o.minority >= 0 && o.minority <= 1))
    input_error("synth: option `minority` must be in [0, 1] (got {})", o.minority);
  if (!(o.mid_share >= 0 && o.minority + o.mid_share <= 1))
    input_error("synth: option `mid_share` must be >= 0 with minority + mid_share <= 1 (got {})",
                o.mid_share);
  if (!std::isfinite(o.mid_strength))
    input_error("synth: option `mid_strength` must be finite (got {})", o.mid_strength);
  if (!(std::isfinite(o.spurious_strength) && o.spurious_strength >= 0))
    input_error("synth: option `spurious_strength` must be >= 0 and finite (got {})",
                o.spurious_strength);
  if (!(std::isfinite(o.temperature) && o.temperature > 0))
    input_error("synth: option `temperature` must be positive and finite (got {})", o.temperature);
  if (!(o.valid_share >= 0 && o.valid_share < 1))
    input_error("synth: option `valid_share` must be in [0, 1) (got {})", o.valid_share);
  if (!(o.test_share >= 0 && o.test_share < 1))
    input_error("synth: option `test_share` must be in [0, 1) (got {})", o.test_share);
  if (!(o.valid_share + o.test_share < 1))
    input_error("synth: options `valid_share` + `test_share` must be < 1 (got {} + {})",
                o.valid_share, o.test_share);
  if (o.env_strengths.size() != o.env_shares.size())
    input_error(
        "synth: options `env_strengths` ({} values) and `env_shares` ({} values) must have "
        "the same length",
        o.env_strengths.size(), o.env_shares.size());
  if (!o.env_strengths.empty()) {
    if (o.env_strengths.size() < 2 || o.env_strengths.size() > 32)
      input_error("synth: options `env_strengths` / `env_shares`: 2 to 32 environments (got {})",
                  o.env_strengths.size());
    double rest = 1;
    for (size_t k = 0; k < o.env_strengths.size(); ++k) {
      if (!std::isfinite(o.env_strengths[k]))
        input_error("synth: option `env_strengths`: value {} is not finite", k);
      if (!(o.env_shares[k] >= 0 && o.env_shares[k] <= 1))
        input_error("synth: option `env_shares`: value {} = {} is not in [0, 1]", k,
                    o.env_shares[k]);
      if (k > 0) rest -= o.env_shares[k];
    }
    if (!(rest > 1e-9))
      input_error(
          "synth: option `env_shares`: environment 0 takes 1 - the others' shares = {}; "
          "it must be > 0 (its own value is ignored)",
          rest);
  } else if (!(1 - o.minority - o.mid_share > 0)) {
    input_error("synth: options `minority` + `mid_share` = {} leave no majority environment",
                o.minority + o.mid_share);
  }
  if (!(std::isfinite(o.shared_taste) && std::isfinite(o.personal_taste)) ||
      !(o.shared_taste * o.shared_taste + o.personal_taste * o.personal_taste > 0))
    input_error(
        "synth: options `shared_taste` and `personal_taste` must be finite and not both 0 "
        "(got {}, {})",
        o.shared_taste, o.personal_taste);
  if (!(std::isfinite(o.view_noise) && o.view_noise >= 0))
    input_error("synth: option `view_noise` must be >= 0 and finite (got {})", o.view_noise);
  if (o.modalities != 1 && o.modalities != 3)
    input_error("synth: option `modalities` must be 1 or 3 (got {})", o.modalities);
  if (o.protocol != "ood" && o.protocol != "mixed")
    input_error("synth: option `protocol` must be ood or mixed (got `{}`)", o.protocol);
  if (!(o.cold_fraction >= 0 && o.cold_fraction < 1))
    input_error("synth: option `cold_fraction` must be in [0, 1) (got {})", o.cold_fraction);
  const std::vector<EnvSpec> envs = environments_of(o);
  if (o.test_env >= int32_t(envs.size()))
    input_error("synth: option `test_env` = {}: there are {} environments", o.test_env,
                envs.size());
  if (o.protocol == "ood") {
    const int32_t t = ood_env_of(o, envs);
    if (t < 0 || !(envs[t].share > 0))
      input_error("synth: protocol ood: the OOD test environment {} has no pairs (share 0)", t);
    if (!(envs[t].share < 1))
      input_error("synth: protocol ood: the OOD test environment {} takes every pair", t);
  }
}

// The latent variables of the model and the features derived from them.
struct Latents {
  int32_t latent = 0;
  std::vector<double> z, c;  // (items, L), (items, C)
  std::vector<double> p, q;  // (users, L), (users, C)
};

Latents draw_latents(const Rng& rng, const SynthOptions& o) {
  Latents m;
  const int L = o.latent, C = kSpuriousFactors;
  m.latent = L;
  m.z.resize(size_t(o.items) * L);
  m.c.resize(size_t(o.items) * C);
  m.p.resize(size_t(o.users) * L);
  m.q.resize(size_t(o.users) * C);
  for (int32_t i = 0; i < o.items; ++i) {
    for (int k = 0; k < L; ++k) m.z[size_t(i) * L + k] = rng.normal(Draw::kItemLatent, i, k);
    for (int k = 0; k < C; ++k) m.c[size_t(i) * C + k] = rng.normal(Draw::kItemSpurious, i, k);
  }
  for (int32_t u = 0; u < o.users; ++u) {
    for (int k = 0; k < L; ++k) m.p[size_t(u) * L + k] = rng.normal(Draw::kUserPreference, u, k);
    for (int k = 0; k < C; ++k)
      m.q[size_t(u) * C + k] = (k == 0 ? o.shared_taste : 0.0) +
                               o.personal_taste * rng.normal(Draw::kUserSpurious, u, k);
  }
  return m;
}

// B (spurious x C), row-major.
std::vector<double> spurious_map(const Rng& rng, const SynthOptions& o) {
  const int C = kSpuriousFactors;
  std::vector<double> b(size_t(o.spurious) * C);
  for (int32_t j = 0; j < o.spurious; ++j)
    for (int k = 0; k < C; ++k)
      b[size_t(j) * C + k] = rng.normal(Draw::kSpuriousMap, j, k) / std::sqrt(double(C));
  return b;
}

std::vector<float> make_features(const Rng& rng, const SynthOptions& o, const Latents& m,
                                 const std::vector<double>& b) {
  const int L = o.latent, C = kSpuriousFactors;
  const int64_t d = int64_t(o.invariant) + o.spurious + o.noise;
  std::vector<double> a(size_t(o.invariant) * L);
  for (int32_t j = 0; j < o.invariant; ++j)
    for (int k = 0; k < L; ++k)
      a[size_t(j) * L + k] = rng.normal(Draw::kInvariantMap, j, k) / std::sqrt(double(L));
  std::vector<float> f(size_t(o.items) * size_t(d));
  for (int32_t i = 0; i < o.items; ++i) {
    float* row = f.data() + size_t(i) * size_t(d);
    const double* zi = m.z.data() + size_t(i) * L;
    const double* ci = m.c.data() + size_t(i) * C;
    for (int32_t j = 0; j < o.invariant; ++j) {
      double v = o.view_noise * rng.normal(Draw::kInvariantNoise, i, j);
      for (int k = 0; k < L; ++k) v += a[size_t(j) * L + k] * zi[k];
      row[j] = float(v);
    }
    for (int32_t j = 0; j < o.spurious; ++j) {
      double v = o.view_noise * rng.normal(Draw::kSpuriousNoise, i, j);
      for (int k = 0; k < C; ++k) v += b[size_t(j) * C + k] * ci[k];
      row[o.invariant + j] = float(v);
    }
    for (int32_t j = 0; j < o.noise; ++j)
      row[o.invariant + o.spurious + j] = float(rng.normal(Draw::kNoiseBlock, i, j));
  }
  return f;
}

// The readout w = B (B^T B)^-1 e_1 (so w^T B = e_1^T); empty when B^T B is singular.
std::vector<double> spurious_readout(const std::vector<double>& b, int32_t rows) {
  static_assert(kSpuriousFactors == 2, "the readout inverts a 2 x 2 Gram matrix");
  if (rows < kSpuriousFactors) return {};
  double g00 = 0, g01 = 0, g11 = 0;
  for (int32_t j = 0; j < rows; ++j) {
    g00 += b[2 * j] * b[2 * j];
    g01 += b[2 * j] * b[2 * j + 1];
    g11 += b[2 * j + 1] * b[2 * j + 1];
  }
  const double det = g00 * g11 - g01 * g01;
  if (!(det > 1e-12 * g00 * g11)) return {};
  std::vector<double> w(rows);
  for (int32_t j = 0; j < rows; ++j) w[j] = (b[2 * j] * g11 - b[2 * j + 1] * g01) / det;
  return w;
}

int32_t min_per_user(const SynthOptions& o) {
  return int32_t(std::min<double>(kMinPerUser, std::max(1.0, std::floor(o.per_user))));
}

int64_t user_count(const Rng& rng, const SynthOptions& o, int32_t u) {
  const int32_t n0 = min_per_user(o);
  const int64_t cap = std::max<int64_t>(1, o.items / 2);
  const double mean = o.per_user - n0;  // of the geometric tail
  double g = 0;
  if (mean > 0) {
    const double keep = mean / (1 + mean);  // P(G > k | G >= k)
    const double uu = Rng::unit(rng.words(Draw::kUserCount, u, 0).v[0]);
    g = std::floor(std::log(uu) / std::log(keep));
  }
  return std::min<int64_t>(cap, n0 + int64_t(std::min<double>(g, double(cap))));
}

// A Fenwick tree over n non-negative weights: point update, total, and the descent that maps a
// uniform mass r in [0, total) to the item whose cumulative interval holds it.
struct Fenwick {
  std::vector<double> t;  // 1-based
  int32_t n = 0;
  void build(const std::vector<double>& w) {
    n = int32_t(w.size());
    t.assign(size_t(n) + 1, 0.0);
    for (int32_t i = 1; i <= n; ++i) t[i] = w[i - 1];
    for (int32_t i = 1; i <= n; ++i) {
      const int32_t j = i + (i & -i);
      if (j <= n) t[j] += t[i];
    }
  }
  void add(int32_t index, double delta) {
    for (int32_t i = index + 1; i <= n; i += i & -i) t[i] += delta;
  }
  double total() const {
    double s = 0;
    for (int32_t i = n; i > 0; i -= i & -i) s += t[i];
    return s;
  }
  int32_t find(double r) const {
    int32_t pos = 0;
    for (int32_t step = int32_t(std::bit_floor(uint32_t(n))); step > 0; step >>= 1) {
      if (pos + step <= n && t[pos + step] <= r) {
        pos += step;
        r -= t[pos];
      }
    }
    return std::min(pos, n - 1);
  }
};

// Per-thread scratch for one user's draws, one tree per environment.
struct UserSampler {
  std::vector<std::vector<double>> logit, w;
  std::vector<Fenwick> tree;
  std::vector<double> built_total;
  std::vector<char> built;
  std::vector<char> taken;

  void init(int envs, int32_t items) {
    logit.assign(size_t(envs), std::vector<double>(size_t(items), 0.0));
    w.assign(size_t(envs), std::vector<double>(size_t(items), 0.0));
    tree.assign(size_t(envs), Fenwick{});
    built_total.assign(size_t(envs), 0.0);
    built.assign(size_t(envs), 0);
    taken.assign(size_t(items), 0);
  }

  // Rebuilds environment e's weights as exp(logit - max) over the items not yet drawn.
  void rebuild(int e) {
    const int32_t n = int32_t(logit[e].size());
    double top = -INFINITY;
    for (int32_t i = 0; i < n; ++i)
      if (!taken[i]) top = std::max(top, logit[e][i]);
    for (int32_t i = 0; i < n; ++i) w[e][i] = taken[i] ? 0.0 : std::exp(logit[e][i] - top);
    tree[e].build(w[e]);
    built_total[e] = tree[e].total();
    built[e] = true;
  }

  // One item from softmax(logit_e) over the items not yet drawn; u in (0, 1).
  int32_t sample(int e, double u) {
    if (!built[e]) rebuild(e);
    double total = tree[e].total();
    if (!(total > kRebuildShrink * built_total[e])) {
      rebuild(e);
      total = built_total[e];
    }
    const int32_t pick = tree[e].find(u * total);
    if (!taken[pick] && w[e][pick] > 0) return pick;
    // Rounding in the tree landed on a drawn item: scan the exact weights instead.
    const int32_t n = int32_t(w[e].size());
    double exact = 0;
    for (int32_t i = 0; i < n; ++i) exact += w[e][i];
    const double r = u * exact;
    double acc = 0;
    int32_t last = -1;
    for (int32_t i = 0; i < n; ++i) {
      if (taken[i] || w[e][i] <= 0) continue;
      acc += w[e][i];
      last = i;
      if (acc > r) return i;
    }
    return last;
  }

  void take(int32_t item) {
    taken[item] = 1;
    for (size_t e = 0; e < tree.size(); ++e) {
      if (built[e]) tree[e].add(item, -w[e][item]);
      w[e][item] = 0;
    }
  }
};

// What a pair became. Protocol mixed: train, valid, test. Protocol ood: train, valid, test (the
// OOD environment's warm pairs), iid, cold-ood, cold-iid, and dropped (an OOD or cold pair of a
// user without training pairs, or an OOD pair of an item without one).
enum Split : uint8_t {
  kTrain = 0,
  kValid = 1,
  kTest = 2,
  kIid = 3,
  kColdOod = 4,
  kColdIid = 5,
  kDropped = 6,
  kSplits = 7
};
constexpr const char* kSplitNames[kSplits] = {"train",    "valid",    "test",   "iid",
                                              "cold-ood", "cold-iid", "dropped"};
// The files of the splits after train / valid / test, and their [[test_set]] entries.
struct TestSetFile {
  Split split;
  const char* name;
  const char* file;
  const char* candidates;
};
constexpr TestSetFile kTestSets[] = {{kIid, "iid", "test_iid.txt", "all"},
                                     {kColdOod, "cold-ood", "test_cold_ood.txt", "cold"},
                                     {kColdIid, "cold-iid", "test_cold_iid.txt", "cold"}};

int64_t stochastic_round(double x, uint32_t r) {
  const double f = std::floor(x);
  return int64_t(f) + (Rng::unit(r) < x - f ? 1 : 0);
}

// User u's n draws: items and environments in draw order.
void draw_user(const Rng& rng, const SynthOptions& o, const std::vector<EnvSpec>& envs,
               const Latents& m, int32_t u, int64_t n, UserSampler& s, int32_t* item,
               uint8_t* env) {
  const int L = m.latent, C = kSpuriousFactors;
  const int E = int(envs.size());
  const double* pu = m.p.data() + size_t(u) * L;
  const double* qu = m.q.data() + size_t(u) * C;
  const double inv_scale = 1.0 / std::sqrt(double(L));
  const double sp_scale =
      o.spurious_strength /
      std::sqrt(o.shared_taste * o.shared_taste + double(C) * o.personal_taste * o.personal_taste);
  const double inv_t = 1.0 / o.temperature;
  for (int32_t i = 0; i < o.items; ++i) {
    const double* zi = m.z.data() + size_t(i) * L;
    const double* ci = m.c.data() + size_t(i) * C;
    double a = 0, b = 0;
    for (int k = 0; k < L; ++k) a += pu[k] * zi[k];
    for (int k = 0; k < C; ++k) b += qu[k] * ci[k];
    a *= inv_scale;
    b *= sp_scale;
    for (int e = 0; e < E; ++e) s.logit[e][i] = (a + envs[e].strength * b) * inv_t;
  }
  std::fill(s.taken.begin(), s.taken.end(), 0);
  std::fill(s.built.begin(), s.built.end(), 0);
  for (int64_t k = 0; k < n; ++k) {
    const math::U32x4 r = rng.words(Draw::kInteraction, u, uint32_t(k));
    // The same uniform draw picks the environment: environments 1, 2, ... take consecutive
    // intervals of their shares from 0, environment 0 the rest.
    const double x = Rng::unit(r.v[0]);
    int e = 0;
    double edge = 0;
    for (int c = 1; c < E; ++c) {
      edge += envs[c].share;
      if (x < edge) {
        e = c;
        break;
      }
    }
    const int32_t pick = s.sample(e, Rng::unit53(r.v[1], r.v[2]));
    s.take(pick);
    item[k] = pick;
    env[k] = uint8_t(e);
  }
}

// The per-user split of the draw positions `pos` (the candidates, in draw order) into test,
// valid and train: shuffled, then the first round_s(test_share n) are test, the next
// round_s(valid_share n) valid, the rest train, at least one train when there are any.
void split_user(const Rng& rng, const SynthOptions& o, int32_t u, const std::vector<int64_t>& pos,
                uint8_t* split) {
  const int64_t n = int64_t(pos.size());
  if (n == 0) return;
  std::vector<int64_t> order(pos);
  for (int64_t k = n - 1; k > 0; --k) {
    const uint32_t r = rng.words(Draw::kSplitShuffle, u, uint32_t(k)).v[0];
    std::swap(order[k], order[math::uniform_below(r, uint32_t(k + 1))]);
  }
  const math::U32x4 rr = rng.words(Draw::kSplitRound, u, 0);
  int64_t n_test = stochastic_round(o.test_share * double(n), rr.v[0]);
  int64_t n_valid = stochastic_round(o.valid_share * double(n), rr.v[1]);
  while (n_test + n_valid > n - 1) {
    if (n_valid > 0) {
      --n_valid;
    } else {
      --n_test;
    }
  }
  for (int64_t k = 0; k < n; ++k)
    split[order[k]] = k < n_test ? kTest : k < n_test + n_valid ? kValid : kTrain;
}

// The modality files: one `content`, or visual / acoustic / textual (SynthOptions::modalities).
struct ModalityFile {
  std::string name, file;
  std::vector<int64_t> columns;  // columns of the canonical [invariant | spurious | noise] order
};
std::vector<ModalityFile> modality_files(const SynthOptions& o) {
  const int64_t inv = o.invariant, sp = o.spurious, noise = o.noise;
  std::vector<ModalityFile> out;
  auto range = [](std::vector<int64_t>& v, int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end; ++j) v.push_back(j);
  };
  if (o.modalities == 1) {
    out.push_back({"content", "features.npy", {}});
    range(out[0].columns, 0, inv + sp + noise);
    return out;
  }
  const int64_t inv1 = (inv + 1) / 2, noise1 = (noise + 1) / 2;
  out.push_back({"visual", "visual.npy", {}});
  range(out.back().columns, 0, inv1);
  range(out.back().columns, inv + sp, inv + sp + noise1);
  out.push_back({"acoustic", "acoustic.npy", {}});
  range(out.back().columns, inv, inv + sp);
  out.push_back({"textual", "textual.npy", {}});
  range(out.back().columns, inv1, inv);
  range(out.back().columns, inv + sp + noise1, inv + sp + noise);
  return out;
}

std::string dataset_toml(const SynthOptions& o) {
  std::string t = fmt::format(
      "# Synthetic dataset written by `painvrl synth` (generator version {}, protocol {}); see "
      "manifest.json.\n"
      "name = \"synth\"\n"
      "format = \"lightgcn\"\n"
      "train = \"train.txt\"\n"
      "valid = \"val.txt\"\n"
      "test = \"test.txt\"\n"
      "n_users = {}\n"
      "n_items = {}\n"
      "normalize = true\n",
      kGeneratorVersion, o.protocol, o.users, o.items);
  for (const ModalityFile& m : modality_files(o))
    t += fmt::format("\n[[modality]]\nname = \"{}\"\nfile = \"{}\"\n", m.name, m.file);
  if (o.protocol == "ood") {
    for (const TestSetFile& ts : kTestSets) {
      t += fmt::format("\n[[test_set]]\nname = \"{}\"\nfile = \"{}\"\ncandidates = \"{}\"\n",
                       ts.name, ts.file, ts.candidates);
    }
  }
  return t;
}

json options_json(const SynthOptions& o) {
  return json{{"seed", o.seed},
              {"users", o.users},
              {"items", o.items},
              {"latent", o.latent},
              {"invariant", o.invariant},
              {"spurious", o.spurious},
              {"noise", o.noise},
              {"per_user", o.per_user},
              {"minority", o.minority},
              {"spurious_strength", o.spurious_strength},
              {"mid_share", o.mid_share},
              {"mid_strength", o.mid_strength},
              {"env_strengths", o.env_strengths},
              {"env_shares", o.env_shares},
              {"shared_taste", o.shared_taste},
              {"personal_taste", o.personal_taste},
              {"view_noise", o.view_noise},
              {"modalities", o.modalities},
              {"temperature", o.temperature},
              {"valid_share", o.valid_share},
              {"test_share", o.test_share},
              {"protocol", o.protocol},
              {"cold_fraction", o.cold_fraction},
              {"test_env", o.test_env}};
}

// out_dir without a trailing separator; its parent exists afterwards.
fs::path prepare_target(const std::string& out_dir) {
  if (out_dir.empty()) input_error("synth: the output directory is empty");
  fs::path out = fs::path(out_dir).lexically_normal();
  if (!out.has_filename()) out = out.parent_path();
  if (out.empty() || out.filename() == "." || out.filename() == "..")
    input_error("synth: {}: not a usable output directory name", out_dir);
  std::error_code ec;
  const fs::file_type type = fs::symlink_status(out, ec).type();
  if (type != fs::file_type::not_found) {
    if (type == fs::file_type::none)
      input_error("synth: cannot inspect {}: {}", out_dir, ec.message());
    input_error("synth: output directory {} already exists (choose a new one)", out_dir);
  }
  ec.clear();
  if (out.has_parent_path()) {
    fs::create_directories(out.parent_path(), ec);
    if (ec) input_error("synth: cannot create {}: {}", out.parent_path().string(), ec.message());
  }
  return out;
}

// Renames the finished directory into place, refusing to replace anything there.
void publish(const fs::path& tmp, const fs::path& out) {
  if (::renameat2(AT_FDCWD, tmp.c_str(), AT_FDCWD, out.c_str(), RENAME_NOREPLACE) == 0) return;
  int err = errno;
  if (err == EINVAL || err == ENOSYS) {  // filesystem without RENAME_NOREPLACE
    std::error_code ec;
    if (fs::symlink_status(out, ec).type() != fs::file_type::not_found) {
      err = EEXIST;
    } else if (std::rename(tmp.c_str(), out.c_str()) == 0) {
      return;
    } else {
      err = errno;
    }
  }
  if (err == EEXIST || err == ENOTEMPTY)
    input_error("synth: output directory {} already exists (choose a new one)", out.string());
  input_error("synth: cannot rename {} to {}: {}", tmp.string(), out.string(), std::strerror(err));
}

void generate_into(const fs::path& dir, const SynthOptions& o) {
  const Rng rng(o.seed);
  const Latents m = draw_latents(rng, o);
  const std::vector<double> b = spurious_map(rng, o);
  const std::vector<EnvSpec> envs = environments_of(o);
  const int E = int(envs.size());
  const bool ood = o.protocol == "ood";
  const int32_t ood_env = ood ? ood_env_of(o, envs) : -1;
  const int64_t d = int64_t(o.invariant) + o.spurious + o.noise;

  // Cold items (protocol ood): each independently with probability cold_fraction.
  std::vector<char> cold(size_t(o.items), 0);
  if (ood) {
    for (int32_t i = 0; i < o.items; ++i)
      cold[i] = Rng::unit(rng.words(Draw::kColdItem, i, 0).v[0]) < o.cold_fraction;
  }

  // Pairs: counts first (cheap), then every user's draws in parallel into its own slice.
  std::vector<int64_t> offsets(size_t(o.users) + 1, 0);
  for (int32_t u = 0; u < o.users; ++u) offsets[u + 1] = offsets[u] + user_count(rng, o, u);
  const int64_t total = offsets[o.users];
  std::vector<int32_t> item(size_t(total), 0);
  std::vector<uint8_t> env(size_t(total), 0), split(size_t(total), 0);
#pragma omp parallel
  {
    UserSampler s;
    s.init(E, o.items);
    std::vector<int64_t> pos;
#pragma omp for schedule(dynamic, 16)
    for (int32_t u = 0; u < o.users; ++u) {
      const int64_t off = offsets[u], n = offsets[u + 1] - off;
      draw_user(rng, o, envs, m, u, n, s, item.data() + off, env.data() + off);
      // The split candidates: every pair (mixed), or the training environments' warm pairs.
      pos.clear();
      for (int64_t k = 0; k < n; ++k) {
        if (!ood) {
          pos.push_back(k);
        } else if (cold[item[off + k]]) {
          split[off + k] = env[off + k] == ood_env ? kColdOod : kColdIid;
        } else if (env[off + k] == ood_env) {
          split[off + k] = kTest;
        } else {
          pos.push_back(k);
        }
      }
      split_user(rng, o, u, pos, split.data() + off);
      if (ood) {
        for (int64_t k : pos) {
          if (split[off + k] == kTest) split[off + k] = kIid;  // held out of the training envs
        }
      }
    }
  }

  // Tests keep only users with a training pair, the OOD test only items with one.
  std::vector<char> item_in_train(size_t(o.items), 0), user_in_train(size_t(o.users), 0);
  for (int32_t u = 0; u < o.users; ++u) {
    for (int64_t k = offsets[u]; k < offsets[u + 1]; ++k) {
      if (split[k] == kTrain) item_in_train[item[k]] = user_in_train[u] = 1;
    }
  }
  if (ood) {
    for (int32_t u = 0; u < o.users; ++u) {
      for (int64_t k = offsets[u]; k < offsets[u + 1]; ++k) {
        const bool test = split[k] == kTest || split[k] == kColdOod || split[k] == kColdIid;
        if (test && (!user_in_train[u] || (split[k] == kTest && !item_in_train[item[k]])))
          split[k] = kDropped;
      }
    }
  }

  // Split files: per user, items ascending.
  PairList lists[kSplits];
  std::vector<int64_t> per_env(size_t(E), 0), per_split(kSplits, 0);
  std::vector<std::array<int64_t, kSplits>> per_env_split(static_cast<size_t>(E));
  for (auto& a : per_env_split) a.fill(0);
  std::vector<int32_t> user_items[kSplits];
  for (int32_t u = 0; u < o.users; ++u) {
    for (auto& v : user_items) v.clear();
    for (int64_t k = offsets[u]; k < offsets[u + 1]; ++k) {
      user_items[split[k]].push_back(item[k]);
      ++per_env[env[k]];
      ++per_split[split[k]];
      ++per_env_split[env[k]][split[k]];
    }
    for (int sp = 0; sp < kSplits; ++sp) {
      std::sort(user_items[sp].begin(), user_items[sp].end());
      for (int32_t i : user_items[sp]) lists[sp].push(u, i);
    }
  }
  const int64_t items_without_train =
      std::count(item_in_train.begin(), item_in_train.end(), char(0));
  const int64_t n_cold = std::count(cold.begin(), cold.end(), char(1));

  // Features, in the canonical order, then one file per modality.
  const std::vector<float> features = make_features(rng, o, m, b);
  std::vector<std::string> kinds(static_cast<size_t>(d));
  for (int64_t j = 0; j < d; ++j)
    kinds[j] = j < o.invariant ? "invariant" : j < o.invariant + o.spurious ? "spurious" : "noise";
  std::vector<std::string> column_kinds;
  for (const ModalityFile& mf : modality_files(o)) {
    const int64_t w = int64_t(mf.columns.size());
    std::vector<float> block(size_t(o.items) * size_t(w));
    for (int32_t i = 0; i < o.items; ++i)
      for (int64_t c = 0; c < w; ++c)
        block[size_t(i) * w + c] = features[size_t(i) * d + mf.columns[c]];
    write_npy((dir / mf.file).string(), block.data(), {int64_t(o.items), w});
    for (int64_t c : mf.columns) column_kinds.push_back(kinds[c]);
  }
  std::vector<float> planted(static_cast<size_t>(d));
  for (int64_t j = 0; j < d; ++j) planted[j] = column_kinds[j] == "invariant" ? 1.f : 0.f;
  write_npy((dir / "planted_mask.npy").string(), planted.data(), {d});
  write_lightgcn((dir / "train.txt").string(), lists[kTrain], o.users);
  write_lightgcn((dir / "val.txt").string(), lists[kValid], o.users);
  write_lightgcn((dir / "test.txt").string(), lists[kTest], o.users);
  if (ood) {
    for (const TestSetFile& ts : kTestSets)
      write_lightgcn((dir / ts.file).string(), lists[ts.split], o.users);
  }

  fmt::memory_buffer tsv;
  fmt::format_to(std::back_inserter(tsv), "user\titem\tenv\tsplit\n");
  for (int32_t u = 0; u < o.users; ++u)
    for (int64_t k = offsets[u]; k < offsets[u + 1]; ++k)
      fmt::format_to(std::back_inserter(tsv), "{}\t{}\t{}\t{}\n", u, item[k], int(env[k]),
                     kSplitNames[split[k]]);
  write_bytes_atomic((dir / "environments.tsv").string(), tsv.data(), tsv.size());

  const std::vector<double> readout = spurious_readout(b, o.spurious);
  json manifest;
  manifest["generator"] = "painvrl synth";
  manifest["generator_version"] = kGeneratorVersion;
  manifest["options"] = options_json(o);
  json env_names = json::array(), strengths = json::array(), shares = json::array();
  for (int e = 0; e < E; ++e) {
    env_names.push_back(fmt::format("env {} (strength {})", e, envs[e].strength));
    strengths.push_back(envs[e].strength);
    shares.push_back(envs[e].share);
  }
  manifest["model"] = {{"spurious_factors", kSpuriousFactors},
                       {"view_noise", o.view_noise},
                       {"min_per_user", min_per_user(o)},
                       {"max_per_user", std::max<int32_t>(1, o.items / 2)},
                       {"shared_spurious_taste", json::array({o.shared_taste, 0.0})},
                       {"personal_spurious_taste", o.personal_taste},
                       {"environments", env_names},
                       {"env_strengths", strengths},
                       {"env_shares", shares}};
  manifest["column_kinds"] = column_kinds;
  if (o.modalities == 1) {
    manifest["blocks"] = {{"invariant", json::array({0, o.invariant})},
                          {"spurious", json::array({o.invariant, o.invariant + o.spurious})},
                          {"noise", json::array({o.invariant + o.spurious, d})}};
  }
  manifest["planted_mask"] = "planted_mask.npy";
  manifest["ood_env"] = ood_env;
  json env_split = json::array();
  for (int e = 0; e < E; ++e) {
    json row = json::object();
    for (int sp = 0; sp < kSplits; ++sp) {
      if (ood || sp <= kTest) row[kSplitNames[sp]] = per_env_split[e][sp];
    }
    env_split.push_back(row);
  }
  json split_counts = json::object();
  for (int sp = 0; sp < kSplits; ++sp) {
    if (ood || sp <= kTest) split_counts[kSplitNames[sp]] = per_split[sp];
  }
  manifest["counts"] = {{"users", o.users},
                        {"items", o.items},
                        {"cold_items", n_cold},
                        {"pairs", total},
                        {"per_environment", per_env},
                        {"per_split", split_counts},
                        {"per_environment_split", env_split},
                        {"items_without_train", items_without_train}};
  manifest["truth"] = {
      {"spurious_readout", readout.empty() ? json(nullptr) : json(readout)},
      {"spurious_readout_meaning",
       "w . f_i[spurious block, canonical column order] = c_i1 + view noise, the item's shared "
       "spurious property; environments with strength > 0 favour c_i1 > 0, with strength < 0 "
       "c_i1 < 0"}};
  write_text_atomic((dir / "manifest.json").string(), manifest.dump(2) + "\n");
  write_text_atomic((dir / "dataset.toml").string(), dataset_toml(o));
}

}  // namespace

void write_synthetic_dataset(const std::string& out_dir, const SynthOptions& options) {
  validate(options);
  const fs::path out = prepare_target(out_dir);
  static std::atomic<int> counter{0};
  const fs::path tmp = out.string() + fmt::format(".tmp.{}.{}", ::getpid(), counter++);
  std::error_code ec;
  fs::remove_all(tmp, ec);  // a leftover of a crashed run with the same name
  if (!fs::create_directory(tmp, ec) || ec)
    input_error("synth: cannot create {}: {}", tmp.string(),
                ec ? ec.message() : std::string("already exists"));
  try {
    generate_into(tmp, options);
    publish(tmp, out);
  } catch (...) {
    fs::remove_all(tmp, ec);
    throw;
  }
}

}  // namespace painvrl
