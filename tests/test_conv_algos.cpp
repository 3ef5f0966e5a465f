// How a cuDNN convolution algorithm is chosen (kernels/cuda/conv_algos.h), on the host: which of
// the heuristic's (algorithm, math type) answers become candidates, in which order, and which
// failed candidate is skipped for the next one rather than ending the op.
#include <gtest/gtest.h>

#if defined(TTQ_HAVE_CUDNN)

#include <vector>

#include "kernels/cuda/conv_algos.h"

namespace ca = ttq::cuda::conv_algos;

namespace {

constexpr size_t kLimit = size_t{1} << 30;

cudnnConvolutionFwdAlgoPerf_t perf(cudnnConvolutionFwdAlgo_t algo, cudnnMathType_t math,
                                   cudnnDeterminism_t det = CUDNN_DETERMINISTIC,
                                   cudnnStatus_t status = CUDNN_STATUS_SUCCESS, size_t memory = 1024) {
  cudnnConvolutionFwdAlgoPerf_t p{};
  p.algo = algo;
  p.status = status;
  p.time = 1.0f;
  p.memory = memory;
  p.determinism = det;
  p.mathType = math;
  return p;
}

ca::ConvAlgo algo(int a, cudnnMathType_t m) { return ca::ConvAlgo{a, m}; }

}  // namespace

TEST(ConvAlgos, F32KeepsDeterministicFmaPairsInOrderThenTheFallback) {
  const std::vector<cudnnConvolutionFwdAlgoPerf_t> list = {
      perf(CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD_NONFUSED, CUDNN_DEFAULT_MATH),  // could be TF32: dropped
      perf(CUDNN_CONVOLUTION_FWD_ALGO_GEMM, CUDNN_FMA_MATH),
      perf(CUDNN_CONVOLUTION_FWD_ALGO_FFT, CUDNN_FMA_MATH, CUDNN_NON_DETERMINISTIC),
      perf(CUDNN_CONVOLUTION_FWD_ALGO_DIRECT, CUDNN_FMA_MATH, CUDNN_DETERMINISTIC, CUDNN_STATUS_NOT_SUPPORTED),
      perf(CUDNN_CONVOLUTION_FWD_ALGO_FFT_TILING, CUDNN_FMA_MATH, CUDNN_DETERMINISTIC, CUDNN_STATUS_SUCCESS,
           kLimit + 1),
      perf(CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD, CUDNN_FMA_MATH),  // banned below
      perf(CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM, CUDNN_FMA_MATH),
      perf(CUDNN_CONVOLUTION_FWD_ALGO_GEMM, CUDNN_FMA_MATH),  // repeated: kept once
      perf(CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD_NONFUSED, CUDNN_FMA_MATH),  // past `returned`: ignored
  };
  std::vector<ca::ConvAlgo> out;
  ca::keep_deterministic(list, 8, {CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD}, CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM,
                         CUDNN_DATA_FLOAT, kLimit, out);
  const std::vector<ca::ConvAlgo> want = {algo(CUDNN_CONVOLUTION_FWD_ALGO_GEMM, CUDNN_FMA_MATH),
                                          algo(CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM, CUDNN_FMA_MATH),
                                          algo(CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM, CUDNN_FMA_MATH)};
  EXPECT_EQ(out, want);

  // The fallback already offered is not added twice; nothing offered: the fallback alone.
  std::vector<ca::ConvAlgo> again;
  ca::keep_deterministic(std::vector{perf(CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM, CUDNN_FMA_MATH)}, 1, {},
                         CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM, CUDNN_DATA_FLOAT, kLimit, again);
  EXPECT_EQ(again, std::vector{algo(CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM, CUDNN_FMA_MATH)});
  std::vector<ca::ConvAlgo> none;
  ca::keep_deterministic(list, 0, {}, CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM, CUDNN_DATA_FLOAT, kLimit, none);
  EXPECT_EQ(none, std::vector{algo(CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM, CUDNN_FMA_MATH)});
}

// Determinism belongs to an (algorithm, math type) pair on a geometry: a fallback pair that the
// heuristic flags non-deterministic here is not added back at the end.
TEST(ConvAlgos, AFallbackFlaggedNonDeterministicIsNotAddedBack) {
  std::vector<ca::ConvAlgo> out;
  ca::keep_deterministic(
      std::vector{perf(CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM, CUDNN_FMA_MATH, CUDNN_NON_DETERMINISTIC),
                  perf(CUDNN_CONVOLUTION_FWD_ALGO_GEMM, CUDNN_FMA_MATH)},
      2, {}, CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM, CUDNN_DATA_FLOAT, kLimit, out);
  EXPECT_EQ(out, std::vector{algo(CUDNN_CONVOLUTION_FWD_ALGO_GEMM, CUDNN_FMA_MATH)});
  // The same algorithm flagged with another math type leaves the fallback pair in.
  std::vector<ca::ConvAlgo> other;
  ca::keep_deterministic(
      std::vector{perf(CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM, CUDNN_TENSOR_OP_MATH, CUDNN_NON_DETERMINISTIC)}, 1,
      {}, CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM, CUDNN_DATA_FLOAT, kLimit, other);
  EXPECT_EQ(other, std::vector{algo(CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM, CUDNN_FMA_MATH)});
  // An entry cuDNN could not rate (a failed status) says nothing about the pair.
  std::vector<ca::ConvAlgo> failed;
  ca::keep_deterministic(std::vector{perf(CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM, CUDNN_FMA_MATH,
                                          CUDNN_NON_DETERMINISTIC, CUDNN_STATUS_NOT_SUPPORTED)},
                         1, {}, CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM, CUDNN_DATA_FLOAT, kLimit, failed);
  EXPECT_EQ(failed, std::vector{algo(CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM, CUDNN_FMA_MATH)});
}

TEST(ConvAlgos, Bf16KeepsEachMathTypeAsOffered) {
  const std::vector<cudnnConvolutionFwdAlgoPerf_t> list = {
      perf(CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM, CUDNN_TENSOR_OP_MATH),
      perf(CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM, CUDNN_DEFAULT_MATH),  // another candidate
      perf(CUDNN_CONVOLUTION_FWD_ALGO_GEMM, CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION),  // dropped
      perf(CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM, CUDNN_DEFAULT_MATH),
  };
  std::vector<ca::ConvAlgo> out;
  ca::keep_deterministic(list, 4, {}, CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM, CUDNN_DATA_BFLOAT16, kLimit, out);
  const std::vector<ca::ConvAlgo> want = {algo(CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM, CUDNN_TENSOR_OP_MATH),
                                          algo(CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM, CUDNN_DEFAULT_MATH),
                                          algo(CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM, CUDNN_DEFAULT_MATH),
                                          algo(CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM, CUDNN_TENSOR_OP_MATH)};
  EXPECT_EQ(out, want);
  EXPECT_EQ(ca::default_math(CUDNN_DATA_BFLOAT16), CUDNN_TENSOR_OP_MATH);
  EXPECT_EQ(ca::default_math(CUDNN_DATA_FLOAT), CUDNN_FMA_MATH);
}

#ifdef CUDNN_STATUS_CATEGORY
TEST(ConvAlgos, StatusClasses) {
  auto healthy = [] { return true; };
  auto broken = [] { return false; };
  int asked = 0;
  auto counting = [&] {
    ++asked;
    return true;
  };
  // A candidate's own failure: skipped, without asking about the stream.
  for (cudnnStatus_t st : {CUDNN_STATUS_BAD_PARAM, CUDNN_STATUS_BAD_PARAM_MISALIGNED_POINTER,
                           CUDNN_STATUS_NOT_SUPPORTED, CUDNN_STATUS_NOT_SUPPORTED_SHAPE,
                           CUDNN_STATUS_NOT_SUPPORTED_LAYOUT, CUDNN_STATUS_NOT_SUPPORTED_SHARED_MEMORY_INSUFFICIENT,
                           CUDNN_STATUS_INTERNAL_ERROR, CUDNN_STATUS_INTERNAL_ERROR_COMPILATION_FAILED}) {
    SCOPED_TRACE(static_cast<int>(st));
    EXPECT_TRUE(ca::skippable(st, counting));
    EXPECT_FALSE(ca::environment_error(st));
  }
  EXPECT_EQ(asked, 0);
  // cuDNN cannot run here: never skipped, even on a healthy stream.
  for (cudnnStatus_t st : {CUDNN_STATUS_NOT_INITIALIZED, CUDNN_STATUS_SUBLIBRARY_LOADING_FAILED,
                           CUDNN_STATUS_NOT_SUPPORTED_INCOMPATIBLE_CUDA_DRIVER, CUDNN_STATUS_NOT_SUPPORTED_ARCH_MISMATCH,
                           CUDNN_STATUS_NOT_SUPPORTED_RUNTIME_PREREQUISITE_MISSING,
                           CUDNN_STATUS_NOT_SUPPORTED_SUBLIBRARY_UNAVAILABLE}) {
    SCOPED_TRACE(static_cast<int>(st));
    EXPECT_TRUE(ca::environment_error(st));
    EXPECT_FALSE(ca::skippable(st, healthy));
  }
  // An execution failure: skipped only while the stream is healthy.
  EXPECT_TRUE(ca::skippable(CUDNN_STATUS_EXECUTION_FAILED_CUDART, healthy));
  EXPECT_FALSE(ca::skippable(CUDNN_STATUS_EXECUTION_FAILED_CUDART, broken));
  EXPECT_FALSE(ca::skippable(CUDNN_STATUS_EXECUTION_FAILED, broken));
  // For good: the geometry is not supported, or a shape is not taken. Not: what belongs to the call
  // (a pointer, a stream) or to the moment (an allocation, an execution), nor the environment.
  for (cudnnStatus_t st : {CUDNN_STATUS_NOT_SUPPORTED_SHAPE, CUDNN_STATUS_NOT_SUPPORTED_LAYOUT, CUDNN_STATUS_BAD_PARAM,
                           CUDNN_STATUS_BAD_PARAM_SHAPE_MISMATCH, CUDNN_STATUS_BAD_PARAM_OUT_OF_BOUND})
    EXPECT_TRUE(ca::permanent_failure(st)) << static_cast<int>(st);
  for (cudnnStatus_t st :
       {CUDNN_STATUS_BAD_PARAM_NULL_POINTER, CUDNN_STATUS_BAD_PARAM_MISALIGNED_POINTER,
        CUDNN_STATUS_BAD_PARAM_STREAM_MISMATCH, CUDNN_STATUS_BAD_PARAM_CUDA_GRAPH_MISMATCH,
        CUDNN_STATUS_INTERNAL_ERROR_DEVICE_ALLOCATION_FAILED, CUDNN_STATUS_EXECUTION_FAILED,
        CUDNN_STATUS_NOT_SUPPORTED_SUBLIBRARY_UNAVAILABLE})
    EXPECT_FALSE(ca::permanent_failure(st)) << static_cast<int>(st);
  EXPECT_TRUE(ca::not_supported(CUDNN_STATUS_NOT_SUPPORTED_PADDING));
  EXPECT_FALSE(ca::not_supported(CUDNN_STATUS_BAD_PARAM));
}

TEST(ConvAlgos, FirstWorkingSkipsFailedCandidatesAndStopsAtAFatalOne) {
  const std::vector<ca::ConvAlgo> cands = {algo(1, CUDNN_TENSOR_OP_MATH), algo(1, CUDNN_DEFAULT_MATH),
                                           algo(0, CUDNN_TENSOR_OP_MATH)};
  auto healthy = [] { return true; };
  auto broken = [] { return false; };
  // Scripted statuses per candidate; records which were tried.
  auto run = [&](std::vector<cudnnStatus_t> script, auto health) {
    std::vector<size_t> tried;
    const ca::Outcome o = ca::first_working(
        cands,
        [&](const ca::ConvAlgo& c) {
          const size_t i = static_cast<size_t>(&c - cands.data());
          tried.push_back(i);
          return script[i];
        },
        health);
    return std::make_pair(o, tried);
  };
  {
    auto [o, tried] = run({CUDNN_STATUS_NOT_SUPPORTED_SHAPE, CUDNN_STATUS_SUCCESS, CUDNN_STATUS_SUCCESS}, healthy);
    EXPECT_EQ(o.index, 1u);
    EXPECT_FALSE(o.fatal);
    EXPECT_EQ(o.status, CUDNN_STATUS_SUCCESS);
    EXPECT_TRUE(o.permanent);  // candidate 0 can be forgotten
    EXPECT_EQ(o.failed_for_good, (std::vector<size_t>{0}));
    EXPECT_EQ(ca::without_failed(cands, o), (std::vector<ca::ConvAlgo>{cands[1], cands[2]}));
    EXPECT_EQ(tried, (std::vector<size_t>{0, 1}));
  }
  {
    // Not supported, then a misaligned pointer (the call's), then success: only the first is
    // forgotten; the second stays a candidate for the next call.
    auto [o, tried] =
        run({CUDNN_STATUS_NOT_SUPPORTED_SHAPE, CUDNN_STATUS_BAD_PARAM_MISALIGNED_POINTER, CUDNN_STATUS_SUCCESS},
            healthy);
    EXPECT_EQ(o.index, 2u);
    EXPECT_FALSE(o.permanent);
    EXPECT_EQ(o.failed_for_good, (std::vector<size_t>{0}));
    EXPECT_EQ(ca::without_failed(cands, o), (std::vector<ca::ConvAlgo>{cands[1], cands[2]}));
  }
  {
    // An allocation inside cuDNN failed: skipped now, but not for good.
    auto [o, tried] =
        run({CUDNN_STATUS_INTERNAL_ERROR_DEVICE_ALLOCATION_FAILED, CUDNN_STATUS_SUCCESS, CUDNN_STATUS_SUCCESS}, healthy);
    EXPECT_EQ(o.index, 1u);
    EXPECT_FALSE(o.fatal);
    EXPECT_FALSE(o.permanent);
    EXPECT_TRUE(o.failed_for_good.empty());
  }
  {
    auto [o, tried] = run({CUDNN_STATUS_BAD_PARAM, CUDNN_STATUS_EXECUTION_FAILED, CUDNN_STATUS_NOT_SUPPORTED_LAYOUT},
                          healthy);
    EXPECT_EQ(o.index, cands.size());
    EXPECT_FALSE(o.fatal);
    EXPECT_FALSE(o.permanent);  // the execution failure may not recur
    EXPECT_EQ(o.status, CUDNN_STATUS_NOT_SUPPORTED_LAYOUT);
    EXPECT_EQ(tried.size(), 3u);
  }
  {
    auto [o, tried] = run({CUDNN_STATUS_BAD_PARAM, CUDNN_STATUS_NOT_SUPPORTED_SHAPE, CUDNN_STATUS_NOT_SUPPORTED},
                          healthy);
    EXPECT_EQ(o.index, cands.size());
    EXPECT_TRUE(o.permanent);  // no candidate ever runs this geometry
  }
  {
    auto [o, tried] = run({CUDNN_STATUS_NOT_SUPPORTED, CUDNN_STATUS_EXECUTION_FAILED, CUDNN_STATUS_SUCCESS}, broken);
    EXPECT_EQ(o.index, 1u);
    EXPECT_TRUE(o.fatal);
    EXPECT_EQ(o.status, CUDNN_STATUS_EXECUTION_FAILED);
    EXPECT_EQ(tried, (std::vector<size_t>{0, 1}));
  }
  {
    auto [o, tried] =
        run({CUDNN_STATUS_NOT_SUPPORTED_SUBLIBRARY_UNAVAILABLE, CUDNN_STATUS_SUCCESS, CUDNN_STATUS_SUCCESS}, healthy);
    EXPECT_EQ(o.index, 0u);
    EXPECT_TRUE(o.fatal);
    EXPECT_EQ(tried, (std::vector<size_t>{0}));
  }
  const ca::Outcome empty = ca::first_working({}, [](const ca::ConvAlgo&) { return CUDNN_STATUS_SUCCESS; }, healthy);
  EXPECT_EQ(empty.index, 0u);
  EXPECT_FALSE(empty.fatal);
  EXPECT_EQ(empty.status, CUDNN_STATUS_NOT_SUPPORTED);
}
#endif  // CUDNN_STATUS_CATEGORY

#else
TEST(ConvAlgos, NotBuilt) { GTEST_SKIP() << "built without cuDNN"; }
#endif  // TTQ_HAVE_CUDNN
