// Data-parallel training step time with and without gradient communication, to show what the
// overlap of the bucket all-reduces with the backward pass saves (engine/dist/grad_reducer.h).
//
//   mpirun -np 2 build/benchmarks/bench_dp_step        # mpi, CPU
//
// Model: CIFAR ResNet-20 (0.27 M parameters, 1.04 MiB of gradients) on 3x32x32 inputs, per-rank
// batch 32, SGD with momentum, full precision. Modes:
//   compute     the same step without any communication (the model is not attached to a reducer)
//   overlap     buckets all-reduced on the communication thread as soon as the backward pass
//               has finished their layers (the engine's default)
//   no_overlap  every bucket started only after the whole backward pass
// Counters: wait_ms = time rank 0 waited for the all-reduces after its own backward pass (this
// includes waiting for a slower rank: the ranks start each step together, after a barrier outside
// the timed region, but on a shared machine one can still fall behind); exposed_comm_ms = the part
// of it after the last rank's backward pass ended, i.e. the communication the backward pass did
// not hide (the ranks of one machine share a clock); buckets = buckets per step. Fixed iterations (every rank must start the same collectives); the
// time is rank 0's, and only rank 0 reports.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "engine/data/synthetic.h"
#include "benchmarks/dist_bench_main.h"
#include "engine/dist/communicator.h"
#include "engine/dist/grad_reducer.h"
#include "engine/nn/loss.h"
#include "engine/train/step.h"
#include "models/model.h"

namespace {

using ttq::bench::g_comm;

enum Mode { kCompute = 0, kOverlap = 1, kNoOverlap = 2 };

void BM_step(benchmark::State& state) {
  using namespace ttq;
  const Mode mode = static_cast<Mode>(state.range(0));
  const double bucket_mb = state.range(1) / 1024.0, first_mb = state.range(2) / 1024.0;
  const InputSpec spec{3, 32, 32, 10};
  Model m = build_model(json{{"name", "resnet20"}}, spec, 1);
  SyntheticDataset data(spec, 4096, 1.0f, 3);
  const Batch batch = data.batch(32 * g_comm->rank(), 32);
  OptimizerConfig oc;
  oc.lr = 0.01;
  auto opt = make_optimizer(m.net->named_parameters(), oc);
  CrossEntropyLoss loss;
  std::unique_ptr<GradientReducer> reducer;
  if (mode != kCompute) {
    ReducerOptions ro;
    ro.bucket_mb = bucket_mb;
    ro.first_bucket_mb = first_mb;
    ro.overlap = mode == kOverlap;
    reducer = std::make_unique<GradientReducer>(*m.net, g_comm, ro);
  }
  for (int i = 0; i < 2; ++i) train_step(*m.net, loss, *opt, batch, 0.01);  // warm-up
  g_comm->barrier();
  double waited = 0.0, exposed = 0.0;
  std::vector<double> starts(static_cast<size_t>(g_comm->world()));
  for (auto _ : state) {
    state.PauseTiming();
    g_comm->barrier();  // every step starts together
    state.ResumeTiming();
    const auto t0 = std::chrono::steady_clock::now();
    train_step(*m.net, loss, *opt, batch, 0.01);
    state.SetIterationTime(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    if (reducer) {
      state.PauseTiming();
      waited += reducer->last_wait_seconds();
      // Communication left after the LAST rank finished its backward pass (one machine: one clock).
      std::fill(starts.begin(), starts.end(), 0.0);
      starts[static_cast<size_t>(g_comm->rank())] = reducer->last_finish_start();
      g_comm->all_reduce_sum(starts.data(), g_comm->world(), "the start times");
      const double last = *std::max_element(starts.begin(), starts.end());
      exposed += std::max(0.0, reducer->last_finish_start() + reducer->last_wait_seconds() - last);
      state.ResumeTiming();
    }
  }
  g_comm->barrier();
  state.counters["wait_ms"] = 1e3 * waited / static_cast<double>(state.iterations());
  state.counters["exposed_comm_ms"] = 1e3 * exposed / static_cast<double>(state.iterations());
  state.counters["buckets"] = reducer ? static_cast<double>(reducer->plan().buckets.size()) : 0.0;
  state.counters["ranks"] = g_comm->world();
  state.SetItemsProcessed(state.iterations() * 32 * g_comm->world());
}

void args(benchmark::internal::Benchmark* b) {
  b->ArgNames({"mode", "bucket_kib", "first_kib"});
  b->Args({kCompute, 0, 0});
  // 256 KiB buckets after a 64 KiB one: 5 buckets; the defaults (1 MiB, then 25 MiB): 2 buckets.
  for (auto [kib, first] : {std::pair<int64_t, int64_t>{256, 64}, {25600, 1024}}) {
    b->Args({kOverlap, kib, first});
    b->Args({kNoOverlap, kib, first});
  }
}

BENCHMARK(BM_step)->Apply(args)->UseManualTime()->Iterations(30)->Unit(benchmark::kMillisecond);

}  // namespace

int main(int argc, char** argv) {
  return ttq::bench::run_dist_benchmarks(argc, argv, "bench_dp_step", false, [] {
    std::printf("backend %s, %d ranks; mode 0 = compute only, 1 = overlap, 2 = no overlap\n", g_comm->backend(),
                g_comm->world());
  });
}
