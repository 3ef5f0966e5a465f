// All-reduce bandwidth of the data-parallel backends over message sizes, from small to beyond a
// gradient bucket (engine/dist/communicator.h: all_reduce_average, i.e. sum then x 1/n, in place).
//
//   mpirun -np 2 build/benchmarks/bench_allreduce                 # mpi (CPU buffers)
//   RANK=r WORLD_SIZE=2 TTQ_RENDEZVOUS=/tmp/rdv build/benchmarks/bench_allreduce   # tcp, one per rank
//   mpirun -np 8 build/benchmarks/bench_allreduce --backend=nccl  # nccl (GPU buffers, a GPU per rank)
//
// Counters, as nccl-tests defines them: algbw = bytes / time; busbw = algbw x 2(n-1)/n, the
// bandwidth each rank's link carries in a ring all-reduce, comparable across rank counts.
// Each size runs a fixed number of iterations (every rank must start the same collectives), the
// time is rank 0's per iteration, and only rank 0 reports.
#include <benchmark/benchmark.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "benchmarks/dist_bench_main.h"
#include "engine/dist/communicator.h"

namespace {

using ttq::bench::g_comm;

void BM_allreduce(benchmark::State& state) {
  const int64_t bytes = state.range(0);
  const int64_t n = bytes / 4;
  ttq::Tensor host = ttq::Tensor::full({n}, 1.0f);
  ttq::Tensor buf = host.to(g_comm->buffer_device());
  g_comm->all_reduce_average(buf);  // warm-up (connections, registration)
  g_comm->barrier();
  double total = 0.0;
  for (auto _ : state) {
    const auto t0 = std::chrono::steady_clock::now();
    g_comm->all_reduce_average(buf);
    const double t = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    state.SetIterationTime(t);
    total += t;
  }
  const double w = g_comm->world();
  const double algbw = static_cast<double>(bytes) * static_cast<double>(state.iterations()) / total * 1e-9;
  state.counters["algbw_GBps"] = algbw;
  state.counters["busbw_GBps"] = algbw * 2.0 * (w - 1) / w;
  state.counters["ranks"] = w;
  state.SetBytesProcessed(state.iterations() * bytes);
}

// 4 KiB ... 64 MiB, with the default bucket sizes (1 MiB first bucket, 25 MiB) among them.
void sizes(benchmark::internal::Benchmark* b) {
  for (int64_t kib : {4, 64, 256, 1024, 4096, 16384, 25600, 65536}) b->Arg(kib * 1024);
}

// The same number of iterations on every rank: small messages many times, large ones fewer.
BENCHMARK(BM_allreduce)->Apply(sizes)->UseManualTime()->Iterations(20)->Name("allreduce/iters20");

}  // namespace

int main(int argc, char** argv) {
  return ttq::bench::run_dist_benchmarks(argc, argv, "bench_allreduce", true, [] {
    std::printf("backend %s, %d ranks (%d on this node)\n", g_comm->backend(), g_comm->world(), g_comm->local_world());
  });
}
