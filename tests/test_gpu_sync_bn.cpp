// Synchronised batch norm on the GPU.
//
// The pieces of kernels/ops.h (bn_channel_sums, bn_backward_sums, bn_normalize, bn_backward_dx)
// on CUDA tensors against the CPU ones (tests/test_sync_bn_ops.cpp checks those against plain
// loops), f32 and bf16 activations, shapes with one chunk per channel and with several (m = N * S
// > 16384, kernels/cuda/channel_reduce.cuh), S a multiple of 4 or not. Every GPU result is
// computed twice, its outputs starting as garbage, and the runs must agree bitwise. Tolerances:
// sums are formed in double in another order than the CPU's, |gpu - cpu| <= 1e-12 * sum |term|;
// y and dx are the CPU's double expressions without fused multiply-adds, so bitwise on x86-64
// hosts built without FMA (the default flags), one unit in the last place otherwise.
//
// Then the layer: two ranks, threads of this process each with a tcp communicator over a
// rendezvous file, both on the one GPU (device tensors, each thread's cudaStreamPerThread), each
// a BatchNorm with set_sync on its half of the batch, against one GPU BatchNorm over the whole
// batch: y, running statistics, dx and the sum of the ranks' dgamma. Skips where no GPU (or no
// CUDA build) exists.
#include <gtest/gtest.h>

#ifdef TTQ_HAVE_CUDA

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <ostream>
#include <string>
#include <thread>
#include <vector>

#include "engine/core/bf16.h"
#include "engine/core/tensor.h"
#include "engine/dist/comm_tcp.h"
#include "engine/nn/batchnorm.h"
#include "kernels/device.h"
#include "kernels/ops.h"
#include "tests/dist_test_util.h"
#include "tests/gpu_test_util.h"
#include "tests/test_util.h"

namespace ttq {
namespace {

using namespace gpu_test;
namespace tt = ttq::testing;

#if defined(__x86_64__) && !defined(__FMA__)
constexpr bool kBitwiseHost = true;  // the CPU's double arithmetic cannot be contracted into FMAs
#else
constexpr bool kBitwiseHost = false;
#endif

// ---- tensors ------------------------------------------------------------------------------------

// Uniform in [lo, hi) on the CPU, in dt (bf16: rounded to nearest even).
Tensor activation(const Shape& shape, uint64_t seed, DType dt, float lo = -1.0f, float hi = 1.0f) {
  return ops::cast_to(tt::random_tensor(shape, seed, lo, hi), dt);
}

// An f32 CPU tensor with the values of t (f32 or bf16, any device).
Tensor widen_host(const Tensor& t) { return ops::cast_to(host(t), DType::F32); }

Tensor f64_tensor(const std::vector<double>& v) {
  Tensor t = Tensor::empty({static_cast<int64_t>(v.size())}, DType::F64);
  std::memcpy(t.data<double>(), v.data(), v.size() * sizeof(double));
  return t;
}

std::vector<double> values64(const Tensor& t) {
  const Tensor h = host(t);
  return std::vector<double>(h.data<double>(), h.data<double>() + h.numel());
}

// A device f64 tensor of n elements, all 7.25: an op's output must overwrite it.
Tensor gpu_f64_garbage(int64_t n) { return gpu(f64_tensor(std::vector<double>(static_cast<size_t>(n), 7.25))); }

// ---- comparisons --------------------------------------------------------------------------------

// GPU sums against the CPU's: |got - want| <= 1e-12 * magnitude (the sum of the terms' sizes).
::testing::AssertionResult sums_close(const Tensor& got_any, const Tensor& want_any,
                                      const std::vector<double>& magnitude) {
  const std::vector<double> got = values64(got_any), want = values64(want_any);
  if (got.size() != want.size() || got.size() != magnitude.size())
    return ::testing::AssertionFailure() << "sizes differ: " << got.size() << " vs " << want.size();
  for (size_t k = 0; k < got.size(); ++k)
    if (!(std::fabs(got[k] - want[k]) <= 1e-12 * magnitude[k] + 1e-300))
      return ::testing::AssertionFailure() << "[" << k << "]: " << got[k] << " vs " << want[k] << " (diff "
                                           << got[k] - want[k] << ", terms of total size " << magnitude[k] << ")";
  return ::testing::AssertionSuccess();
}

// An elementwise output (y, dx) against the CPU's: the same double expression, rounded the same way.
::testing::AssertionResult same_rounding(const Tensor& got, const Tensor& want) {
  if (kBitwiseHost) return bitwise_equal(got, want);
  const double rtol = want.dtype() == DType::BF16 ? 1.0 / 128.0 : 1.0 / 8388608.0;
  return tt::all_close(widen_host(got), widen_host(want), 1e-30, rtol);
}

// ---- cases --------------------------------------------------------------------------------------

struct OpCase {
  std::string name;
  BatchNormShape s;
  DType dt;
};

void PrintTo(const OpCase& c, std::ostream* os) {
  *os << c.name << " " << c.s.n << "x" << c.s.c << "x" << c.s.s << " " << dtype_name(c.dt);
}

std::vector<OpCase> op_cases() {
  const std::vector<BnCase> shapes = bn_cases({
      {"bn2d_resnet", {16, 32, 16 * 16}},
      // m = N * S > 16384 (kChunk): partials per chunk, a finishing kernel per channel
      {"bn2d_chunked", {32, 3, 56 * 56}},       // 7 chunks, groups of 4
      {"bn2d_chunked_odd", {40, 2, 25 * 25}},   // 2 chunks, S odd: single elements
      {"bn1d_chunked", {20000, 3, 1}},          // 2 chunks, S = 1
      {"bn2d_one_full_chunk", {4, 2, 64 * 64}}, // m = kChunk exactly: one chunk
      {"bn1d_chunk_and_one", {16385, 2, 1}},    // a last chunk of one element
  });
  std::vector<OpCase> out;
  for (const BnCase& c : shapes)
    for (DType dt : {DType::F32, DType::BF16}) out.push_back({std::string(c.name) + "_" + dtype_name(dt), c.s, dt});
  return out;
}

class GpuSyncBnOps : public GpuCaseTest<OpCase> {
 protected:
  // Channel c's values of t (f32 or bf16, CPU), widened, in the CPU loops' order.
  template <class F>
  static void for_channel(const BatchNormShape& s, const Tensor& t, int64_t c, F&& f) {
    const Tensor w = widen_host(t);
    const float* p = w.data<float>();
    for (int64_t n = 0; n < s.n; ++n)
      for (int64_t i = 0; i < s.s; ++i) f(p[(n * s.c + c) * s.s + i], (n * s.c + c) * s.s + i);
  }

  // The batch statistics of x on the CPU: the double mean and inverse std, and their f32 roundings.
  struct Stats {
    Tensor mean64, is64, mean32, is32;
  };
  static Stats stats_of(const BatchNormShape& s, const Tensor& x, float eps) {
    Tensor sums = Tensor::empty({s.c}, DType::F64);
    ops::bn_channel_sums(s, x, nullptr, sums);
    const double m = static_cast<double>(s.n * s.s);
    std::vector<double> mu(static_cast<size_t>(s.c)), is(static_cast<size_t>(s.c));
    for (int64_t c = 0; c < s.c; ++c) mu[c] = sums.data<double>()[c] / m;
    const Tensor mean64 = f64_tensor(mu);
    ops::bn_channel_sums(s, x, &mean64, sums);
    std::vector<float> mu32(static_cast<size_t>(s.c)), is32(static_cast<size_t>(s.c));
    for (int64_t c = 0; c < s.c; ++c) {
      is[c] = 1.0 / std::sqrt(sums.data<double>()[c] / m + eps);
      mu32[c] = static_cast<float>(mu[c]);
      is32[c] = static_cast<float>(is[c]);
    }
    return {mean64, f64_tensor(is), Tensor::from_vector({s.c}, mu32), Tensor::from_vector({s.c}, is32)};
  }
};

TEST_P(GpuSyncBnOps, ChannelSumsMatchTheCpuAndRepeat) {
  const OpCase& k = GetParam();
  const BatchNormShape& s = k.s;
  const Tensor x = activation({s.n, s.c, s.s}, 1, k.dt, -2.0f, 3.0f);
  const Stats st = stats_of(s, x, 1e-5f);
  Tensor sum_cpu = Tensor::empty({s.c}, DType::F64), sq_cpu = Tensor::empty({s.c}, DType::F64);
  ops::bn_channel_sums(s, x, nullptr, sum_cpu);
  ops::bn_channel_sums(s, x, &st.mean64, sq_cpu);
  std::vector<double> mag(static_cast<size_t>(s.c), 0.0);
  for (int64_t c = 0; c < s.c; ++c) for_channel(s, x, c, [&](float v, int64_t) { mag[c] += std::fabs(v); });
  const std::vector<double> sq_mag = values64(sq_cpu);  // non-negative terms

  const Tensor xg = gpu(x), mean_g = gpu(st.mean64);
  Tensor sum_g[2] = {gpu_f64_garbage(s.c), gpu_f64_garbage(s.c)};
  Tensor sq_g[2] = {gpu_f64_garbage(s.c), gpu_f64_garbage(s.c)};
  for (int run = 0; run < 2; ++run) {
    ops::bn_channel_sums(s, xg, nullptr, sum_g[run]);
    ops::bn_channel_sums(s, xg, &mean_g, sq_g[run]);
  }
  EXPECT_TRUE(sums_close(sum_g[0], sum_cpu, mag)) << "sum x";
  EXPECT_TRUE(sums_close(sq_g[0], sq_cpu, sq_mag)) << "sum (x - mean)^2";
  EXPECT_TRUE(bitwise_equal(sum_g[1], sum_g[0])) << "sum x repeats";
  EXPECT_TRUE(bitwise_equal(sq_g[1], sq_g[0])) << "sum (x - mean)^2 repeats";
}

TEST_P(GpuSyncBnOps, BackwardSumsMatchTheCpuAndRepeat) {
  const OpCase& k = GetParam();
  const BatchNormShape& s = k.s;
  const Tensor x = activation({s.n, s.c, s.s}, 2, k.dt, -2.0f, 3.0f), dy = activation({s.n, s.c, s.s}, 3, k.dt);
  const Stats st = stats_of(s, x, 1e-5f);
  Tensor sums_cpu = Tensor::empty({2 * s.c}, DType::F64);
  ops::bn_backward_sums(s, x, dy, st.mean32, st.is32, sums_cpu);
  std::vector<double> mag(static_cast<size_t>(2 * s.c), 0.0);
  const Tensor dyw = widen_host(dy);
  for (int64_t c = 0; c < s.c; ++c)
    for_channel(s, x, c, [&](float v, int64_t j) {
      const double g = dyw.data<float>()[j];
      const double xhat = static_cast<double>(v - st.mean32.data<float>()[c]) * st.is32.data<float>()[c];
      mag[c] += std::fabs(g);
      mag[s.c + c] += std::fabs(g * xhat);
    });

  const Tensor xg = gpu(x), dyg = gpu(dy), mg = gpu(st.mean32), isg = gpu(st.is32);
  Tensor sums_g[2] = {gpu_f64_garbage(2 * s.c), gpu_f64_garbage(2 * s.c)};
  for (int run = 0; run < 2; ++run) ops::bn_backward_sums(s, xg, dyg, mg, isg, sums_g[run]);
  EXPECT_TRUE(sums_close(sums_g[0], sums_cpu, mag)) << "[sum dy | sum dy * xhat]";
  EXPECT_TRUE(bitwise_equal(sums_g[1], sums_g[0])) << "repeats";
}

TEST_P(GpuSyncBnOps, NormalizeMatchesTheCpuAndRepeats) {
  const OpCase& k = GetParam();
  const BatchNormShape& s = k.s;
  const Shape xs{s.n, s.c, s.s};
  const Tensor x = activation(xs, 4, k.dt, -2.0f, 3.0f);
  const Stats st = stats_of(s, x, 1e-5f);
  const Tensor gamma = tt::random_tensor({s.c}, 5, 0.5f, 1.5f), beta = tt::random_tensor({s.c}, 6);
  Tensor y_cpu = Tensor::empty(xs, k.dt);
  ops::bn_normalize(s, x, st.mean64, st.is64, gamma, beta, y_cpu);

  const Tensor xg = gpu(x), mg = gpu(st.mean64), isg = gpu(st.is64), gg = gpu(gamma), bg = gpu(beta);
  Runs y(xs, k.dt);
  for (int run = 0; run < 2; ++run) ops::bn_normalize(s, xg, mg, isg, gg, bg, y[run]);
  EXPECT_TRUE(same_rounding(y[0], y_cpu)) << "y";
  EXPECT_TRUE(y.repeats()) << "y repeats";
}

TEST_P(GpuSyncBnOps, BackwardDxMatchesTheCpuAndRepeats) {
  const OpCase& k = GetParam();
  const BatchNormShape& s = k.s;
  const Shape xs{s.n, s.c, s.s};
  const Tensor x = activation(xs, 7, k.dt, -2.0f, 3.0f), dy = activation(xs, 8, k.dt);
  const Stats st = stats_of(s, x, 1e-5f);
  const Tensor gamma = tt::random_tensor({s.c}, 9, 0.5f, 1.5f);
  // Global sums and count as if a second rank had contributed as much again.
  Tensor local = Tensor::empty({2 * s.c}, DType::F64);
  ops::bn_backward_sums(s, x, dy, st.mean32, st.is32, local);
  std::vector<double> global = values64(local);
  for (size_t j = 0; j < global.size(); ++j) global[j] = 2.0 * global[j] + 0.25;
  const Tensor sums = f64_tensor(global);
  const double count = 2.0 * static_cast<double>(s.n * s.s);
  Tensor dx_cpu = Tensor::empty(xs, k.dt);
  ops::bn_backward_dx(s, x, dy, st.mean32, st.is32, gamma, sums, count, dx_cpu);

  const Tensor xg = gpu(x), dyg = gpu(dy), mg = gpu(st.mean32), isg = gpu(st.is32), gg = gpu(gamma);
  const Tensor sums_g = gpu(sums);
  Runs dx(xs, k.dt);
  for (int run = 0; run < 2; ++run) ops::bn_backward_dx(s, xg, dyg, mg, isg, gg, sums_g, count, dx[run]);
  EXPECT_TRUE(same_rounding(dx[0], dx_cpu)) << "dx";
  EXPECT_TRUE(dx.repeats()) << "dx repeats";
}

INSTANTIATE_TEST_SUITE_P(Shapes, GpuSyncBnOps, ::testing::ValuesIn(op_cases()), CaseName{});

// ---- the layer over two ranks ------------------------------------------------------------------

using ttq::testing::run_ranks;

// Elementwise outputs of the two computations: f32 to f32 rounding, bf16 within two bf16 ulps
// (the statistics differ in their last bits, so a bf16 rounding may land one ulp away) plus an
// absolute term for values that cancel.
::testing::AssertionResult close_act(const Tensor& got, const Tensor& want, double f32_tol) {
  const Tensor g = widen_host(got), w = widen_host(want);
  if (want.dtype() == DType::F32) return tt::all_close(g, w, f32_tol, f32_tol);
  double max_abs = 0.0;
  for (int64_t i = 0; i < w.numel(); ++i) max_abs = std::max(max_abs, std::fabs(static_cast<double>(w.data<float>()[i])));
  return tt::all_close(g, w, 1e-2 * max_abs, 1.0 / 64.0);
}

void two_halves_match_one_batch(DType dt) {
  tt::TempDir dir;
  // Per rank m = 5 * 3600 = 18000 values per channel (two chunks), the whole batch 36000 (three).
  const int64_t N = 10, C = 3, H = 60, W = 60;
  const Tensor x = activation({N, C, H, W}, 1, dt, -2.0f, 3.0f);
  const Tensor dy = activation({N, C, H, W}, 2, dt);
  const Tensor gamma = tt::random_tensor({C}, 3, 0.5f, 1.5f), beta = tt::random_tensor({C}, 4);
  // One GPU BatchNorm, the whole batch.
  BatchNorm full(C, 2, 1e-5f, 0.1f);
  full.weight().value.copy_from(gamma);
  full.bias().value.copy_from(beta);
  full.to(Device::CUDA);
  const Tensor y_full = host(full.forward(gpu(x)));
  const Tensor dx_full = host(full.backward(gpu(dy)));
  const Tensor dg_full = host(full.weight().grad);
  const Tensor rm_full = host(full.running_mean()), rv_full = host(full.running_var());

  std::vector<Tensor> y(2), dx(2), dgamma(2), rm(2), rv(2);
  run_ranks(2, dir.file("rdv"), 60, [&](int r, std::shared_ptr<Communicator> c) {
    // This thread's device work runs on its own cudaStreamPerThread.
    BatchNorm bn(C, 2, 1e-5f, 0.1f);
    bn.weight().value.copy_from(gamma);
    bn.bias().value.copy_from(beta);
    bn.to(Device::CUDA);
    bn.set_sync(c);
    const Tensor xs = gpu(x.slice(r * N / 2, (r + 1) * N / 2).clone());
    const Tensor dys = gpu(dy.slice(r * N / 2, (r + 1) * N / 2).clone());
    y[r] = host(bn.forward(xs));
    dx[r] = host(bn.backward(dys));
    dgamma[r] = host(bn.weight().grad);
    rm[r] = host(bn.running_mean());
    rv[r] = host(bn.running_var());
  });
  for (int r = 0; r < 2; ++r) {
    if (!y[r].defined() || !dx[r].defined()) return;  // the rank failed (reported by run_ranks)
    EXPECT_TRUE(close_act(y[r], y_full.slice(r * N / 2, (r + 1) * N / 2).clone(), 1e-5)) << "y, rank " << r;
    EXPECT_TRUE(tt::all_close(rm[r], rm_full, 1e-5, 1e-5)) << "running mean, rank " << r;
    EXPECT_TRUE(tt::all_close(rv[r], rv_full, 1e-5, 1e-5)) << "running variance, rank " << r;
  }
  // Each rank's dy is its own half-batch loss's gradient: twice the global one, so dx is twice
  // the full batch's (what the gradient average then halves for every parameter before it).
  for (int r = 0; r < 2; ++r)
    EXPECT_TRUE(close_act(dx[r], dx_full.slice(r * N / 2, (r + 1) * N / 2).clone(), 1e-4)) << "dx, rank " << r;
  Tensor dg_sum = dgamma[0].clone();
  ops::add_accumulate(dg_sum, dgamma[1]);
  EXPECT_TRUE(tt::all_close(dg_sum, dg_full, tol(N * H * W), 1e-4)) << "dgamma";
}

TEST(GpuSyncBatchNorm, TwoHalvesMatchOneBatch) {
  if (cuda_device_count() == 0) GTEST_SKIP() << cuda_device_summary();
  TTQ_REQUIRE_CUDNN();  // the f32 reference layer runs cuDNN
  two_halves_match_one_batch(DType::F32);
}

TEST(GpuSyncBatchNorm, TwoHalvesMatchOneBatchBf16) {
  if (cuda_device_count() == 0) GTEST_SKIP() << cuda_device_summary();
  two_halves_match_one_batch(DType::BF16);
}

}  // namespace
}  // namespace ttq

#else  // !TTQ_HAVE_CUDA

TEST(GpuSyncBn, NotBuilt) { GTEST_SKIP() << "built without the CUDA backend"; }

#endif
