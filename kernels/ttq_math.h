// The TTQ per-element math (Zhu et al., "Trained Ternary Quantization", ICLR 2017), the one
// definition shared by the CPU loops (kernels/cpu/ttq_cpu.cpp) and the CUDA kernels
// (kernels/cuda/ttq_kernels.cu). Only iteration and reductions differ between the two.
//
// Per quantized layer: latent weights W~, trainable magnitudes Wp, Wn (>= 0 in intent),
// threshold D. Forward:   w_t = +Wp if W~ > D;  0 if |W~| <= D;  -Wn if W~ < -D.
// Backward, g = dL/dw_t:  dL/dWp = +sum_{I_p} g;  dL/dWn = -sum_{I_n} g  (w_t = -Wn on I_n);
//                         dL/dW~ = Wp*g on I_p, g in the zero band, Wn*g on I_n.
#pragma once

#include <cstdint>
#include <cstring>

#include "kernels/host_device.h"

namespace ttq::math {

// How D is chosen for a layer (recomputed every forward pass over the whole tensor).
enum class ThresholdMode : uint8_t {
  Max = 0,       // D = t * max|W~|
  Sparsity = 1,  // D = the k-th smallest |W~|, k = floor(r * N): a fraction r falls in the zero band
  Twn = 2,       // TWN baseline: D = 0.7 * mean|W~|, one fixed scale a = mean(|W~| over |W~| > D)
};

// Branch-free building blocks. The CPU loops (kernels/cpu/ttq_cpu.cpp) vectorize because the
// per-element functions below are written with them instead of data-dependent ?: chains.
namespace detail {

TTQ_HD uint32_t float_bits(float x) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(x);
#else
  uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  return u;
#endif
}

TTQ_HD float bits_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float x;
  std::memcpy(&x, &u, sizeof x);
  return x;
#endif
}

// |x| as bits, the sign bit cleared (-0 is +0): for non-negative floats, and +inf and then NaN
// after them, the unsigned order of these patterns is the order of the values, and equal values
// give equal patterns. The sparsity threshold's k-th smallest |w| is selected on them (the CPU's
// radix select and nth_element, the GPU's radix select).
TTQ_HD uint32_t abs_bits(float x) { return float_bits(x) & 0x7fffffffu; }

// c ? a : b, picked with an all-ones/all-zeros mask: the exact bits of a or b (sign of zero and
// NaN payloads included), no branch.
TTQ_HD float select(bool c, float a, float b) {
  const uint32_t m = 0u - static_cast<uint32_t>(c);
  return bits_float((float_bits(a) & m) | (float_bits(b) & ~m));
}

}  // namespace detail

// Membership of one latent weight in I_p (w > D) and I_n (w < -D). Weights exactly at +-D are in
// neither (the zero band), and so is NaN (both comparisons are false). At most one is true: with a
// negative D, where both comparisons can hold, I_p wins.
TTQ_HD bool in_positive_set(float w, float d) { return w > d; }
TTQ_HD bool in_negative_set(float w, float d) { return (w < -d) & !(w > d); }

// Ternary code of one latent weight: +1, 0 or -1. Same as w > d ? 1 : (w < -d ? -1 : 0) for every
// input.
TTQ_HD int8_t ternary_code(float w, float d) {
  return static_cast<int8_t>(static_cast<int>(in_positive_set(w, d)) - static_cast<int>(in_negative_set(w, d)));
}

// The quantized weight from set membership (pos and neg not both true): pos ? wp : (neg ? -wn : 0).
TTQ_HD float ternary_value_of_sets(bool pos, bool neg, float wp, float wn) {
  return detail::select(pos, wp, detail::select(neg, -wn, 0.0f));
}

// The quantized weight for a code: code > 0 ? wp : (code < 0 ? -wn : 0.0f).
TTQ_HD float ternary_value(int8_t code, float wp, float wn) {
  return ternary_value_of_sets(code > 0, code < 0, wp, wn);
}

// Factor applied to g = dL/dw_t to get dL/dW~ (the scaled straight-through gradient):
// code > 0 ? wp : (code < 0 ? wn : 1.0f).
TTQ_HD float latent_grad_scale(int8_t code, float wp, float wn) {
  return detail::select(code > 0, wp, detail::select(code < 0, wn, 1.0f));
}

// dL/dW~ of one weight for g = dL/dw_t: the scaled gradient, or g itself (the plain
// straight-through estimator of the TWN baseline). On the device the product is rounded on its
// own (no fused multiply-add with the caller's accumulation), as on the CPU.
TTQ_HD float latent_grad_term(int8_t code, float g, float wp, float wn, bool scale_latent) {
  const float s = scale_latent ? latent_grad_scale(code, wp, wn) : 1.0f;
#if defined(__CUDA_ARCH__)
  return __fmul_rn(s, g);
#else
  return s * g;
#endif
}

// Contributions of one element to dL/dWp and dL/dWn. Note the minus sign for Wn.
// code > 0 ? g : 0.0f and code < 0 ? -g : 0.0f.
TTQ_HD float wp_grad_term(int8_t code, float g) { return detail::select(code > 0, g, 0.0f); }
TTQ_HD float wn_grad_term(int8_t code, float g) { return detail::select(code < 0, -g, 0.0f); }

TTQ_HD float threshold_from_max(float max_abs, float t) { return t * max_abs; }
TTQ_HD float twn_threshold(float mean_abs) { return 0.7f * mean_abs; }

// Per-output-channel scales: `channels` (Wp, Wn) pairs split a tensor of n weights into rows of
// n / channels, row c using pair c; one pair per tensor is channels == 1. Whether a count fits.
TTQ_HD bool scale_rows_fit(int64_t channels, int64_t n) { return channels >= 1 && n % channels == 0; }

// Index k (0-based, into |W~| sorted ascending) whose value is D in sparsity mode, or -1 when
// k = floor(r * n) is 0 (then D = 0 and only exact zeros are in the band). The small slack keeps
// products like 0.29 * 100 = 28.999999999999996 at the count the user meant.
TTQ_HD int64_t sparsity_rank(double r, int64_t n) {
  int64_t k = static_cast<int64_t>(r * static_cast<double>(n) + 1e-7);
  if (k > n) k = n;
  return k - 1;
}

}  // namespace ttq::math
