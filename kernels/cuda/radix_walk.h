// The digit arithmetic of the GPU's sparsity threshold (kernels/cuda/ttq_kernels.cu): a radix
// select of the k-th smallest |w| on the bit patterns of |w| (for non-negative floats, and +inf
// and NaN after them, the uint32 pattern orders like the value), 8 bits a pass from the top. Pass
// p counts, per digit, the elements whose higher digits equal the prefix found so far; the digit
// whose count range holds the rank extends the prefix, and the rank becomes the rank within that
// digit. After the last pass the prefix is the k-th smallest pattern. Plain C++ with host/device
// functions: the kernels call them, and tests/test_radix_walk.cpp runs the same steps on the host
// against the CPU's threshold (kernels/cpu/ttq_cpu.h).
#pragma once

#include <cstdint>

#include "kernels/host_device.h"
#include "kernels/ttq_math.h"

namespace ttq::cuda::radix {

constexpr int kBits = 8;
constexpr int kBins = 1 << kBits;
constexpr int kPasses = 32 / kBits;

// The bit pattern of |w| (kernels/ttq_math.h), and the float of a pattern.
using ::ttq::math::detail::abs_bits;
TTQ_HD float from_bits(uint32_t u) { return ::ttq::math::detail::bits_float(u); }

// The shift of pass p's digit.
TTQ_HD int shift(int pass) { return 32 - kBits * (pass + 1); }

// Whether a pattern's digits above pass p's equal the prefix (every pattern on pass 0).
TTQ_HD bool in_prefix(uint32_t bits, int pass, uint32_t prefix) {
  const uint32_t high_mask = pass == 0 ? 0u : ~0u << (shift(pass) + kBits);
  return (bits & high_mask) == (pass == 0 ? 0u : prefix);
}

// Pass p's digit of a pattern.
TTQ_HD int digit(uint32_t bits, int pass) { return static_cast<int>((bits >> shift(pass)) & (kBins - 1)); }

// Whether the digit with `count` elements, `below` elements in smaller digits, holds `rank`; if so
// the prefix extended by the digit and the rank within it.
struct Step {
  bool holds;
  uint32_t prefix;
  uint64_t rank;
};
TTQ_HD Step select_step(int pass, uint32_t prefix, uint64_t rank, int dig, uint64_t below, uint64_t count) {
  Step s{below <= rank && rank < below + count, 0u, 0u};
  if (s.holds) {
    s.prefix = (pass == 0 ? 0u : prefix) | (static_cast<uint32_t>(dig) << shift(pass));
    s.rank = rank - below;
  }
  return s;
}

}  // namespace ttq::cuda::radix
