// Device helpers of the TTQ GPU kernel lab (benchmarks/bench_ttq_gpu.cpp), compiled by nvcc in
// benchmarks/bench_ttq_gpu_kernels.cu: deterministic test data, and the two backward passes of
// the "unfused" variant (latent gradient, then the dL/dWp, dL/dWn sums in a second pass that
// reads codes and g again). The forward of that variant uses the per-tensor kernels of
// kernels/cuda/ttq_kernels.h. Plain C++ header (includable from g++ code); all pointers are
// device pointers, all work is enqueued on the given stream.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace ttq::bench {

// p[i] = lo + (hi - lo) * u, u in [0, 1) from a hash of (seed, i): the same values on every run
// and every GPU.
void fill_uniform(float* p, int64_t n, uint64_t seed, float lo, float hi, cudaStream_t stream);

// Reads bytes of p (16-byte aligned) once, writing nothing but, never in practice, *sink: an L2
// flush that leaves no dirty lines to be written back during the next timed kernel.
void read_flush(const void* p, size_t bytes, unsigned* sink, cudaStream_t stream);

// latent_grad[i] += latent_grad_term(codes[i], g[i], *wp, *wn, scale_latent) (kernels/ttq_math.h);
// wp and wn may be null when scale_latent is false.
void latent_grad_pass(const int8_t* codes, const float* g, int64_t n, const float* wp,
                      const float* wn, bool scale_latent, float* latent_grad, cudaStream_t stream);

// Bytes of workspace scale_grad_pass needs for n elements (reusable by every call on one stream).
size_t scale_grad_workspace_bytes(int64_t n);

// *dwp = sum of wp_grad_term, *dwn = sum of wn_grad_term (minus sign included), in double, fixed
// order (per-block partials, one finishing block), rounded to float once; written, not added.
void scale_grad_pass(const int8_t* codes, const float* g, int64_t n, float* dwp, float* dwn,
                     void* workspace, size_t workspace_bytes, cudaStream_t stream);

}  // namespace ttq::bench
