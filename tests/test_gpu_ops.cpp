// The project's CUDA ops (kernels/cuda/ops_elementwise.cu) against the CPU: the tensor-level ops of
// kernels/ops.h run on CPU tensors (the reference kernels, the CPU TTQ loops, the shared optimizer
// math) and on the same values copied to the GPU; softmax cross-entropy and top-k counting call
// ttq::cuda directly and compare with ttq::ref and a host loop. Fresh random inputs; exact
// comparisons where the GPU does the CPU's float operations (elementwise ops, shortcut, codes,
// softmax gradient), 1e-6 relative where sums are formed in another order, and a small tolerance
// for the optimizers (nvcc fuses multiply-adds). Every GPU result is also recomputed and required
// to be bitwise identical. Skips where no GPU (or no CUDA build) exists.
#include <gtest/gtest.h>

#ifdef TTQ_HAVE_CUDA

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "engine/core/tensor.h"
#include "kernels/act_math.h"
#include "kernels/cpu/ops_ref.h"
#include "kernels/cpu/ttq_cpu.h"
#include "kernels/cuda/ops_cuda.h"
#include "kernels/device.h"
#include "kernels/ops.h"
#include "kernels/ttq_math.h"
#include "tests/gpu_test_util.h"
#include "tests/test_util.h"

namespace ttq {
namespace {

using namespace gpu_test;
using math::ThresholdMode;

Tensor random(const Shape& shape, uint64_t seed, float lo = -1.0f, float hi = 1.0f) {
  return testing::random_tensor(shape, seed, lo, hi);
}

float value(const Tensor& t) { return host(t).data<float>()[0]; }

::testing::AssertionResult close(const Tensor& got, const Tensor& want, double atol, double rtol) {
  return testing::all_close(host(got), host(want), atol, rtol);
}

bool same_bits(float a, float b) { return std::memcmp(&a, &b, sizeof a) == 0; }

// One int64 in device memory.
class DeviceInt64 {
 public:
  DeviceInt64() : p_(static_cast<int64_t*>(device_malloc(sizeof(int64_t)))) {}
  ~DeviceInt64() { device_free_nothrow(p_); }
  DeviceInt64(const DeviceInt64&) = delete;
  DeviceInt64& operator=(const DeviceInt64&) = delete;
  int64_t* get() const { return p_; }
  int64_t read() const {
    int64_t v = 0;
    device_copy(&v, Device::CPU, p_, Device::CUDA, sizeof v);
    return v;
  }

 private:
  int64_t* p_;
};

// ---- layers ------------------------------------------------------------------------------------

TEST(GpuOps, GlobalAvgPool) {
  if (ttq::cuda_device_count() == 0) GTEST_SKIP() << ttq::cuda_device_summary();
  uint64_t seed = 10;
  for (const Shape& shape : {Shape{3, 5, 7, 9}, Shape{2, 4, 1, 1}, Shape{2, 3, 33, 35}, Shape{64, 64, 8, 8}}) {
    SCOPED_TRACE(shape_str(shape));
    const Tensor x = random(shape, ++seed);
    Tensor y = Tensor::empty({shape[0], shape[1]});
    ops::global_avgpool_forward(x, y);
    const Tensor x_dev = gpu(x);
    Tensor y_dev = Tensor::empty({shape[0], shape[1]}, DType::F32, Device::CUDA);
    ops::global_avgpool_forward(x_dev, y_dev);
    EXPECT_TRUE(close(y_dev, y, 1e-12, 1e-6));
    const Tensor first = host(y_dev);
    ops::global_avgpool_forward(x_dev, y_dev);
    EXPECT_TRUE(bitwise_equal(y_dev, first));

    const Tensor dy = random({shape[0], shape[1]}, ++seed);
    Tensor dx = Tensor::empty(shape);
    ops::global_avgpool_backward(dy, dx);
    Tensor dx_dev = Tensor::empty(shape, DType::F32, Device::CUDA);
    ops::global_avgpool_backward(gpu(dy), dx_dev);
    EXPECT_TRUE(bitwise_equal(dx_dev, dx));
  }
}

TEST(GpuOps, Relu) {
  if (ttq::cuda_device_count() == 0) GTEST_SKIP() << ttq::cuda_device_summary();
  // Sizes past one grid's worth of threads exercise the grid-stride loops.
  for (int64_t n : {int64_t{1}, int64_t{1000}, int64_t{(1 << 23) + 5}}) {
    SCOPED_TRACE("n=" + std::to_string(n));
    Tensor x = random({n}, 100 + n);
    x.data<float>()[0] = 0.0f;
    if (n > 2) x.data<float>()[2] = -0.0f;
    if (n > 3) x.data<float>()[3] = std::numeric_limits<float>::quiet_NaN();  // passes, with its gradient
    Tensor y = Tensor::empty({n});
    ops::relu_forward(x, y);
    const Tensor x_dev = gpu(x);
    Tensor y_dev = Tensor::empty({n}, DType::F32, Device::CUDA);
    ops::relu_forward(x_dev, y_dev);
    EXPECT_TRUE(bitwise_equal(y_dev, y));
    Tensor inplace = gpu(x);
    ops::relu_forward(inplace, inplace);
    EXPECT_TRUE(bitwise_equal(inplace, y));

    const Tensor dy = random({n}, 200 + n);
    Tensor dx = Tensor::empty({n});
    ops::relu_backward(y, dy, dx);
    Tensor dx_dev = Tensor::empty({n}, DType::F32, Device::CUDA);
    ops::relu_backward(y_dev, gpu(dy), dx_dev);
    EXPECT_TRUE(bitwise_equal(dx_dev, dx));
  }
}

TEST(GpuOps, ShortcutA) {
  if (ttq::cuda_device_count() == 0) GTEST_SKIP() << ttq::cuda_device_summary();
  uint64_t seed = 300;
  for (const ShortcutCase& c : kShortcutCases) {
    SCOPED_TRACE(c.str());
    const Shape xs = c.x_shape(), ys = c.y_shape();
    const Tensor x = random(xs, ++seed);
    Tensor y = Tensor::empty(ys);
    ops::shortcut_a_forward(c.stride, x, y);
    // Uninitialised output on the GPU: the padded channels must be written as zeros.
    Tensor y_dev = gpu(random(ys, ++seed, 5.0f, 6.0f));
    ops::shortcut_a_forward(c.stride, gpu(x), y_dev);
    EXPECT_TRUE(bitwise_equal(y_dev, y));

    const Tensor dy = random(ys, ++seed);
    Tensor dx = Tensor::empty(xs);
    ops::shortcut_a_backward(c.stride, dy, dx);
    Tensor dx_dev = Tensor::empty(xs, DType::F32, Device::CUDA);
    ops::shortcut_a_backward(c.stride, gpu(dy), dx_dev);
    EXPECT_TRUE(bitwise_equal(dx_dev, dx));
  }
}

TEST(GpuOps, AddAccumulateClamp) {
  if (ttq::cuda_device_count() == 0) GTEST_SKIP() << ttq::cuda_device_summary();
  for (int64_t n : {int64_t{3}, int64_t{4099}, int64_t{(1 << 22) + 1}}) {
    SCOPED_TRACE("n=" + std::to_string(n));
    const Tensor a = random({n}, 400 + n), b = random({n}, 500 + n);
    Tensor out = Tensor::empty({n});
    ops::add(a, b, out);
    const Tensor a_dev = gpu(a), b_dev = gpu(b);
    Tensor out_dev = Tensor::empty({n}, DType::F32, Device::CUDA);
    ops::add(a_dev, b_dev, out_dev);
    EXPECT_TRUE(bitwise_equal(out_dev, out));
    Tensor alias_a = gpu(a);  // out aliases a
    ops::add(alias_a, b_dev, alias_a);
    EXPECT_TRUE(bitwise_equal(alias_a, out));
    Tensor alias_b = gpu(b);  // out aliases b
    ops::add(a_dev, alias_b, alias_b);
    EXPECT_TRUE(bitwise_equal(alias_b, out));

    Tensor acc = a.clone();
    ops::add_accumulate(acc, b);
    Tensor acc_dev = gpu(a);
    ops::add_accumulate(acc_dev, b_dev);
    EXPECT_TRUE(bitwise_equal(acc_dev, acc));

    // NaN and -0 keep their bits (std::max semantics), everything below lo becomes lo.
    Tensor c = random({n}, 600 + n);
    c.data<float>()[0] = std::numeric_limits<float>::quiet_NaN();
    if (n > 1) c.data<float>()[1] = -0.0f;
    Tensor c_dev = gpu(c);
    ops::clamp_min_inplace(c, 0.0f);
    ops::clamp_min_inplace(c_dev, 0.0f);
    EXPECT_TRUE(bitwise_equal(c_dev, c));
    Tensor d = random({n}, 700 + n), d_dev = gpu(d);
    ops::clamp_min_inplace(d, 0.25f);
    ops::clamp_min_inplace(d_dev, 0.25f);
    EXPECT_TRUE(bitwise_equal(d_dev, d));
  }
}

// ---- TTQ ---------------------------------------------------------------------------------------

TEST(GpuOps, TtqForwardAllModes) {
  if (ttq::cuda_device_count() == 0) GTEST_SKIP() << ttq::cuda_device_summary();
  for (ThresholdMode mode : {ThresholdMode::Max, ThresholdMode::Sparsity, ThresholdMode::Twn}) {
    for (int64_t n : {int64_t{1}, int64_t{1000}, int64_t{3 * 3 * 64 * 64 + 5}, int64_t{(1 << 20) + 3}}) {
      SCOPED_TRACE(std::string(mode_name(mode)) + " n=" + std::to_string(n));
      const bool twn = mode == ThresholdMode::Twn;
      const Tensor latent = random({n}, 800 + n);
      const Tensor wp = scalar(1.3f), wn = scalar(0.7f);
      Tensor th = Tensor::empty({1}), scale = Tensor::empty({1}), w_t = Tensor::empty({n});
      Tensor codes = Tensor::empty({n}, DType::I8);
      ops::ttq_forward(mode, 0.05f, 0.4, latent, wp, wn, th, scale, w_t, codes);

      const Tensor latent_dev = gpu(latent), wp_dev = gpu(wp), wn_dev = gpu(wn);
      Tensor th_dev = Tensor::empty({1}, DType::F32, Device::CUDA);
      Tensor scale_dev = Tensor::empty({1}, DType::F32, Device::CUDA);
      Tensor w_t_dev = Tensor::empty({n}, DType::F32, Device::CUDA);
      Tensor codes_dev = Tensor::empty({n}, DType::I8, Device::CUDA);
      ops::ttq_forward(mode, 0.05f, 0.4, latent_dev, wp_dev, wn_dev, th_dev, scale_dev, w_t_dev, codes_dev);

      const float d_got = value(th_dev), s_got = value(scale_dev);
      if (twn) {  // sums in another order
        EXPECT_NEAR(d_got, value(th), 1e-6 * std::fabs(value(th)));
        EXPECT_NEAR(s_got, value(scale), 1e-6 * std::fabs(value(scale)));
      } else {  // selections: exact
        EXPECT_TRUE(same_bits(d_got, value(th))) << d_got << " vs " << value(th);
        EXPECT_TRUE(same_bits(s_got, 0.0f)) << s_got;
      }
      // Codes and weights exactly as the CPU loop gives them from the device's own D and scale
      // (the same as the CPU op's whenever D agrees bitwise, which it does outside TWN mode).
      Tensor w_t_want = Tensor::empty({n}), codes_want = Tensor::empty({n}, DType::I8);
      cpu::ttq_ternarize(latent.data<float>(), n, d_got, twn ? s_got : 1.3f, twn ? s_got : 0.7f,
                         w_t_want.data<float>(), codes_want.data<int8_t>());
      EXPECT_TRUE(bitwise_equal(codes_dev, codes_want));
      EXPECT_TRUE(bitwise_equal(w_t_dev, w_t_want));
      if (!twn) {
        EXPECT_TRUE(bitwise_equal(codes_dev, codes));
        EXPECT_TRUE(bitwise_equal(w_t_dev, w_t));
      }

      // Run again: bitwise the same.
      const Tensor codes_first = host(codes_dev), w_t_first = host(w_t_dev);
      ops::ttq_forward(mode, 0.05f, 0.4, latent_dev, wp_dev, wn_dev, th_dev, scale_dev, w_t_dev, codes_dev);
      EXPECT_TRUE(same_bits(value(th_dev), d_got));
      EXPECT_TRUE(same_bits(value(scale_dev), s_got));
      EXPECT_TRUE(bitwise_equal(codes_dev, codes_first));
      EXPECT_TRUE(bitwise_equal(w_t_dev, w_t_first));
    }
  }
}

TEST(GpuOps, TtqBackwardAccumulate) {
  if (ttq::cuda_device_count() == 0) GTEST_SKIP() << ttq::cuda_device_summary();
  for (bool scale_latent : {true, false}) {
    for (int64_t n : {int64_t{1}, int64_t{1000}, int64_t{3 * 3 * 64 * 64 + 5}, int64_t{(1 << 20) + 3}}) {
      SCOPED_TRACE(std::string(scale_latent ? "scaled" : "plain") + " n=" + std::to_string(n));
      // Codes from a CPU ternarization of random weights (all three codes occur).
      const Tensor w = random({n}, 900 + n);
      Tensor w_t = Tensor::empty({n}), codes = Tensor::empty({n}, DType::I8);
      cpu::ttq_ternarize(w.data<float>(), n, 0.3f, 1.3f, 0.7f, w_t.data<float>(), codes.data<int8_t>());
      const Tensor g = random({n}, 1000 + n), latent0 = random({n}, 1100 + n);
      const Tensor wp = scalar(1.3f), wn = scalar(0.7f);

      Tensor latent = latent0.clone(), dwp = scalar(0.25f), dwn = scalar(-0.5f);
      ops::ttq_backward_accumulate(codes, g, wp, wn, scale_latent, latent, dwp, dwn);

      const Tensor codes_dev = gpu(codes), g_dev = gpu(g), wp_dev = gpu(wp), wn_dev = gpu(wn);
      Tensor first_latent, first_dwp, first_dwn;
      for (int run = 0; run < 2; ++run) {
        Tensor latent_dev = gpu(latent0), dwp_dev = gpu(scalar(0.25f)), dwn_dev = gpu(scalar(-0.5f));
        ops::ttq_backward_accumulate(codes_dev, g_dev, wp_dev, wn_dev, scale_latent, latent_dev, dwp_dev, dwn_dev);
        if (run == 0) {
          EXPECT_TRUE(close(latent_dev, latent, 0.0, 1e-6));
          if (scale_latent) {
            EXPECT_NEAR(value(dwp_dev), value(dwp), 1e-6 * (std::fabs(value(dwp)) + 1.0));
            EXPECT_NEAR(value(dwn_dev), value(dwn), 1e-6 * (std::fabs(value(dwn)) + 1.0));
          } else {  // no scale gradients at all
            EXPECT_TRUE(same_bits(value(dwp_dev), 0.25f));
            EXPECT_TRUE(same_bits(value(dwn_dev), -0.5f));
            EXPECT_TRUE(same_bits(value(dwp), 0.25f));
            EXPECT_TRUE(same_bits(value(dwn), -0.5f));
          }
          first_latent = host(latent_dev);
          first_dwp = host(dwp_dev);
          first_dwn = host(dwn_dev);
        } else {
          EXPECT_TRUE(bitwise_equal(latent_dev, first_latent));
          EXPECT_TRUE(bitwise_equal(dwp_dev, first_dwp));
          EXPECT_TRUE(bitwise_equal(dwn_dev, first_dwn));
        }
      }
    }
  }
}

// Per-output-channel scales (one block per row on the GPU): codes and w_t bitwise as the CPU's,
// latent gradients and each row's scale gradients (added into what was there) within float
// tolerance, bitwise repeatable; rows of one element, of several hundred and of over a kChunk.
TEST(GpuOps, TtqPerChannelScales) {
  if (ttq::cuda_device_count() == 0) GTEST_SKIP() << ttq::cuda_device_summary();
  struct Shape2 {
    int64_t rows, per;
  };
  for (const Shape2 sh : {Shape2{5, 1}, Shape2{64, 3 * 3 * 64}, Shape2{3, 40000}}) {
    for (ThresholdMode mode : {ThresholdMode::Max, ThresholdMode::Sparsity}) {
      const int64_t n = sh.rows * sh.per;
      SCOPED_TRACE(std::string(mode_name(mode)) + " " + std::to_string(sh.rows) + " rows of " + std::to_string(sh.per));
      const Tensor latent = random({sh.rows, sh.per}, 1200 + n);
      Tensor wp = Tensor::empty({sh.rows}), wn = Tensor::empty({sh.rows});
      for (int64_t c = 0; c < sh.rows; ++c) {
        wp.data<float>()[c] = 0.5f + 0.01f * static_cast<float>(c);
        wn.data<float>()[c] = 1.5f - 0.01f * static_cast<float>(c);
      }
      Tensor th = Tensor::empty({1}), scale = Tensor::empty({1}), w_t = Tensor::empty({sh.rows, sh.per});
      Tensor codes = Tensor::empty({sh.rows, sh.per}, DType::I8);
      ops::ttq_forward(mode, 0.05f, 0.4, latent, wp, wn, th, scale, w_t, codes);
      const Tensor g = random({sh.rows, sh.per}, 1300 + n), latent0 = random({sh.rows, sh.per}, 1400 + n);
      Tensor latent_grad = latent0.clone(), dwp = Tensor::full({sh.rows}, 0.25f), dwn = Tensor::full({sh.rows}, -0.5f);
      ops::ttq_backward_accumulate(codes, g, wp, wn, true, latent_grad, dwp, dwn);

      Tensor first_codes, first_w_t, first_latent, first_dwp, first_dwn;
      for (int run = 0; run < 2; ++run) {
        const Tensor latent_dev = gpu(latent), wp_dev = gpu(wp), wn_dev = gpu(wn);
        Tensor th_dev = gpu(th), scale_dev = gpu(scale), w_t_dev = gpu(Tensor::zeros({sh.rows, sh.per}));
        Tensor codes_dev = gpu(Tensor::zeros({sh.rows, sh.per}, DType::I8));
        ops::ttq_forward(mode, 0.05f, 0.4, latent_dev, wp_dev, wn_dev, th_dev, scale_dev, w_t_dev, codes_dev);
        Tensor latent_dev_grad = gpu(latent0), dwp_dev = gpu(Tensor::full({sh.rows}, 0.25f));
        Tensor dwn_dev = gpu(Tensor::full({sh.rows}, -0.5f));
        ops::ttq_backward_accumulate(codes_dev, gpu(g), wp_dev, wn_dev, true, latent_dev_grad, dwp_dev, dwn_dev);
        if (run == 0) {
          EXPECT_TRUE(same_bits(value(th_dev), value(th)));
          EXPECT_TRUE(bitwise_equal(codes_dev, codes));
          EXPECT_TRUE(bitwise_equal(w_t_dev, w_t));
          EXPECT_TRUE(close(latent_dev_grad, latent_grad, 0.0, 1e-6));
          const Tensor p = host(dwp_dev), m = host(dwn_dev);
          for (int64_t c = 0; c < sh.rows; ++c) {
            EXPECT_NEAR(p.data<float>()[c], dwp.data<float>()[c], 1e-6 * (std::fabs(dwp.data<float>()[c]) + 1.0)) << c;
            EXPECT_NEAR(m.data<float>()[c], dwn.data<float>()[c], 1e-6 * (std::fabs(dwn.data<float>()[c]) + 1.0)) << c;
          }
          first_codes = host(codes_dev);
          first_w_t = host(w_t_dev);
          first_latent = host(latent_dev_grad);
          first_dwp = host(dwp_dev);
          first_dwn = host(dwn_dev);
        } else {  // the second run repeats the first bit for bit
          for (auto [got, want] : {std::pair{&codes_dev, &first_codes}, {&w_t_dev, &first_w_t},
                                   {&latent_dev_grad, &first_latent}, {&dwp_dev, &first_dwp}, {&dwn_dev, &first_dwn}})
            EXPECT_TRUE(bitwise_equal(*got, *want));
        }
      }
      // w_t in bf16 (precision "bf16"): each row's Wp, 0, -Wn rounded to nearest even, as the CPU
      // rounds its f32 w_t.
      Tensor w_t_bf = Tensor::empty({sh.rows, sh.per}, DType::BF16);
      ops::ttq_forward(mode, 0.05f, 0.4, latent, wp, wn, th, scale, w_t_bf, codes);
      Tensor th_dev = gpu(th), scale_dev = gpu(scale);
      Tensor w_t_bf_dev = Tensor::empty({sh.rows, sh.per}, DType::BF16, Device::CUDA);
      Tensor codes_dev = Tensor::empty({sh.rows, sh.per}, DType::I8, Device::CUDA);
      ops::ttq_forward(mode, 0.05f, 0.4, gpu(latent), gpu(wp), gpu(wn), th_dev, scale_dev, w_t_bf_dev, codes_dev);
      EXPECT_TRUE(bitwise_equal(w_t_bf_dev, w_t_bf));
      EXPECT_TRUE(bitwise_equal(codes_dev, codes));
    }
  }
}

// ---- optimizers ----------------------------------------------------------------------------------
// nvcc contracts a*b + c into fused multiply-adds, the CPU build does not: allow a few ulps.
constexpr double kOptAtol = 1e-6, kOptRtol = 1e-6;

struct SgdCase {
  float momentum;
  bool nesterov;
  bool with_buffer;
};

TEST(GpuOps, Sgd) {
  if (ttq::cuda_device_count() == 0) GTEST_SKIP() << ttq::cuda_device_summary();
  for (const SgdCase& c : {SgdCase{0.9f, false, true}, SgdCase{0.9f, true, true}, SgdCase{0.0f, false, false},
                           SgdCase{0.0f, false, true}}) {
    for (int64_t n : {int64_t{5}, int64_t{100003}}) {
      SCOPED_TRACE("momentum=" + std::to_string(c.momentum) + " nesterov=" + std::to_string(c.nesterov) +
                   " buffer=" + std::to_string(c.with_buffer) + " n=" + std::to_string(n));
      Tensor p = random({n}, 1200 + n), buf = random({n}, 1300 + n);  // garbage buffer before step 1
      Tensor first_p, first_buf;
      for (int run = 0; run < 2; ++run) {
        Tensor p_dev = gpu(p), buf_dev = gpu(buf);
        Tensor p_cpu = p.clone(), buf_cpu = buf.clone();
        for (int step = 0; step < 3; ++step) {  // the first step fills the buffer
          const Tensor g = random({n}, 1400 + 10 * n + step);
          const bool first = step == 0;
          ops::sgd_update(p_dev, gpu(g), c.with_buffer ? &buf_dev : nullptr, 0.1f, c.momentum, 5e-4f, c.nesterov,
                          first);
          if (run == 0)
            ops::sgd_update(p_cpu, g, c.with_buffer ? &buf_cpu : nullptr, 0.1f, c.momentum, 5e-4f, c.nesterov, first);
        }
        if (run == 0) {
          EXPECT_TRUE(close(p_dev, p_cpu, kOptAtol, kOptRtol));
          EXPECT_TRUE(close(buf_dev, buf_cpu, kOptAtol, kOptRtol));
          first_p = host(p_dev);
          first_buf = host(buf_dev);
        } else {
          EXPECT_TRUE(bitwise_equal(p_dev, first_p));
          EXPECT_TRUE(bitwise_equal(buf_dev, first_buf));
        }
      }
    }
  }
}

TEST(GpuOps, Adam) {
  if (ttq::cuda_device_count() == 0) GTEST_SKIP() << ttq::cuda_device_summary();
  const float b1 = 0.9f, b2 = 0.999f;
  for (float wd : {0.0f, 1e-4f}) {
    for (int64_t n : {int64_t{7}, int64_t{100003}}) {
      SCOPED_TRACE("wd=" + std::to_string(wd) + " n=" + std::to_string(n));
      const Tensor p0 = random({n}, 1500 + n);
      Tensor first_p, first_m, first_v;
      for (int run = 0; run < 2; ++run) {
        Tensor p_dev = gpu(p0), m_dev = gpu(Tensor::zeros({n})), v_dev = gpu(Tensor::zeros({n}));
        Tensor p = p0.clone(), m = Tensor::zeros({n}), v = Tensor::zeros({n});
        for (int t = 1; t <= 3; ++t) {
          const Tensor g = random({n}, 1600 + 10 * n + t);
          const float bc1 = 1.0f - std::pow(b1, static_cast<float>(t));
          const float bc2 = 1.0f - std::pow(b2, static_cast<float>(t));
          ops::adam_update(p_dev, gpu(g), m_dev, v_dev, 1e-3f, b1, b2, 1e-8f, wd, bc1, bc2);
          if (run == 0) ops::adam_update(p, g, m, v, 1e-3f, b1, b2, 1e-8f, wd, bc1, bc2);
        }
        if (run == 0) {
          EXPECT_TRUE(close(p_dev, p, kOptAtol, kOptRtol));
          EXPECT_TRUE(close(m_dev, m, kOptAtol, kOptRtol));
          EXPECT_TRUE(close(v_dev, v, kOptAtol, kOptRtol));
          first_p = host(p_dev);
          first_m = host(m_dev);
          first_v = host(v_dev);
        } else {
          EXPECT_TRUE(bitwise_equal(p_dev, first_p));
          EXPECT_TRUE(bitwise_equal(m_dev, first_m));
          EXPECT_TRUE(bitwise_equal(v_dev, first_v));
        }
      }
    }
  }
}

// ---- loss and accuracy -----------------------------------------------------------------------------

struct XentCase {
  int64_t n, classes;
  float smoothing;
};

TEST(GpuOps, SoftmaxCrossEntropy) {
  if (ttq::cuda_device_count() == 0) GTEST_SKIP() << ttq::cuda_device_summary();
  uint64_t seed = 1700;
  for (const XentCase& c : {XentCase{1, 1, 0.0f}, XentCase{7, 10, 0.0f}, XentCase{128, 10, 0.1f},
                            XentCase{33, 1000, 0.1f}, XentCase{5, 37, 0.3f}}) {
    SCOPED_TRACE("n=" + std::to_string(c.n) + " classes=" + std::to_string(c.classes) +
                 " smoothing=" + std::to_string(c.smoothing));
    const Tensor logits = random({c.n, c.classes}, ++seed, -8.0f, 8.0f);
    const Tensor labels = int_labels(c.n, c.classes, ++seed);
    Tensor probs = Tensor::empty({c.n, c.classes});
    const double want = ref::softmax_xent_forward(c.n, c.classes, logits.data<float>(), labels.data<int32_t>(),
                                                  c.smoothing, probs.data<float>());

    const Tensor logits_dev = gpu(logits), labels_dev = gpu(labels);
    Tensor probs_dev = Tensor::empty({c.n, c.classes}, DType::F32, Device::CUDA);
    Tensor loss_dev = Tensor::empty({1}, DType::F32, Device::CUDA);
    cuda::softmax_xent_forward(c.n, c.classes, logits_dev.data_ptr<float>(), labels_dev.data_ptr<int32_t>(), c.smoothing,
                               probs_dev.data_ptr<float>(), loss_dev.data_ptr<float>());
    const float loss = value(loss_dev);
    EXPECT_NEAR(loss, want, 1e-6 * std::fabs(want) + 1e-7);
    EXPECT_TRUE(close(probs_dev, probs, 1e-12, 1e-6));
    const Tensor first_probs = host(probs_dev);
    cuda::softmax_xent_forward(c.n, c.classes, logits_dev.data_ptr<float>(), labels_dev.data_ptr<int32_t>(), c.smoothing,
                               probs_dev.data_ptr<float>(), loss_dev.data_ptr<float>());
    EXPECT_TRUE(same_bits(value(loss_dev), loss));
    EXPECT_TRUE(bitwise_equal(probs_dev, first_probs));

    // Backward from the same probabilities on both sides: exact.
    Tensor dlogits = Tensor::empty({c.n, c.classes});
    ref::softmax_xent_backward(c.n, c.classes, probs.data<float>(), labels.data<int32_t>(), c.smoothing,
                               dlogits.data<float>());
    const Tensor probs_cpu_dev = gpu(probs);
    Tensor dlogits_dev = Tensor::empty({c.n, c.classes}, DType::F32, Device::CUDA);
    cuda::softmax_xent_backward(c.n, c.classes, probs_cpu_dev.data_ptr<float>(), labels_dev.data_ptr<int32_t>(), c.smoothing,
                                dlogits_dev.data_ptr<float>());
    EXPECT_TRUE(bitwise_equal(dlogits_dev, dlogits));

    // The same through the device-dispatching tensor ops.
    Tensor probs_op = Tensor::empty({c.n, c.classes}, DType::F32, Device::CUDA);
    EXPECT_TRUE(same_bits(static_cast<float>(ops::softmax_xent_forward(logits_dev, labels_dev, c.smoothing, probs_op)),
                          loss));
    EXPECT_TRUE(bitwise_equal(probs_op, first_probs));
    Tensor dlogits_op = Tensor::empty({c.n, c.classes}, DType::F32, Device::CUDA);
    ops::softmax_xent_backward(probs_cpu_dev, labels_dev, c.smoothing, dlogits_op);
    EXPECT_TRUE(bitwise_equal(dlogits_op, dlogits));
  }
  // A label outside [0, classes) makes the loss NaN (the device path does not read labels on the
  // host), which the finite-loss checks report.
  for (int32_t bad : {5, -1}) {
    const Tensor logits_dev = gpu(random({2, 5}, 1799, -1.0f, 1.0f));
    const Tensor labels_dev = gpu(Tensor::from_int32({1, bad}));
    Tensor probs_dev = Tensor::empty({2, 5}, DType::F32, Device::CUDA);
    Tensor loss_dev = Tensor::empty({1}, DType::F32, Device::CUDA);
    cuda::softmax_xent_forward(2, 5, logits_dev.data_ptr<float>(), labels_dev.data_ptr<int32_t>(), 0.0f,
                               probs_dev.data_ptr<float>(), loss_dev.data_ptr<float>());
    EXPECT_TRUE(std::isnan(value(loss_dev))) << "label " << bad;
  }
}

// Rows whose label is among the k largest logits, ties to the lower index, NaN above every number
// (the CPU definition).
int64_t count_topk_host(const Tensor& logits, const Tensor& labels, int k) {
  const int64_t n = logits.dim(0), c = logits.dim(1);
  int64_t correct = 0;
  for (int64_t b = 0; b < n; ++b) {
    const float* z = logits.data<float>() + b * c;
    const int32_t label = labels.data<int32_t>()[b];
    int64_t above = 0;
    for (int64_t j = 0; j < c; ++j) above += math::ranks_before(z[j], j, z[label], label);
    if (above < k) ++correct;
  }
  return correct;
}

TEST(GpuOps, CountTopkCorrect) {
  if (ttq::cuda_device_count() == 0) GTEST_SKIP() << ttq::cuda_device_summary();
  uint64_t seed = 1900;
  DeviceInt64 correct;
  for (int64_t classes : {int64_t{1}, int64_t{10}, int64_t{100}, int64_t{1000}}) {
    for (int64_t n : {int64_t{1}, int64_t{300}, int64_t{4096}}) {
      Tensor logits = random({n, classes}, ++seed);
      // Coarse values: many ties, so the lower-index rule matters.
      for (int64_t i = 0; i < logits.numel(); ++i)
        logits.data<float>()[i] = std::round(logits.data<float>()[i] * 4.0f) / 4.0f;
      for (int64_t i = 7; i < logits.numel(); i += 97) logits.data<float>()[i] = NAN;  // NaN ranks first
      const Tensor labels = int_labels(n, classes, ++seed);
      const Tensor logits_dev = gpu(logits), labels_dev = gpu(labels);
      for (int k : {1, 5}) {
        SCOPED_TRACE("classes=" + std::to_string(classes) + " n=" + std::to_string(n) + " k=" + std::to_string(k));
        const int64_t want = count_topk_host(logits, labels, k);
        cuda::count_topk_correct(n, classes, logits_dev.data_ptr<float>(), labels_dev.data_ptr<int32_t>(), k, correct.get());
        EXPECT_EQ(correct.read(), want);
        cuda::count_topk_correct(n, classes, logits_dev.data_ptr<float>(), labels_dev.data_ptr<int32_t>(), k, correct.get());
        EXPECT_EQ(correct.read(), want);
        EXPECT_EQ(ops::count_topk_correct(logits_dev, labels_dev, k), want);  // the tensor op
      }
    }
  }
}

}  // namespace
}  // namespace ttq

#else  // !TTQ_HAVE_CUDA

TEST(GpuOps, NotBuilt) { GTEST_SKIP() << "built without the CUDA backend"; }

#endif
