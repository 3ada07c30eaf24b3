// `gpu` tests: the device evaluates the shared math headers exactly as the host does.
// Skipped (GTEST_SKIP) when no usable CUDA device is present.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "painvrl/cuda/device.h"
#include "painvrl/math/activations.h"
#include "painvrl/math/sampling.h"

namespace painvrl {
namespace {

TEST(GpuMath, DeviceMatchesHostFormulas) {
  if (cuda::usable_device_count() == 0) {
    if (cuda::gpu_required()) FAIL() << "PAINVRL_REQUIRE_GPU: " << cuda::describe_device();
    GTEST_SKIP() << cuda::describe_device();
  }
  for (unsigned long long seed : {1ull, 7ull, 2233ull}) {
    const int n = 4096;
    std::vector<float> z(n), out(4 * n, std::nanf(""));
    for (int i = 0; i < n; ++i) z[i] = float(i - n / 2) * 0.025f * float(seed % 5 + 1);
    ASSERT_EQ(cuda::math_probe(z.data(), n, seed, 3043u, out.data()), "");
    const math::PhiloxKey key =
        math::make_key(seed, math::stream_id(math::RngStream::kNegative, 0));
    for (int i = 0; i < n; ++i) {
      EXPECT_NEAR(out[4 * i + 0], math::softplus(z[i]), 2e-6f * (1 + std::fabs(z[i])));
      EXPECT_NEAR(out[4 * i + 1], math::sigmoid(z[i]), 2e-6f);
      EXPECT_EQ(out[4 * i + 2],
                float(math::negative_item(key, 3u, 5u, unsigned(i), unsigned(i) % 7u, 3043u)));
      EXPECT_NEAR(out[4 * i + 3], math::init_normal<float>(key, 1u, unsigned(i), 1.0f), 1e-5f);
    }
  }
}

}  // namespace
}  // namespace painvrl
