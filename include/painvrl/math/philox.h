// Counter-based random numbers: Philox4x32-10 (Salmon et al., SC'11, "Parallel random numbers:
// as easy as 1, 2, 3"). Every draw of the trainer (shuffles, negatives, initial weights, noise)
// is a pure function of (seed, stream, counter), so the CPU and GPU backends draw the same
// numbers in any order and on any number of threads.
//   stream  = which purpose and stage (see RngStream), mixed with the seed into the 64-bit key;
//   counter = four 32-bit words chosen by the caller, e.g. (slot / 4, row, step, epoch).
#pragma once
#include "painvrl/math/common.h"

namespace painvrl::math {

struct U32x4 {
  uint32_t v[4];
};

PAINVRL_HD void philox_mulhilo(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
  const uint64_t p = uint64_t(a) * uint64_t(b);
  hi = uint32_t(p >> 32);
  lo = uint32_t(p);
}

// The Philox4x32 bijection with 10 rounds.
PAINVRL_HD U32x4 philox4x32_10(U32x4 ctr, uint32_t key0, uint32_t key1) {
  constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;
  constexpr uint32_t kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, lo0, hi1, lo1;
    philox_mulhilo(kM0, ctr.v[0], hi0, lo0);
    philox_mulhilo(kM1, ctr.v[2], hi1, lo1);
    ctr = U32x4{{hi1 ^ ctr.v[1] ^ key0, lo1, hi0 ^ ctr.v[3] ^ key1, lo0}};
    key0 += kW0;
    key1 += kW1;
  }
  return ctr;
}

// Key derivation: a SplitMix64 finaliser of (seed, stream), so nearby seeds give unrelated keys.
PAINVRL_HD uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

struct PhiloxKey {
  uint32_t k0, k1;
};

PAINVRL_HD PhiloxKey make_key(uint64_t seed, uint64_t stream) {
  const uint64_t k = mix64(seed * 0x9E3779B97F4A7C15ull + mix64(stream + 1));
  return PhiloxKey{uint32_t(k), uint32_t(k >> 32)};
}

PAINVRL_HD U32x4 philox(PhiloxKey key, uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3) {
  return philox4x32_10(U32x4{{c0, c1, c2, c3}}, key.k0, key.k1);
}

// Uniform integer in [0, n) by multiply-shift (Lemire). Bias below n / 2^32 (< 2e-5 for 76k
// items), accepted for negative sampling; no rejection loop keeps the draw count fixed.
PAINVRL_HD uint32_t uniform_below(uint32_t r, uint32_t n) {
  return uint32_t((uint64_t(r) * uint64_t(n)) >> 32);
}

// Uniform float in (0, 1]: 24 random bits.
template <class T>
PAINVRL_HD T uniform_open0(uint32_t r) {
  return (T((r >> 8) + 1u)) * T(1.0 / 16777216.0);
}

// One standard normal from two 32-bit words (Box-Muller, cosine branch).
template <class T>
PAINVRL_HD T normal_from(uint32_t r0, uint32_t r1) {
  using std::cos;
  using std::log;
  using std::sqrt;
  const T u0 = uniform_open0<T>(r0);
  const T u1 = uniform_open0<T>(r1);
  return sqrt(T(-2) * log(u0)) * cos(T(6.283185307179586) * u1);
}

// Named streams: one per purpose; the stage number is added to keep stages independent.
enum class RngStream : uint64_t {
  kInit = 1,       // parameter initialisation: counter (element / 2, tensor, 0, 0)
  kShuffle = 2,    // epoch permutation: counter (position, 0, 0, epoch)
  kNegative = 3,   // negatives: counter (slot / 4, batch row, step, epoch)
  kMaskNoise = 4,  // gate noise
  kSynth = 5,      // synthetic data
  kSplit = 6,      // dataset splits
};

PAINVRL_HD uint64_t stream_id(RngStream s, uint32_t stage) { return (uint64_t(s) << 32) | stage; }

}  // namespace painvrl::math
