// Shared pieces of the GPU op tests (tests/test_gpu_layers.cpp, tests/test_gpu_bf16.cpp,
// tests/test_gpu_ops.cpp): device copies, bitwise comparison, and the layer case tables with
// their gtest printers and test names. Each table is a common list that a test extends with its
// own cases (conv_cases({...}) and so on), so every test keeps exactly its cases. Header-only, for
// test files built with TTQ_HAVE_CUDA.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <ostream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "engine/core/bf16.h"
#include "engine/core/tensor.h"
#include "kernels/cpu/ops.h"
#include "kernels/device.h"
#include "kernels/op_shapes.h"
#include "kernels/ttq_math.h"

// A CUDA build without cuDNN or cuBLAS keeps refusing stubs for these ops.
#ifdef TTQ_HAVE_CUDNN
#define TTQ_REQUIRE_CUDNN() (void)0
#else
#define TTQ_REQUIRE_CUDNN() GTEST_SKIP() << "built without cuDNN"
#endif
#ifdef TTQ_HAVE_CUBLAS
#define TTQ_REQUIRE_CUBLAS() (void)0
#else
#define TTQ_REQUIRE_CUBLAS() GTEST_SKIP() << "built without cuBLAS"
#endif

namespace ttq::gpu_test {

// The CPU side of a GPU-vs-CPU comparison runs the reference kernels (not oneDNN) while one of
// these lives.
class ReferenceKernels {
 public:
  ReferenceKernels() : saved_(cpu::kernels()) { cpu::set_kernels(cpu::Kernels::Reference); }
  ~ReferenceKernels() { cpu::set_kernels(saved_); }
  ReferenceKernels(const ReferenceKernels&) = delete;
  ReferenceKernels& operator=(const ReferenceKernels&) = delete;

 private:
  cpu::Kernels saved_;
};

// ---- tensors ------------------------------------------------------------------------------------

inline Tensor gpu(const Tensor& t) { return t.to(Device::CUDA); }
inline Tensor host(const Tensor& t) { return t.to(Device::CPU); }

inline Tensor scalar(float v) { return Tensor::from_vector({1}, {v}); }

// n labels uniform in [0, classes), reproducible from the seed.
inline Tensor int_labels(int64_t n, int64_t classes, uint64_t seed) {
  Tensor t = Tensor::empty({n}, DType::I32);
  std::mt19937_64 gen(seed);
  std::uniform_int_distribution<int32_t> dist(0, static_cast<int32_t>(classes - 1));
  for (int64_t i = 0; i < n; ++i) t.data<int32_t>()[i] = dist(gen);
  return t;
}

// Tolerance of a sum of `reduction` terms formed in another order: 1e-4 * sqrt(reduction).
inline double tol(int64_t reduction) {
  return 1e-4 * std::sqrt(static_cast<double>(std::max<int64_t>(reduction, 1)));
}

// ---- comparisons --------------------------------------------------------------------------------

// Element i of a CPU tensor, for messages.
inline std::string value_str(const Tensor& t, int64_t i) {
  std::ostringstream os;
  switch (t.dtype()) {
    case DType::F32: os << t.data<float>()[i]; break;
    case DType::BF16: {
      const bf16 b = t.data<bf16>()[i];
      os << to_float(b) << " (0x" << std::hex << b.bits << ")";
      break;
    }
    case DType::I8: os << +t.data<int8_t>()[i]; break;
    case DType::I64: os << t.data<int64_t>()[i]; break;
    case DType::F64: os << t.data<double>()[i]; break;
    default: os << "?";
  }
  return os.str();
}

// Bitwise equality of two tensors of one dtype (any devices), naming the first difference.
inline ::testing::AssertionResult bitwise_equal(const Tensor& got_any, const Tensor& want_any) {
  const Tensor got = host(got_any), want = host(want_any);
  if (got.shape() != want.shape() || got.dtype() != want.dtype())
    return ::testing::AssertionFailure() << got.str() << " vs " << want.str();
  const size_t es = dtype_size(got.dtype());
  const auto* a = static_cast<const unsigned char*>(got.raw());
  const auto* b = static_cast<const unsigned char*>(want.raw());
  for (int64_t i = 0; i < got.numel(); ++i)
    if (std::memcmp(a + i * es, b + i * es, es) != 0)
      return ::testing::AssertionFailure() << "first difference at [" << i << "] of " << got.numel() << ": "
                                           << value_str(got, i) << " vs " << value_str(want, i);
  return ::testing::AssertionSuccess();
}

// A device tensor (f32 or bf16) filled with 7.25, a value no op produces by accident (exact in
// bf16): an op's output must overwrite it.
inline Tensor gpu_garbage(const Shape& s, DType dt) {
  Tensor t = Tensor::empty(s, dt);
  if (dt == DType::BF16)
    std::fill_n(t.data<bf16>(), t.numel(), to_bf16(7.25f));
  else
    std::fill_n(t.data<float>(), t.numel(), 7.25f);
  return gpu(t);
}

// One output of an op that a test runs twice: the runs' device tensors, both starting as garbage
// (or as copies of an initial value), and whether the runs agree bitwise.
struct Runs {
  Tensor run[2];
  Runs(const Shape& s, DType dt) : run{gpu_garbage(s, dt), gpu_garbage(s, dt)} {}
  explicit Runs(const Tensor& init) : run{gpu(init), gpu(init)} {}
  Tensor& operator[](int i) { return run[i]; }
  const Tensor& operator[](int i) const { return run[i]; }
  ::testing::AssertionResult repeats() const { return bitwise_equal(run[1], run[0]); }
};

// ---- case tables --------------------------------------------------------------------------------

// Fixture of a table-driven GPU test: skips, with the reason, where no GPU is found.
template <class Case>
class GpuCaseTest : public ::testing::TestWithParam<Case> {
 protected:
  void SetUp() override {
    if (cuda_device_count() == 0) GTEST_SKIP() << cuda_device_summary();
  }
};

// INSTANTIATE_TEST_SUITE_P's name generator: the case's name.
struct CaseName {
  template <class Case>
  std::string operator()(const ::testing::TestParamInfo<Case>& info) const {
    return info.param.name;
  }
};

// The common cases followed by a test's own.
template <class Case>
std::vector<Case> with_extra(std::initializer_list<Case> common, std::initializer_list<Case> extra) {
  std::vector<Case> out(common);
  out.insert(out.end(), extra.begin(), extra.end());
  return out;
}

// The tensor shapes of a conv or Linear case: input, weights, output, bias.
struct LayerShapes {
  Shape x, w, y, bias;
};

struct ConvCase {
  const char* name;
  Conv2dShape s;
  bool bias;
  LayerShapes shapes() const {  // of a valid geometry
    s.validate("test");
    return {{s.n, s.c_in, s.h, s.w}, {s.c_out, s.c_in_per_group(), s.kh, s.kw}, {s.n, s.c_out, s.out_h(), s.out_w()},
            {s.c_out}};
  }
};

inline Conv2dShape conv(int64_t n, int64_t c_in, int64_t h, int64_t w, int64_t c_out, int64_t kh, int64_t kw,
                        int64_t sh, int64_t sw, int64_t pt, int64_t pl, int64_t pb, int64_t pr, int64_t groups) {
  Conv2dShape s;
  s.n = n, s.c_in = c_in, s.h = h, s.w = w, s.c_out = c_out, s.kh = kh, s.kw = kw;
  s.stride_h = sh, s.stride_w = sw, s.pad_t = pt, s.pad_l = pl, s.pad_b = pb, s.pad_r = pr, s.groups = groups;
  return s;
}

inline Conv2dShape conv_same(int64_t n, int64_t c_in, int64_t h, int64_t w, int64_t c_out, int64_t k, int64_t stride,
                             int64_t groups) {
  Conv2dShape s = conv(n, c_in, h, w, c_out, k, k, stride, stride, 0, 0, 0, 0, groups);
  set_padding(s, true, 0);
  return s;
}

inline void PrintTo(const ConvCase& c, std::ostream* os) {
  *os << c.name << " " << c.s.str() << (c.bias ? " bias" : "");
}

inline std::vector<ConvCase> conv_cases(std::initializer_list<ConvCase> extra) {
  return with_extra<ConvCase>(
      {
          {"k3_s1_pad1_bias", conv(2, 3, 7, 9, 4, 3, 3, 1, 1, 1, 1, 1, 1, 1), true},
          {"k3_s2_same_asym_groups2", conv_same(2, 4, 8, 8, 6, 3, 2, 2), false},
          {"k5x3_s2x1_asym_both_groups3_bias", conv(1, 6, 10, 7, 6, 5, 3, 2, 1, 2, 1, 1, 0, 3), true},
          {"depthwise_k3_asym", conv(2, 8, 9, 6, 8, 3, 3, 1, 1, 1, 0, 2, 1, 8), true},
          {"k1_s2_nopad", conv(3, 5, 9, 9, 7, 1, 1, 2, 2, 0, 0, 0, 0, 1), true},
          {"k4_s2_same_even", conv_same(2, 3, 10, 11, 5, 4, 2, 1), true},
          {"k3_s1_pad1_wide", conv(4, 16, 16, 16, 32, 3, 3, 1, 1, 1, 1, 1, 1, 1), false},
          {"k7_s2_pad3_stem", conv(2, 3, 32, 32, 16, 7, 7, 2, 2, 3, 3, 3, 3, 1), true},
      },
      extra);
}

struct PoolCase {
  const char* name;
  PoolKind kind;
  Pool2dShape s;
  struct Shapes {
    Shape x, y;
  };
  Shapes shapes() const {  // of a valid geometry
    s.validate("test");
    return {{s.n, s.c, s.h, s.w}, {s.n, s.c, s.out_h(), s.out_w()}};
  }
};

inline Pool2dShape pool(int64_t n, int64_t c, int64_t h, int64_t w, int64_t kh, int64_t kw, int64_t sh, int64_t sw,
                        int64_t pt, int64_t pl, int64_t pb, int64_t pr, bool include_pad) {
  Pool2dShape s;
  s.n = n, s.c = c, s.h = h, s.w = w, s.kh = kh, s.kw = kw, s.stride_h = sh, s.stride_w = sw;
  s.pad_t = pt, s.pad_l = pl, s.pad_b = pb, s.pad_r = pr, s.count_include_pad = include_pad;
  return s;
}

inline Pool2dShape pool_same(int64_t n, int64_t c, int64_t h, int64_t w, int64_t k, int64_t stride,
                             bool include_pad) {
  Pool2dShape s = pool(n, c, h, w, k, k, stride, stride, 0, 0, 0, 0, include_pad);
  set_padding(s, true, 0);
  return s;
}

inline void PrintTo(const PoolCase& c, std::ostream* os) {
  *os << c.name << (c.kind == PoolKind::Max ? " max " : " avg ") << c.s.str()
      << (c.s.count_include_pad ? " count_include_pad" : "");
}

inline std::vector<PoolCase> pool_cases(std::initializer_list<PoolCase> extra) {
  return with_extra<PoolCase>(
      {
          {"max_k2_s2", PoolKind::Max, pool(2, 3, 8, 8, 2, 2, 2, 2, 0, 0, 0, 0, true)},
          {"max_k3_s2_pad1", PoolKind::Max, pool(2, 3, 9, 9, 3, 3, 2, 2, 1, 1, 1, 1, true)},
          {"max_k3_s2_same_asym", PoolKind::Max, pool_same(2, 4, 8, 8, 3, 2, true)},
          {"max_k3_s1_asym_both", PoolKind::Max, pool(1, 2, 7, 6, 3, 3, 1, 1, 2, 0, 1, 2, true)},
          {"max_k2x3_s1x2_asym", PoolKind::Max, pool(2, 2, 6, 9, 2, 3, 1, 2, 1, 0, 0, 2, true)},
          {"avg_k2_s2", PoolKind::Avg, pool(2, 3, 8, 8, 2, 2, 2, 2, 0, 0, 0, 0, true)},
          {"avg_k3_s2_pad1_include", PoolKind::Avg, pool(2, 3, 9, 9, 3, 3, 2, 2, 1, 1, 1, 1, true)},
          {"avg_k3_s2_pad1_exclude", PoolKind::Avg, pool(2, 3, 9, 9, 3, 3, 2, 2, 1, 1, 1, 1, false)},
          {"avg_k3_s2_same_asym_include", PoolKind::Avg, pool_same(2, 4, 8, 8, 3, 2, true)},
          {"avg_k3_s2_same_asym_exclude", PoolKind::Avg, pool_same(2, 4, 8, 8, 3, 2, false)},
          {"avg_k3_s1_asym_both_include", PoolKind::Avg, pool(1, 2, 7, 6, 3, 3, 1, 1, 2, 0, 1, 2, true)},
          {"avg_k3_s1_asym_both_exclude", PoolKind::Avg, pool(1, 2, 7, 6, 3, 3, 1, 1, 2, 0, 1, 2, false)},
          {"avg_k2x3_s1x2_asym_exclude", PoolKind::Avg, pool(2, 2, 6, 9, 2, 3, 1, 2, 1, 0, 0, 2, false)},
      },
      extra);
}

struct BnCase {
  const char* name;
  BatchNormShape s;
};

inline void PrintTo(const BnCase& c, std::ostream* os) {
  *os << c.name << " " << c.s.n << "x" << c.s.c << "x" << c.s.s;
}

inline std::vector<BnCase> bn_cases(std::initializer_list<BnCase> extra) {
  return with_extra<BnCase>(
      {
          {"bn2d_small", {4, 5, 6 * 7}},
          {"bn2d_wide", {8, 3, 32 * 32}},
          {"bn2d_many_channels", {2, 64, 4 * 4}},
          {"bn1d", {16, 10, 1}},
          {"bn1d_batch2", {2, 7, 1}},
      },
      extra);
}

struct LinearCase {
  const char* name;
  int64_t n, in, out;
  bool bias, want_dx;
  LayerShapes shapes() const { return {{n, in}, {out, in}, {n, out}, {out}}; }
};

inline void PrintTo(const LinearCase& c, std::ostream* os) {
  *os << c.name << " n=" << c.n << " in=" << c.in << " out=" << c.out << (c.bias ? " bias" : "")
      << (c.want_dx ? " dx" : "");
}

inline std::vector<LinearCase> linear_cases(std::initializer_list<LinearCase> extra) {
  return with_extra<LinearCase>(
      {
          {"one_by_one", 1, 1, 1, true, true},
          {"small_bias", 5, 7, 3, true, true},
          {"small_nobias", 5, 7, 3, false, true},
          {"classifier", 64, 300, 10, true, true},
          {"odd_sizes_no_dx", 3, 17, 129, true, false},
          {"wide_nobias_no_dx", 33, 257, 65, false, false},
      },
      extra);
}

// Option-A shortcut (stride, channels zero-padded from c_in to c_out): x n x c_in x h x w, y of
// ceil(h / stride) x ceil(w / stride).
struct ShortcutCase {
  int64_t n, c_in, h, w, c_out, stride;
  Shape x_shape() const { return {n, c_in, h, w}; }
  Shape y_shape() const { return {n, c_out, (h + stride - 1) / stride, (w + stride - 1) / stride}; }
  std::string str() const {
    return "c_in=" + std::to_string(c_in) + " h=" + std::to_string(h) + " w=" + std::to_string(w) +
           " c_out=" + std::to_string(c_out) + " stride=" + std::to_string(stride);
  }
};

inline const ShortcutCase kShortcutCases[] = {
    {2, 4, 8, 8, 8, 2}, {3, 5, 7, 9, 11, 2}, {2, 3, 10, 7, 6, 3}, {1, 4, 5, 6, 4, 1}, {64, 16, 32, 32, 32, 2},
};

inline const char* mode_name(math::ThresholdMode m) {
  switch (m) {
    case math::ThresholdMode::Max: return "Max";
    case math::ThresholdMode::Sparsity: return "Sparsity";
    case math::ThresholdMode::Twn: return "Twn";
  }
  return "?";
}

}  // namespace ttq::gpu_test
