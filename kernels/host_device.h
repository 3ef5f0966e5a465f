// TTQ_HD marks a small inline function callable from host code (g++) and device code (nvcc).
#pragma once

#if defined(__CUDACC__)
#define TTQ_HD __host__ __device__ __forceinline__
#else
#define TTQ_HD inline
#endif
