// The pieces of synchronised batch norm in kernels/ops.h on the CPU (bn_channel_sums,
// bn_backward_sums, bn_normalize, bn_backward_dx) against plain loops written here, for f32 and
// bf16 activations; their argument checks; and the synchronised forward and backward of one rank
// (engine/dist/sync_batchnorm.h) against the ordinary batch-norm ops. The GPU versions are tested
// against these in tests/test_gpu_sync_bn.cpp.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "engine/core/bf16.h"
#include "engine/core/tensor.h"
#include "engine/dist/communicator.h"
#include "engine/dist/sync_batchnorm.h"
#include "kernels/cpu/ops.h"
#include "kernels/ops.h"
#include "tests/test_util.h"

namespace ttq {
namespace {

namespace tt = ttq::testing;

struct Case {
  const char* name;
  BatchNormShape s;
};

const Case kCases[] = {
    {"bn2d", {4, 3, 5 * 6}},
    {"bn2d_s4", {3, 4, 8}},
    {"bn1d", {9, 5, 1}},
    {"one_channel", {2, 1, 7}},
};

const DType kDtypes[] = {DType::F32, DType::BF16};

// Uniform in [lo, hi), in dt (bf16: rounded to nearest even).
Tensor activation(const Shape& shape, uint64_t seed, DType dt, float lo = -1.0f, float hi = 1.0f) {
  return ops::cast_to(tt::random_tensor(shape, seed, lo, hi), dt);
}

// Element i of an f32 or bf16 CPU tensor, as float.
float at(const Tensor& t, int64_t i) {
  return t.dtype() == DType::BF16 ? to_float(t.data<bf16>()[i]) : t.data<float>()[i];
}

Tensor f64_tensor(const std::vector<double>& v) {
  Tensor t = Tensor::empty({static_cast<int64_t>(v.size())}, DType::F64);
  std::memcpy(t.data<double>(), v.data(), v.size() * sizeof(double));
  return t;
}

int64_t flat(const BatchNormShape& s, int64_t n, int64_t c, int64_t i) { return (n * s.c + c) * s.s + i; }

// |got - want| <= slack * sum of the terms' magnitudes, per element of a sum.
void expect_sums_near(const Tensor& got, const std::vector<double>& want, const std::vector<double>& magnitude,
                      const std::string& what) {
  ASSERT_EQ(got.dtype(), DType::F64) << what;
  ASSERT_EQ(got.numel(), static_cast<int64_t>(want.size())) << what;
  for (size_t k = 0; k < want.size(); ++k)
    EXPECT_NEAR(got.data<double>()[k], want[k], 1e-13 * magnitude[k] + 1e-300) << what << "[" << k << "]";
}

// An activation output against the reference's double values: the reference rounds to f32 (then
// to bf16 for a bf16 output); the op must agree to one unit in the last place of the output type
// (bitwise where the compiler evaluates both in the same order, as it normally does).
void expect_rounded(const Tensor& got, const std::vector<double>& want, const std::string& what) {
  ASSERT_EQ(got.numel(), static_cast<int64_t>(want.size())) << what;
  const double ulp = got.dtype() == DType::BF16 ? 1.0 / 128.0 : 1.0 / 8388608.0;
  for (size_t k = 0; k < want.size(); ++k) {
    const float f = static_cast<float>(want[k]);
    const float w = got.dtype() == DType::BF16 ? to_float(to_bf16(f)) : f;
    const float g = at(got, static_cast<int64_t>(k));
    EXPECT_NEAR(g, w, ulp * std::fabs(w) + 1e-30) << what << "[" << k << "]";
  }
}

class SyncBnOps : public ::testing::TestWithParam<DType> {};

TEST_P(SyncBnOps, ChannelSumsMatchPlainLoops) {
  const DType dt = GetParam();
  for (const Case& k : kCases) {
    SCOPED_TRACE(k.name);
    const BatchNormShape& s = k.s;
    const Tensor x = activation({s.n, s.c, s.s}, 1, dt, -2.0f, 3.0f);
    std::vector<double> sum(s.c, 0.0), mag(s.c, 0.0), mean(s.c), sq(s.c, 0.0), sq_mag(s.c, 0.0);
    for (int64_t c = 0; c < s.c; ++c) {
      for (int64_t n = 0; n < s.n; ++n)
        for (int64_t i = 0; i < s.s; ++i) {
          sum[c] += at(x, flat(s, n, c, i));
          mag[c] += std::fabs(at(x, flat(s, n, c, i)));
        }
      mean[c] = sum[c] / static_cast<double>(s.n * s.s) + 0.125;  // any mean will do
      for (int64_t n = 0; n < s.n; ++n)
        for (int64_t i = 0; i < s.s; ++i) {
          const double d = at(x, flat(s, n, c, i)) - mean[c];
          sq[c] += d * d;
          sq_mag[c] += d * d;
        }
    }
    Tensor sums = Tensor::empty({s.c}, DType::F64);
    ops::bn_channel_sums(s, x, nullptr, sums);
    expect_sums_near(sums, sum, mag, "sum x");
    const Tensor m = f64_tensor(mean);
    ops::bn_channel_sums(s, x, &m, sums);
    expect_sums_near(sums, sq, sq_mag, "sum (x - mean)^2");
  }
}

TEST_P(SyncBnOps, BackwardSumsMatchPlainLoops) {
  const DType dt = GetParam();
  for (const Case& k : kCases) {
    SCOPED_TRACE(k.name);
    const BatchNormShape& s = k.s;
    const Tensor x = activation({s.n, s.c, s.s}, 2, dt, -2.0f, 3.0f), dy = activation({s.n, s.c, s.s}, 3, dt);
    const Tensor mean = tt::random_tensor({s.c}, 4, 0.0f, 1.0f), inv_std = tt::random_tensor({s.c}, 5, 0.5f, 2.0f);
    std::vector<double> want(2 * s.c, 0.0), mag(2 * s.c, 0.0);
    for (int64_t c = 0; c < s.c; ++c)
      for (int64_t n = 0; n < s.n; ++n)
        for (int64_t i = 0; i < s.s; ++i) {
          const int64_t j = flat(s, n, c, i);
          const float diff = at(x, j) - mean.data<float>()[c];  // in f32, as the layer always did
          const double xhat = static_cast<double>(diff) * static_cast<double>(inv_std.data<float>()[c]);
          const double g = at(dy, j);
          want[c] += g;
          mag[c] += std::fabs(g);
          want[s.c + c] += g * xhat;
          mag[s.c + c] += std::fabs(g * xhat);
        }
    Tensor sums = Tensor::empty({2 * s.c}, DType::F64);
    ops::bn_backward_sums(s, x, dy, mean, inv_std, sums);
    expect_sums_near(sums, want, mag, "[sum dy | sum dy * xhat]");
  }
}

TEST_P(SyncBnOps, NormalizeMatchesPlainLoops) {
  const DType dt = GetParam();
  for (const Case& k : kCases) {
    SCOPED_TRACE(k.name);
    const BatchNormShape& s = k.s;
    const Tensor x = activation({s.n, s.c, s.s}, 6, dt, -2.0f, 3.0f);
    std::vector<double> mean(s.c), is(s.c);
    for (int64_t c = 0; c < s.c; ++c) {
      mean[c] = 0.5 + 0.01 * static_cast<double>(c) + 1e-9;
      is[c] = 1.0 / std::sqrt(1.3 + 0.1 * static_cast<double>(c));
    }
    const Tensor gamma = tt::random_tensor({s.c}, 7, 0.5f, 1.5f), beta = tt::random_tensor({s.c}, 8);
    std::vector<double> want(static_cast<size_t>(s.numel()));
    for (int64_t n = 0; n < s.n; ++n)
      for (int64_t c = 0; c < s.c; ++c)
        for (int64_t i = 0; i < s.s; ++i) {
          const int64_t j = flat(s, n, c, i);
          want[j] = (at(x, j) - mean[c]) * is[c] * gamma.data<float>()[c] + beta.data<float>()[c];
        }
    Tensor y = Tensor::empty({s.n, s.c, s.s}, dt);
    ops::bn_normalize(s, x, f64_tensor(mean), f64_tensor(is), gamma, beta, y);
    expect_rounded(y, want, "y");
  }
}

TEST_P(SyncBnOps, BackwardDxMatchesPlainLoops) {
  const DType dt = GetParam();
  for (const Case& k : kCases) {
    SCOPED_TRACE(k.name);
    const BatchNormShape& s = k.s;
    const Tensor x = activation({s.n, s.c, s.s}, 9, dt, -2.0f, 3.0f), dy = activation({s.n, s.c, s.s}, 10, dt);
    const Tensor mean = tt::random_tensor({s.c}, 11, 0.0f, 1.0f), inv_std = tt::random_tensor({s.c}, 12, 0.5f, 2.0f);
    const Tensor gamma = tt::random_tensor({s.c}, 13, 0.5f, 1.5f);
    std::vector<double> sums(2 * s.c);
    for (int64_t c = 0; c < 2 * s.c; ++c) sums[c] = 0.37 * static_cast<double>(c) - 1.1;
    const double count = 2.0 * static_cast<double>(s.n * s.s);  // as with two ranks
    std::vector<double> want(static_cast<size_t>(s.numel()));
    for (int64_t n = 0; n < s.n; ++n)
      for (int64_t c = 0; c < s.c; ++c) {
        const double kc = static_cast<double>(gamma.data<float>()[c]) * inv_std.data<float>()[c] / count;
        for (int64_t i = 0; i < s.s; ++i) {
          const int64_t j = flat(s, n, c, i);
          const float diff = at(x, j) - mean.data<float>()[c];
          const double xhat = static_cast<double>(diff) * static_cast<double>(inv_std.data<float>()[c]);
          want[j] = kc * (count * at(dy, j) - sums[c] - xhat * sums[s.c + c]);
        }
      }
    Tensor dx = Tensor::empty({s.n, s.c, s.s}, dt);
    ops::bn_backward_dx(s, x, dy, mean, inv_std, gamma, f64_tensor(sums), count, dx);
    expect_rounded(dx, want, "dx");
  }
}

// One rank: the synchronised layer is ordinary training-mode batch norm (against the reference
// kernels, which also sum in double, whatever the build selects by default).
TEST_P(SyncBnOps, OneRankMatchesTheOrdinaryBatchNorm) {
  const DType dt = GetParam();
  struct Reference {
    cpu::Kernels saved = cpu::kernels();
    Reference() { cpu::set_kernels(cpu::Kernels::Reference); }
    ~Reference() { cpu::set_kernels(saved); }
  } reference;
  SingleProcessCommunicator comm;
  for (const Case& k : kCases) {
    SCOPED_TRACE(k.name);
    const BatchNormShape& s = k.s;
    const Shape xs{s.n, s.c, s.s}, cs{s.c};
    const Tensor x = activation(xs, 14, dt, -2.0f, 3.0f), dy = activation(xs, 15, dt);
    const Tensor gamma = tt::random_tensor(cs, 16, 0.5f, 1.5f), beta = tt::random_tensor(cs, 17);
    const Tensor rm0 = tt::random_tensor(cs, 18), rv0 = tt::random_tensor(cs, 19, 0.5f, 2.0f);
    const float eps = 1e-5f, momentum = 0.1f;
    struct Out {
      Tensor y, mean, var, is, rm, rv, dx, dg, db;
    };
    auto make = [&] {
      return Out{Tensor::empty(xs, dt), Tensor::empty(cs), Tensor::empty(cs), Tensor::empty(cs), rm0.clone(),
                 rv0.clone(),           Tensor::empty(xs, dt), Tensor::empty(cs), Tensor::empty(cs)};
    };
    Out a = make(), b = make();
    ops::batchnorm_forward_train(s, x, gamma, beta, eps, momentum, a.rm, a.rv, a.y, a.mean, a.var, a.is);
    ops::batchnorm_backward(s, x, dy, gamma, a.mean, a.is, eps, a.dx, a.dg, a.db);
    const int64_t count = sync_batchnorm_forward_train(comm, s, x, gamma, beta, eps, momentum, b.rm, b.rv, b.y, b.mean,
                                                       b.var, b.is);
    EXPECT_EQ(count, s.n * s.s);
    sync_batchnorm_backward(comm, s, count, x, dy, gamma, b.mean, b.is, b.dx, b.dg, b.db);
    const double act_tol = dt == DType::BF16 ? 1.0 / 64.0 : 1e-5;
    EXPECT_TRUE(tt::all_close(ops::cast_to(b.y, DType::F32), ops::cast_to(a.y, DType::F32), act_tol, act_tol)) << "y";
    EXPECT_TRUE(tt::all_close(ops::cast_to(b.dx, DType::F32), ops::cast_to(a.dx, DType::F32), act_tol, act_tol))
        << "dx";
    for (auto [got, want, what] : {std::tuple{&b.mean, &a.mean, "mean"}, std::tuple{&b.var, &a.var, "var"},
                                   std::tuple{&b.is, &a.is, "inv_std"}, std::tuple{&b.rm, &a.rm, "running mean"},
                                   std::tuple{&b.rv, &a.rv, "running var"}, std::tuple{&b.dg, &a.dg, "dgamma"},
                                   std::tuple{&b.db, &a.db, "dbeta"}})
      EXPECT_TRUE(tt::all_close(*got, *want, 1e-5, 1e-5)) << what;
  }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, SyncBnOps, ::testing::ValuesIn(kDtypes),
                         [](const ::testing::TestParamInfo<DType>& info) { return std::string(dtype_name(info.param)); });

TEST(SyncBnOps, RefuseWrongDtypesAndSizes) {
  const BatchNormShape s{2, 3, 4};
  const Tensor x = tt::random_tensor({2, 3, 4}, 20), xb = ops::cast_to(x, DType::BF16);
  const Tensor mean32 = Tensor::zeros({3}), is32 = Tensor::full({3}, 1.0f), gamma = Tensor::full({3}, 1.0f);
  const Tensor mean64 = Tensor::zeros({3}, DType::F64), sums2 = Tensor::zeros({6}, DType::F64);
  Tensor sums32 = Tensor::zeros({3}), sums_short = Tensor::zeros({2}, DType::F64), y = Tensor::empty({2, 3, 4});
  Tensor sums = Tensor::zeros({3}, DType::F64), bsums = Tensor::zeros({6}, DType::F64);
  EXPECT_THROW(ops::bn_channel_sums(s, x, nullptr, sums32), Error);      // f32 sums
  EXPECT_THROW(ops::bn_channel_sums(s, x, nullptr, sums_short), Error);  // [C - 1]
  EXPECT_THROW(ops::bn_channel_sums(s, x, &mean32, sums), Error);        // f32 mean
  EXPECT_THROW(ops::bn_backward_sums(s, x, xb, mean32, is32, bsums), Error);  // mixed activations
  EXPECT_THROW(ops::bn_backward_sums(s, x, x, mean32, is32, sums), Error);    // [C], not [2C]
  EXPECT_THROW(ops::bn_normalize(s, x, mean32, is32, gamma, gamma, y), Error);  // f32 statistics
  Tensor yb = Tensor::empty({2, 3, 4}, DType::BF16);
  EXPECT_THROW(ops::bn_normalize(s, x, mean64, mean64, gamma, gamma, yb), Error);  // f32 x, bf16 y
  EXPECT_THROW(ops::bn_backward_dx(s, x, x, mean32, is32, gamma, sums, 4.0, y), Error);  // [C] sums
  EXPECT_THROW(ops::bn_backward_dx(s, x, x, mean64, is32, gamma, sums2, 4.0, y), Error);  // f64 mean
  EXPECT_NO_THROW(ops::bn_backward_dx(s, x, x, mean32, is32, gamma, sums2, 4.0, y));
}

TEST(SyncBnOps, F64Tensors) {
  Tensor t = Tensor::zeros({5}, DType::F64);
  EXPECT_EQ(dtype_size(DType::F64), 8u);
  EXPECT_EQ(std::string(dtype_name(DType::F64)), "f64");
  EXPECT_EQ(t.nbytes(), 40u);
  t.data<double>()[4] = 0.1;
  const Tensor c = t.clone();
  EXPECT_EQ(c.data<double>()[4], 0.1);
  EXPECT_THROW(t.data<float>(), Error);
}

}  // namespace
}  // namespace ttq
