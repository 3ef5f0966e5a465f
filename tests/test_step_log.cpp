// The trainer's step path: BatchFeed hands over the loader's batches in order, StepLog keeps each
// step's loss and count until read, and the logged step equals the plain one.
#include <gtest/gtest.h>

#include <memory>

#include "engine/data/synthetic.h"
#include "engine/train/batch_feed.h"
#include "engine/train/step.h"
#include "engine/train/step_log.h"
#include "models/model.h"
#include "tests/test_util.h"

using namespace ttq;

namespace {
const InputSpec kSpec{1, 8, 8, 4};
}

TEST(StepLog, KeepsStepsInOrderUntilRead) {
  StepLog log(Device::CPU, 3);
  for (int i = 0; i < 3; ++i) {
    Tensor l = log.loss_slot(), c = log.correct_slot();
    l.data<float>()[0] = 0.5f + i;
    c.data<int64_t>()[0] = 10 + i;
    log.commit(4 + i);
  }
  EXPECT_TRUE(log.full());
  EXPECT_NE(ttq::testing::error_of([&] { log.loss_slot(); }).find("full"), std::string::npos);
  const auto steps = log.read();
  ASSERT_EQ(steps.size(), 3u);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(steps[i].loss, 0.5 + i);
    EXPECT_EQ(steps[i].correct, 10 + i);
    EXPECT_EQ(steps[i].batch, 4 + i);
  }
  EXPECT_EQ(log.pending(), 0);
  EXPECT_TRUE(log.read().empty());
}

TEST(BatchFeed, HandsOverTheLoadersBatchesInOrder) {
  auto data = std::make_shared<SyntheticDataset>(kSpec, 100, 1.0f, 3);
  LoaderConfig lc;
  lc.batch_size = 16;
  lc.drop_last = false;  // the last batch has 4 samples
  lc.seed = 5;
  Loader a(data, lc), b(data, lc);
  a.start_epoch(1);
  b.start_epoch(1);
  BatchFeed feed(a, Device::CPU);
  DeviceBatch d;
  Batch expect;
  int batches = 0;
  while (feed.next(d)) {
    ASSERT_TRUE(b.next(expect));
    ASSERT_EQ(d.size, static_cast<int64_t>(expect.labels.size()));
    EXPECT_TRUE(ttq::testing::all_close(d.images, expect.images, 0.0, 0.0));
    for (int64_t i = 0; i < d.size; ++i) EXPECT_EQ(d.labels.data<int32_t>()[i], expect.labels[i]);
    ++batches;
  }
  EXPECT_FALSE(b.next(expect));
  EXPECT_EQ(batches, 7);
  EXPECT_FALSE(feed.next(d));  // stays at the end
}

TEST(StepLog, LoggedStepEqualsThePlainStep) {
  SyntheticDataset data(kSpec, 256, 1.0f, 3);
  Model a = build_model(json{{"name", "small_convnet"}}, kSpec, 1), b = build_model(json{{"name", "small_convnet"}}, kSpec, 1);
  OptimizerConfig oc;
  auto oa = make_optimizer(a.net->named_parameters(), oc), ob = make_optimizer(b.net->named_parameters(), oc);
  CrossEntropyLoss la, lb;
  StepLog log(Device::CPU, 8);
  std::vector<StepResult> plain;
  for (int s = 0; s < 5; ++s) {
    const Batch batch = data.batch(s * 16, 16);
    plain.push_back(train_step(*a.net, la, *oa, batch, 0.1));
    Tensor labels = Tensor::empty({16}, DType::I32);
    for (int i = 0; i < 16; ++i) labels.data<int32_t>()[i] = batch.labels[i];
    train_step(*b.net, lb, *ob, DeviceBatch{batch.images, labels, 16}, 0.1, nullptr, log);
  }
  const auto logged = log.read();
  ASSERT_EQ(logged.size(), 5u);
  for (int s = 0; s < 5; ++s) {
    EXPECT_EQ(logged[s].loss, static_cast<double>(static_cast<float>(plain[s].loss))) << s;
    EXPECT_EQ(logged[s].correct, plain[s].correct) << s;
    EXPECT_EQ(logged[s].batch, 16);
  }
  for (size_t i = 0; i < a.net->named_parameters().size(); ++i)
    EXPECT_TRUE(ttq::testing::all_close(a.net->named_parameters()[i].param->value,
                                        b.net->named_parameters()[i].param->value, 0.0, 0.0));
}
