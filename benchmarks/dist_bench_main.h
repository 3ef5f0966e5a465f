// The main() of the multi-rank Google Benchmark programs (bench_allreduce, bench_dp_step): takes
// --backend=NAME off the command line, builds the communicator every rank shares (g_comm), runs
// the registered benchmarks on every rank (all ranks must start the same collectives) and lets only
// rank 0 report; an error aborts the other ranks instead of leaving them waiting.
#pragma once

#include <benchmark/benchmark.h>

#include <cstdio>
#include <cstring>
#include <exception>
#include <functional>
#include <memory>
#include <vector>

#include "engine/dist/communicator.h"

namespace ttq::bench {

inline std::shared_ptr<Communicator> g_comm;

// name: the program, for error messages; banner: printed by rank 0 before the benchmarks run.
inline int run_dist_benchmarks(int argc, char** argv, const char* name, bool device_buffers_for_nccl,
                               const std::function<void()>& banner) {
  class NullReporter : public benchmark::BenchmarkReporter {
   public:
    bool ReportContext(const Context&) override { return true; }
    void ReportRuns(const std::vector<Run>&) override {}
  };
  DistConfig cfg;
  cfg.timeout_s = 120;
  std::vector<char*> rest;
  for (int i = 0; i < argc; ++i) {
    if (std::strncmp(argv[i], "--backend=", 10) == 0)
      cfg.backend = argv[i] + 10;
    else
      rest.push_back(argv[i]);
  }
  int rc = 0;
  try {
    g_comm = make_communicator(cfg, device_buffers_for_nccl && cfg.backend == "nccl");
    int rest_argc = static_cast<int>(rest.size());
    benchmark::Initialize(&rest_argc, rest.data());
    if (g_comm->is_root()) {
      banner();
      benchmark::RunSpecifiedBenchmarks();
    } else {
      NullReporter quiet;
      benchmark::RunSpecifiedBenchmarks(&quiet);
    }
    benchmark::Shutdown();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: %s\n", name, e.what());
    if (g_comm) g_comm->abort(e.what());
    rc = 1;
  }
  g_comm.reset();
  shutdown_communication();
  return rc;
}

}  // namespace ttq::bench
