#include "tests/test_util.h"

#include "engine/core/sanitizer_options.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <fstream>
#include <cmath>
#include <random>
#include <sstream>

namespace ttq::testing {

TempDir::TempDir() {
  static std::atomic<int> counter{0};
  path_ = (std::filesystem::temp_directory_path() /
           ("ttq_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter++)))
              .string();
  std::filesystem::remove_all(path_);
  std::filesystem::create_directories(path_);
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out << bytes;
}

std::string be32(uint32_t v) {
  return std::string{char(v >> 24), char((v >> 16) & 0xff), char((v >> 8) & 0xff), char(v & 0xff)};
}

std::string idx_images(uint32_t n, uint32_t h, uint32_t w, uint32_t magic) {
  std::string s = be32(magic) + be32(n) + be32(h) + be32(w);
  for (uint32_t i = 0; i < n * h * w; ++i) s.push_back(static_cast<char>((i * 7) & 0xff));
  return s;
}

std::string idx_labels(uint32_t n, uint8_t max_label) {
  std::string s = be32(0x801) + be32(n);
  for (uint32_t i = 0; i < n; ++i) s.push_back(static_cast<char>(i % (max_label + 1)));
  return s;
}

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "<no error>";
}

void fill_random(float* p, int64_t n, uint64_t seed, float lo, float hi) {
  std::mt19937_64 gen(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  for (int64_t i = 0; i < n; ++i) p[i] = dist(gen);
}

Tensor random_tensor(const Shape& shape, uint64_t seed, float lo, float hi) {
  Tensor t = Tensor::empty(shape);
  fill_random(t.data<float>(), t.numel(), seed, lo, hi);
  return t;
}

::testing::AssertionResult all_close(const float* a, const float* b, int64_t n, double atol, double rtol) {
  int64_t bad = 0;
  std::ostringstream os;
  double worst = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    const double diff = std::fabs(static_cast<double>(a[i]) - b[i]);
    const double tol = atol + rtol * std::fabs(static_cast<double>(b[i]));
    if (!(diff <= tol)) {  // also catches NaN
      if (bad < 5) os << "\n  [" << i << "] got " << a[i] << " expected " << b[i] << " (diff " << diff << ")";
      ++bad;
      worst = std::max(worst, diff);
    }
  }
  if (bad == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << bad << " of " << n << " values differ (worst " << worst
                                       << ", atol " << atol << ", rtol " << rtol << "):" << os.str();
}

::testing::AssertionResult all_close(const Tensor& a, const Tensor& b, double atol, double rtol) {
  if (a.shape() != b.shape())
    return ::testing::AssertionFailure() << "shapes differ: " << a.str() << " vs " << b.str();
  return all_close(a.data<float>(), b.data<float>(), a.numel(), atol, rtol);
}

double numeric_grad(float* x, int64_t i, float eps, const std::function<double()>& f) {
  const float saved = x[i];
  x[i] = saved + eps;
  const double up = f();
  x[i] = saved - eps;
  const double down = f();
  x[i] = saved;
  // Divide by the step actually taken in float, not the nominal 2*eps.
  const double step = static_cast<double>(saved + eps) - static_cast<double>(saved - eps);
  return (up - down) / step;
}

double dot(const float* a, const float* b, int64_t n) {
  double acc = 0.0;
  for (int64_t i = 0; i < n; ++i) acc += static_cast<double>(a[i]) * b[i];
  return acc;
}

}  // namespace ttq::testing

#include "engine/core/rng.h"
#include "engine/nn/module.h"

namespace ttq::testing {

void check_module_gradients(Module& m, Tensor x, uint64_t seed, float eps, double atol, double rtol, int samples,
                            const std::vector<std::string>& skip_params) {
  Tensor y = m.forward(x);
  Tensor r = random_tensor(y.shape(), seed ^ 0xabcdefULL);
  m.zero_grad();
  Tensor dx = m.backward(r.clone());
  auto loss = [&]() {
    Tensor out = m.forward(x);
    return dot(out.data<float>(), r.data<float>(), out.numel());
  };
  Rng pick(seed);
  auto check = [&](const std::string& what, float* values, const float* analytic, int64_t n) {
    const int64_t count = std::min<int64_t>(n, samples);
    for (int64_t k = 0; k < count; ++k) {
      const int64_t i = n <= samples ? k : static_cast<int64_t>(pick.below(static_cast<uint64_t>(n)));
      const double num = numeric_grad(values, i, eps, loss);
      const double ana = analytic[i];
      EXPECT_LE(std::fabs(ana - num), atol + rtol * std::fabs(num))
          << m.who() << ": d loss / d " << what << "[" << i << "]: analytic " << ana << ", numeric " << num;
    }
  };
  check("input", x.data<float>(), dx.data<float>(), x.numel());
  for (auto& np : m.named_parameters()) {
    if (!np.param->trainable) continue;
    if (std::find(skip_params.begin(), skip_params.end(), np.name) != skip_params.end()) continue;
    Tensor g = np.param->grad.clone();  // the loss closure reruns forward only, grads stay
    check(np.name, np.param->value.data<float>(), g.data<float>(), g.numel());
  }
}

}  // namespace ttq::testing
