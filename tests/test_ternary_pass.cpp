// TernaryPass (all ternary layers' TTQ work once per step) against the per-layer path: same
// codes, same gradients, same training trajectory, bit for bit on the CPU.
#include <gtest/gtest.h>

#include <cmath>
#include <memory>

#include "engine/data/synthetic.h"
#include "engine/nn/quantizable.h"
#include "engine/quant/quantize_model.h"
#include "engine/quant/ternary_pass.h"
#include "engine/train/step.h"
#include "kernels/ops.h"
#include "models/model.h"
#include "tests/test_util.h"

using namespace ttq;

namespace {

const InputSpec kSpec{1, 10, 10, 4};

Model make(math::ThresholdMode mode, bool clamp = false, bool per_channel = false) {
  Model m = build_model(json{{"name", "cifar_resnet"}, {"depth", 8}}, kSpec, 3);
  QuantizeOptions q;
  q.full_precision_layers = m.full_precision_layers;
  q.ternary.mode = mode;
  q.ternary.r = 0.4;
  q.ternary.clamp_scales = clamp;
  q.ternary.per_channel_scales = per_channel;
  quantize_model(*m.net, q);
  return m;
}

std::vector<float> flat_params(Module& net) {
  std::vector<float> out;
  for (auto& np : net.named_parameters()) {
    const Tensor v = np.param->value.to(Device::CPU);
    out.insert(out.end(), v.data<float>(), v.data<float>() + v.numel());
  }
  return out;
}

// Trains `steps` SGD steps (momentum, weight decay) with or without a TernaryPass.
std::vector<double> run(Model& m, bool with_pass, int steps) {
  SyntheticDataset data(kSpec, 4096, 1.0f, 9);
  OptimizerConfig oc;
  oc.lr = 0.05;
  oc.weight_decay = 1e-4;
  auto opt = make_optimizer(m.net->named_parameters(), oc);
  CrossEntropyLoss loss;
  std::unique_ptr<TernaryPass> pass;
  if (with_pass) pass = std::make_unique<TernaryPass>(*m.net);
  std::vector<double> losses;
  for (int s = 0; s < steps; ++s)
    losses.push_back(train_step(*m.net, loss, *opt, data.batch(s * 16, 16), oc.lr, pass.get()).loss);
  return losses;
}

}  // namespace

TEST(TernaryPass, TrainsExactlyLikeThePerLayerPath) {
  for (auto mode : {math::ThresholdMode::Max, math::ThresholdMode::Sparsity, math::ThresholdMode::Twn}) {
    for (bool per_channel : {false, true}) {
      if (per_channel && mode == math::ThresholdMode::Twn) continue;  // Twn has one fixed scale
      for (bool clamp : {false, true}) {
        SCOPED_TRACE(std::string(threshold_mode_name(mode)) + (clamp ? " clamp" : "") +
                     (per_channel ? " per-channel" : ""));
        Model a = make(mode, clamp, per_channel), b = make(mode, clamp, per_channel);
        const auto la = run(a, false, 8);
        const auto lb = run(b, true, 8);
        EXPECT_EQ(la, lb);
        EXPECT_EQ(flat_params(*a.net), flat_params(*b.net));
        // The codes and D after the last step agree too.
        auto qa = quantizable_layers(*a.net), qb = quantizable_layers(*b.net);
        ASSERT_EQ(qa.size(), qb.size());
        for (size_t i = 0; i < qa.size(); ++i) {
          if (!qa[i]->is_ternary()) continue;
          const TernaryStats sa = qa[i]->quantizer()->stats(), sb = qb[i]->quantizer()->stats();
          EXPECT_EQ(sa.threshold, sb.threshold) << qa[i]->path();
          EXPECT_EQ(sa.positive, sb.positive) << qa[i]->path();
          EXPECT_EQ(sa.negative, sb.negative) << qa[i]->path();
          if (per_channel) {
            EXPECT_EQ(qa[i]->wp().value.numel(), qa[i]->weight().value.shape()[0]) << qa[i]->path();
          }
        }
      }
    }
  }
}

TEST(TernaryPass, LayersDeferOnlyWhileThePassExists) {
  Model m = make(math::ThresholdMode::Max);
  int ternary = 0;
  {
    TernaryPass pass(*m.net);
    for (auto* l : quantizable_layers(*m.net)) {
      EXPECT_EQ(l->defers_ternary_backward(), l->is_ternary()) << l->path();
      ternary += l->is_ternary();
    }
    EXPECT_EQ(static_cast<int>(pass.layers().size()), ternary);
    EXPECT_GT(ternary, 0);
    EXPECT_EQ(pass.forward_launches(), 0);  // CPU

    // After backward the layers hold dL/dw_t and have not touched the latent or scale grads.
    SyntheticDataset data(kSpec, 64, 1.0f, 9);
    const Batch batch = data.batch(0, 8);
    m.net->zero_grad();
    pass.forward();
    CrossEntropyLoss loss;
    loss.forward(m.net->forward(batch.images), batch.labels);
    m.net->backward(loss.backward());
    for (auto* l : pass.layers()) {
      const Tensor& g = l->ternary_weight_grad();
      double gsum = 0.0, wsum = 0.0;
      for (int64_t i = 0; i < g.numel(); ++i) {
        gsum += std::abs(g.data<float>()[i]);
        wsum += std::abs(l->weight().grad.data<float>()[i]);
      }
      EXPECT_GT(gsum, 0.0) << l->path();
      EXPECT_EQ(wsum, 0.0) << l->path();
      EXPECT_EQ(l->wp().grad.data<float>()[0], 0.0f) << l->path();
    }
    // The pass turns dL/dw_t into exactly what the per-layer backward would have added.
    pass.backward();
    for (auto* l : pass.layers()) {
      Tensor expect_latent = Tensor::zeros(l->weight().value.shape());
      Tensor dwp = Tensor::zeros({1}), dwn = Tensor::zeros({1});
      ops::ttq_backward_accumulate(l->quantizer()->codes(), l->ternary_weight_grad(), l->wp().value, l->wn().value,
                                   true, expect_latent, dwp, dwn);
      EXPECT_TRUE(ttq::testing::all_close(l->weight().grad, expect_latent, 0.0, 0.0)) << l->path();
      EXPECT_EQ(l->wp().grad.data<float>()[0], dwp.data<float>()[0]) << l->path();
      EXPECT_EQ(l->wn().grad.data<float>()[0], dwn.data<float>()[0]) << l->path();
    }
  }
  for (auto* l : quantizable_layers(*m.net)) EXPECT_FALSE(l->defers_ternary_backward()) << l->path();
}

// Gradients add up over micro-batches (forward/backward twice, one zero_grad) with the pass as
// without it: the latent weights' and the Wp/Wn gradients hold the sum of both micro-batches'.
TEST(TernaryPass, GradientsAddUpOverMicroBatchesLikeThePerLayerPath) {
  for (auto mode : {math::ThresholdMode::Max, math::ThresholdMode::Twn}) {
    SCOPED_TRACE(threshold_mode_name(mode));
    SyntheticDataset data(kSpec, 64, 1.0f, 9);
    auto grads = [&](bool with_pass, int micro_batches) {
      Model m = make(mode);
      std::unique_ptr<TernaryPass> pass;
      if (with_pass) pass = std::make_unique<TernaryPass>(*m.net);
      CrossEntropyLoss loss;
      m.net->zero_grad();
      for (int k = 0; k < micro_batches; ++k) {
        const Batch b = data.batch(8 * k, 8);
        if (pass) pass->forward();
        loss.forward(m.net->forward(b.images), b.labels);
        m.net->backward(loss.backward());
        if (pass) pass->backward();
      }
      std::vector<std::pair<std::string, std::vector<float>>> out;
      for (auto& np : m.net->named_parameters()) {
        const Tensor g = np.param->grad.to(Device::CPU);
        out.emplace_back(np.name, std::vector<float>(g.data<float>(), g.data<float>() + g.numel()));
      }
      return out;
    };
    const auto with = grads(true, 2), without = grads(false, 2), one = grads(true, 1);
    ASSERT_EQ(with.size(), without.size());
    int scales = 0;
    for (size_t i = 0; i < with.size(); ++i) {
      EXPECT_EQ(with[i].second, without[i].second) << with[i].first;
      EXPECT_NE(with[i].second, one[i].second) << with[i].first << ": the second micro-batch added nothing";
      const std::string& name = with[i].first;
      scales += name.size() > 3 && name.compare(name.size() - 3, 3, ".wp") == 0;
    }
    if (mode == math::ThresholdMode::Max) {
      EXPECT_GT(scales, 0);
    }
  }
}

// A layer that is already ternary keeps its quantizer only when asked for the same settings (a
// resumed run); other settings, or naming it full precision, are errors naming the layer.
TEST(QuantizeModel, AlreadyTernaryLayersAreNotSilentlyKeptWithOtherSettings) {
  Model m = make(math::ThresholdMode::Max);
  QuantizeOptions q;
  q.full_precision_layers = m.full_precision_layers;
  q.ternary.mode = math::ThresholdMode::Max;
  q.ternary.r = 0.4;
  EXPECT_TRUE(quantize_model(*m.net, q).empty());  // same settings: nothing to do
  QuantizeOptions other = q;
  other.ternary.mode = math::ThresholdMode::Sparsity;
  other.ternary.r = 0.5;
  std::string e = ttq::testing::error_of([&] { quantize_model(*m.net, other); });
  EXPECT_NE(e.find("is already ternary (max, t 0.05"), std::string::npos) << e;
  EXPECT_NE(e.find("not as this quantization asks (sparsity"), std::string::npos) << e;
  QuantizeOptions other_t = q;
  other_t.ternary.t = 0.1f;
  EXPECT_NE(ttq::testing::error_of([&] { quantize_model(*m.net, other_t); }).find("already ternary"), std::string::npos);
  QuantizeOptions per_channel = q;
  per_channel.ternary.per_channel_scales = true;
  e = ttq::testing::error_of([&] { quantize_model(*m.net, per_channel); });
  EXPECT_NE(e.find("per-channel 0), not as this quantization asks (max, t 0.05, r 0.4, clamp 0, per-channel 1)"),
            std::string::npos)
      << e;
  QuantizeOptions all_fp = q;
  for (auto* l : quantizable_layers(*m.net))
    if (l->is_ternary()) all_fp.full_precision_layers.push_back(l->path());
  e = ttq::testing::error_of([&] { quantize_model(*m.net, all_fp); });
  EXPECT_NE(e.find("is already ternary but is listed as a full-precision layer"), std::string::npos) << e;
}

TEST(TernaryPass, EmptyForAFullPrecisionModel) {
  Model m = build_model(json{{"name", "small_convnet"}}, kSpec, 3);
  TernaryPass pass(*m.net);
  EXPECT_TRUE(pass.empty());
  pass.forward();
  pass.backward();
}

TEST(TernaryPass, RefusesDeferringAFullPrecisionLayer) {
  Model m = build_model(json{{"name", "small_convnet"}}, kSpec, 3);
  auto layers = quantizable_layers(*m.net);
  ASSERT_FALSE(layers.empty());
  EXPECT_NE(ttq::testing::error_of([&] { layers[0]->set_defer_ternary_backward(true); }).find("only a ternary layer"),
            std::string::npos);
}
