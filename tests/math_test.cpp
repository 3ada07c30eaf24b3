// The shared formula headers (include/painvrl/math): stable softplus/sigmoid, beta and omega,
// Philox4x32-10 against its published known-answer vectors, samplers, and the Adam update.
#include <gtest/gtest.h>

#include <cmath>
#include <set>

#include "painvrl/math/activations.h"
#include "painvrl/math/adam.h"
#include "painvrl/math/sampling.h"
#include "painvrl/math/ultragcn.h"

namespace painvrl::math {
namespace {

TEST(Activations, SoftplusMatchesLongDoubleAndNeverOverflows) {
  for (double z = -30; z <= 30; z += 0.37) {
    const long double ref = std::log1p(std::exp((long double)z));
    EXPECT_NEAR(softplus(z), double(ref), 1e-14 * (1 + std::fabs(z)));
    EXPECT_NEAR(softplus(float(z)), float(ref), 2e-6f * (1 + std::fabs(float(z))));
  }
  EXPECT_FLOAT_EQ(softplus(1000.f), 1000.f);  // exp(1000) would overflow
  EXPECT_GT(softplus(-1000.0), -1e-300);
  EXPECT_LT(softplus(-1000.0), 1e-300);
  EXPECT_TRUE(std::isfinite(softplus(-1e30f)));
}

TEST(Activations, SigmoidIsSoftplusDerivativeAndSymmetric) {
  for (double z = -20; z <= 20; z += 0.5) {
    const double h = 1e-6;
    EXPECT_NEAR(sigmoid(z), (softplus(z + h) - softplus(z - h)) / (2 * h), 1e-8);
    EXPECT_NEAR(sigmoid(z) + sigmoid(-z), 1.0, 1e-15);
  }
  EXPECT_EQ(sigmoid(-1000.f), 0.f);
  EXPECT_EQ(sigmoid(1000.f), 1.f);
}

TEST(UltraGcnWeights, BetaAndOmegaByHand) {
  EXPECT_DOUBLE_EQ(beta_user(3.0), 2.0 / 3.0);  // sqrt(4) / 3
  EXPECT_DOUBLE_EQ(beta_item(3.0), 0.5);        // 1 / sqrt(4)
  EXPECT_DOUBLE_EQ(beta_user(0.0), 0.0);        // no training pair: finite
  EXPECT_DOUBLE_EQ(pair_weight(1.0, 2.0, 0.5, 0.25), 1.25);
  // paper: G_ij / (g_i - G_ii) * sqrt(g_i / g_j) = 2 / (9 - 3) * sqrt(9 / 4) = 0.5
  EXPECT_DOUBLE_EQ(omega_paper(2.0, 9.0, 3.0, 4.0), 0.5);
  EXPECT_DOUBLE_EQ(omega_paper(2.0, 3.0, 3.0, 4.0), 0.0);  // g_i == G_ii: no neighbour mass
  // ultragcn: G_ij / g_i * sqrt((g_i + 1) / (g_j + 1)) = 2 / 8 * sqrt(9 / 4) = 0.375
  EXPECT_DOUBLE_EQ(omega_ultragcn(2.0, 8.0, 3.0), 0.375);
}

// Known-answer vectors of Philox4x32-10 published with the Random123 library (kat_vectors).
TEST(Philox, KnownAnswerVectors) {
  struct Kat {
    uint32_t ctr[4], key[2], out[4];
  };
  const Kat kats[] = {
      {{0, 0, 0, 0}, {0, 0}, {0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u}},
      {{0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu},
       {0xffffffffu, 0xffffffffu},
       {0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu}},
      {{0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u},
       {0xa4093822u, 0x299f31d0u},
       {0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u}},
  };
  for (const Kat& k : kats) {
    const U32x4 r =
        philox4x32_10(U32x4{{k.ctr[0], k.ctr[1], k.ctr[2], k.ctr[3]}}, k.key[0], k.key[1]);
    for (int w = 0; w < 4; ++w) EXPECT_EQ(r.v[w], k.out[w]) << "word " << w;
  }
}

TEST(Sampling, NegativesAreUniformInRangeAndKeyed) {
  for (uint64_t seed : {1ull, 2ull, 99ull}) {
    const PhiloxKey key = make_key(seed, stream_id(RngStream::kNegative, 0));
    const uint32_t n_items = 37;
    std::vector<int> counts(n_items, 0);
    const int draws = 370000;
    for (int d = 0; d < draws; ++d) {
      const uint32_t j = negative_item(key, 1, uint32_t(d / 512), uint32_t(d % 512), 3, n_items);
      ASSERT_LT(j, n_items);
      ++counts[j];
    }
    for (int c : counts) EXPECT_NEAR(c, draws / double(n_items), 5 * std::sqrt(10000.0));
  }
  const PhiloxKey a = make_key(1, stream_id(RngStream::kNegative, 0));
  const PhiloxKey b = make_key(2, stream_id(RngStream::kNegative, 0));
  const PhiloxKey c = make_key(1, stream_id(RngStream::kNegative, 1));
  int same_ab = 0, same_ac = 0;
  for (uint32_t r = 0; r < 1000; ++r) {
    same_ab += negative_item(a, 0, 0, r, 0, 1u << 30) == negative_item(b, 0, 0, r, 0, 1u << 30);
    same_ac += negative_item(a, 0, 0, r, 0, 1u << 30) == negative_item(c, 0, 0, r, 0, 1u << 30);
  }
  EXPECT_LT(same_ab, 3);
  EXPECT_LT(same_ac, 3);
}

TEST(Sampling, NegativeRowEqualsTheSlotBySlotDraws) {
  for (uint64_t seed : {5ull, 6ull}) {
    const PhiloxKey key = make_key(seed, stream_id(RngStream::kNegative, 4));
    for (uint32_t n : {1u, 3u, 4u, 7u, 200u}) {
      for (uint32_t row : {0u, 17u}) {
        std::vector<int32_t> out(n + 1, -1);
        negative_row(key, 2, 9, row, n, 3706, out.data());
        for (uint32_t slot = 0; slot < n; ++slot) {
          EXPECT_EQ(uint32_t(out[slot]), negative_item(key, 2, 9, row, slot, 3706));
        }
        EXPECT_EQ(out[n], -1) << "wrote past the row";
      }
    }
  }
}

TEST(Sampling, InitNormalMoments) {
  for (uint64_t seed : {3ull, 4ull, 5ull}) {
    const PhiloxKey key = make_key(seed, stream_id(RngStream::kInit, 0));
    double s = 0, s2 = 0;
    const int n = 200000;
    for (int i = 0; i < n; ++i) {
      const double x = init_normal<double>(key, 0, uint64_t(i), 2.0);
      s += x;
      s2 += x * x;
    }
    EXPECT_NEAR(s / n, 0.0, 0.02);
    EXPECT_NEAR(s2 / n, 4.0, 0.05);
  }
}

TEST(Adam, OneStepByHandAndL2Fused) {
  // t = 1: m = 0.1 g, v = 0.001 g^2; bias-corrected m / sqrt(v) = sign(g): p -= lr.
  AdamStep s = make_adam_step(0.1f, 0.9f, 0.999f, 1e-8f, 1);
  double p = 1, m = 0, v = 0;
  adam_update(p, m, v, 0.5, 0.0, s);
  EXPECT_NEAR(p, 0.9, 1e-7);
  EXPECT_NEAR(m, 0.05, 1e-7);     // beta1, beta2 are float
  EXPECT_NEAR(v, 0.00025, 1e-7);  // beta1, beta2 are float
  // The fused L2 gradient: g + 2 gamma p with gamma = 0.25, p = 1 -> effective g = 1.
  double p2 = 1, m2 = 0, v2 = 0;
  adam_update(p2, m2, v2, 0.5, 0.5, s);
  EXPECT_NEAR(m2, 0.1, 1e-7);  // beta1, beta2 are float
  // t = 2 with a new gradient, compared with the textbook bias-corrected form.
  s = make_adam_step(0.1f, 0.9f, 0.999f, 1e-8f, 2);
  const double g = -0.25;
  const double m_ref = 0.9 * m + 0.1 * g, v_ref = 0.999 * v + 0.001 * g * g;
  const double p_ref =
      p - 0.1 * (m_ref / (1 - 0.81)) / (std::sqrt(v_ref / (1 - 0.999 * 0.999)) + 1e-8);
  adam_update(p, m, v, g, 0.0, s);
  EXPECT_NEAR(p, p_ref, 1e-6);  // the step constants are float
}

}  // namespace
}  // namespace painvrl::math
