// The `ttq` command-line program. Library code throws ttq::Error; this is the one place that turns
// errors into messages and exit codes.
#include <cstdio>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

#include "engine/cli/args.h"
#include "engine/core/error.h"
#include "engine/core/sanitizer_options.h"
#include "engine/data/jpeg.h"
#include "engine/dist/communicator.h"
#include "kernels/cpu/ops.h"
#include "kernels/device.h"
#include "models/model.h"

#ifdef TTQ_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif
#ifdef TTQ_HAVE_CUDNN
#include <cudnn.h>
#endif
#ifdef TTQ_HAVE_NCCL
#include <nccl.h>
#endif

namespace ttq::cli {
int run_train(const std::vector<std::string>& argv);
int run_eval(const std::vector<std::string>& argv);
int run_export(const std::vector<std::string>& argv);
}

namespace {

const char* kUsage =
    "usage: ttq COMMAND [options]\n"
    "\n"
    "Trained Ternary Quantization (TTQ) training engine.\n"
    "\n"
    "commands:\n"
    "  train   train the experiment a JSON config describes (stages, sweeps, checkpoints)\n"
    "  eval    evaluate a run, checkpoint or exported ternary model on its test set\n"
    "  export  write the deployable ternary model (2-bit codes + Wp/Wn per layer)\n"
    "  info    show what this build has (CPU kernels, CUDA, cuDNN, NCCL, MPI) and the GPUs found\n"
    "\n"
    "Run `ttq COMMAND --help` for the options of a command.\n";

#ifdef TTQ_HAVE_CUDA
// "13.0" from CUDA's 13000; "none" for 0 (no driver).
std::string cuda_version(int v) {
  return v > 0 ? std::to_string(v / 1000) + "." + std::to_string(v % 1000 / 10) : std::string("none");
}
#endif

int run_info(const std::vector<std::string>& argv) {
  ttq::cli::Args a("info", "Shows what this build has (CPU kernels, CUDA, cuDNN, NCCL, MPI, JPEG), the models it "
                           "builds, how it was launched and the GPUs it sees.");
  a.parse(argv);
  if (a.help_requested()) {
    std::fputs(a.help().c_str(), stdout);
    return 0;
  }
  std::printf("ttq build:\n");
  std::printf("  CPU kernels : %s\n", ttq::cpu::onednn_built() ? "oneDNN (reference kernels also built)" : "reference");
  // Versions: what the build compiled against, and what this machine loads (they may differ when
  // cuDNN or NCCL come from another installation at run time).
#ifdef TTQ_HAVE_CUDA
  int runtime = 0, driver = 0;
  if (cudaRuntimeGetVersion(&runtime) != cudaSuccess) runtime = 0;
  if (cudaDriverGetVersion(&driver) != cudaSuccess) driver = 0;
  std::printf("  CUDA        : built against %s; runtime %s, driver %s\n", cuda_version(CUDART_VERSION).c_str(),
              cuda_version(runtime).c_str(), cuda_version(driver).c_str());
#else
  std::printf("  CUDA        : not built\n");
#endif
#ifdef TTQ_HAVE_CUDNN
  const size_t cudnn = cudnnGetVersion();
  std::printf("  cuDNN       : built against %d.%d.%d; loaded %zu.%zu.%zu\n", CUDNN_MAJOR, CUDNN_MINOR,
              CUDNN_PATCHLEVEL, cudnn / 10000, cudnn % 10000 / 100, cudnn % 100);
#else
  std::printf("  cuDNN       : not built\n");
#endif
#ifdef TTQ_HAVE_NCCL
  int nccl = 0;
  if (ncclGetVersion(&nccl) != ncclSuccess) nccl = 0;
  const int scale = nccl >= 20900 ? 10000 : 1000;  // NCCL before 2.9 encodes X*1000 + Y*100 + Z
  std::printf("  NCCL        : built against %d.%d.%d; loaded %d.%d.%d\n", NCCL_MAJOR, NCCL_MINOR, NCCL_PATCH,
              nccl / scale, nccl % scale / 100, nccl % 100);
#else
  std::printf("  NCCL        : not built\n");
#endif
#ifdef TTQ_HAVE_MPI
  std::printf("  MPI         : built\n");
#else
  std::printf("  MPI         : not built\n");
#endif
  std::printf("  TurboJPEG   : %s\n", ttq::jpeg_supported() ? "built (imagenet data set)" : "not built (no imagenet data set)");
  const ttq::LaunchInfo li = ttq::detect_launch();
  if (li.launcher.empty())
    std::printf("  Launch      : one process (mpirun -np N, or RANK/WORLD_SIZE/TTQ_RENDEZVOUS, for data parallel)\n");
  else
    std::printf("  Launch      : %s, rank %d of %d\n", li.launcher == "mpi" ? "MPI launcher" : "RANK/WORLD_SIZE",
                li.rank, li.world);
  std::string models;
  for (const auto& m : ttq::model_names()) models += (models.empty() ? "" : ", ") + m;
  std::printf("  Models      : %s\n", models.c_str());
  std::printf("  GPUs        : %s\n", ttq::cuda_device_summary().c_str());
  if (ttq::cuda_device_count() == 0) std::printf("No usable GPU: training runs on the CPU.\n");
  return 0;
}

// Prints the error; in a data-parallel run it names the rank and stops the other ranks too
// (MPI_Abort ends the whole job; the tcp host backend makes the others fail at once, in their next
// host collective; under nccl a rank waiting in an all-reduce stops within distributed.timeout_s).
int report_error(const std::string& cmd, const char* kind, const char* what) {
  auto comm = ttq::current_communicator();
  if (comm && comm->world() > 1) {
    std::fprintf(stderr, "ttq %s: %s on %s: %s\n", cmd.c_str(), kind, comm->who().c_str(), what);
    std::fflush(stderr);
    comm->abort(what);
  } else {
    std::fprintf(stderr, "ttq %s: %s: %s\n", cmd.c_str(), kind, what);
  }
  ttq::shutdown_communication();
  return 1;
}

int run_command(const std::string& cmd, const std::vector<std::string>& rest) {
  if (cmd == "train") return ttq::cli::run_train(rest);
  if (cmd == "eval") return ttq::cli::run_eval(rest);
  if (cmd == "export") return ttq::cli::run_export(rest);
  if (cmd == "info") return run_info(rest);
  std::fprintf(stderr, "ttq: unknown command '%s'\n\n%s", cmd.c_str(), kUsage);
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h") || !std::strcmp(argv[1], "help")) {
    std::fputs(kUsage, argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  const std::string cmd = argv[1];
  const std::vector<std::string> rest(argv + 2, argv + argc);
  try {
    const int rc = run_command(cmd, rest);
    ttq::shutdown_communication();  // MPI_Finalize after a data-parallel run
    return rc;
  } catch (const ttq::Error& e) {
    return report_error(cmd, "error", e.what());
  } catch (const std::exception& e) {
    return report_error(cmd, "unexpected error", e.what());
  }
}
