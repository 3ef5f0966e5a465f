// The GPU's sparsity threshold (the k-th smallest |w| by radix select, kernels/cuda/ttq_kernels.cu)
// run on the host through the same digit arithmetic (kernels/cuda/radix_walk.h): four passes of a
// per-digit histogram of the elements in the current prefix, then the digit whose count range
// holds the rank. D must be the CPU's threshold (kernels/cpu/ttq_cpu.h) bit for bit, for ties,
// signed zeros, NaN and infinities, a single element and every sparsity from nearly none to all.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "kernels/cpu/ttq_cpu.h"
#include "kernels/cuda/radix_walk.h"
#include "kernels/ttq_math.h"

namespace radix = ttq::cuda::radix;

namespace {

// The GPU algorithm, pass by pass, on the host: the k-th smallest |w| (k >= 0).
float radix_select(const std::vector<float>& w, int64_t k) {
  uint32_t prefix = 0;
  uint64_t rank = static_cast<uint64_t>(k);
  for (int pass = 0; pass < radix::kPasses; ++pass) {
    std::vector<uint64_t> hist(radix::kBins, 0);
    for (float v : w) {
      const uint32_t bits = radix::abs_bits(v);
      if (radix::in_prefix(bits, pass, prefix)) ++hist[static_cast<size_t>(radix::digit(bits, pass))];
    }
    int holders = 0;
    uint64_t below = 0;  // the block's exclusive scan
    radix::Step found{};
    for (int d = 0; d < radix::kBins; ++d) {
      const radix::Step s = radix::select_step(pass, prefix, rank, d, below, hist[static_cast<size_t>(d)]);
      if (s.holds) {
        ++holders;
        found = s;
      }
      below += hist[static_cast<size_t>(d)];
    }
    EXPECT_EQ(holders, 1) << "pass " << pass << ": exactly one digit must hold the rank";
    prefix = found.prefix;
    rank = found.rank;
  }
  return radix::from_bits(prefix);
}

uint32_t bits_of(float f) {
  uint32_t u = 0;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

}  // namespace

TEST(RadixWalk, SparsityThresholdIsTheCpusBitwise) {
  std::mt19937_64 gen(5);
  std::normal_distribution<float> normal(0.0f, 0.05f);
  const int64_t sizes[] = {1, 2, 7, 1000, 36864, 100003};
  for (int64_t n : sizes) {
    for (int variant = 0; variant < 4; ++variant) {
      std::vector<float> w(static_cast<size_t>(n));
      for (auto& v : w) v = normal(gen);
      if (variant == 1)  // many ties, both signs, signed zeros
        for (size_t i = 0; i < w.size(); ++i)
          w[i] = (i % 5 == 0) ? (i % 2 ? -0.0f : 0.0f) : std::round(w[i] * 40.0f) / 40.0f;
      if (variant == 2)  // magnitudes spanning many exponents
        for (size_t i = 0; i < w.size(); ++i) w[i] = std::ldexp(w[i], static_cast<int>(i % 40) - 20);
      if (variant == 3)  // NaNs of both signs and two payloads, and infinities: they rank last
        for (size_t i = 0; i < w.size(); i += 97) {
          const uint32_t nan_bits[] = {0x7fc00000u, 0xffc00001u, 0x7f800000u, 0xff800000u};
          std::memcpy(&w[i], &nan_bits[(i / 97) % 4], sizeof(float));
        }
      for (double r : {1e-4, 0.01, 0.3, 0.5, 0.75, 0.999, 1.0}) {
        const int64_t k = ttq::math::sparsity_rank(r, n);
        if (k < 0) continue;  // D = 0 without a select, on both
        SCOPED_TRACE("n=" + std::to_string(n) + " variant=" + std::to_string(variant) + " r=" + std::to_string(r));
        const float want =
            ttq::cpu::ttq_threshold(ttq::math::ThresholdMode::Sparsity, w.data(), n, 0.05f, r).threshold;
        ASSERT_EQ(bits_of(radix_select(w, k)), bits_of(want));
      }
    }
  }
}

TEST(RadixWalk, DigitsAndPrefixes) {
  EXPECT_EQ(radix::abs_bits(-0.0f), 0u);
  EXPECT_EQ(radix::abs_bits(-1.5f), bits_of(1.5f));
  EXPECT_EQ(radix::digit(0xA1B2C3D4u, 0), 0xA1);
  EXPECT_EQ(radix::digit(0xA1B2C3D4u, 3), 0xD4);
  EXPECT_TRUE(radix::in_prefix(0xA1B2C3D4u, 0, 0x12345678u));  // pass 0: every pattern
  EXPECT_TRUE(radix::in_prefix(0xA1B2C3D4u, 2, 0xA1B20000u));
  EXPECT_FALSE(radix::in_prefix(0xA1B2C3D4u, 2, 0xA1B30000u));
}
