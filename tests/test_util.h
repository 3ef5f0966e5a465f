// Helpers shared by the tests: seeded random tensors and value comparisons.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "engine/core/tensor.h"

namespace ttq::testing {

// A fresh folder under the system temp folder, removed with its contents on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// Writes bytes to a file (test fixtures).
void write_bytes(const std::string& path, const std::string& bytes);
std::string read_bytes(const std::string& path);
// IDX files (the MNIST format): n h x w images of a fixed pattern, n labels cycling 0..max_label.
std::string be32(uint32_t v);
std::string idx_images(uint32_t n, uint32_t h, uint32_t w, uint32_t magic = 0x803);
std::string idx_labels(uint32_t n, uint8_t max_label = 9);
// The message of the ttq::Error that f throws, or "<no error>".
std::string error_of(const std::function<void()>& f);

// Uniform in [lo, hi), reproducible from the seed.
Tensor random_tensor(const Shape& shape, uint64_t seed, float lo = -1.0f, float hi = 1.0f);
void fill_random(float* p, int64_t n, uint64_t seed, float lo = -1.0f, float hi = 1.0f);

// Checks |a - b| <= atol + rtol * |b| elementwise; reports the first few mismatches.
::testing::AssertionResult all_close(const float* a, const float* b, int64_t n, double atol,
                                     double rtol);
::testing::AssertionResult all_close(const Tensor& a, const Tensor& b, double atol, double rtol);

// Central finite difference of f (which returns a double loss) with respect to x[i].
double numeric_grad(float* x, int64_t i, float eps, const std::function<double()>& f);

// sum_i a[i] * b[i] in double: projects an output onto fixed random weights to get a scalar loss.
double dot(const float* a, const float* b, int64_t n);

}  // namespace ttq::testing

namespace ttq {
class Module;
}

namespace ttq::testing {

// Finite-difference check of a module's input gradient and parameter gradients for the scalar
// loss L = sum(forward(x) * R), R fixed random. Checks up to `samples` entries of each tensor.
// eps is the finite-difference step; the comparison uses |a - b| <= atol + rtol * |b|.
void check_module_gradients(Module& m, Tensor x, uint64_t seed, float eps = 1e-2f, double atol = 2e-3,
                            double rtol = 2e-2, int samples = 40,
                            const std::vector<std::string>& skip_params = {});

}  // namespace ttq::testing
