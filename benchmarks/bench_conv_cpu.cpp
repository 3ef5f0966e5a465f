// Conv forward, backward-data and backward-weights: oneDNN (when built with it) vs the naive
// reference kernels, on ResNet-20 layers at batch 32 and one ResNet-18 layer at batch 8.
// FLOPs per pass: 2 * N * Cout * OH * OW * (Cin / groups) * KH * KW, reported as a rate.
// Both backends are multithreaded (OpenMP), so the timings are wall-clock (UseRealTime).
#include <benchmark/benchmark.h>

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "kernels/cpu/ops_ref.h"
#include "kernels/op_shapes.h"
#ifdef TTQ_HAVE_ONEDNN
#include "kernels/onednn/ops_onednn.h"
#endif

namespace {

using ttq::Conv2dShape;

void fill_random(float* p, int64_t n, uint64_t seed, float lo = -1.0f, float hi = 1.0f) {
  std::mt19937_64 gen(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  for (int64_t i = 0; i < n; ++i) p[i] = dist(gen);
}

Conv2dShape conv3x3(int64_t n, int64_t c_in, int64_t hw, int64_t c_out, int64_t stride) {
  Conv2dShape s;
  s.n = n;
  s.c_in = c_in;
  s.h = s.w = hw;
  s.c_out = c_out;
  s.kh = s.kw = 3;
  s.stride_h = s.stride_w = stride;
  s.pad_t = s.pad_l = s.pad_b = s.pad_r = 1;
  return s;
}

struct NamedShape {
  std::string name;
  Conv2dShape s;
};

const std::vector<NamedShape>& shapes() {
  static const std::vector<NamedShape> v = {
      {"r20_16to16_32x32_n32", conv3x3(32, 16, 32, 16, 1)},
      {"r20_32to32_16x16_n32", conv3x3(32, 32, 16, 32, 1)},
      {"r20_64to64_8x8_n32", conv3x3(32, 64, 8, 64, 1)},
      {"r20_16to32_32x32_s2_n32", conv3x3(32, 16, 32, 32, 2)},
      {"r18_64to64_56x56_n8", conv3x3(8, 64, 56, 64, 1)},
  };
  return v;
}

double conv_flops(const Conv2dShape& s) {
  return 2.0 * s.n * s.c_out * s.out_h() * s.out_w() * s.c_in_per_group() * s.kh * s.kw;
}

enum class Pass { Fwd, BwdData, BwdWeights };

struct Buffers {
  std::vector<float> x, w, y, dy, dx, dw;
  explicit Buffers(const Conv2dShape& s)
      : x(s.in_numel()), w(s.weight_numel()), y(s.out_numel(), 0.0f), dy(s.out_numel()),
        dx(s.in_numel(), 0.0f), dw(s.weight_numel(), 0.0f) {
    fill_random(x.data(), x.size(), 1);
    fill_random(w.data(), w.size(), 2, -0.1f, 0.1f);
    fill_random(dy.data(), dy.size(), 3);
  }
};

template <bool kOneDnn>
void run_pass(Pass p, const Conv2dShape& s, Buffers& b) {
#ifdef TTQ_HAVE_ONEDNN
  if constexpr (kOneDnn) {
    switch (p) {
      case Pass::Fwd: ttq::onednn::conv2d_forward(s, b.x.data(), b.w.data(), nullptr, b.y.data()); return;
      case Pass::BwdData: ttq::onednn::conv2d_backward_data(s, b.dy.data(), b.w.data(), b.dx.data()); return;
      case Pass::BwdWeights:
        ttq::onednn::conv2d_backward_weights(s, b.x.data(), b.dy.data(), b.dw.data(), nullptr);
        return;
    }
  }
#endif
  if constexpr (!kOneDnn) {
    switch (p) {
      case Pass::Fwd: ttq::ref::conv2d_forward(s, b.x.data(), b.w.data(), nullptr, b.y.data()); return;
      case Pass::BwdData: ttq::ref::conv2d_backward_data(s, b.dy.data(), b.w.data(), b.dx.data()); return;
      case Pass::BwdWeights:
        ttq::ref::conv2d_backward_weights(s, b.x.data(), b.dy.data(), b.dw.data(), nullptr);
        return;
    }
  }
}

template <bool kOneDnn>
void BM_Conv(benchmark::State& state, Conv2dShape s, Pass p) {
  Buffers b(s);
  if (kOneDnn) run_pass<kOneDnn>(p, s, b);  // create and cache the primitive outside the timing
  for (auto _ : state) {
    run_pass<kOneDnn>(p, s, b);
    benchmark::ClobberMemory();
  }
  state.counters["FLOPS"] =
      benchmark::Counter(conv_flops(s), benchmark::Counter::kIsIterationInvariantRate,
                         benchmark::Counter::kIs1000);
}

const char* pass_name(Pass p) {
  switch (p) {
    case Pass::Fwd: return "conv_fwd";
    case Pass::BwdData: return "conv_bwd_data";
    default: return "conv_bwd_weights";
  }
}

bool register_all() {
  for (const NamedShape& ns : shapes()) {
    for (Pass p : {Pass::Fwd, Pass::BwdData, Pass::BwdWeights}) {
#ifdef TTQ_HAVE_ONEDNN
      benchmark::RegisterBenchmark((std::string(pass_name(p)) + "/onednn/" + ns.name).c_str(),
                                   BM_Conv<true>, ns.s, p)
          ->Unit(benchmark::kMillisecond)
          ->UseRealTime();
#endif
      // The naive kernels take up to seconds per call: one timed call is enough for them.
      benchmark::RegisterBenchmark((std::string(pass_name(p)) + "/ref/" + ns.name).c_str(),
                                   BM_Conv<false>, ns.s, p)
          ->Unit(benchmark::kMillisecond)
          ->UseRealTime()
          ->MinTime(0.05);
    }
  }
  return true;
}

const bool registered = register_all();

}  // namespace

BENCHMARK_MAIN();
