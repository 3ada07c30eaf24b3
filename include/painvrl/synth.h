// Synthetic dataset with a planted environment shift (DESIGN.md section 4), the built-in default
// dataset. Users and items have latent preference vectors; an item's *invariant* feature block
// is a noisy view of its latent vector, which drives every user's preference. A *spurious* block
// correlates with a second, environment-dependent preference: in the majority environment users
// prefer items aligned with it, in the minority environment the sign flips. A *noise* block
// carries nothing. Each pair records the environment it was drawn from.
#pragma once
#include <cstdint>
#include <string>

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
  double minority = 0.2;           // share of pairs from the minority (flipped) environment
  double spurious_strength = 1.0;  // weight of the environment-dependent preference
  // A third environment whose spurious sign is mid_strength (e.g. 0.3: weaker than the majority's
  // +1), drawn with probability mid_share. With it, a training set of majority + middle pairs has
  // two environments that disagree on the spurious block, while the minority (-1) is the OOD test.
  double mid_share = 0.0;
  double mid_strength = 0.0;
  double temperature = 0.5;                    // softmax temperature of item choice
  double valid_share = 0.1, test_share = 0.1;  // per-user random split
};

// Writes DIR/{dataset.toml, train.txt, val.txt, test.txt, features.npy, environments.tsv,
// manifest.json} into a temporary directory and renames it to `out_dir` (which must not exist).
void write_synthetic_dataset(const std::string& out_dir, const SynthOptions& options);

}  // namespace painvrl
