// Synthetic dataset with a planted environment shift (DESIGN.md section 4), the built-in default
// dataset. Users and items have latent preference vectors; an item's *invariant* feature block
// is a noisy view of its latent vector, which drives every user's preference. A *spurious* block
// correlates with a second, environment-dependent preference: in the majority environment users
// prefer items aligned with it, in the minority environment the sign flips. A *noise* block
// carries nothing. Each pair records the environment it was drawn from.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace painvrl {

struct SynthOptions {
  uint64_t seed = 1;
  int32_t users = 1000;
  int32_t items = 800;
  int32_t latent = 8;      // latent preference dimension
  int32_t invariant = 16;  // feature columns per block
  int32_t spurious = 16;
  int32_t noise = 16;
  double per_user = 25;            // mean interactions per user
  double minority = 0.2;           // share of the minority (flipped, -1) environment
  double spurious_strength = 1.0;  // weight of the environment-dependent preference
  // A third environment whose spurious sign is mid_strength, drawn with probability mid_share.
  // By default it has no spurious preference (0) and 30 % of the pairs, so that the training
  // environments (majority + middle) disagree on the spurious block while the minority (-1) is
  // the OOD test: without two training environments that differ, IRM has nothing to detect.
  double mid_share = 0.3;
  double mid_strength = 0.0;
  // A general list of environments instead of the three above: environment k has spurious
  // strength env_strengths[k] and share env_shares[k] (same lengths, at least 2; environment 0's
  // share is what the others leave and must be > 0).
  std::vector<double> env_strengths, env_shares;
  double shared_taste = 1.0;    // weight of the spurious taste every user shares (e_1)
  double personal_taste = 1.0;  // weight of each user's own spurious taste
  double view_noise = 0.1;      // noise of the invariant and spurious views
  // 1: one modality `content` ([invariant | spurious | noise]); 3: `visual` (half the invariant
  // and half the noise columns), `acoustic` (the spurious block: a whole spurious modality) and
  // `textual` (the rest), each its own .npy.
  int32_t modalities = 1;
  double temperature = 0.5;                    // softmax temperature of item choice
  double valid_share = 0.1, test_share = 0.1;  // per-user shares of the training environments
  // ood (default): the benchmark layout. A random cold_fraction of the items never appears in
  // training; the OOD test environment (test_env, or the one with the lowest strength) is held
  // out. train / valid / the `iid` test are a per-user split of the other environments' pairs
  // of warm items; test.txt is the OOD environment's pairs of warm items; `cold-ood` and
  // `cold-iid` hold the pairs of cold items (ranked among the cold items). mixed: every pair of
  // every environment split per user into train / valid / test (use `painvrl split` after).
  std::string protocol = "ood";
  double cold_fraction = 0.2;
  int32_t test_env = -1;
};

// Writes DIR/{dataset.toml, train.txt, val.txt, test.txt, features.npy, environments.tsv,
// manifest.json} into a temporary directory and renames it to `out_dir` (which must not exist).
void write_synthetic_dataset(const std::string& out_dir, const SynthOptions& options);

}  // namespace painvrl
