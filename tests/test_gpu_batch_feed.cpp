// Batches copied to the GPU ahead of time (pinned staging, copy stream, events) arrive intact and
// in order, also when the batch size changes at the end of an epoch, and a GPU training run through
// the feed and the step log follows the synchronous path exactly.
#include <gtest/gtest.h>

#include <memory>

#include "engine/data/synthetic.h"
#include "engine/train/batch_feed.h"
#include "engine/train/step.h"
#include "kernels/device.h"
#include "models/model.h"
#include "tests/test_util.h"

using namespace ttq;

namespace {
const InputSpec kSpec{3, 16, 16, 10};
}

TEST(GpuBatchFeed, BatchesArriveIntactAndInOrder) {
  if (cuda_device_count() == 0) GTEST_SKIP() << cuda_device_summary();
  auto data = std::make_shared<SyntheticDataset>(kSpec, 300, 1.0f, 3);
  LoaderConfig lc;
  lc.batch_size = 64;
  lc.drop_last = false;  // 4 x 64 + 44
  Loader a(data, lc), b(data, lc);
  for (int epoch = 0; epoch < 2; ++epoch) {
    a.start_epoch(epoch);
    b.start_epoch(epoch);
    BatchFeed feed(a, Device::CUDA);
    DeviceBatch d;
    Batch expect;
    int batches = 0;
    while (feed.next(d)) {
      ASSERT_TRUE(b.next(expect));
      ASSERT_EQ(d.images.device(), Device::CUDA);
      ASSERT_EQ(d.size, static_cast<int64_t>(expect.labels.size()));
      EXPECT_TRUE(ttq::testing::all_close(d.images.to(Device::CPU), expect.images, 0.0, 0.0)) << batches;
      const Tensor labels = d.labels.to(Device::CPU);
      for (int64_t i = 0; i < d.size; ++i) EXPECT_EQ(labels.data<int32_t>()[i], expect.labels[i]);
      ++batches;
    }
    EXPECT_EQ(batches, 5);
  }
}

TEST(GpuBatchFeed, TrainingThroughTheFeedEqualsTheSynchronousPath) {
  if (cuda_device_count() == 0) GTEST_SKIP() << cuda_device_summary();
  auto data = std::make_shared<SyntheticDataset>(kSpec, 512, 1.0f, 3);
  LoaderConfig lc;
  lc.batch_size = 32;
  Loader a(data, lc), b(data, lc);
  a.start_epoch(0);
  b.start_epoch(0);
  Model ma = build_model(json{{"name", "small_convnet"}}, kSpec, 2), mb = build_model(json{{"name", "small_convnet"}}, kSpec, 2);
  ma.net->to(Device::CUDA);
  mb.net->to(Device::CUDA);
  OptimizerConfig oc;
  auto oa = make_optimizer(ma.net->named_parameters(), oc), ob = make_optimizer(mb.net->named_parameters(), oc);
  CrossEntropyLoss la, lb;
  BatchFeed feed(a, Device::CUDA);
  StepLog log(Device::CUDA, 4);  // read back every 4 steps
  std::vector<StepResult> sync;
  std::vector<LoggedStep> logged;
  DeviceBatch d;
  Batch batch;
  while (feed.next(d)) {
    ASSERT_TRUE(b.next(batch));
    sync.push_back(train_step(*mb.net, lb, *ob, batch, 0.05));
    train_step(*ma.net, la, *oa, d, 0.05, nullptr, log);
    if (log.full())
      for (const auto& s : log.read()) logged.push_back(s);
  }
  for (const auto& s : log.read()) logged.push_back(s);
  ASSERT_EQ(logged.size(), sync.size());
  for (size_t i = 0; i < sync.size(); ++i) {
    EXPECT_EQ(logged[i].loss, sync[i].loss) << i;
    EXPECT_EQ(logged[i].correct, sync[i].correct) << i;
  }
}
