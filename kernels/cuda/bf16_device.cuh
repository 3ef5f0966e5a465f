// Element access for kernels templated on the stored type (float or ttq::bf16), nvcc only.
// load() widens to float (exact for bf16); store() writes a float, rounding it to bf16 to nearest
// even (__float2bfloat16_rn) when the destination is bf16, so a kernel that computes in f32 and
// stores through store() rounds each output element exactly once. ttq::bf16 is bit-compatible
// with __nv_bfloat16 (engine/core/bf16.h). NaN: the GPU stores the canonical quiet NaN, the host
// to_bf16 keeps the sign and upper payload bits, so NaN outputs compare as NaN, not bitwise.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

#include "engine/core/bf16.h"

namespace ttq::cuda {

__device__ __forceinline__ float load(const float* p, int64_t i) { return p[i]; }
__device__ __forceinline__ float load(const bf16* p, int64_t i) {
  return __uint_as_float(static_cast<unsigned>(p[i].bits) << 16);
}

__device__ __forceinline__ void store(float* p, int64_t i, float v) { p[i] = v; }
__device__ __forceinline__ void store(bf16* p, int64_t i, float v) {
  p[i].bits = __bfloat16_as_ushort(__float2bfloat16_rn(v));
}

}  // namespace ttq::cuda
