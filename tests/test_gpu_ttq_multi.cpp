// The multi-tensor CUDA TTQ passes (kernels/cuda/ttq_multi.h) on the quantized layers of
// ResNet-18 plus tiny and odd sizes, with mixed threshold modes: against the CPU loops
// (kernels/cpu/ttq_cpu.h) and the per-tensor CUDA kernels (kernels/cuda/ttq_kernels.h), bitwise
// repeatable from run to run, and in a constant number of launches. Skips where no GPU (or no
// CUDA build) exists.
#include <gtest/gtest.h>

#ifdef TTQ_HAVE_CUDA

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <iostream>
#include <string>
#include <vector>

#include "kernels/cpu/ttq_cpu.h"
#include "kernels/cuda/ttq_kernels.h"
#include "kernels/cuda/ttq_multi.h"
#include "kernels/device.h"
#include "tests/test_util.h"

namespace ttq {
namespace {

using math::ThresholdMode;

// Kernels run on the stream device_malloc/device_copy use, so device_copy's sync orders them.
const cudaStream_t kStream = cudaStreamPerThread;

// An uninitialised device array of n T's, freed on scope exit.
template <class T>
class DeviceArray {
 public:
  explicit DeviceArray(int64_t n)
      : n_(n), p_(static_cast<T*>(device_malloc(std::max<size_t>(bytes(), 1)))) {}
  ~DeviceArray() { device_free_nothrow(p_); }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;

  T* get() const { return p_; }
  void upload(const std::vector<T>& host) {
    ASSERT_EQ(static_cast<int64_t>(host.size()), n_);
    device_copy(p_, Device::CUDA, host.data(), Device::CPU, bytes());
  }
  std::vector<T> download() const {
    std::vector<T> host(static_cast<size_t>(n_));
    device_copy(host.data(), Device::CPU, p_, Device::CUDA, bytes());
    return host;
  }

 private:
  size_t bytes() const { return static_cast<size_t>(n_) * sizeof(T); }
  int64_t n_;
  T* p_;
};

bool same_bits(float a, float b) { return std::memcmp(&a, &b, sizeof(float)) == 0; }

// Element-by-element bit equality of n values, naming the first difference.
template <class T>
::testing::AssertionResult bitwise_equal(const T* got, const T* want, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    if (std::memcmp(&got[i], &want[i], sizeof(T)) != 0)
      return ::testing::AssertionFailure() << "first difference at [" << i << "] of " << n << ": "
                                           << +got[i] << " vs " << +want[i];
  return ::testing::AssertionSuccess();
}
template <class T>
::testing::AssertionResult bitwise_equal(const std::vector<T>& got, const std::vector<T>& want) {
  if (got.size() != want.size())
    return ::testing::AssertionFailure() << "sizes " << got.size() << " vs " << want.size();
  return bitwise_equal(got.data(), want.data(), static_cast<int64_t>(got.size()));
}

// |got - want| <= rel * |want| (exact when want is 0).
::testing::AssertionResult near_rel(double got, double want, double rel) {
  if (std::fabs(got - want) <= rel * std::fabs(want)) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << got << " vs " << want << " (relative tolerance " << rel
                                       << ")";
}

// ---- the layers ------------------------------------------------------------------------------

struct LayerSpec {
  int64_t n;
  ThresholdMode mode;
  float t;
  double r;
};

// The quantized convolutions of ResNet-18 (stem conv and final FC stay full precision).
std::vector<int64_t> resnet18_sizes() {
  auto conv = [](int64_t out, int64_t in, int64_t k) { return out * in * k * k; };
  std::vector<int64_t> s;
  for (int i = 0; i < 4; ++i) s.push_back(conv(64, 64, 3));
  s.push_back(conv(128, 64, 3));
  s.push_back(conv(128, 64, 1));
  for (int i = 0; i < 3; ++i) s.push_back(conv(128, 128, 3));
  s.push_back(conv(256, 128, 3));
  s.push_back(conv(256, 128, 1));
  for (int i = 0; i < 3; ++i) s.push_back(conv(256, 256, 3));
  s.push_back(conv(512, 256, 3));
  s.push_back(conv(512, 256, 1));
  for (int i = 0; i < 3; ++i) s.push_back(conv(512, 512, 3));
  return s;
}

std::vector<LayerSpec> resnet18_all_max() {
  std::vector<LayerSpec> layers;
  for (int64_t n : resnet18_sizes()) layers.push_back({n, ThresholdMode::Max, 0.05f, 0.0});
  return layers;
}

// ResNet-18's layers in every mode (Max with different t per layer, Twn, Sparsity with different
// r), then tiny and odd sizes, an empty layer, and a sparsity layer whose rank is below 0 (D = 0).
std::vector<LayerSpec> mixed_layers() {
  const float ts[] = {0.05f, 0.049f, 0.07f, 0.1f};
  const double rs[] = {0.3, 0.5, 0.42};
  std::vector<LayerSpec> layers;
  int i = 0;
  for (int64_t n : resnet18_sizes()) {
    if (i % 6 == 2)
      layers.push_back({n, ThresholdMode::Twn, 0.0f, 0.0});
    else if (i % 6 == 4)
      layers.push_back({n, ThresholdMode::Sparsity, 0.0f, rs[i % 3]});
    else
      layers.push_back({n, ThresholdMode::Max, ts[i % 4], 0.0});
    ++i;
  }
  layers.push_back({1, ThresholdMode::Max, 0.05f, 0.0});
  layers.push_back({7, ThresholdMode::Twn, 0.0f, 0.0});
  layers.push_back({1000, ThresholdMode::Sparsity, 0.0f, 0.3});
  layers.push_back({7, ThresholdMode::Max, 0.2f, 0.0});
  layers.push_back({1000, ThresholdMode::Max, 0.05f, 0.0});
  layers.push_back({1000, ThresholdMode::Twn, 0.0f, 0.0});
  layers.push_back({7, ThresholdMode::Sparsity, 0.0f, 0.5});
  layers.push_back({1, ThresholdMode::Sparsity, 0.0f, 0.5});  // k = floor(0.5) = 0: D = 0
  layers.push_back({0, ThresholdMode::Max, 0.05f, 0.0});
  return layers;
}

// Per-layer device scalars, kScalars floats per layer.
enum Scalar { kD, kTwnScale, kWp, kWn, kDwp, kDwn, kScalars };
constexpr float kSentinel = -7.0f;  // in every output slot before a run

// Everything one run produces.
struct Outputs {
  std::vector<float> scalars, w_t, latent;
  std::vector<int8_t> codes;
};

// All layers' tensors in one device array per kind; layer l at offset(l).
class Model {
 public:
  explicit Model(std::vector<LayerSpec> specs)
      : specs_(std::move(specs)),
        offsets_(offsets_of(specs_)),
        total_(offsets_.back()),
        w_dev_(total_), g_dev_(total_), latent_dev_(total_), w_t_dev_(total_),
        codes_dev_(total_),
        scalars_dev_(static_cast<int64_t>(specs_.size()) * kScalars) {
    w_.resize(static_cast<size_t>(total_));
    g_.resize(static_cast<size_t>(total_));
    latent0_.resize(static_cast<size_t>(total_));
    scalars0_.assign(specs_.size() * kScalars, kSentinel);
    for (size_t l = 0; l < specs_.size(); ++l) {
      const int64_t off = offset(l), n = specs_[l].n;
      testing::fill_random(w_.data() + off, n, 100 + l);
      testing::fill_random(g_.data() + off, n, 200 + l);
      testing::fill_random(latent0_.data() + off, n, 300 + l);
      scalar0(l, kWp) = 1.0f + 0.05f * static_cast<float>(l);
      scalar0(l, kWn) = 0.6f + 0.03f * static_cast<float>(l);
      // The backward adds into the scale gradients: they start at zero, as zero_grad leaves them.
      scalar0(l, kDwp) = scalar0(l, kDwn) = 0.0f;
    }
    w_dev_.upload(w_);
    g_dev_.upload(g_);
  }

  size_t size() const { return specs_.size(); }
  const LayerSpec& spec(size_t l) const { return specs_[l]; }
  int64_t offset(size_t l) const { return offsets_[l]; }
  bool twn(size_t l) const { return specs_[l].mode == ThresholdMode::Twn; }
  float& scalar0(size_t l, Scalar s) { return scalars0_[l * kScalars + s]; }
  float scalar0(size_t l, Scalar s) const { return scalars0_[l * kScalars + s]; }
  float* scalar_dev(size_t l, Scalar s) const { return scalars_dev_.get() + l * kScalars + s; }

  const float* w(size_t l) const { return w_.data() + offset(l); }
  const float* g(size_t l) const { return g_.data() + offset(l); }
  const float* latent0(size_t l) const { return latent0_.data() + offset(l); }
  const float* w_dev(size_t l) const { return w_dev_.get() + offset(l); }
  const float* g_dev(size_t l) const { return g_dev_.get() + offset(l); }
  int8_t* codes_dev(size_t l) const { return codes_dev_.get() + offset(l); }

  std::vector<cuda::TtqMultiLayer> layers() const {
    std::vector<cuda::TtqMultiLayer> out;
    for (size_t l = 0; l < size(); ++l) {
      const int64_t off = offset(l);
      cuda::TtqMultiLayer layer;
      layer.w = w_dev_.get() + off;
      layer.n = specs_[l].n;
      layer.w_t = w_t_dev_.get() + off;
      layer.codes = codes_dev_.get() + off;
      layer.wp = twn(l) ? nullptr : scalar_dev(l, kWp);  // TWN layers need no Wp/Wn
      layer.wn = twn(l) ? nullptr : scalar_dev(l, kWn);
      layer.d = scalar_dev(l, kD);
      layer.twn_scale = scalar_dev(l, kTwnScale);
      layer.mode = specs_[l].mode;
      layer.t = specs_[l].t;
      layer.r = specs_[l].r;
      layer.g = g_dev_.get() + off;
      layer.latent_grad = latent_dev_.get() + off;
      layer.dwp = scalar_dev(l, kDwp);
      layer.dwn = scalar_dev(l, kDwn);
      out.push_back(layer);
    }
    return out;
  }

  // Sentinels in every output, the initial latent gradient, then forward + backward.
  Outputs run(cuda::TtqMultiTensor& multi) {
    latent_dev_.upload(latent0_);
    w_t_dev_.upload(std::vector<float>(static_cast<size_t>(total_), kSentinel));
    codes_dev_.upload(std::vector<int8_t>(static_cast<size_t>(total_), int8_t{0x55}));
    scalars_dev_.upload(scalars0_);
    multi.forward(kStream);
    multi.backward(kStream);
    return outputs();
  }
  // One more backward on what the last run left (a second micro-batch with the same gradient).
  Outputs backward_again(cuda::TtqMultiTensor& multi) {
    multi.backward(kStream);
    return outputs();
  }
  Outputs outputs() const {
    return {scalars_dev_.download(), w_t_dev_.download(), latent_dev_.download(),
            codes_dev_.download()};
  }

 private:
  static std::vector<int64_t> offsets_of(const std::vector<LayerSpec>& specs) {
    std::vector<int64_t> off{0};
    for (const LayerSpec& s : specs) off.push_back(off.back() + s.n);
    return off;
  }

  std::vector<LayerSpec> specs_;
  std::vector<int64_t> offsets_;  // size() + 1 entries
  int64_t total_;
  std::vector<float> w_, g_, latent0_, scalars0_;
  DeviceArray<float> w_dev_, g_dev_, latent_dev_, w_t_dev_;
  DeviceArray<int8_t> codes_dev_;
  DeviceArray<float> scalars_dev_;
};

float out_scalar(const Outputs& out, size_t l, Scalar s) { return out.scalars[l * kScalars + s]; }

std::string layer_name(const Model& m, size_t l) {
  static const char* names[] = {"Max", "Sparsity", "Twn"};
  const LayerSpec& s = m.spec(l);
  return "layer " + std::to_string(l) + " (" + names[static_cast<int>(s.mode)] + ", n=" +
         std::to_string(s.n) + ", t=" + std::to_string(s.t) + ", r=" + std::to_string(s.r) + ")";
}

// ---- the checks --------------------------------------------------------------------------------

// Against the CPU loops, layer by layer: D bitwise (Max, Sparsity) or within 1e-6 (Twn, summed in
// another order); codes and w_t bitwise (the CPU ternarizes with the GPU's D, so this is exact in
// every mode); latent gradient within 1e-6 and dL/dWp, dL/dWn within 1e-5, relative.
void expect_matches_cpu(const Model& m, const Outputs& out) {
  for (size_t l = 0; l < m.size(); ++l) {
    SCOPED_TRACE(layer_name(m, l));
    const LayerSpec& s = m.spec(l);
    const int64_t n = s.n, off = m.offset(l);
    const cpu::ThresholdResult want = cpu::ttq_threshold(s.mode, m.w(l), n, s.t, s.r);
    const float d = out_scalar(out, l, kD);
    const float scale = out_scalar(out, l, kTwnScale);
    if (m.twn(l)) {
      EXPECT_TRUE(near_rel(d, want.threshold, 1e-6)) << "D";
      EXPECT_TRUE(near_rel(scale, want.twn_scale, 1e-6)) << "TWN scale";
    } else {
      EXPECT_TRUE(same_bits(d, want.threshold)) << "D " << d << " vs " << want.threshold;
      EXPECT_TRUE(same_bits(scale, 0.0f)) << "TWN scale of a non-TWN layer: " << scale;
    }

    const float wp = m.twn(l) ? scale : m.scalar0(l, kWp);
    const float wn = m.twn(l) ? scale : m.scalar0(l, kWn);
    std::vector<float> w_t(static_cast<size_t>(n));
    std::vector<int8_t> codes(static_cast<size_t>(n));
    cpu::ttq_ternarize(m.w(l), n, d, wp, wn, w_t.data(), codes.data());
    EXPECT_TRUE(bitwise_equal(out.codes.data() + off, codes.data(), n)) << "codes";
    EXPECT_TRUE(bitwise_equal(out.w_t.data() + off, w_t.data(), n)) << "w_t";

    std::vector<float> latent(m.latent0(l), m.latent0(l) + n);
    const cpu::ScaleGrads grads =
        cpu::ttq_backward(codes.data(), m.g(l), n, wp, wn, !m.twn(l), latent.data());
    EXPECT_TRUE(testing::all_close(out.latent.data() + off, latent.data(), n, 0.0, 1e-6))
        << "latent gradient";
    EXPECT_TRUE(near_rel(out_scalar(out, l, kDwp), grads.wp, 1e-5)) << "dL/dWp";
    EXPECT_TRUE(near_rel(out_scalar(out, l, kDwn), grads.wn, 1e-5)) << "dL/dWn";
  }
}

// Against the per-tensor CUDA kernels on the same inputs: D bitwise (Max, Sparsity) or within
// 1e-6 (Twn: other blocks, other sum order); ternarize with the multi-tensor D and magnitudes and
// backward with its codes give bitwise the same w_t, codes and latent gradient; the scale
// gradients agree within 1e-5.
void expect_matches_per_tensor(const Model& m, const Outputs& out) {
  for (size_t l = 0; l < m.size(); ++l) {
    SCOPED_TRACE(layer_name(m, l));
    const LayerSpec& s = m.spec(l);
    const int64_t n = s.n, off = m.offset(l);
    const size_t ws_bytes = cuda::ttq_workspace_bytes(n);
    DeviceArray<char> ws(static_cast<int64_t>(ws_bytes));
    DeviceArray<float> sc(kScalars), w_t(n), latent(n);
    DeviceArray<int8_t> codes(n);

    cuda::ttq_threshold(s.mode, m.w_dev(l), n, s.t, s.r, sc.get() + kD, sc.get() + kTwnScale,
                        ws.get(), ws_bytes, kStream);
    const std::vector<float> single = sc.download();
    if (m.twn(l)) {
      EXPECT_TRUE(near_rel(out_scalar(out, l, kD), single[kD], 1e-6)) << "D";
      EXPECT_TRUE(near_rel(out_scalar(out, l, kTwnScale), single[kTwnScale], 1e-6)) << "scale";
    } else {
      EXPECT_TRUE(same_bits(out_scalar(out, l, kD), single[kD]))
          << "D " << out_scalar(out, l, kD) << " vs " << single[kD];
    }

    // The multi-tensor run's own scalars, uploaded again: D, TWN scale, Wp, Wn.
    DeviceArray<float> mine(kScalars);
    mine.upload(std::vector<float>(out.scalars.begin() + static_cast<std::ptrdiff_t>(l * kScalars),
                                   out.scalars.begin() +
                                       static_cast<std::ptrdiff_t>((l + 1) * kScalars)));
    const float* wp = mine.get() + (m.twn(l) ? kTwnScale : kWp);
    const float* wn = mine.get() + (m.twn(l) ? kTwnScale : kWn);
    cuda::ttq_ternarize(m.w_dev(l), n, mine.get() + kD, wp, wn, w_t.get(), codes.get(), kStream);
    EXPECT_TRUE(bitwise_equal(out.codes.data() + off, codes.download().data(), n)) << "codes";
    EXPECT_TRUE(bitwise_equal(out.w_t.data() + off, w_t.download().data(), n)) << "w_t";

    latent.upload(std::vector<float>(m.latent0(l), m.latent0(l) + n));
    cuda::ttq_backward(m.codes_dev(l), m.g_dev(l), n, wp, wn, !m.twn(l), latent.get(),
                       sc.get() + kDwp, sc.get() + kDwn, ws.get(), ws_bytes, kStream);
    const std::vector<float> grads = sc.download();
    EXPECT_TRUE(bitwise_equal(out.latent.data() + off, latent.download().data(), n))
        << "latent gradient";
    EXPECT_TRUE(near_rel(out_scalar(out, l, kDwp), grads[kDwp], 1e-5)) << "dL/dWp";
    EXPECT_TRUE(near_rel(out_scalar(out, l, kDwn), grads[kDwn], 1e-5)) << "dL/dWn";
  }
}

void expect_same_outputs(const Outputs& a, const Outputs& b) {
  EXPECT_TRUE(bitwise_equal(a.scalars, b.scalars)) << "D, TWN scale, dL/dWp, dL/dWn";
  EXPECT_TRUE(bitwise_equal(a.w_t, b.w_t)) << "w_t";
  EXPECT_TRUE(bitwise_equal(a.codes, b.codes)) << "codes";
  EXPECT_TRUE(bitwise_equal(a.latent, b.latent)) << "latent gradient";
}

void print_launches(const char* what, const cuda::TtqMultiTensor& multi) {
  std::cout << "[ launches ] " << what << ": " << multi.layers().size() << " layers, forward "
            << multi.fused_forward_launches() << " fused launches + " << multi.sparsity_layers()
            << " per-tensor sparsity thresholds, backward " << multi.backward_launches()
            << " launches\n";
}

// ---- tests ---------------------------------------------------------------------------------------

TEST(GpuTtqMulti, ResNet18AllMaxInThreeForwardAndTwoBackwardLaunches) {
  if (cuda_device_count() == 0) GTEST_SKIP() << cuda_device_summary();
  Model m(resnet18_all_max());
  cuda::TtqMultiTensor multi(m.layers());
  print_launches("ResNet-18, all max", multi);
  EXPECT_EQ(multi.fused_forward_launches(), 3);  // partial max, finish, ternarize
  EXPECT_EQ(multi.sparsity_layers(), 0);
  EXPECT_EQ(multi.backward_launches(), 2);       // backward + partial sums, finish
  const Outputs first = m.run(multi);
  expect_matches_cpu(m, first);
  expect_same_outputs(m.run(multi), first);
}

TEST(GpuTtqMulti, MixedModesMatchCpuAndPerTensorKernels) {
  if (cuda_device_count() == 0) GTEST_SKIP() << cuda_device_summary();
  Model m(mixed_layers());
  cuda::TtqMultiTensor multi(m.layers());
  print_launches("ResNet-18 mixed modes + odd sizes", multi);
  // Max+Twn partials, finish, Twn scale partials, finish, ternarize; sparsity per layer.
  EXPECT_EQ(multi.fused_forward_launches(), 5);
  EXPECT_EQ(multi.sparsity_layers(), 6);
  EXPECT_EQ(multi.backward_launches(), 2);
  const Outputs first = m.run(multi);
  expect_matches_cpu(m, first);
  expect_matches_per_tensor(m, first);
  expect_same_outputs(m.run(multi), first);
}

// Tiny limits split every pass into many launches and layers across launches; the results per
// (layer, chunk) stay the same computation, so everything still matches, and the selections and
// elementwise outputs equal those of the default plan bitwise.
TEST(GpuTtqMulti, SmallLimitsSplitPassesAcrossLaunches) {
  if (cuda_device_count() == 0) GTEST_SKIP() << cuda_device_summary();
  Model m(mixed_layers());
  MultiTensorLimits small;
  small.max_tensors = 3;
  small.max_blocks = 7;
  small.chunk = 4096;
  cuda::TtqMultiTensor split(m.layers(), small);
  print_launches("mixed modes, small limits", split);
  EXPECT_GT(split.fused_forward_launches(), 100);
  const Outputs first = m.run(split);
  expect_matches_cpu(m, first);
  expect_same_outputs(m.run(split), first);

  cuda::TtqMultiTensor whole(m.layers());
  const Outputs ref = m.run(whole);
  for (size_t l = 0; l < m.size(); ++l) {
    if (m.twn(l)) continue;  // D summed in another order
    SCOPED_TRACE(layer_name(m, l));
    EXPECT_TRUE(same_bits(out_scalar(first, l, kD), out_scalar(ref, l, kD)));
  }
  EXPECT_TRUE(bitwise_equal(first.latent, ref.latent));
}

// The backward adds into the latent and scale gradients, as the per-tensor kernels and the CPU
// do: a second backward over the same codes and g doubles dL/dWp and dL/dWn (bitwise: s + s is
// exact) and adds the scaled g to the latent gradient once more, as the CPU loop run twice does.
TEST(GpuTtqMulti, BackwardAddsIntoTheGradients) {
  if (cuda_device_count() == 0) GTEST_SKIP() << cuda_device_summary();
  Model m(mixed_layers());
  cuda::TtqMultiTensor multi(m.layers());
  const Outputs once = m.run(multi);
  const Outputs twice = m.backward_again(multi);
  EXPECT_TRUE(bitwise_equal(twice.w_t, once.w_t)) << "the backward left w_t alone";
  for (size_t l = 0; l < m.size(); ++l) {
    SCOPED_TRACE(layer_name(m, l));
    for (Scalar s : {kDwp, kDwn}) {
      const float one = out_scalar(once, l, s);
      if (m.spec(l).n >= 1000) {
        EXPECT_NE(one, 0.0f);
      }
      EXPECT_TRUE(same_bits(out_scalar(twice, l, s), one + one)) << out_scalar(twice, l, s) << " vs 2 x " << one;
    }
    const int64_t n = m.spec(l).n, off = m.offset(l);
    const float wp = m.twn(l) ? out_scalar(once, l, kTwnScale) : m.scalar0(l, kWp);
    const float wn = m.twn(l) ? out_scalar(once, l, kTwnScale) : m.scalar0(l, kWn);
    std::vector<float> latent(m.latent0(l), m.latent0(l) + n);
    for (int k = 0; k < 2; ++k)
      cpu::ttq_backward(once.codes.data() + off, m.g(l), n, wp, wn, !m.twn(l), latent.data());
    EXPECT_TRUE(testing::all_close(twice.latent.data() + off, latent.data(), n, 0.0, 1e-6)) << "latent gradient";
  }
}

// Per-output-channel scales: such layers ternarize and back-propagate one block per row, in one
// extra launch per pass (more with small limits), beside layers with one scale. Against the CPU's
// per-channel loops: D and the codes and w_t bitwise, the gradients within float tolerance; and
// bitwise repeatable.
TEST(GpuTtqMulti, PerChannelLayersRunByRow) {
  if (cuda_device_count() == 0) GTEST_SKIP() << cuda_device_summary();
  struct Spec {
    int64_t rows, per;
    ThresholdMode mode;
  };
  // rows == 1: one scale for the layer (the chunked passes).
  // rows with per == 0: an empty per-channel layer (no blocks, its scale gradients untouched).
  const std::vector<Spec> specs = {{1, 64 * 64 * 9, ThresholdMode::Max},   {64, 64 * 9, ThresholdMode::Max},
                                   {128, 64 * 9, ThresholdMode::Sparsity}, {5, 1, ThresholdMode::Max},
                                   {3, 40000, ThresholdMode::Max},         {1, 1000, ThresholdMode::Sparsity},
                                   {4, 0, ThresholdMode::Max}};
  int64_t total = 0, scales = 0;
  std::vector<int64_t> at, scale_at;
  for (const Spec& s : specs) {
    at.push_back(total);
    scale_at.push_back(scales);
    total += s.rows * s.per;
    scales += s.rows;
  }
  std::vector<float> w(total), g(total), latent0(total), wp(scales), wn(scales);
  testing::fill_random(w.data(), total, 61);
  testing::fill_random(g.data(), total, 62);
  testing::fill_random(latent0.data(), total, 63);
  for (int64_t c = 0; c < scales; ++c) {
    wp[c] = 0.5f + 0.004f * static_cast<float>(c);
    wn[c] = 1.5f - 0.003f * static_cast<float>(c);
  }
  DeviceArray<float> w_dev(total), g_dev(total), latent_dev(total), w_t_dev(total);
  DeviceArray<int8_t> codes_dev(total);
  DeviceArray<float> wp_dev(scales), wn_dev(scales), dwp_dev(scales), dwn_dev(scales);
  DeviceArray<float> d_dev(static_cast<int64_t>(specs.size()));
  w_dev.upload(w);
  g_dev.upload(g);
  wp_dev.upload(wp);
  wn_dev.upload(wn);
  std::vector<cuda::TtqMultiLayer> layers;
  for (size_t l = 0; l < specs.size(); ++l) {
    cuda::TtqMultiLayer x;
    x.w = w_dev.get() + at[l];
    x.n = specs[l].rows * specs[l].per;
    x.w_t = w_t_dev.get() + at[l];
    x.codes = codes_dev.get() + at[l];
    x.wp = wp_dev.get() + scale_at[l];
    x.wn = wn_dev.get() + scale_at[l];
    x.channels = specs[l].rows;
    x.d = d_dev.get() + l;
    x.mode = specs[l].mode;
    x.t = 0.05f;
    x.r = 0.4;
    x.g = g_dev.get() + at[l];
    x.latent_grad = latent_dev.get() + at[l];
    x.dwp = dwp_dev.get() + scale_at[l];
    x.dwn = dwn_dev.get() + scale_at[l];
    layers.push_back(x);
  }
  struct Run {
    std::vector<float> d, w_t, latent, dwp, dwn;
    std::vector<int8_t> codes;
  };
  auto run = [&](cuda::TtqMultiTensor& multi) {
    latent_dev.upload(latent0);
    dwp_dev.upload(std::vector<float>(scales, 0.25f));
    dwn_dev.upload(std::vector<float>(scales, -0.5f));
    multi.forward(kStream);
    multi.backward(kStream);
    return Run{d_dev.download(), w_t_dev.download(), latent_dev.download(), dwp_dev.download(), dwn_dev.download(),
               codes_dev.download()};
  };
  cuda::TtqMultiTensor multi(layers);
  print_launches("per-channel and per-layer scales", multi);
  // Max partials, finish, ternarize (per-layer scales), ternarize by row; sparsity per layer.
  EXPECT_EQ(multi.fused_forward_launches(), 4);
  EXPECT_EQ(multi.sparsity_layers(), 2);
  EXPECT_EQ(multi.backward_launches(), 3);  // backward + partial sums, finish, backward by row
  const Run first = run(multi);

  for (size_t l = 0; l < specs.size(); ++l) {
    SCOPED_TRACE("layer " + std::to_string(l));
    const int64_t n = specs[l].rows * specs[l].per, rows = specs[l].rows;
    const float d = cpu::ttq_threshold(specs[l].mode, w.data() + at[l], n, 0.05f, 0.4).threshold;
    EXPECT_TRUE(same_bits(first.d[l], d)) << first.d[l] << " vs " << d;
    std::vector<float> w_t(n), latent(latent0.begin() + at[l], latent0.begin() + at[l] + n);
    std::vector<int8_t> codes(n);
    cpu::ttq_ternarize_channels(w.data() + at[l], n, rows, d, wp.data() + scale_at[l], wn.data() + scale_at[l],
                                w_t.data(), codes.data());
    const auto sums = cpu::ttq_backward_channels(codes.data(), g.data() + at[l], n, rows, wp.data() + scale_at[l],
                                                 wn.data() + scale_at[l], latent.data());
    EXPECT_TRUE(bitwise_equal(first.codes.data() + at[l], codes.data(), n));
    EXPECT_TRUE(bitwise_equal(first.w_t.data() + at[l], w_t.data(), n));
    EXPECT_TRUE(testing::all_close(first.latent.data() + at[l], latent.data(), n, 0.0, 1e-6));
    for (int64_t c = 0; c < rows; ++c) {
      const float want_p = 0.25f + static_cast<float>(sums[c].wp), want_n = -0.5f + static_cast<float>(sums[c].wn);
      EXPECT_NEAR(first.dwp[scale_at[l] + c], want_p, 1e-6 * (std::fabs(want_p) + 1.0)) << "row " << c;
      EXPECT_NEAR(first.dwn[scale_at[l] + c], want_n, 1e-6 * (std::fabs(want_n) + 1.0)) << "row " << c;
    }
  }
  const Run again = run(multi);
  EXPECT_TRUE(bitwise_equal(again.d, first.d));
  EXPECT_TRUE(bitwise_equal(again.codes, first.codes));
  EXPECT_TRUE(bitwise_equal(again.w_t, first.w_t));
  EXPECT_TRUE(bitwise_equal(again.latent, first.latent));
  EXPECT_TRUE(bitwise_equal(again.dwp, first.dwp));
  EXPECT_TRUE(bitwise_equal(again.dwn, first.dwn));

  // Small limits split the row pass across launches without changing a bit.
  MultiTensorLimits small;
  small.max_tensors = 2;
  small.max_blocks = 7;
  small.chunk = 4096;
  cuda::TtqMultiTensor split(layers, small);
  EXPECT_GT(split.backward_launches(), 30);
  const Run s = run(split);
  EXPECT_TRUE(bitwise_equal(s.codes, first.codes));
  EXPECT_TRUE(bitwise_equal(s.w_t, first.w_t));
  for (size_t l = 0; l < specs.size(); ++l) {
    if (specs[l].rows == 1) continue;  // the chunked sums fold in another order with other chunks
    const int64_t n = specs[l].rows * specs[l].per;
    EXPECT_TRUE(bitwise_equal(s.latent.data() + at[l], first.latent.data() + at[l], n)) << "layer " << l;
    EXPECT_TRUE(bitwise_equal(s.dwp.data() + scale_at[l], first.dwp.data() + scale_at[l], specs[l].rows)) << l;
    EXPECT_TRUE(bitwise_equal(s.dwn.data() + scale_at[l], first.dwn.data() + scale_at[l], specs[l].rows)) << l;
  }

  // w_t in bf16 for the per-channel layers: each row's values rounded to nearest even.
  DeviceArray<bf16> w_t_bf_dev(total);
  std::vector<cuda::TtqMultiLayer> bf_layers = layers;
  for (size_t l = 0; l < specs.size(); ++l)
    if (specs[l].rows > 1) {
      bf_layers[l].w_t = nullptr;
      bf_layers[l].w_t_bf16 = w_t_bf_dev.get() + at[l];
    }
  cuda::TtqMultiTensor bf(bf_layers);
  const Run b = run(bf);
  const std::vector<bf16> w_t_bf = w_t_bf_dev.download();
  EXPECT_TRUE(bitwise_equal(b.codes, first.codes));
  for (size_t l = 0; l < specs.size(); ++l) {
    if (specs[l].rows == 1) continue;
    const int64_t n = specs[l].rows * specs[l].per;
    std::vector<uint16_t> got(n), want(n);
    for (int64_t i = 0; i < n; ++i) {
      got[i] = w_t_bf[at[l] + i].bits;
      want[i] = to_bf16(first.w_t[at[l] + i]).bits;
    }
    EXPECT_TRUE(bitwise_equal(got, want)) << "bf16 w_t of layer " << l;
  }

  // Rows must divide the layer, and Twn has no per-channel scales.
  auto build = [](std::vector<cuda::TtqMultiLayer> ls) { cuda::TtqMultiTensor x(std::move(ls)); };
  std::vector<cuda::TtqMultiLayer> bad = layers;
  bad[1].channels = 7;
  EXPECT_THROW(build(bad), Error);
  bad = layers;
  bad[1].mode = ThresholdMode::Twn;
  bad[1].twn_scale = d_dev.get();
  EXPECT_THROW(build(bad), Error);
}

TEST(GpuTtqMulti, RejectsIncompleteLayers) {
  if (cuda_device_count() == 0) GTEST_SKIP() << cuda_device_summary();
  Model m(mixed_layers());
  auto without = [&](size_t l, auto clear) {
    std::vector<cuda::TtqMultiLayer> layers = m.layers();
    clear(layers[l]);
    return layers;
  };
  auto build = [](std::vector<cuda::TtqMultiLayer> layers) { cuda::TtqMultiTensor x(std::move(layers)); };
  EXPECT_THROW(build(without(0, [](auto& x) { x.d = nullptr; })), Error);
  EXPECT_THROW(build(without(0, [](auto& x) { x.wp = nullptr; })), Error);
  EXPECT_THROW(build(without(2, [](auto& x) { x.twn_scale = nullptr; })), Error);
  EXPECT_THROW(build(without(1, [](auto& x) { x.n = -1; })), Error);
  EXPECT_THROW(build(without(1, [](auto& x) { x.codes = nullptr; })), Error);
  // Backward pointers are checked when backward is called; forward alone still works.
  cuda::TtqMultiTensor forward_only(without(3, [](auto& x) { x.g = nullptr; }));
  forward_only.forward(kStream);
  EXPECT_THROW(forward_only.backward(kStream), Error);
  // An empty layer list is a no-op.
  cuda::TtqMultiTensor none(std::vector<cuda::TtqMultiLayer>{});
  none.forward(kStream);
  none.backward(kStream);
  EXPECT_EQ(none.fused_forward_launches(), 0);
  EXPECT_EQ(none.backward_launches(), 0);
}

}  // namespace
}  // namespace ttq

#else  // !TTQ_HAVE_CUDA

TEST(GpuTtqMulti, NotBuilt) { GTEST_SKIP() << "built without the CUDA backend"; }

#endif
