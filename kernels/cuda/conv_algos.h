// Choosing a cuDNN convolution algorithm (kernels/cuda/ops_cudnn.cpp), as plain host code: which of
// the heuristic's answers are candidates, and which failed candidate may be skipped for the next.
// Needs only cudnn.h, so tests/test_conv_algos.cpp runs it without a GPU.
//
// A candidate is an (algorithm, math type) pair, as cudnnGetConvolution*Algorithm_v7 returns it:
// the same algorithm may be offered with tensor-op and default math, and its determinism, status
// and workspace belong to that pair. Kept: status success, CUDNN_DETERMINISTIC, a workspace up to
// the limit, not banned (the algorithms documented as non-deterministic), and for f32 data only
// CUDNN_FMA_MATH (CUDNN_DEFAULT_MATH would allow TF32 on Ampere and later); never a data
// down-conversion. The direction's fallback comes last, with the data type's default math type,
// unless the heuristic flagged that very pair non-deterministic.
#pragma once

#include <cudnn.h>

#include <algorithm>
#include <cstddef>
#include <vector>

namespace ttq::cuda::conv_algos {

struct ConvAlgo {
  int algo = 0;
  cudnnMathType_t math = CUDNN_DEFAULT_MATH;
  bool operator==(const ConvAlgo& o) const { return algo == o.algo && math == o.math; }
};

// The math type a data type's convolutions are described with, and so the fallback's: bf16 on
// tensor cores (bf16 inputs lose nothing there; f32 accumulation), f32 with FMA only.
inline cudnnMathType_t default_math(cudnnDataType_t dtype) {
  return dtype == CUDNN_DATA_BFLOAT16 ? CUDNN_TENSOR_OP_MATH : CUDNN_FMA_MATH;
}

// Appends the candidates of perf[0, returned) to out, then the fallback (each pair once), unless
// the heuristic reported the fallback pair itself as non-deterministic for this geometry
// (determinism belongs to the pair and the geometry, not to the algorithm alone).
template <class Perf>
void keep_deterministic(const std::vector<Perf>& perf, int returned, const std::vector<int>& banned, int fallback,
                        cudnnDataType_t dtype, size_t max_workspace, std::vector<ConvAlgo>& out) {
  const ConvAlgo last{fallback, default_math(dtype)};
  bool last_nondeterministic = false;
  for (int i = 0; i < returned && i < static_cast<int>(perf.size()); ++i) {
    const Perf& p = perf[static_cast<size_t>(i)];
    const ConvAlgo c{static_cast<int>(p.algo), p.mathType};
    // Only an entry that cuDNN could rate says anything about the pair.
    if (p.status == CUDNN_STATUS_SUCCESS && p.determinism != CUDNN_DETERMINISTIC && c == last)
      last_nondeterministic = true;
    if (p.status != CUDNN_STATUS_SUCCESS || p.determinism != CUDNN_DETERMINISTIC || p.memory > max_workspace)
      continue;
    if (std::find(banned.begin(), banned.end(), c.algo) != banned.end()) continue;
    if (dtype == CUDNN_DATA_FLOAT ? c.math != CUDNN_FMA_MATH : c.math == CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION)
      continue;
    if (std::find(out.begin(), out.end(), c) == out.end()) out.push_back(c);
  }
  if (!last_nondeterministic && std::find(out.begin(), out.end(), last) == out.end()) out.push_back(last);
}

// cuDNN 9 groups its statuses in categories (CUDNN_STATUS_NOT_SUPPORTED_SHAPE is in
// CUDNN_STATUS_NOT_SUPPORTED's); earlier versions have one code each.
inline cudnnStatus_t category(cudnnStatus_t st) {
#ifdef CUDNN_STATUS_CATEGORY
  return static_cast<cudnnStatus_t>(CUDNN_STATUS_CATEGORY(st));
#else
  return st;
#endif
}

inline bool not_supported(cudnnStatus_t st) { return category(st) == CUDNN_STATUS_NOT_SUPPORTED; }

// Statuses that say cuDNN cannot run here at all, whatever the candidate: not initialised, a
// sub-library that does not load or does not match, a driver, runtime or architecture mismatch, a
// missing prerequisite (NVRTC for runtime-compiled engines).
inline bool environment_error(cudnnStatus_t st) {
#ifdef CUDNN_STATUS_CATEGORY
  const int code = static_cast<int>(st);
  return (code >= 1000 && code < 2000) || (code >= 3005 && code <= 3009);
#else
  return st == CUDNN_STATUS_NOT_INITIALIZED || st == CUDNN_STATUS_ARCH_MISMATCH;
#endif
}

// Whether a candidate that failed with st may be skipped for the next one: a bad parameter, not
// supported or an internal error (an environment error never), or an execution failure while the
// CUDA stream is still healthy (stream_healthy() is asked only then).
template <class StreamHealthy>
bool skippable(cudnnStatus_t st, StreamHealthy stream_healthy) {
  if (environment_error(st)) return false;
  const cudnnStatus_t c = category(st);
  if (c == CUDNN_STATUS_BAD_PARAM || c == CUDNN_STATUS_NOT_SUPPORTED || c == CUDNN_STATUS_INTERNAL_ERROR) return true;
  return c == CUDNN_STATUS_EXECUTION_FAILED && stream_healthy();
}

// Whether a skipped failure says the candidate can never run this geometry (not supported, or a
// shape it does not take), as opposed to one that belongs to the call (a null or misaligned
// pointer, a stream) or to the moment (an allocation inside cuDNN, an execution failure), which
// the next call may not meet.
inline bool permanent_failure(cudnnStatus_t st) {
  if (environment_error(st)) return false;
  if (category(st) == CUDNN_STATUS_NOT_SUPPORTED) return true;
#ifdef CUDNN_STATUS_CATEGORY
  return st == CUDNN_STATUS_BAD_PARAM || st == CUDNN_STATUS_BAD_PARAM_SHAPE_MISMATCH ||
         st == CUDNN_STATUS_BAD_PARAM_OUT_OF_BOUND;
#else
  return st == CUDNN_STATUS_BAD_PARAM;
#endif
}

// What trying the candidates in order gave: index = the first that succeeded; or index = the
// candidate whose failure may not be skipped (fatal); or index = candidates.size() when every one
// failed and may be skipped. status: that candidate's (the last one's) status. failed_for_good:
// the candidates before index that failed for good (permanent_failure), which a cache may forget;
// permanent: every candidate before index did.
struct Outcome {
  size_t index = 0;
  cudnnStatus_t status = CUDNN_STATUS_SUCCESS;
  bool fatal = false;
  bool permanent = true;
  std::vector<size_t> failed_for_good;
};

// The candidates without those that failed for good.
inline std::vector<ConvAlgo> without_failed(const std::vector<ConvAlgo>& candidates, const Outcome& o) {
  std::vector<ConvAlgo> out;
  for (size_t i = 0; i < candidates.size(); ++i)
    if (std::find(o.failed_for_good.begin(), o.failed_for_good.end(), i) == o.failed_for_good.end())
      out.push_back(candidates[i]);
  return out;
}

// attempt(candidate) returns the status of its workspace query and launch.
template <class Attempt, class StreamHealthy>
Outcome first_working(const std::vector<ConvAlgo>& candidates, Attempt attempt, StreamHealthy stream_healthy) {
  Outcome out;
  out.status = CUDNN_STATUS_NOT_SUPPORTED;
  for (out.index = 0; out.index < candidates.size(); ++out.index) {
    const cudnnStatus_t st = attempt(candidates[out.index]);
    if (st == CUDNN_STATUS_SUCCESS) {
      out.status = st;
      return out;
    }
    out.status = st;
    if (!skippable(st, stream_healthy)) {
      out.fatal = true;
      return out;
    }
    if (permanent_failure(st))
      out.failed_for_good.push_back(out.index);
    else
      out.permanent = false;
  }
  return out;
}

}  // namespace ttq::cuda::conv_algos
