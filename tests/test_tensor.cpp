// Tensors: construction, views sharing storage, slices, copies, and errors that say what.
#include <gtest/gtest.h>

#include "engine/core/tensor.h"
#include "kernels/device.h"
#include "kernels/ops.h"

using namespace ttq;

// An error names the place it was raised at once; an error that wraps another's text keeps the
// inner place and adds none.
TEST(Errors, NameWhereTheyWereRaisedOnce) {
  std::string inner, outer;
  try {
    TTQ_FAIL("inner " << 1);
  } catch (const ttq::Error& e) {
    inner = e.what();
  }
  EXPECT_EQ(inner.rfind("inner 1 [tests/test_tensor.cpp:", 0), 0u) << inner;
  try {
    TTQ_FAIL("context: " << inner << " (more)");
  } catch (const ttq::Error& e) {
    outer = e.what();
  }
  EXPECT_EQ(outer, "context: " + inner + " (more)");
}

TEST(Tensor, ShapesAndNumel) {
  Tensor t = Tensor::zeros({2, 3, 4});
  EXPECT_EQ(t.numel(), 24);
  EXPECT_EQ(t.nbytes(), 96u);
  EXPECT_EQ(t.dim(-1), 4);
  EXPECT_EQ(t.str(), "f32[2, 3, 4] cpu");
  for (int64_t i = 0; i < 24; ++i) EXPECT_EQ(t.data<float>()[i], 0.0f);
  EXPECT_THROW(t.dim(3), Error);
  EXPECT_THROW(Tensor::empty({2, -1}), Error);
  Tensor e = Tensor::empty({0, 5});
  EXPECT_EQ(e.numel(), 0);
}

TEST(Tensor, ViewsShareStorage) {
  Tensor t = Tensor::from_vector({2, 3}, {1, 2, 3, 4, 5, 6});
  Tensor v = t.view({3, 2});
  v.data<float>()[5] = 60.0f;
  EXPECT_EQ(t.data<float>()[5], 60.0f);
  EXPECT_EQ(t.use_count(), 2);
  Tensor s = t.slice(1, 2);
  EXPECT_EQ(s.shape(), Shape({1, 3}));
  EXPECT_EQ(s.data<float>()[0], 4.0f);
  Tensor c = t.clone();
  c.data<float>()[0] = -1.0f;
  EXPECT_EQ(t.data<float>()[0], 1.0f);
  EXPECT_THROW(t.view({4, 2}), Error);
  EXPECT_THROW(t.slice(1, 3), Error);
}

TEST(Tensor, DtypeChecks) {
  Tensor codes = Tensor::zeros({4}, DType::I8);
  EXPECT_EQ(codes.nbytes(), 4u);
  try {
    codes.data<float>();
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("data<f32>() on a i8 tensor"), std::string::npos) << e.what();
  }
  Tensor a = Tensor::zeros({3}), b = Tensor::zeros({4});
  EXPECT_THROW(a.copy_from(b), Error);
  Tensor undefined;
  EXPECT_THROW(undefined.raw(), Error);
}

// Host code reading a device tensor's elements is an error naming the tensor, not a read of a
// device address; data_ptr() is the address on the tensor's own device, for its kernels. A
// non-owning tensor labelled CUDA stands in for device memory (nothing dereferences it).
TEST(Tensor, HostAccessToADeviceTensorIsAnError) {
  float buf[6] = {};
  const Tensor dev = Tensor::from_blob(buf, {2, 3}, DType::F32, Device::CUDA);
  try {
    dev.data<float>();
    FAIL() << "data<f32>() on a CUDA tensor returned";
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("data<f32>() on f32[2, 3] cuda"), std::string::npos) << m;
    EXPECT_NE(m.find("to(Device::CPU)"), std::string::npos) << m;
  }
  EXPECT_EQ(dev.data_ptr<float>(), buf);
  EXPECT_EQ(dev.slice(1, 2).data_ptr<float>(), buf + 3);
  EXPECT_EQ(dev.raw(), static_cast<void*>(buf));
  EXPECT_THROW(dev.data_ptr<int8_t>(), Error);  // the dtype is still checked
  const Tensor host = Tensor::from_blob(buf, {2, 3}, DType::F32);
  EXPECT_EQ(host.data<float>(), host.data_ptr<float>());
}

TEST(Tensor, FromBlobDoesNotOwn) {
  float buf[4] = {1, 2, 3, 4};
  {
    Tensor t = Tensor::from_blob(buf, {2, 2}, DType::F32);
    t.data<float>()[3] = 40.0f;
  }
  EXPECT_EQ(buf[3], 40.0f);
}

TEST(Device, NoGpuIsReportedNotFatal) {
  // On a machine without a GPU (or a build without CUDA) the count is 0 and the summary says why;
  // with a GPU it names the devices.
  const int n = cuda_device_count();
  const std::string s = cuda_device_summary();
  if (n == 0) {
    EXPECT_EQ(s.rfind("no GPU", 0), 0u) << s;
    EXPECT_THROW(Tensor::empty({4}, DType::F32, Device::CUDA), Error);
  } else {
    EXPECT_NE(s.find("GPU"), std::string::npos) << s;
  }
}

// Every tensor an op reads is checked against the geometry, so a wrong size is an error naming
// the op and the tensor, not a read past its end.
TEST(OpSizes, EveryOperandIsChecked) {
  Conv2dShape c;
  c.n = 2, c.c_in = 3, c.h = 5, c.w = 5, c.c_out = 4, c.kh = 3, c.kw = 3;
  const Tensor x = Tensor::zeros({2, 3, 5, 5}), short_x = Tensor::zeros({2, 3, 5, 4});
  const Tensor dy = Tensor::zeros({2, 4, 3, 3}), w = Tensor::zeros({4, 3, 3, 3});
  Tensor dw = Tensor::zeros({4, 3, 3, 3}), dx = Tensor::zeros({2, 3, 5, 5});
  EXPECT_NO_THROW(ops::conv2d_backward_weights(c, x, dy, dw, nullptr));
  EXPECT_THROW(ops::conv2d_backward_weights(c, short_x, dy, dw, nullptr), Error);
  EXPECT_THROW(ops::conv2d_backward_weights(c, x, Tensor::zeros({2, 4, 3, 2}), dw, nullptr), Error);
  EXPECT_THROW(ops::conv2d_backward_data(c, dy, Tensor::zeros({4, 3, 3, 2}), dx), Error);
  Pool2dShape p;
  p.n = 2, p.c = 3, p.h = 5, p.w = 5, p.kh = 2, p.kw = 2, p.stride_h = 2, p.stride_w = 2;
  Tensor py = Tensor::zeros({2, 3, 2, 2});
  EXPECT_NO_THROW(ops::pool2d_forward(PoolKind::Max, p, x, py));
  EXPECT_THROW(ops::pool2d_forward(PoolKind::Max, p, short_x, py), Error);
  EXPECT_THROW(ops::pool2d_backward(PoolKind::Max, p, x, Tensor::zeros({2, 3, 2, 1}), dx), Error);
  Tensor lx = Tensor::zeros({2, 6}), lw = Tensor::zeros({4, 6}), ldy = Tensor::zeros({2, 4});
  Tensor ldw = Tensor::zeros({4, 6}), ldx = Tensor::zeros({2, 6}), ldb = Tensor::zeros({4});
  EXPECT_NO_THROW(ops::linear_backward(lx, lw, ldy, &ldx, ldw, &ldb));
  Tensor small_dw = Tensor::zeros({4, 5}), small_db = Tensor::zeros({3});
  const std::string e = [&] {
    try {
      ops::linear_backward(lx, lw, ldy, &ldx, small_dw, &ldb);
    } catch (const Error& err) {
      return std::string(err.what());
    }
    return std::string();
  }();
  EXPECT_NE(e.find("linear_backward: weight gradient has 20 elements"), std::string::npos) << e;
  EXPECT_THROW(ops::linear_backward(lx, lw, ldy, &ldx, ldw, &small_db), Error);
}
