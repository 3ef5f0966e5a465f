// The bf16 CUDA ops (precision "bf16", kernels/cuda/ops_cuda.h) against the CPU emulation, through
// the tensor ops of kernels/ops.h: the same op on bf16 CPU tensors widens the inputs to f32, runs
// the f32 reference kernel and rounds the outputs to bf16, and the CUDA tensors run the bf16
// kernels. The CPU side runs the reference kernels (not oneDNN) while these tests run.
//
// Tolerances. Bitwise where the GPU does the reference's float operations in its order and rounds
// once: casts, ReLU, add, accumulate (bf16 += bf16 and f32 += bf16), the shortcut, the global
// average-pool gradient, the softmax gradient, max pooling forward and backward, TTQ codes and
// bf16 w_t. Elsewhere sums are formed in another order (cuDNN, cuBLAS, block reductions) and a
// biased convolution output is rounded twice, so a bf16 output may land one or two bf16 ulps away:
// |got - want| <= 1e-2 * max|want| + 2^-6 * |want|. f32 outputs of those ops (bias gradients,
// batch-norm statistics and parameter gradients, probabilities) use f32 tolerances. Every GPU
// result is computed twice (outputs starting as garbage) and the runs must agree bitwise. Also:
// the multi-tensor TTQ pass with bf16 w_t gives the codes, D and scale of the f32 pass and
// w_t == round_bf16(f32 w_t) bitwise. Skips where no GPU (or no CUDA build) exists.
#include <gtest/gtest.h>

#ifdef TTQ_HAVE_CUDA

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <ostream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "engine/core/bf16.h"
#include "engine/core/tensor.h"
#include "kernels/cpu/ops.h"
#include "kernels/cuda/ttq_multi.h"
#include "kernels/device.h"
#include "kernels/ops.h"
#include "kernels/ttq_math.h"
#include "tests/test_util.h"

namespace ttq {
namespace {

using math::ThresholdMode;

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

// The CPU emulation runs the reference kernels while one of these lives.
class ReferenceKernels {
 public:
  ReferenceKernels() : saved_(cpu::kernels()) { cpu::set_kernels(cpu::Kernels::Reference); }
  ~ReferenceKernels() { cpu::set_kernels(saved_); }
  ReferenceKernels(const ReferenceKernels&) = delete;
  ReferenceKernels& operator=(const ReferenceKernels&) = delete;

 private:
  cpu::Kernels saved_;
};

// ---- tensors ----------------------------------------------------------------------------------

Tensor gpu(const Tensor& t) { return t.to(Device::CUDA); }
Tensor host(const Tensor& t) { return t.to(Device::CPU); }

// A bf16 CPU copy of an f32 CPU tensor (round to nearest even).
Tensor to_bf16_host(const Tensor& f) {
  Tensor b = Tensor::empty(f.shape(), DType::BF16);
  const float* src = f.data<float>();
  bf16* dst = b.data<bf16>();
  for (int64_t i = 0; i < f.numel(); ++i) dst[i] = to_bf16(src[i]);
  return b;
}

// An f32 CPU tensor with the values of t (f32 or bf16, any device).
Tensor widen_host(const Tensor& t) {
  const Tensor h = host(t);
  if (h.dtype() == DType::F32) return h;
  Tensor f = Tensor::empty(h.shape());
  const bf16* src = h.data<bf16>();
  float* dst = f.data<float>();
  for (int64_t i = 0; i < h.numel(); ++i) dst[i] = to_float(src[i]);
  return f;
}

// Uniform in [lo, hi), rounded to bf16 (CPU).
Tensor random_bf16(const Shape& shape, uint64_t seed, float lo = -1.0f, float hi = 1.0f) {
  return to_bf16_host(testing::random_tensor(shape, seed, lo, hi));
}

Tensor cpu_empty(const Shape& s, DType dt = DType::BF16) { return Tensor::empty(s, dt); }
Tensor gpu_empty(const Shape& s, DType dt = DType::BF16) { return Tensor::empty(s, dt, Device::CUDA); }
// A device tensor filled with a value no op produces by accident: outputs must overwrite it.
Tensor gpu_garbage(const Shape& s, DType dt = DType::BF16) {
  const Tensor f = Tensor::full(s, 7.25f);
  return gpu(dt == DType::BF16 ? to_bf16_host(f) : f);
}

Tensor scalar(float v) { return Tensor::from_vector({1}, {v}); }

Tensor int_labels(int64_t n, int64_t classes, uint64_t seed) {
  Tensor t = Tensor::empty({n}, DType::I32);
  std::mt19937_64 gen(seed);
  std::uniform_int_distribution<int32_t> dist(0, static_cast<int32_t>(classes - 1));
  for (int64_t i = 0; i < n; ++i) t.data<int32_t>()[i] = dist(gen);
  return t;
}

// ---- comparisons ------------------------------------------------------------------------------

std::string value_str(const Tensor& t, int64_t i) {
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
    default: os << "?";
  }
  return os.str();
}

// Bitwise equality of two tensors of one dtype (any devices), naming the first difference.
::testing::AssertionResult bitwise_equal(const Tensor& got_any, const Tensor& want_any) {
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

// bf16 outputs against the emulation: |got - want| <= atol_frac * max|want| + 2^-6 * |want| (two
// bf16 ulps relative, plus an absolute term for values that cancel).
constexpr double kBf16Rtol = 1.0 / 64.0;
::testing::AssertionResult close_bf16(const Tensor& got, const Tensor& want, double atol_frac = 1e-2) {
  const Tensor g = widen_host(got), w = widen_host(want);
  double max_abs = 0.0;
  for (int64_t i = 0; i < w.numel(); ++i) max_abs = std::max(max_abs, std::fabs(static_cast<double>(w.data<float>()[i])));
  return testing::all_close(g, w, atol_frac * max_abs, kBf16Rtol);
}

// f32 outputs (sums of the same values in another order).
::testing::AssertionResult close_f32(const Tensor& got, const Tensor& want, double atol, double rtol) {
  return testing::all_close(host(got), host(want), atol, rtol);
}
double tol(int64_t reduction) { return 1e-4 * std::sqrt(static_cast<double>(std::max<int64_t>(reduction, 1))); }

// ---- casts and elementwise ops ------------------------------------------------------------------

TEST(GpuBf16, CastsMatchHostRoundingBitwise) {
  if (cuda_device_count() == 0) GTEST_SKIP() << cuda_device_summary();
  for (int64_t n : {int64_t{16}, int64_t{1000}, int64_t{(1 << 22) + 3}}) {
    SCOPED_TRACE("n=" + std::to_string(n));
    Tensor f = testing::random_tensor({n}, 10 + n, -3.0f, 3.0f);
    // Ties (to even, both directions), signed zeros, infinities, overflow to inf, subnormals.
    const float specials[] = {0.0f,
                              -0.0f,
                              std::ldexp(1.0f + std::ldexp(1.0f, -8), 0),      // tie -> 1
                              std::ldexp(1.0f + 3 * std::ldexp(1.0f, -8), 3),  // tie -> up (even)
                              -(1.0f + std::ldexp(1.0f, -8) + std::ldexp(1.0f, -20)),
                              std::numeric_limits<float>::infinity(),
                              -std::numeric_limits<float>::infinity(),
                              std::numeric_limits<float>::max(),
                              -std::numeric_limits<float>::max(),
                              1e-40f,
                              -3e-39f,
                              std::numeric_limits<float>::denorm_min(),
                              std::numeric_limits<float>::min(),
                              65504.5f,
                              1e30f,
                              -7.0e-20f};
    for (size_t i = 0; i < sizeof specials / sizeof specials[0] && static_cast<int64_t>(i) < n; ++i)
      f.data<float>()[i] = specials[i];
    const Tensor want = to_bf16_host(f);

    Tensor b_dev = gpu_empty({n});
    ops::cast(gpu(f), b_dev);
    EXPECT_TRUE(bitwise_equal(b_dev, want)) << "f32 -> bf16";
    EXPECT_TRUE(bitwise_equal(ops::cast_to(gpu(f), DType::BF16), want)) << "cast_to bf16";
    EXPECT_TRUE(bitwise_equal(ops::cast_to(f, DType::BF16), want)) << "CPU cast";

    Tensor f_dev = gpu_empty({n}, DType::F32);
    ops::cast(b_dev, f_dev);
    EXPECT_TRUE(bitwise_equal(f_dev, widen_host(want))) << "bf16 -> f32";
    EXPECT_TRUE(bitwise_equal(ops::cast_to(b_dev, DType::F32), widen_host(want))) << "cast_to f32";
  }
}

TEST(GpuBf16, ReluBitwise) {
  if (cuda_device_count() == 0) GTEST_SKIP() << cuda_device_summary();
  for (int64_t n : {int64_t{1}, int64_t{1000}, int64_t{(1 << 23) + 5}}) {
    SCOPED_TRACE("n=" + std::to_string(n));
    Tensor x = random_bf16({n}, 100 + n);
    x.data<bf16>()[0] = to_bf16(0.0f);
    if (n > 2) x.data<bf16>()[2] = to_bf16(-0.0f);
    Tensor y = cpu_empty({n});
    ops::relu_forward(x, y);
    Tensor y_dev = gpu_garbage({n});
    ops::relu_forward(gpu(x), y_dev);
    EXPECT_TRUE(bitwise_equal(y_dev, y));
    Tensor inplace = gpu(x);
    ops::relu_forward(inplace, inplace);
    EXPECT_TRUE(bitwise_equal(inplace, y));

    const Tensor dy = random_bf16({n}, 200 + n);
    Tensor dx = cpu_empty({n});
    ops::relu_backward(y, dy, dx);
    Tensor dx_dev = gpu_garbage({n});
    ops::relu_backward(y_dev, gpu(dy), dx_dev);
    EXPECT_TRUE(bitwise_equal(dx_dev, dx));
  }
}

TEST(GpuBf16, AddAndAccumulateBitwise) {
  if (cuda_device_count() == 0) GTEST_SKIP() << cuda_device_summary();
  for (int64_t n : {int64_t{3}, int64_t{4099}, int64_t{(1 << 22) + 1}}) {
    SCOPED_TRACE("n=" + std::to_string(n));
    const Tensor a = random_bf16({n}, 400 + n), b = random_bf16({n}, 500 + n);
    Tensor out = cpu_empty({n});
    ops::add(a, b, out);
    const Tensor a_dev = gpu(a), b_dev = gpu(b);
    Tensor out_dev = gpu_garbage({n});
    ops::add(a_dev, b_dev, out_dev);
    EXPECT_TRUE(bitwise_equal(out_dev, out)) << "add";
    Tensor alias_a = gpu(a);
    ops::add(alias_a, b_dev, alias_a);
    EXPECT_TRUE(bitwise_equal(alias_a, out)) << "add into a";
    Tensor alias_b = gpu(b);
    ops::add(a_dev, alias_b, alias_b);
    EXPECT_TRUE(bitwise_equal(alias_b, out)) << "add into b";

    Tensor acc = a.clone();
    ops::add_accumulate(acc, b);
    Tensor acc_dev = gpu(a);
    ops::add_accumulate(acc_dev, b_dev);
    EXPECT_TRUE(bitwise_equal(acc_dev, acc)) << "bf16 += bf16";

    // An f32 gradient accumulating the bf16 gradient of a bf16 weight copy.
    const Tensor g32 = testing::random_tensor({n}, 600 + n);
    Tensor acc32 = g32.clone();
    ops::add_accumulate(acc32, b);
    Tensor acc32_dev = gpu(g32);
    ops::add_accumulate(acc32_dev, b_dev);
    EXPECT_TRUE(bitwise_equal(acc32_dev, acc32)) << "f32 += bf16";
  }
}

struct ShortcutCase {
  int64_t n, c_in, h, w, c_out, stride;
};

TEST(GpuBf16, ShortcutABitwise) {
  if (cuda_device_count() == 0) GTEST_SKIP() << cuda_device_summary();
  uint64_t seed = 300;
  for (const ShortcutCase& c : {ShortcutCase{2, 4, 8, 8, 8, 2}, ShortcutCase{3, 5, 7, 9, 11, 2},
                                ShortcutCase{2, 3, 10, 7, 6, 3}, ShortcutCase{1, 4, 5, 6, 4, 1},
                                ShortcutCase{64, 16, 32, 32, 32, 2}}) {
    SCOPED_TRACE("c_in=" + std::to_string(c.c_in) + " h=" + std::to_string(c.h) + " w=" + std::to_string(c.w) +
                 " c_out=" + std::to_string(c.c_out) + " stride=" + std::to_string(c.stride));
    const int64_t oh = (c.h + c.stride - 1) / c.stride, ow = (c.w + c.stride - 1) / c.stride;
    const Shape xs{c.n, c.c_in, c.h, c.w}, ys{c.n, c.c_out, oh, ow};
    const Tensor x = random_bf16(xs, ++seed);
    Tensor y = cpu_empty(ys);
    ops::shortcut_a_forward(c.stride, x, y);
    Tensor y_dev = gpu_garbage(ys);  // the padded channels must be written as zeros
    ops::shortcut_a_forward(c.stride, gpu(x), y_dev);
    EXPECT_TRUE(bitwise_equal(y_dev, y));

    const Tensor dy = random_bf16(ys, ++seed);
    Tensor dx = cpu_empty(xs);
    ops::shortcut_a_backward(c.stride, dy, dx);
    Tensor dx_dev = gpu_garbage(xs);
    ops::shortcut_a_backward(c.stride, gpu(dy), dx_dev);
    EXPECT_TRUE(bitwise_equal(dx_dev, dx));
  }
}

TEST(GpuBf16, GlobalAvgPool) {
  if (cuda_device_count() == 0) GTEST_SKIP() << cuda_device_summary();
  uint64_t seed = 20;
  for (const Shape& shape : {Shape{3, 5, 7, 9}, Shape{2, 4, 1, 1}, Shape{2, 3, 33, 35}, Shape{64, 64, 8, 8}}) {
    SCOPED_TRACE(shape_str(shape));
    const Shape ys{shape[0], shape[1]};
    const Tensor x = random_bf16(shape, ++seed);
    Tensor y = cpu_empty(ys);
    ops::global_avgpool_forward(x, y);
    const Tensor x_dev = gpu(x);
    Tensor y_dev[2];
    for (Tensor& t : y_dev) {
      t = gpu_garbage(ys);
      ops::global_avgpool_forward(x_dev, t);
    }
    EXPECT_TRUE(close_bf16(y_dev[0], y)) << "forward";  // sums in another order
    EXPECT_TRUE(bitwise_equal(y_dev[1], y_dev[0])) << "forward repeat";

    const Tensor dy = random_bf16(ys, ++seed);
    Tensor dx = cpu_empty(shape);
    ops::global_avgpool_backward(dy, dx);
    Tensor dx_dev = gpu_garbage(shape);
    ops::global_avgpool_backward(gpu(dy), dx_dev);
    EXPECT_TRUE(bitwise_equal(dx_dev, dx)) << "backward";
  }
}

// ---- loss and accuracy ----------------------------------------------------------------------------

struct XentCase {
  int64_t n, classes;
  float smoothing;
};

TEST(GpuBf16, SoftmaxCrossEntropyAndTopk) {
  if (cuda_device_count() == 0) GTEST_SKIP() << cuda_device_summary();
  uint64_t seed = 1700;
  for (const XentCase& c : {XentCase{1, 1, 0.0f}, XentCase{7, 10, 0.0f}, XentCase{128, 10, 0.1f},
                            XentCase{33, 1000, 0.1f}, XentCase{5, 37, 0.3f}}) {
    SCOPED_TRACE("n=" + std::to_string(c.n) + " classes=" + std::to_string(c.classes) +
                 " smoothing=" + std::to_string(c.smoothing));
    const Shape ls{c.n, c.classes};
    const Tensor logits = random_bf16(ls, ++seed, -8.0f, 8.0f);
    const Tensor labels = int_labels(c.n, c.classes, ++seed);
    Tensor probs = cpu_empty(ls, DType::F32);
    const double want = ops::softmax_xent_forward(logits, labels, c.smoothing, probs);

    const Tensor logits_dev = gpu(logits), labels_dev = gpu(labels);
    Tensor probs_dev[2];
    double loss[2] = {0.0, 0.0};
    for (int run = 0; run < 2; ++run) {
      probs_dev[run] = gpu_garbage(ls, DType::F32);
      loss[run] = ops::softmax_xent_forward(logits_dev, labels_dev, c.smoothing, probs_dev[run]);
    }
    EXPECT_NEAR(loss[0], want, 1e-6 * std::fabs(want) + 1e-7);
    EXPECT_TRUE(close_f32(probs_dev[0], probs, 1e-12, 1e-6));  // f32 probabilities of the same logits
    EXPECT_EQ(loss[1], loss[0]);
    EXPECT_TRUE(bitwise_equal(probs_dev[1], probs_dev[0]));

    // Backward from the same probabilities on both sides: the same float, rounded once.
    Tensor dlogits = cpu_empty(ls);
    ops::softmax_xent_backward(probs, labels, c.smoothing, dlogits);
    Tensor dlogits_dev = gpu_garbage(ls);
    ops::softmax_xent_backward(gpu(probs), labels_dev, c.smoothing, dlogits_dev);
    EXPECT_TRUE(bitwise_equal(dlogits_dev, dlogits));
  }

  // Top-k on bf16 logits, with many ties (ties go to the lower index).
  for (int64_t classes : {int64_t{1}, int64_t{10}, int64_t{1000}}) {
    for (int64_t n : {int64_t{1}, int64_t{300}, int64_t{4096}}) {
      Tensor f = testing::random_tensor({n, classes}, ++seed);
      for (int64_t i = 0; i < f.numel(); ++i) f.data<float>()[i] = std::round(f.data<float>()[i] * 4.0f) / 4.0f;
      const Tensor logits = to_bf16_host(f), labels = int_labels(n, classes, ++seed);
      const Tensor logits_dev = gpu(logits), labels_dev = gpu(labels);
      for (int k : {1, 5}) {
        SCOPED_TRACE("classes=" + std::to_string(classes) + " n=" + std::to_string(n) + " k=" + std::to_string(k));
        const int64_t want = ops::count_topk_correct(logits, labels, k);
        EXPECT_EQ(ops::count_topk_correct(logits_dev, labels_dev, k), want);
        EXPECT_EQ(ops::count_topk_correct(logits_dev, labels_dev, k), want);
      }
    }
  }
}

// ---- convolution ----------------------------------------------------------------------------

struct ConvCase {
  const char* name;
  Conv2dShape s;
  bool bias;
};

Conv2dShape conv(int64_t n, int64_t c_in, int64_t h, int64_t w, int64_t c_out, int64_t kh, int64_t kw, int64_t sh,
                 int64_t sw, int64_t pt, int64_t pl, int64_t pb, int64_t pr, int64_t groups) {
  Conv2dShape s;
  s.n = n, s.c_in = c_in, s.h = h, s.w = w, s.c_out = c_out, s.kh = kh, s.kw = kw;
  s.stride_h = sh, s.stride_w = sw, s.pad_t = pt, s.pad_l = pl, s.pad_b = pb, s.pad_r = pr, s.groups = groups;
  return s;
}

Conv2dShape conv_same(int64_t n, int64_t c_in, int64_t h, int64_t w, int64_t c_out, int64_t k, int64_t stride,
                      int64_t groups) {
  Conv2dShape s = conv(n, c_in, h, w, c_out, k, k, stride, stride, 0, 0, 0, 0, groups);
  set_padding(s, true, 0);
  return s;
}

const ConvCase kConvCases[] = {
    {"k3_s1_pad1_bias", conv(2, 3, 7, 9, 4, 3, 3, 1, 1, 1, 1, 1, 1, 1), true},
    {"k3_s2_same_asym_groups2", conv_same(2, 4, 8, 8, 6, 3, 2, 2), false},
    {"k5x3_s2x1_asym_both_groups3_bias", conv(1, 6, 10, 7, 6, 5, 3, 2, 1, 2, 1, 1, 0, 3), true},
    {"depthwise_k3_asym", conv(2, 8, 9, 6, 8, 3, 3, 1, 1, 1, 0, 2, 1, 8), true},
    {"k1_s2_nopad", conv(3, 5, 9, 9, 7, 1, 1, 2, 2, 0, 0, 0, 0, 1), true},
    {"k4_s2_same_even", conv_same(2, 3, 10, 11, 5, 4, 2, 1), true},
    {"k3_s1_pad1_wide", conv(4, 16, 16, 16, 32, 3, 3, 1, 1, 1, 1, 1, 1, 1), false},
    {"k3_s1_pad1_resnet_block", conv(8, 64, 16, 16, 64, 3, 3, 1, 1, 1, 1, 1, 1, 1), true},
    {"k7_s2_pad3_stem", conv(2, 3, 32, 32, 16, 7, 7, 2, 2, 3, 3, 3, 3, 1), true},
};

void PrintTo(const ConvCase& c, std::ostream* os) { *os << c.name << " " << c.s.str() << (c.bias ? " bias" : ""); }

class GpuBf16Conv : public ::testing::TestWithParam<ConvCase> {};

TEST_P(GpuBf16Conv, MatchesEmulationAndRepeats) {
  if (cuda_device_count() == 0) GTEST_SKIP() << cuda_device_summary();
  TTQ_REQUIRE_CUDNN();
  const ReferenceKernels reference;
  const ConvCase& c = GetParam();
  const Conv2dShape& s = c.s;
  s.validate("test");
  const Shape xs{s.n, s.c_in, s.h, s.w}, ws{s.c_out, s.c_in_per_group(), s.kh, s.kw}, ys{s.n, s.c_out, s.out_h(), s.out_w()};
  const Shape bs{s.c_out};
  const Tensor x = random_bf16(xs, 11), w = random_bf16(ws, 12), dy = random_bf16(ys, 14);
  const Tensor b = testing::random_tensor(bs, 13);  // biases stay f32

  Tensor y_ref = cpu_empty(ys), dx_ref = cpu_empty(xs), dw_ref = cpu_empty(ws), db_ref = cpu_empty(bs, DType::F32);
  ops::conv2d_forward(s, x, w, c.bias ? &b : nullptr, y_ref);
  ops::conv2d_backward_data(s, dy, w, dx_ref);
  ops::conv2d_backward_weights(s, x, dy, dw_ref, c.bias ? &db_ref : nullptr);

  const Tensor xg = gpu(x), wg = gpu(w), bg = gpu(b), dyg = gpu(dy);
  Tensor y[2], dx[2], dw[2], db[2];
  for (int run = 0; run < 2; ++run) {
    y[run] = gpu_garbage(ys);
    dx[run] = gpu_garbage(xs);
    dw[run] = gpu_garbage(ws);
    db[run] = gpu_garbage(bs, DType::F32);
    ops::conv2d_forward(s, xg, wg, c.bias ? &bg : nullptr, y[run]);
    ops::conv2d_backward_data(s, dyg, wg, dx[run]);
    ops::conv2d_backward_weights(s, xg, dyg, dw[run], c.bias ? &db[run] : nullptr);
  }
  EXPECT_EQ(y[0].dtype(), DType::BF16);
  EXPECT_TRUE(close_bf16(y[0], y_ref)) << "forward " << s.str();
  EXPECT_TRUE(close_bf16(dx[0], dx_ref)) << "backward data " << s.str();
  EXPECT_TRUE(close_bf16(dw[0], dw_ref)) << "backward weights " << s.str();
  const int64_t k_bias = s.n * s.out_h() * s.out_w();
  if (c.bias) {
    EXPECT_TRUE(close_f32(db[0], db_ref, tol(k_bias), tol(k_bias))) << "bias gradient " << s.str();
  }
  EXPECT_TRUE(bitwise_equal(y[1], y[0])) << "forward repeat";
  EXPECT_TRUE(bitwise_equal(dx[1], dx[0])) << "backward data repeat";
  EXPECT_TRUE(bitwise_equal(dw[1], dw[0])) << "backward weights repeat";
  if (c.bias) {
    EXPECT_TRUE(bitwise_equal(db[1], db[0])) << "bias gradient repeat";
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, GpuBf16Conv, ::testing::ValuesIn(kConvCases),
                         [](const ::testing::TestParamInfo<ConvCase>& info) { return std::string(info.param.name); });

// ---- pooling --------------------------------------------------------------------------------

struct PoolCase {
  const char* name;
  PoolKind kind;
  Pool2dShape s;
};

Pool2dShape pool(int64_t n, int64_t c, int64_t h, int64_t w, int64_t kh, int64_t kw, int64_t sh, int64_t sw,
                 int64_t pt, int64_t pl, int64_t pb, int64_t pr, bool include_pad) {
  Pool2dShape s;
  s.n = n, s.c = c, s.h = h, s.w = w, s.kh = kh, s.kw = kw, s.stride_h = sh, s.stride_w = sw;
  s.pad_t = pt, s.pad_l = pl, s.pad_b = pb, s.pad_r = pr, s.count_include_pad = include_pad;
  return s;
}

Pool2dShape pool_same(int64_t n, int64_t c, int64_t h, int64_t w, int64_t k, int64_t stride, bool include_pad) {
  Pool2dShape s = pool(n, c, h, w, k, k, stride, stride, 0, 0, 0, 0, include_pad);
  set_padding(s, true, 0);
  return s;
}

const PoolCase kPoolCases[] = {
    {"max_k2_s2", PoolKind::Max, pool(2, 3, 8, 8, 2, 2, 2, 2, 0, 0, 0, 0, true)},
    {"max_k3_s2_pad1", PoolKind::Max, pool(2, 3, 9, 9, 3, 3, 2, 2, 1, 1, 1, 1, true)},
    {"max_k3_s2_same_asym", PoolKind::Max, pool_same(2, 4, 8, 8, 3, 2, true)},
    {"max_k3_s1_asym_both", PoolKind::Max, pool(1, 2, 7, 6, 3, 3, 1, 1, 2, 0, 1, 2, true)},
    {"max_k2x3_s1x2_asym", PoolKind::Max, pool(2, 2, 6, 9, 2, 3, 1, 2, 1, 0, 0, 2, true)},
    {"max_k3_s2_pad1_stem", PoolKind::Max, pool(8, 64, 32, 32, 3, 3, 2, 2, 1, 1, 1, 1, true)},
    {"avg_k2_s2", PoolKind::Avg, pool(2, 3, 8, 8, 2, 2, 2, 2, 0, 0, 0, 0, true)},
    {"avg_k3_s2_pad1_include", PoolKind::Avg, pool(2, 3, 9, 9, 3, 3, 2, 2, 1, 1, 1, 1, true)},
    {"avg_k3_s2_pad1_exclude", PoolKind::Avg, pool(2, 3, 9, 9, 3, 3, 2, 2, 1, 1, 1, 1, false)},
    {"avg_k3_s2_same_asym_include", PoolKind::Avg, pool_same(2, 4, 8, 8, 3, 2, true)},
    {"avg_k3_s2_same_asym_exclude", PoolKind::Avg, pool_same(2, 4, 8, 8, 3, 2, false)},
    {"avg_k3_s1_asym_both_include", PoolKind::Avg, pool(1, 2, 7, 6, 3, 3, 1, 1, 2, 0, 1, 2, true)},
    {"avg_k3_s1_asym_both_exclude", PoolKind::Avg, pool(1, 2, 7, 6, 3, 3, 1, 1, 2, 0, 1, 2, false)},
    {"avg_k2x3_s1x2_asym_exclude", PoolKind::Avg, pool(2, 2, 6, 9, 2, 3, 1, 2, 1, 0, 0, 2, false)},
};

void PrintTo(const PoolCase& c, std::ostream* os) {
  *os << c.name << (c.kind == PoolKind::Max ? " max " : " avg ") << c.s.str()
      << (c.s.count_include_pad ? " count_include_pad" : "");
}

class GpuBf16Pool : public ::testing::TestWithParam<PoolCase> {};

TEST_P(GpuBf16Pool, MatchesEmulationAndRepeats) {
  if (cuda_device_count() == 0) GTEST_SKIP() << cuda_device_summary();
  const ReferenceKernels reference;
  const PoolCase& c = GetParam();
  const Pool2dShape& s = c.s;
  s.validate("test");
  const Shape xs{s.n, s.c, s.h, s.w}, ys{s.n, s.c, s.out_h(), s.out_w()};
  Tensor xf = testing::random_tensor(xs, 31);
  if (c.kind == PoolKind::Max) {  // a few levels only: equal maxima check first-maximum routing
    float* p = xf.data<float>();
    for (int64_t i = 0; i < xf.numel(); ++i) p[i] = std::round(p[i] * 2.0f) / 2.0f;
  }
  const Tensor x = to_bf16_host(xf), dy = random_bf16(ys, 32);
  Tensor y_ref = cpu_empty(ys), dx_ref = cpu_empty(xs);
  ops::pool2d_forward(c.kind, s, x, y_ref);
  ops::pool2d_backward(c.kind, s, x, dy, dx_ref);

  const Tensor xg = gpu(x), dyg = gpu(dy);
  Tensor y[2], dx[2];
  for (int run = 0; run < 2; ++run) {
    y[run] = gpu_garbage(ys);
    dx[run] = gpu_garbage(xs);
    ops::pool2d_forward(c.kind, s, xg, y[run]);
    ops::pool2d_backward(c.kind, s, xg, dyg, dx[run]);
  }
  if (c.kind == PoolKind::Max) {  // a maximum is exact; the gradient sums the same floats in order
    EXPECT_TRUE(bitwise_equal(y[0], y_ref)) << "forward " << s.str();
    EXPECT_TRUE(bitwise_equal(dx[0], dx_ref)) << "backward " << s.str();
  } else {
    EXPECT_TRUE(close_bf16(y[0], y_ref)) << "forward " << s.str();
    EXPECT_TRUE(close_bf16(dx[0], dx_ref)) << "backward " << s.str();
  }
  EXPECT_TRUE(bitwise_equal(y[1], y[0])) << "forward repeat";
  EXPECT_TRUE(bitwise_equal(dx[1], dx[0])) << "backward repeat";
}

INSTANTIATE_TEST_SUITE_P(Shapes, GpuBf16Pool, ::testing::ValuesIn(kPoolCases),
                         [](const ::testing::TestParamInfo<PoolCase>& info) { return std::string(info.param.name); });

// ---- batch norm -----------------------------------------------------------------------------

struct BnCase {
  const char* name;
  BatchNormShape s;
};

const BnCase kBnCases[] = {
    {"bn2d_small", {4, 5, 6 * 7}},
    {"bn2d_wide", {8, 3, 32 * 32}},
    {"bn2d_many_channels", {2, 64, 4 * 4}},
    {"bn2d_resnet", {16, 32, 16 * 16}},
    {"bn1d", {16, 10, 1}},
    {"bn1d_batch2", {2, 7, 1}},
};

void PrintTo(const BnCase& c, std::ostream* os) { *os << c.name << " " << c.s.n << "x" << c.s.c << "x" << c.s.s; }

class GpuBf16BatchNorm : public ::testing::TestWithParam<BnCase> {};

TEST_P(GpuBf16BatchNorm, TrainingForwardMatchesEmulationAndRepeats) {
  if (cuda_device_count() == 0) GTEST_SKIP() << cuda_device_summary();
  const ReferenceKernels reference;
  const BatchNormShape& s = GetParam().s;
  const float eps = 1e-5f, momentum = 0.1f;
  const Shape xs{s.n, s.c, s.s}, cs{s.c};
  // An offset and scale per tensor, so mean and variance are far from 0 and 1.
  const Tensor x = random_bf16(xs, 41, -2.0f, 3.0f);
  const Tensor gamma = testing::random_tensor(cs, 42, 0.5f, 1.5f), beta = testing::random_tensor(cs, 43);
  const Tensor rm0 = testing::random_tensor(cs, 44), rv0 = testing::random_tensor(cs, 45, 0.5f, 2.0f);

  Tensor y_ref = cpu_empty(xs), mean_ref = cpu_empty(cs, DType::F32), var_ref = cpu_empty(cs, DType::F32);
  Tensor is_ref = cpu_empty(cs, DType::F32), rm_ref = rm0.clone(), rv_ref = rv0.clone();
  ops::batchnorm_forward_train(s, x, gamma, beta, eps, momentum, rm_ref, rv_ref, y_ref, mean_ref, var_ref, is_ref);

  const Tensor xg = gpu(x), gg = gpu(gamma), bg = gpu(beta);
  Tensor y[2], mean[2], var[2], is[2], rm[2], rv[2];
  for (int run = 0; run < 2; ++run) {
    y[run] = gpu_garbage(xs);
    mean[run] = gpu_garbage(cs, DType::F32);
    var[run] = gpu_garbage(cs, DType::F32);
    is[run] = gpu_garbage(cs, DType::F32);
    rm[run] = gpu(rm0);
    rv[run] = gpu(rv0);
    ops::batchnorm_forward_train(s, xg, gg, bg, eps, momentum, rm[run], rv[run], y[run], mean[run], var[run], is[run]);
  }
  // Statistics: double sums of the same values in another order, rounded to f32.
  EXPECT_TRUE(close_bf16(y[0], y_ref)) << "y";
  EXPECT_TRUE(close_f32(mean[0], mean_ref, 1e-6, 1e-5)) << "mean";
  EXPECT_TRUE(close_f32(var[0], var_ref, 1e-6, 1e-5)) << "biased variance";
  EXPECT_TRUE(close_f32(is[0], is_ref, 1e-6, 1e-5)) << "inverse std";
  EXPECT_TRUE(close_f32(rm[0], rm_ref, 1e-6, 1e-5)) << "running mean";
  EXPECT_TRUE(close_f32(rv[0], rv_ref, 1e-6, 1e-5)) << "running variance (unbiased)";
  for (Tensor* t : {y, mean, var, is, rm, rv}) EXPECT_TRUE(bitwise_equal(t[1], t[0]));
}

TEST_P(GpuBf16BatchNorm, InferenceMatchesEmulation) {
  if (cuda_device_count() == 0) GTEST_SKIP() << cuda_device_summary();
  const ReferenceKernels reference;
  const BatchNormShape& s = GetParam().s;
  const float eps = 1e-3f;
  const Shape xs{s.n, s.c, s.s}, cs{s.c};
  const Tensor x = random_bf16(xs, 51, -2.0f, 3.0f);
  const Tensor gamma = testing::random_tensor(cs, 52, 0.5f, 1.5f), beta = testing::random_tensor(cs, 53);
  const Tensor rm = testing::random_tensor(cs, 54), rv = testing::random_tensor(cs, 55, 0.5f, 2.0f);
  Tensor y_ref = cpu_empty(xs);
  ops::batchnorm_forward_infer(s, x, gamma, beta, rm, rv, eps, y_ref);
  Tensor y = gpu_garbage(xs);
  ops::batchnorm_forward_infer(s, gpu(x), gpu(gamma), gpu(beta), gpu(rm), gpu(rv), eps, y);
  EXPECT_TRUE(close_bf16(y, y_ref));
}

TEST_P(GpuBf16BatchNorm, BackwardMatchesEmulationAndRepeats) {
  if (cuda_device_count() == 0) GTEST_SKIP() << cuda_device_summary();
  const ReferenceKernels reference;
  const BatchNormShape& s = GetParam().s;
  const float eps = 1e-5f, momentum = 0.1f;
  const Shape xs{s.n, s.c, s.s}, cs{s.c};
  const Tensor x = random_bf16(xs, 61, -2.0f, 3.0f), dy = random_bf16(xs, 62);
  const Tensor gamma = testing::random_tensor(cs, 63, 0.5f, 1.5f), beta = testing::random_tensor(cs, 64);
  // Saved statistics from the CPU forward pass (what the layer hands to the backward).
  Tensor y = cpu_empty(xs), mean = cpu_empty(cs, DType::F32), var = cpu_empty(cs, DType::F32);
  Tensor inv_std = cpu_empty(cs, DType::F32), rm = Tensor::zeros(cs), rv = Tensor::full(cs, 1.0f);
  ops::batchnorm_forward_train(s, x, gamma, beta, eps, momentum, rm, rv, y, mean, var, inv_std);
  Tensor dx_ref = cpu_empty(xs), dg_ref = cpu_empty(cs, DType::F32), db_ref = cpu_empty(cs, DType::F32);
  ops::batchnorm_backward(s, x, dy, gamma, mean, inv_std, eps, dx_ref, dg_ref, db_ref);

  const Tensor xg = gpu(x), dyg = gpu(dy), gg = gpu(gamma), mg = gpu(mean), isg = gpu(inv_std);
  Tensor dx[2], dg[2], db[2];
  for (int run = 0; run < 2; ++run) {
    dx[run] = gpu_garbage(xs);
    dg[run] = gpu_garbage(cs, DType::F32);
    db[run] = gpu_garbage(cs, DType::F32);
    ops::batchnorm_backward(s, xg, dyg, gg, mg, isg, eps, dx[run], dg[run], db[run]);
  }
  const int64_t k = s.n * s.s;
  EXPECT_TRUE(close_bf16(dx[0], dx_ref)) << "dx";
  EXPECT_TRUE(close_f32(dg[0], dg_ref, tol(k), tol(k))) << "dgamma";
  EXPECT_TRUE(close_f32(db[0], db_ref, tol(k), tol(k))) << "dbeta";
  for (Tensor* t : {dx, dg, db}) EXPECT_TRUE(bitwise_equal(t[1], t[0]));
}

INSTANTIATE_TEST_SUITE_P(Shapes, GpuBf16BatchNorm, ::testing::ValuesIn(kBnCases),
                         [](const ::testing::TestParamInfo<BnCase>& info) { return std::string(info.param.name); });

// ---- linear ---------------------------------------------------------------------------------

struct LinearCase {
  const char* name;
  int64_t n, in, out;
  bool bias, want_dx;
};

const LinearCase kLinearCases[] = {
    {"one_by_one", 1, 1, 1, true, true},
    {"small_bias", 5, 7, 3, true, true},
    {"small_nobias", 5, 7, 3, false, true},
    {"classifier", 64, 300, 10, true, true},
    {"resnet_fc", 128, 512, 1000, true, true},
    {"odd_sizes_no_dx", 3, 17, 129, true, false},
    {"wide_nobias_no_dx", 33, 257, 65, false, false},
};

void PrintTo(const LinearCase& c, std::ostream* os) {
  *os << c.name << " n=" << c.n << " in=" << c.in << " out=" << c.out << (c.bias ? " bias" : "") << (c.want_dx ? " dx" : "");
}

class GpuBf16Linear : public ::testing::TestWithParam<LinearCase> {};

TEST_P(GpuBf16Linear, MatchesEmulationAndRepeats) {
  if (cuda_device_count() == 0) GTEST_SKIP() << cuda_device_summary();
  TTQ_REQUIRE_CUBLAS();
  const ReferenceKernels reference;
  const LinearCase& c = GetParam();
  const Shape xs{c.n, c.in}, ws{c.out, c.in}, ys{c.n, c.out}, bs{c.out};
  const Tensor x = random_bf16(xs, 71), w = random_bf16(ws, 72), dy = random_bf16(ys, 74);
  const Tensor b = testing::random_tensor(bs, 73);
  Tensor y_ref = cpu_empty(ys), dx_ref = cpu_empty(xs), dw_ref = cpu_empty(ws), db_ref = cpu_empty(bs, DType::F32);
  ops::linear_forward(x, w, c.bias ? &b : nullptr, y_ref);
  ops::linear_backward(x, w, dy, c.want_dx ? &dx_ref : nullptr, dw_ref, c.bias ? &db_ref : nullptr);

  const Tensor xg = gpu(x), wg = gpu(w), bg = gpu(b), dyg = gpu(dy);
  Tensor y[2], dx[2], dw[2], db[2];
  for (int run = 0; run < 2; ++run) {
    y[run] = gpu_garbage(ys);
    dx[run] = gpu_garbage(xs);
    dw[run] = gpu_garbage(ws);
    db[run] = gpu_garbage(bs, DType::F32);
    ops::linear_forward(xg, wg, c.bias ? &bg : nullptr, y[run]);
    ops::linear_backward(xg, wg, dyg, c.want_dx ? &dx[run] : nullptr, dw[run], c.bias ? &db[run] : nullptr);
  }
  EXPECT_TRUE(close_bf16(y[0], y_ref)) << "forward";
  EXPECT_TRUE(close_bf16(dw[0], dw_ref)) << "weight gradient";
  EXPECT_TRUE(bitwise_equal(y[1], y[0])) << "forward repeat";
  EXPECT_TRUE(bitwise_equal(dw[1], dw[0])) << "weight gradient repeat";
  if (c.want_dx) {
    EXPECT_TRUE(close_bf16(dx[0], dx_ref)) << "input gradient";
    EXPECT_TRUE(bitwise_equal(dx[1], dx[0])) << "input gradient repeat";
  } else {
    EXPECT_TRUE(bitwise_equal(dx[0], to_bf16_host(Tensor::full(xs, 7.25f)))) << "dx == null must leave the buffer alone";
  }
  if (c.bias) {
    EXPECT_TRUE(close_f32(db[0], db_ref, tol(c.n), tol(c.n))) << "bias gradient";
    EXPECT_TRUE(bitwise_equal(db[1], db[0])) << "bias gradient repeat";
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, GpuBf16Linear, ::testing::ValuesIn(kLinearCases),
                         [](const ::testing::TestParamInfo<LinearCase>& info) { return std::string(info.param.name); });

// ---- TTQ ----------------------------------------------------------------------------------------

const char* mode_name(ThresholdMode m) {
  switch (m) {
    case ThresholdMode::Max: return "Max";
    case ThresholdMode::Sparsity: return "Sparsity";
    case ThresholdMode::Twn: return "Twn";
  }
  return "?";
}

// Per tensor: bf16 w_t is the f32 w_t rounded, codes and D are those of the f32 op; outside TWN
// (whose D sums in another order on the CPU) also bitwise the CPU emulation.
TEST(GpuBf16, TtqForwardWritesRoundedWeights) {
  if (cuda_device_count() == 0) GTEST_SKIP() << cuda_device_summary();
  for (ThresholdMode mode : {ThresholdMode::Max, ThresholdMode::Sparsity, ThresholdMode::Twn}) {
    for (int64_t n : {int64_t{1}, int64_t{1000}, int64_t{3 * 3 * 64 * 64 + 5}, int64_t{(1 << 20) + 3}}) {
      SCOPED_TRACE(std::string(mode_name(mode)) + " n=" + std::to_string(n));
      const Tensor latent = testing::random_tensor({n}, 800 + n);
      const Tensor wp = scalar(1.3f), wn = scalar(0.7f);  // 0.7 is not a bf16 value: rounded
      const Tensor latent_dev = gpu(latent), wp_dev = gpu(wp), wn_dev = gpu(wn);

      Tensor th32 = gpu_empty({1}, DType::F32), sc32 = gpu_empty({1}, DType::F32);
      Tensor w_t32 = gpu_empty({n}, DType::F32), codes32 = gpu_empty({n}, DType::I8);
      ops::ttq_forward(mode, 0.05f, 0.4, latent_dev, wp_dev, wn_dev, th32, sc32, w_t32, codes32);

      Tensor th[2], sc[2], w_t[2], codes[2];
      for (int run = 0; run < 2; ++run) {
        th[run] = gpu_garbage({1}, DType::F32);
        sc[run] = gpu_garbage({1}, DType::F32);
        w_t[run] = gpu_garbage({n});
        codes[run] = gpu_empty({n}, DType::I8);
        ops::ttq_forward(mode, 0.05f, 0.4, latent_dev, wp_dev, wn_dev, th[run], sc[run], w_t[run], codes[run]);
      }
      EXPECT_TRUE(bitwise_equal(th[0], th32)) << "D";
      EXPECT_TRUE(bitwise_equal(sc[0], sc32)) << "TWN scale";
      EXPECT_TRUE(bitwise_equal(codes[0], codes32)) << "codes";
      EXPECT_TRUE(bitwise_equal(w_t[0], to_bf16_host(host(w_t32)))) << "w_t == round_bf16(f32 w_t)";
      for (Tensor* t : {th, sc, w_t, codes}) EXPECT_TRUE(bitwise_equal(t[1], t[0]));

      if (mode != ThresholdMode::Twn) {  // selections: the CPU's D exactly
        Tensor th_cpu = Tensor::empty({1}), sc_cpu = Tensor::empty({1}), w_t_cpu = cpu_empty({n});
        Tensor codes_cpu = Tensor::empty({n}, DType::I8);
        ops::ttq_forward(mode, 0.05f, 0.4, latent, wp, wn, th_cpu, sc_cpu, w_t_cpu, codes_cpu);
        EXPECT_TRUE(bitwise_equal(codes[0], codes_cpu)) << "codes vs CPU";
        EXPECT_TRUE(bitwise_equal(w_t[0], w_t_cpu)) << "w_t vs CPU";
      }
    }
  }
}

// An uninitialised device array of n T's, freed on scope exit.
template <class T>
class DeviceArray {
 public:
  explicit DeviceArray(int64_t n) : n_(n), p_(static_cast<T*>(device_malloc(std::max<size_t>(bytes(), 1)))) {}
  ~DeviceArray() { device_free_nothrow(p_); }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  T* get() const { return p_; }
  void upload(const std::vector<T>& host_values) {
    ASSERT_EQ(static_cast<int64_t>(host_values.size()), n_);
    device_copy(p_, Device::CUDA, host_values.data(), Device::CPU, bytes());
  }
  std::vector<T> download() const {
    std::vector<T> out(static_cast<size_t>(n_));
    device_copy(out.data(), Device::CPU, p_, Device::CUDA, bytes());
    return out;
  }

 private:
  size_t bytes() const { return static_cast<size_t>(n_) * sizeof(T); }
  int64_t n_;
  T* p_;
};

template <class T>
::testing::AssertionResult same_bytes(const std::vector<T>& got, const std::vector<T>& want, const char* what) {
  if (got.size() != want.size()) return ::testing::AssertionFailure() << what << ": sizes differ";
  for (size_t i = 0; i < got.size(); ++i)
    if (std::memcmp(&got[i], &want[i], sizeof(T)) != 0)
      return ::testing::AssertionFailure() << what << ": first difference at [" << i << "] of " << got.size();
  return ::testing::AssertionSuccess();
}

struct MultiSpec {
  int64_t n;
  ThresholdMode mode;
  float t;
  double r;
};

// The multi-tensor pass with bf16 w_t against the same pass with f32 w_t: codes, D and TWN scale
// bitwise the same, w_t_bf16 == round_bf16(w_t) bitwise, repeatable; and the layer validation.
TEST(GpuBf16, TtqMultiTensorBf16WeightsMatchF32Pass) {
  if (cuda_device_count() == 0) GTEST_SKIP() << cuda_device_summary();
  const std::vector<MultiSpec> specs = {
      {3 * 3 * 64 * 64, ThresholdMode::Max, 0.05f, 0.0}, {1000, ThresholdMode::Twn, 0.0f, 0.0},
      {4096 + 7, ThresholdMode::Sparsity, 0.0f, 0.4},    {7, ThresholdMode::Max, 0.2f, 0.0},
      {70000, ThresholdMode::Twn, 0.0f, 0.0},           {1, ThresholdMode::Sparsity, 0.0f, 0.5},
      {0, ThresholdMode::Max, 0.05f, 0.0},              {3 * 3 * 128 * 64, ThresholdMode::Max, 0.07f, 0.0},
  };
  std::vector<int64_t> off{0};
  for (const MultiSpec& s : specs) off.push_back(off.back() + s.n);
  const int64_t total = off.back();
  const int64_t layers = static_cast<int64_t>(specs.size());
  enum { kD, kTwn, kWp, kWn, kScalars };

  std::vector<float> w(static_cast<size_t>(total));
  testing::fill_random(w.data(), total, 900);
  std::vector<float> scalars0(static_cast<size_t>(layers * kScalars), -7.0f);
  for (int64_t l = 0; l < layers; ++l) {
    scalars0[static_cast<size_t>(l * kScalars + kWp)] = 1.0f + 0.05f * static_cast<float>(l);
    scalars0[static_cast<size_t>(l * kScalars + kWn)] = 0.6f + 0.03f * static_cast<float>(l);
  }
  DeviceArray<float> w_dev(total), w_t32(total), sc32(layers * kScalars), sc16(layers * kScalars);
  DeviceArray<bf16> w_t16(total);
  DeviceArray<int8_t> codes32(total), codes16(total);
  w_dev.upload(w);

  auto make_layers = [&](bool bf16_out, float* scalars, int8_t* codes) {
    std::vector<cuda::TtqMultiLayer> out;
    for (int64_t l = 0; l < layers; ++l) {
      const MultiSpec& s = specs[static_cast<size_t>(l)];
      const bool twn = s.mode == ThresholdMode::Twn;
      cuda::TtqMultiLayer layer;
      layer.w = w_dev.get() + off[static_cast<size_t>(l)];
      layer.n = s.n;
      if (bf16_out)
        layer.w_t_bf16 = w_t16.get() + off[static_cast<size_t>(l)];
      else
        layer.w_t = w_t32.get() + off[static_cast<size_t>(l)];
      layer.codes = codes + off[static_cast<size_t>(l)];
      layer.wp = twn ? nullptr : scalars + l * kScalars + kWp;
      layer.wn = twn ? nullptr : scalars + l * kScalars + kWn;
      layer.d = scalars + l * kScalars + kD;
      layer.twn_scale = scalars + l * kScalars + kTwn;
      layer.mode = s.mode;
      layer.t = s.t;
      layer.r = s.r;
      out.push_back(layer);
    }
    return out;
  };

  sc32.upload(scalars0);
  cuda::TtqMultiTensor f32_pass(make_layers(false, sc32.get(), codes32.get()));
  f32_pass.forward(cudaStreamPerThread);
  const std::vector<float> w_t_want = w_t32.download();
  const std::vector<int8_t> codes_want = codes32.download();
  const std::vector<float> scalars_want = sc32.download();
  std::vector<bf16> w_t16_want(w_t_want.size());
  for (size_t i = 0; i < w_t_want.size(); ++i) w_t16_want[i] = to_bf16(w_t_want[i]);

  cuda::TtqMultiTensor bf16_pass(make_layers(true, sc16.get(), codes16.get()));
  for (int run = 0; run < 2; ++run) {
    SCOPED_TRACE("run " + std::to_string(run));
    sc16.upload(scalars0);
    w_t16.upload(std::vector<bf16>(static_cast<size_t>(total), to_bf16(-7.0f)));
    codes16.upload(std::vector<int8_t>(static_cast<size_t>(total), int8_t{0x55}));
    bf16_pass.forward(cudaStreamPerThread);
    EXPECT_TRUE(same_bytes(sc16.download(), scalars_want, "D, TWN scale, Wp, Wn"));
    EXPECT_TRUE(same_bytes(codes16.download(), codes_want, "codes"));
    EXPECT_TRUE(same_bytes(w_t16.download(), w_t16_want, "w_t_bf16 vs round_bf16(w_t)"));
  }

  // Exactly one of w_t and w_t_bf16 per non-empty layer.
  auto build = [](std::vector<cuda::TtqMultiLayer> l) { cuda::TtqMultiTensor x(std::move(l)); };
  std::vector<cuda::TtqMultiLayer> both = make_layers(false, sc32.get(), codes32.get());
  both[0].w_t_bf16 = w_t16.get();
  EXPECT_THROW(build(both), Error);
  std::vector<cuda::TtqMultiLayer> neither = make_layers(true, sc32.get(), codes32.get());
  neither[3].w_t_bf16 = nullptr;
  EXPECT_THROW(build(neither), Error);
}

}  // namespace
}  // namespace ttq

#else  // !TTQ_HAVE_CUDA

TEST(GpuBf16, NotBuilt) { GTEST_SKIP() << "built without the CUDA backend"; }

#endif
