// The CUDA TTQ kernels (kernels/cuda/ttq_kernels.h) against the CPU loops (kernels/cpu/ttq_cpu.h):
// threshold in every mode, ternarize and backward, on sizes from 1 to just over 2^20, and the
// run-to-run bitwise determinism of the reductions. Skips where no GPU (or no CUDA build) exists.
#include <gtest/gtest.h>

#ifdef TTQ_HAVE_CUDA

#include <algorithm>
#include <cmath>
#include <cstring>
#include <ostream>
#include <string>
#include <tuple>
#include <vector>

#include "kernels/cpu/ttq_cpu.h"
#include "kernels/cuda/ttq_kernels.h"
#include "kernels/device.h"
#include "tests/test_util.h"

namespace ttq {
namespace math {
const char* mode_name(ThresholdMode m) {
  static const char* names[] = {"Max", "Sparsity", "Twn"};
  return names[static_cast<int>(m)];
}
// Lets GoogleTest print a mode by name (found by argument-dependent lookup).
void PrintTo(ThresholdMode m, std::ostream* os) { *os << mode_name(m); }
}  // namespace math

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
  explicit DeviceArray(const std::vector<T>& host) : DeviceArray(static_cast<int64_t>(host.size())) {
    upload(host);
  }
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

std::vector<float> random_vector(int64_t n, uint64_t seed) {
  std::vector<float> v(static_cast<size_t>(n));
  testing::fill_random(v.data(), n, seed);
  return v;
}

bool same_bits(float a, float b) { return std::memcmp(&a, &b, sizeof(float)) == 0; }

// Element-by-element bit equality, naming the first difference.
template <class T>
::testing::AssertionResult bitwise_equal(const std::vector<T>& got, const std::vector<T>& want) {
  if (got.size() != want.size())
    return ::testing::AssertionFailure() << "sizes " << got.size() << " vs " << want.size();
  for (size_t i = 0; i < got.size(); ++i)
    if (std::memcmp(&got[i], &want[i], sizeof(T)) != 0)
      return ::testing::AssertionFailure() << "first difference at [" << i << "]: " << +got[i]
                                           << " vs " << +want[i];
  return ::testing::AssertionSuccess();
}

constexpr float kT = 0.05f;
constexpr float kR = 0.4f;

// Scalars the kernels produce in device memory.
enum Scalar { kD, kTwnScale, kDwp, kDwn, kWp, kWn, kScalars };

class GpuTtq : public ::testing::TestWithParam<std::tuple<ThresholdMode, int64_t>> {};

TEST_P(GpuTtq, MatchesCpu) {
  if (cuda_device_count() == 0) GTEST_SKIP() << cuda_device_summary();
  const auto [mode, n] = GetParam();
  const std::vector<float> w = random_vector(n, 1000 + n);
  const std::vector<float> g = random_vector(n, 2000 + n);
  const std::vector<float> latent0 = random_vector(n, 3000 + n);

  DeviceArray<float> w_dev(w), g_dev(g), latent_dev(latent0), w_t_dev(n);
  DeviceArray<int8_t> codes_dev(n);
  DeviceArray<char> ws(static_cast<int64_t>(cuda::ttq_workspace_bytes(n)));
  DeviceArray<float> s(kScalars);
  float* sc = s.get();

  // Threshold: exact for the selections, close for TWN; and bitwise repeatable.
  const cpu::ThresholdResult want = cpu::ttq_threshold(mode, w.data(), n, kT, kR);
  cuda::ttq_threshold(mode, w_dev.get(), n, kT, kR, sc + kD, sc + kTwnScale, ws.get(),
                      cuda::ttq_workspace_bytes(n), kStream);
  const std::vector<float> got = s.download();
  if (mode == ThresholdMode::Twn) {
    EXPECT_NEAR(got[kD], want.threshold, 1e-6 * std::fabs(want.threshold));
    EXPECT_NEAR(got[kTwnScale], want.twn_scale, 1e-6 * std::fabs(want.twn_scale));
  } else {
    EXPECT_TRUE(same_bits(got[kD], want.threshold)) << got[kD] << " vs " << want.threshold;
    EXPECT_EQ(got[kTwnScale], 0.0f);
  }
  cuda::ttq_threshold(mode, w_dev.get(), n, kT, kR, sc + kD, sc + kTwnScale, ws.get(),
                      cuda::ttq_workspace_bytes(n), kStream);
  const std::vector<float> again = s.download();
  EXPECT_TRUE(same_bits(again[kD], got[kD]) && same_bits(again[kTwnScale], got[kTwnScale]));

  // Ternarize with the device's own D (and, for TWN, its scale as Wp = Wn); compare with the CPU
  // loop given the same values, so the check is exact in every mode.
  const bool twn = mode == ThresholdMode::Twn;
  const float d = got[kD];
  const float wp = twn ? got[kTwnScale] : 1.3f;
  const float wn = twn ? got[kTwnScale] : 0.7f;
  std::vector<float> scalars = got;
  scalars[kWp] = wp;
  scalars[kWn] = wn;
  s.upload(scalars);
  const float* wp_dev = twn ? sc + kTwnScale : sc + kWp;
  const float* wn_dev = twn ? sc + kTwnScale : sc + kWn;
  cuda::ttq_ternarize(w_dev.get(), n, sc + kD, wp_dev, wn_dev, w_t_dev.get(), codes_dev.get(),
                      kStream);
  std::vector<float> w_t(static_cast<size_t>(n));
  std::vector<int8_t> codes(static_cast<size_t>(n));
  cpu::ttq_ternarize(w.data(), n, d, wp, wn, w_t.data(), codes.data());
  EXPECT_TRUE(bitwise_equal(codes_dev.download(), codes));
  EXPECT_TRUE(bitwise_equal(w_t_dev.download(), w_t));

  // Backward, twice from the same latent gradient: close to the CPU, bitwise equal to itself.
  std::vector<float> latent = latent0;
  const cpu::ScaleGrads grads = cpu::ttq_backward(codes.data(), g.data(), n, wp, wn, !twn,
                                                  latent.data());
  std::vector<float> first_scalars, first_latent;
  for (int run = 0; run < 2; ++run) {
    latent_dev.upload(latent0);
    cuda::ttq_backward(codes_dev.get(), g_dev.get(), n, wp_dev, wn_dev, !twn, latent_dev.get(),
                       sc + kDwp, sc + kDwn, ws.get(), cuda::ttq_workspace_bytes(n), kStream);
    const std::vector<float> out = s.download();
    const std::vector<float> latent_got = latent_dev.download();
    if (run == 0) {
      EXPECT_NEAR(out[kDwp], grads.wp, 1e-5 * std::fabs(grads.wp));
      EXPECT_NEAR(out[kDwn], grads.wn, 1e-5 * std::fabs(grads.wn));
      EXPECT_TRUE(testing::all_close(latent_got.data(), latent.data(), n, 0.0, 1e-6));
      first_scalars = out;
      first_latent = latent_got;
    } else {
      EXPECT_TRUE(same_bits(out[kDwp], first_scalars[kDwp]));
      EXPECT_TRUE(same_bits(out[kDwn], first_scalars[kDwn]));
      EXPECT_TRUE(bitwise_equal(latent_got, first_latent));
    }
  }
}

std::string case_name(const ::testing::TestParamInfo<GpuTtq::ParamType>& info) {
  return std::string(mode_name(std::get<0>(info.param))) + "_n" +
         std::to_string(std::get<1>(info.param));
}

INSTANTIATE_TEST_SUITE_P(
    ModesAndSizes, GpuTtq,
    ::testing::Combine(::testing::Values(ThresholdMode::Max, ThresholdMode::Sparsity,
                                         ThresholdMode::Twn),
                       ::testing::Values<int64_t>(1, 7, 1000, 3 * 3 * 64 * 64, (1 << 20) + 3)),
    case_name);

// Sparsity select with many ties (a few magnitude levels, +0 and -0) across the range of r,
// including r = 0 (k < 0: D = 0) and r = 1 (the largest |w|).
TEST(GpuTtqSparsity, TiesAndEveryRank) {
  if (cuda_device_count() == 0) GTEST_SKIP() << cuda_device_summary();
  const int64_t n = 10007;
  std::vector<float> w = random_vector(n, 77);
  for (float& x : w) x = std::round(x * 8.0f) / 8.0f;  // ties, and both signed zeros
  DeviceArray<float> w_dev(w), d_dev(1);
  DeviceArray<char> ws(static_cast<int64_t>(cuda::ttq_workspace_bytes(n)));
  for (float r : {0.0f, 1e-4f, 0.05f, 0.3f, 0.5f, 0.77f, 0.9999f, 1.0f}) {
    const float want = cpu::ttq_threshold(ThresholdMode::Sparsity, w.data(), n, kT, r).threshold;
    cuda::ttq_threshold(ThresholdMode::Sparsity, w_dev.get(), n, kT, r, d_dev.get(), nullptr,
                        ws.get(), cuda::ttq_workspace_bytes(n), kStream);
    const float got = d_dev.download()[0];
    EXPECT_TRUE(same_bits(got, want)) << "r=" << r << ": " << got << " vs " << want;
  }
}

}  // namespace
}  // namespace ttq

#else  // !TTQ_HAVE_CUDA

TEST(GpuTtq, NotBuilt) { GTEST_SKIP() << "built without the CUDA backend"; }

#endif
