// End-to-end: a small model trained on a fixed synthetic problem learns it, in full precision
// and with TTQ (from scratch and fine-tuned from the full-precision weights); runs repeat exactly.
#include <gtest/gtest.h>

#include <cstdio>
#include <limits>
#include <string>

#include "engine/data/synthetic.h"
#include "engine/nn/quantizable.h"
#include "engine/quant/quantize_model.h"
#include "engine/train/step.h"
#include "kernels/cpu/ops.h"
#include "models/model.h"
#include "tests/test_util.h"

using namespace ttq;

namespace {

const InputSpec kSpec{1, 8, 8, 4};

struct RunResult {
  double first_loss = 0.0, last_loss = 0.0;  // mean over the first / last 20 steps
  double test_error = 1.0;
};

RunResult train(Model& m, const SyntheticDataset& data, int steps, double lr, int64_t& cursor) {
  OptimizerConfig oc;
  oc.lr = lr;
  auto opt = make_optimizer(m.net->named_parameters(), oc);
  CrossEntropyLoss loss;
  RunResult r;
  for (int s = 0; s < steps; ++s) {
    const double l = train_step(*m.net, loss, *opt, data.batch(cursor, 32), lr).loss;
    cursor += 32;
    if (s < 20) r.first_loss += l / 20;
    if (s >= steps - 20) r.last_loss += l / 20;
  }
  int64_t correct = 0;
  for (int64_t i = 0; i < 512; i += 128) correct += eval_step(*m.net, loss, data.batch((int64_t(1) << 30) + i, 128)).correct;
  r.test_error = 1.0 - correct / 512.0;
  std::printf("first loss %.4f last loss %.4f test error %.4f\n", r.first_loss, r.last_loss, r.test_error);
  return r;
}

}  // namespace

TEST(Training, FullPrecisionLearnsTheSyntheticProblem) {
  SyntheticDataset data(kSpec, int64_t(1) << 40, 1.0f, 5);
  Model m = build_model(json{{"name", "small_convnet"}}, kSpec, 5);
  int64_t cursor = 0;
  const RunResult r = train(m, data, 300, 0.05, cursor);
  // Chance is ln(4) = 1.386.
  EXPECT_GT(r.first_loss, 1.0);
  EXPECT_LT(r.last_loss, 0.1);
  EXPECT_LT(r.test_error, 0.05);
}

TEST(Training, TtqFromScratchAndFromFullPrecision) {
  SyntheticDataset data(kSpec, int64_t(1) << 40, 1.0f, 5);
  Model scratch = build_model(json{{"name", "small_convnet"}}, kSpec, 5);
  QuantizeOptions q;
  q.full_precision_layers = scratch.full_precision_layers;
  quantize_model(*scratch.net, q);
  int64_t cursor = 0;
  const RunResult rs = train(scratch, data, 300, 0.05, cursor);
  EXPECT_GT(rs.first_loss, 1.0);
  EXPECT_LT(rs.last_loss, 0.15);
  EXPECT_LT(rs.test_error, 0.12);

  Model ft = build_model(json{{"name", "small_convnet"}}, kSpec, 5);
  cursor = 0;
  train(ft, data, 300, 0.05, cursor);
  quantize_model(*ft.net, q);
  const RunResult rf = train(ft, data, 150, 0.02, cursor);
  EXPECT_LT(rf.last_loss, 0.1);
  EXPECT_LT(rf.test_error, 0.05);
  // The scales trained away from their initial 1.0 and the layers are genuinely ternary.
  for (auto* l : quantizable_layers(*ft.net)) {
    if (!l->is_ternary()) continue;
    const auto& st = l->quantizer()->stats();
    EXPECT_NE(st.wp, 1.0f) << l->path();
    EXPECT_NE(st.wn, 1.0f) << l->path();
    EXPECT_GT(st.zeros, 0) << l->path();
    EXPECT_GT(st.positive, 0) << l->path();
    EXPECT_GT(st.negative, 0) << l->path();
  }
}

TEST(Training, RepeatedRunsAreBitwiseIdentical) {
  auto run = [] {
    SyntheticDataset data(kSpec, 4096, 1.0f, 9);
    Model m = build_model(json{{"name", "small_convnet"}}, kSpec, 9);
    QuantizeOptions q;
    q.full_precision_layers = m.full_precision_layers;
    quantize_model(*m.net, q);
    int64_t cursor = 0;
    train(m, data, 30, 0.05, cursor);
    std::vector<float> all;
    for (auto& np : m.net->named_parameters())
      all.insert(all.end(), np.param->value.data<float>(), np.param->value.data<float>() + np.param->value.numel());
    return all;
  };
  EXPECT_EQ(run(), run());
}

// A NaN in one weight reaches the loss, which stops the step with an error, through ReLU, max
// pooling and global average pooling, with the oneDNN kernels and with the reference ones, on
// every ImageNet-style model path a small model has (conv, BN, ReLU, max-pool, linear).
TEST(Training, ANanWeightReachesTheLossAndStopsTheStep) {
  for (const cpu::Kernels k : {cpu::Kernels::Reference, cpu::Kernels::OneDNN}) {
    if (k == cpu::Kernels::OneDNN && !cpu::onednn_built()) continue;
    SCOPED_TRACE(cpu::kernels_name(k));
    const cpu::Kernels before = cpu::kernels();
    cpu::set_kernels(k);
    Model m = build_model(json{{"name", "small_convnet"}}, kSpec, 3);
    m.net->named_parameters().front().param->value.data<float>()[0] = std::numeric_limits<float>::quiet_NaN();
    SyntheticDataset data(kSpec, 64, 1.0f, 9);
    OptimizerConfig oc;
    auto opt = make_optimizer(m.net->named_parameters(), oc);
    CrossEntropyLoss loss;
    const std::string e = ttq::testing::error_of([&] { train_step(*m.net, loss, *opt, data.batch(0, 16), 0.1); });
    EXPECT_NE(e.find("not finite"), std::string::npos) << e;
    cpu::set_kernels(before);
  }
}
