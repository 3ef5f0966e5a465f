// Helpers shared by the data-parallel tests (tests/test_dist.cpp runs ranks as threads over the
// tcp backend, tests/test_dist_mpi.cpp as MPI processes): a short training run of the small
// ConvNet on the synthetic problem, full precision then TTQ with a TernaryPass, on this rank's
// share of every global batch.
#pragma once

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <utility>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "engine/data/loader.h"
#include "engine/data/synthetic.h"
#include "engine/dist/comm_tcp.h"
#include "engine/dist/data_parallel.h"
#include "engine/nn/loss.h"
#include "engine/quant/quantize_model.h"
#include "engine/quant/ternary_pass.h"
#include "engine/train/step.h"
#include "models/model.h"

namespace ttq::testing {

struct DpRun {
  std::vector<std::pair<std::string, std::vector<float>>> tensors;  // parameters, then buffers
  std::vector<double> losses;                                       // this rank's, per step
  size_t buckets = 0;
};

inline std::vector<float> values_of(const Tensor& t) {
  Tensor h = t.to(Device::CPU);
  return std::vector<float>(h.data<float>(), h.data<float>() + h.numel());
}

// Runs fn(rank, comm) for `world` ranks, each a thread with its own tcp communicator over the
// rendezvous file; a rank's exception fails the test naming the rank. local_rank >= 0 gives every
// rank that local rank (0: ranks sharing the one GPU), else they count up on this host.
inline void run_ranks(int world, const std::string& rendezvous, double timeout_s,
                      const std::function<void(int, std::shared_ptr<Communicator>)>& fn, int local_rank = -1) {
  std::vector<std::thread> threads;
  std::vector<std::string> errors(static_cast<size_t>(world));
  for (int r = 0; r < world; ++r)
    threads.emplace_back([&, r] {
      try {
        TcpOptions o;
        o.rank = r;
        o.world = world;
        o.rendezvous = rendezvous;
        o.timeout_s = timeout_s;
        o.local_rank = local_rank;
        fn(r, std::make_shared<TcpCommunicator>(o));
      } catch (const std::exception& e) {
        errors[static_cast<size_t>(r)] = e.what();
      }
    });
  for (auto& t : threads) t.join();
  for (int r = 0; r < world; ++r) EXPECT_EQ(errors[static_cast<size_t>(r)], "") << "rank " << r;
}

// fp_steps full-precision SGD-momentum steps, then the model is made ternary (TTQ, first conv kept
// full precision) and ttq_steps more. Global batches of per_rank_batch x world samples from one
// shuffled epoch order; each rank takes its share. Tiny buckets (the model has 5.4 KB of
// gradients): 3 of them, [fc], [bn2, conv2], [bn1, conv1].
// On `device` the model lives there from the start (and is quantized there).
inline DpRun train_small_convnet(const std::shared_ptr<Communicator>& comm, int64_t per_rank_batch, bool sync_bn,
                                 int fp_steps, int ttq_steps, ComputeFormat compute = {},
                                 Device device = Device::CPU) {
  const InputSpec spec{1, 8, 8, 4};
  auto data = std::make_shared<SyntheticDataset>(spec, 2048, 1.0f, 11);
  Model m = build_model(json{{"name", "small_convnet"}, {"width", 8}}, spec, 5);
  Module& net = *m.net;
  DistConfig dc;
  dc.sync_bn = sync_bn;
  dc.bucket_mb = 0.0005;       // 128 floats
  dc.first_bucket_mb = 0.0002;  // 52 floats
  DataParallel dp(comm, dc, device);  // binds this rank to its GPU first, as the trainer does
  net.to(device);
  dp.attach(m.net);
  LoaderConfig lc;
  lc.batch_size = per_rank_batch;
  lc.workers = 0;
  lc.seed = 7;
  lc.augment = false;
  lc.rank = dp.rank();
  lc.world = dp.world();
  Loader loader(data, lc);
  loader.start_epoch(0);
  CrossEntropyLoss loss;
  DpRun out;
  OptimizerConfig oc;
  oc.lr = 0.05;
  oc.momentum = 0.9;
  oc.weight_decay = 1e-4;
  auto run = [&](int steps, TernaryPass* pass, Optimizer& opt) {
    Batch b;
    for (int s = 0; s < steps; ++s) {
      if (!loader.next(b)) TTQ_FAIL("test: the epoch is too short");
      out.losses.push_back(train_step(net, loss, opt, b, oc.lr, pass, compute).loss);
    }
  };
  {
    auto opt = make_optimizer(net.named_parameters(), oc);
    run(fp_steps, nullptr, *opt);
  }
  QuantizeOptions q;
  q.full_precision_layers = m.full_precision_layers;
  quantize_model(net, q);
  {
    auto opt = make_optimizer(net.named_parameters(), oc);
    TernaryPass pass(net, compute.dtype);
    run(ttq_steps, &pass, *opt);
  }
  if (dp.reducer()) out.buckets = dp.reducer()->plan().buckets.size();
  dp.average_buffers(net);  // per-rank batch norm leaves each rank its own running statistics
  for (auto& np : net.named_parameters()) out.tensors.emplace_back(np.name, values_of(np.param->value));
  for (auto& nb : net.named_buffers()) out.tensors.emplace_back(nb.name, values_of(*nb.tensor));
  return out;
}

// Largest per-tensor ||a - b|| / ||b|| over two runs' tensors (same names in the same order): the
// measure for bf16 runs, whose elementwise differences near zero mean little.
inline double worst_relative_l2(const DpRun& a, const DpRun& b, std::string* where = nullptr) {
  if (a.tensors.size() != b.tensors.size()) return 1e30;
  double worst = 0.0;
  for (size_t t = 0; t < b.tensors.size(); ++t) {
    const auto& x = a.tensors[t].second;
    const auto& y = b.tensors[t].second;
    if (a.tensors[t].first != b.tensors[t].first || x.size() != y.size()) return 1e30;
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < x.size(); ++i) {
      num += (double(x[i]) - y[i]) * (double(x[i]) - y[i]);
      den += double(y[i]) * y[i];
    }
    double rel = std::sqrt(num / std::max(den, 1e-30));
    if (std::isnan(rel)) rel = std::numeric_limits<double>::infinity();
    if (rel > worst) {
      worst = rel;
      if (where) *where = b.tensors[t].first;
    }
  }
  return worst;
}

// Largest |a - b| / (atol + |b|) over two runs' tensors (same names in the same order).
inline double worst_mismatch(const DpRun& a, const DpRun& b, double atol, std::string* where = nullptr) {
  double worst = 0.0;
  if (a.tensors.size() != b.tensors.size()) return 1e30;
  for (size_t t = 0; t < a.tensors.size(); ++t) {
    const auto& x = a.tensors[t].second;
    const auto& y = b.tensors[t].second;
    if (a.tensors[t].first != b.tensors[t].first || x.size() != y.size()) return 1e30;
    for (size_t i = 0; i < x.size(); ++i) {
      // Equal values (0 against 0 included) differ by nothing; a NaN against anything, infinitely.
      double r = 0.0;
      if (!(x[i] == y[i])) {
        r = std::abs(static_cast<double>(x[i]) - y[i]) / (atol + std::abs(static_cast<double>(y[i])));
        if (std::isnan(r)) r = std::numeric_limits<double>::infinity();
      }
      if (r > worst) {
        worst = r;
        if (where) *where = a.tensors[t].first + "[" + std::to_string(i) + "]";
      }
    }
  }
  return worst;
}

}  // namespace ttq::testing
