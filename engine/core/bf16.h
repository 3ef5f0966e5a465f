// bfloat16 on the host: the upper 16 bits of an IEEE float (1 sign, 8 exponent, 7 mantissa bits).
// Conversions round to nearest, ties to even, like __float2bfloat16 on the GPU, so a value rounded
// on the CPU and one rounded on the GPU are the same bits. NaN stays NaN (quiet); infinities and
// the float range carry over. Same size and layout as CUDA's __nv_bfloat16 (kernels reinterpret
// the pointers).
#pragma once

#include <cstdint>
#include <cstring>

namespace ttq {

struct bf16 {
  uint16_t bits = 0;
};
static_assert(sizeof(bf16) == 2, "bf16 must be two bytes");

inline bf16 to_bf16(float f) {
  uint32_t u = 0;
  std::memcpy(&u, &f, sizeof u);
  bf16 b;
  if ((u & 0x7fffffffu) > 0x7f800000u) {  // NaN: keep the sign, make it quiet
    b.bits = static_cast<uint16_t>((u >> 16) | 0x0040u);
    return b;
  }
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even (overflows to inf correctly)
  b.bits = static_cast<uint16_t>(u >> 16);
  return b;
}

inline float to_float(bf16 b) {
  const uint32_t u = static_cast<uint32_t>(b.bits) << 16;
  float f = 0.0f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// f rounded to bf16 and back: the value a bf16 tensor stores for f.
inline float round_bf16(float f) { return to_float(to_bf16(f)); }

}  // namespace ttq
