// The TTQ GPU kernel lab: TTQ forward + backward over every quantized weight tensor of a model, in
// three implementations, against the bandwidth of a device-to-device copy measured in the same
// run. A plain program (no Google Benchmark); where no GPU is found it prints why, prints
// "SKIPPED: no GPU" and exits 0.
//
// Workloads (weights per tensor; sizes of the quantized layers only):
//   resnet18     the 19 quantized convolutions of torchvision resnet18: every conv except the 7x7
//                stem (conv1), the three 1x1 downsample convs included; the 1000x512 fc stays full
//                precision (TTQ-SPEC: first conv and last FC of ResNet-18B). 11,157,504 weights.
//   resnet18_fc  the same plus the fc (1000x512 = 512,000): 20 tensors, 11,669,504 weights, for
//                runs that also ternarize the last layer (as the CIFAR ResNets do).
//   alexnet      the paper's BN AlexNet (TTQ-SPEC), conv0 and fct full precision: conv1 256x48x5x5
//                (groups 2), conv2 384x256x3x3, conv3 384x192x3x3 (groups 2), conv4 256x192x3x3
//                (groups 2), fc0 4096x9216, fc1 4096x4096. fc0's 9216 = 256 * 6 * 6 at 224 input:
//                conv0 12x12/4 valid 224 -> 54, pool 3/2 same -> 27, pool 3/2 same -> 14,
//                pool 3/2 valid -> 6 (computed and checked below). 56,823,808 weights.
//   synthetic    one tensor of 64 Mi weights (67,108,864; --synthetic-weights).
//
// Variants, each a whole forward (threshold, codes, w_t) and backward (latent gradient, dL/dWp,
// dL/dWn) of every layer, all on cudaStreamPerThread:
//   fused      cuda::TtqMultiTensor forward + backward (kernels/cuda/ttq_multi.h): a constant number
//              of multi-tensor launches per pass (sparsity layers: one radix select per layer).
//   per_layer  the engine's per-layer path: cuda::ttq_forward + cuda::ttq_backward_accumulate
//              (kernels/cuda/ops_cuda.h) once per layer, each with its stream-ordered scratch.
//   unfused    per layer, separate passes: the threshold reduction (cuda::ttq_threshold), ternarize
//              (cuda::ttq_ternarize), then the backward as two passes: the latent gradient, and the
//              dL/dWp, dL/dWn sums reading codes and g a second time (benchmarks/bench_ttq_gpu.h).
//   fused_pc   fused with per-output-channel scales (quantization.per_channel_scales; not twn): one
//              Wp/Wn per output channel, every one set to the per-layer value, so codes, w_t and the
//              latent gradient equal fused's bitwise and each layer's row sums of dL/dWp, dL/dWn add
//              up to fused's; ternarize and backward run one block per channel row. Verified on its
//              own: a failure there is reported and leaves the other variants' numbers standing.
//
// Bytes each pass must move per weight (the same for every variant; scalars not counted):
//   forward   threshold: max 4 (one read of w); sparsity 8 (a selection needs at least two reads:
//             histogram, then the bin holding the rank; the radix select here makes four); twn 8
//             (the scale is a mean over |w| > D, so a second read after D)
//             + ternarize 9 (read w 4, write w_t 4 and the int8 code 1)
//             = max 13, sparsity 17, twn 17
//   backward  13: read code 1 and g 4, read + write the latent gradient 4 + 4
// As in benchmarks/bench_ttq_cpu.cpp (layer = threshold + 9 + 13). GB/s = these bytes / median
// time; the copy floor is a D2D cudaMemcpy of --copy-mib MiB, GB/s = 2 * bytes / time (read +
// write). The unfused variant really moves 18 B backward (codes and g read twice): it is charged
// the same 13, so its rate shows what the extra pass costs. A tensor set that fits in L2 (ResNet-18's
// 45 MB of w against the H200's 50 MB) may serve the ternarize read of w, or the backward's read of
// the codes, from L2: its rate can then exceed what DRAM alone allows, even the copy floor.
//
// Before timing, every (workload, mode) is verified: the fused results against a host
// computation from the same inputs (D: max and sparsity exact, twn within 1e-6; codes, w_t and
// the latent gradient bitwise from the device's D; dL/dWp, dL/dWn within 1e-5 relative), and
// per_layer and unfused against fused (codes, D, w_t, latent gradient identical; scale gradients
// within 1e-5 relative; twn: D and scale within 1e-6, codes may differ only for |w| between the
// two D). Any difference: a message and exit status 1. Timing: warm-up, then per repetition an L2
// flush (a read of twice the L2 size, not timed: it leaves no dirty lines behind), and CUDA
// events around forward and backward;
// medians over --reps repetitions.
//
// Output: a table on stdout, "RESULT ..." and "TARGET ..." lines for scripts, and with --json PATH
// a JSON file (schema in benchmarks/README.md, "GPU kernel lab"). The target stated for this work
// (TTQ forward + backward over all quantized layers of ResNet-18 at >= 80% of the copy floor) is
// reported, never asserted.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <functional>
#include <memory>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "benchmarks/bench_ttq_gpu.h"
#include "engine/core/error.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/ops_cuda.h"
#include "kernels/cuda/ttq_kernels.h"
#include "kernels/cuda/ttq_multi.h"
#include "kernels/device.h"
#include "kernels/ttq_math.h"

namespace ttq {
namespace {

using math::ThresholdMode;

const cudaStream_t kStream = cudaStreamPerThread;  // the stream of ops_cuda.h

constexpr float kT = 0.05f;       // Max: D = t * max|w| (TTQ-SPEC)
constexpr double kR = 0.5;        // Sparsity: half of the weights in the zero band
constexpr float kWp = 0.6f, kWn = 0.55f;
constexpr double kScaleGradRel = 1e-5;
constexpr double kTwnRel = 1e-6;
constexpr double kTargetFraction = 0.80;
constexpr int64_t kAlign = 256;   // every layer starts on a 256-element boundary in its buffer
constexpr uint64_t kSeedW = 20170101, kSeedG = 20170102;

// ---- options -------------------------------------------------------------------------------------

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

const char* kUsage =
    "usage: bench_ttq_gpu [options]\n"
    "  --json PATH             also write the results as JSON to PATH\n"
    "  --mode M                max (default), sparsity, twn, or all\n"
    "  --workloads LIST        comma-separated: resnet18,resnet18_fc,alexnet,synthetic (default: all)\n"
    "  --reps N                timed repetitions per variant, median reported (default 50)\n"
    "  --warmup N              untimed repetitions first (default 5)\n"
    "  --synthetic-weights N   size of the synthetic tensor (default 67108864)\n"
    "  --copy-mib N            size of the D2D copy that sets the copy floor (default 512)\n"
    "  --no-flush              do not flush L2 between repetitions\n"
    "  --device N              CUDA device index (default 0)\n"
    "  --help                  this text\n";

struct Options {
  std::string json_path;
  std::vector<ThresholdMode> modes{ThresholdMode::Max};
  std::vector<std::string> workloads{"resnet18", "resnet18_fc", "alexnet", "synthetic"};
  int reps = 50;
  int warmup = 5;
  int64_t synthetic_weights = int64_t{1} << 26;
  int64_t copy_mib = 512;
  bool flush_l2 = true;
  int device = 0;
  bool help = false;
};

int64_t parse_int(const std::string& opt, const std::string& v, int64_t lo, int64_t hi) {
  char* end = nullptr;
  errno = 0;
  const long long x = std::strtoll(v.c_str(), &end, 10);
  if (v.empty() || *end != '\0' || errno != 0 || x < lo || x > hi)
    throw UsageError(opt + " expects an integer in [" + std::to_string(lo) + ", " +
                     std::to_string(hi) + "], got '" + v + "'");
  return x;
}

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::string cur;
  std::istringstream is(s);
  while (std::getline(is, cur, sep))
    if (!cur.empty()) out.push_back(cur);
  return out;
}

const char* mode_name(ThresholdMode m) {
  switch (m) {
    case ThresholdMode::Max: return "max";
    case ThresholdMode::Sparsity: return "sparsity";
    default: return "twn";
  }
}

Options parse_options(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw UsageError(a + " needs a value");
      return argv[++i];
    };
    if (a == "--help" || a == "-h") {
      o.help = true;
    } else if (a == "--json") {
      o.json_path = value();
    } else if (a == "--mode") {
      const std::string m = value();
      if (m == "max") o.modes = {ThresholdMode::Max};
      else if (m == "sparsity") o.modes = {ThresholdMode::Sparsity};
      else if (m == "twn") o.modes = {ThresholdMode::Twn};
      else if (m == "all") o.modes = {ThresholdMode::Max, ThresholdMode::Sparsity, ThresholdMode::Twn};
      else throw UsageError("--mode expects max, sparsity, twn or all, got '" + m + "'");
    } else if (a == "--workloads") {
      o.workloads = split(value(), ',');
      if (o.workloads.empty()) throw UsageError("--workloads: empty list");
      for (const std::string& w : o.workloads)
        if (w != "resnet18" && w != "resnet18_fc" && w != "alexnet" && w != "synthetic")
          throw UsageError("--workloads: unknown workload '" + w +
                           "' (known: resnet18, resnet18_fc, alexnet, synthetic)");
    } else if (a == "--reps") {
      o.reps = static_cast<int>(parse_int(a, value(), 1, 100000));
    } else if (a == "--warmup") {
      o.warmup = static_cast<int>(parse_int(a, value(), 0, 100000));
    } else if (a == "--synthetic-weights") {
      o.synthetic_weights = parse_int(a, value(), 1, int64_t{1} << 33);
    } else if (a == "--copy-mib") {
      o.copy_mib = parse_int(a, value(), 1, 1 << 16);
    } else if (a == "--no-flush") {
      o.flush_l2 = false;
    } else if (a == "--device") {
      o.device = static_cast<int>(parse_int(a, value(), 0, 1023));
    } else {
      throw UsageError("unknown option '" + a + "'");
    }
  }
  return o;
}

// ---- workloads ---------------------------------------------------------------------------------

struct LayerSpec {
  std::string name;   // torchvision / engine parameter name of the weight's layer
  std::string shape;  // out x in/groups x kh x kw, or out x in
  int64_t n;
  int64_t rows;       // output channels: the per-channel scales' count
};

struct Workload {
  std::string name;
  std::vector<LayerSpec> layers;
  int64_t weights() const {
    int64_t s = 0;
    for (const LayerSpec& l : layers) s += l.n;
    return s;
  }
};

LayerSpec conv(const std::string& name, int64_t out, int64_t in_per_group, int64_t k) {
  return {name, std::to_string(out) + "x" + std::to_string(in_per_group) + "x" + std::to_string(k) +
                    "x" + std::to_string(k),
          out * in_per_group * k * k, out};
}
LayerSpec fc(const std::string& name, int64_t out, int64_t in) {
  return {name, std::to_string(out) + "x" + std::to_string(in), out * in, out};
}

// torchvision resnet18 without conv1 (stem) and fc, in state-dict order.
std::vector<LayerSpec> resnet18_layers() {
  std::vector<LayerSpec> s;
  int64_t in = 64;
  const int64_t widths[] = {64, 128, 256, 512};
  for (int stage = 0; stage < 4; ++stage) {
    const int64_t out = widths[stage];
    const std::string p = "layer" + std::to_string(stage + 1);
    s.push_back(conv(p + ".0.conv1", out, in, 3));
    s.push_back(conv(p + ".0.conv2", out, out, 3));
    if (in != out) s.push_back(conv(p + ".0.downsample.0", out, in, 1));
    s.push_back(conv(p + ".1.conv1", out, out, 3));
    s.push_back(conv(p + ".1.conv2", out, out, 3));
    in = out;
  }
  return s;
}

// Spatial size after the feature layers of the paper's AlexNet (TTQ-SPEC "Models"): conv0 12x12
// stride 4 valid; conv1 5x5 same; pool 3/2 same; conv2 3x3 same; pool 3/2 same; conv3, conv4 3x3
// same; pool 3/2 valid. TF "same" pooling gives ceil(x / 2), "valid" gives (x - 3) / 2 + 1.
int64_t alexnet_final_spatial(int64_t input) {
  int64_t x = (input - 12) / 4 + 1;  // conv0
  x = (x + 1) / 2;                   // pool after conv1 (same)
  x = (x + 1) / 2;                   // pool after conv2 (same)
  return (x - 3) / 2 + 1;            // pool after conv4 (valid)
}

std::vector<LayerSpec> alexnet_layers() {
  const int64_t spatial = alexnet_final_spatial(224);
  const int64_t features = 256 * spatial * spatial;
  TTQ_CHECK(spatial == 6 && features == 9216,
            "AlexNet feature-map arithmetic: " << spatial << "x" << spatial << " at 224 input, "
                                               << features << " features (expected 6x6, 9216)");
  return {conv("conv1", 256, 96 / 2, 5),   conv("conv2", 384, 256, 3),
          conv("conv3", 384, 384 / 2, 3),  conv("conv4", 256, 384 / 2, 3),
          fc("fc0", 4096, features),       fc("fc1", 4096, 4096)};
}

Workload make_workload(const std::string& name, const Options& o) {
  Workload w{name, {}};
  if (name == "resnet18") {
    w.layers = resnet18_layers();
  } else if (name == "resnet18_fc") {
    w.layers = resnet18_layers();
    w.layers.push_back(fc("fc", 1000, 512));
  } else if (name == "alexnet") {
    w.layers = alexnet_layers();
  } else {
    // Per-channel rows: 1024 of them when they divide the tensor, else one row.
    const int64_t rows = o.synthetic_weights % 1024 == 0 ? 1024 : 1;
    w.layers = {{"synthetic", std::to_string(o.synthetic_weights), o.synthetic_weights, rows}};
  }
  return w;
}

// ---- device memory and events ------------------------------------------------------------------

template <class T>
class DevArray {
 public:
  DevArray() = default;
  explicit DevArray(int64_t n) : n_(n) {
    CUDA_CHECK(cudaMalloc(&p_, std::max<size_t>(bytes(), 1)));
  }
  ~DevArray() {
    if (p_) CUDA_CHECK_NOTHROW(cudaFree(p_));
  }
  DevArray(const DevArray&) = delete;
  DevArray& operator=(const DevArray&) = delete;
  DevArray(DevArray&& o) noexcept : p_(std::exchange(o.p_, nullptr)), n_(std::exchange(o.n_, 0)) {}
  DevArray& operator=(DevArray&& o) noexcept {
    if (this != &o) {
      if (p_) CUDA_CHECK_NOTHROW(cudaFree(p_));
      p_ = std::exchange(o.p_, nullptr);
      n_ = std::exchange(o.n_, 0);
    }
    return *this;
  }

  T* get() const { return static_cast<T*>(p_); }
  size_t bytes() const { return static_cast<size_t>(n_) * sizeof(T); }
  void zero() { CUDA_CHECK(cudaMemsetAsync(p_, 0, bytes(), kStream)); }
  void fill(T value) {  // small arrays only (scalars)
    const std::vector<T> h(static_cast<size_t>(n_), value);
    CUDA_CHECK(cudaMemcpyAsync(p_, h.data(), bytes(), cudaMemcpyHostToDevice, kStream));
    CUDA_CHECK(cudaStreamSynchronize(kStream));
  }
  std::vector<T> download() const {
    std::vector<T> h(static_cast<size_t>(n_));
    CUDA_CHECK(cudaStreamSynchronize(kStream));
    CUDA_CHECK(cudaMemcpyAsync(h.data(), p_, bytes(), cudaMemcpyDeviceToHost, kStream));
    CUDA_CHECK(cudaStreamSynchronize(kStream));
    return h;
  }

 private:
  void* p_ = nullptr;
  int64_t n_ = 0;
};

class Events {
 public:
  explicit Events(size_t n) : ev_(n, nullptr) {
    for (cudaEvent_t& e : ev_) CUDA_CHECK(cudaEventCreate(&e));
  }
  ~Events() {
    for (cudaEvent_t e : ev_)
      if (e) CUDA_CHECK_NOTHROW(cudaEventDestroy(e));
  }
  Events(const Events&) = delete;
  Events& operator=(const Events&) = delete;
  cudaEvent_t operator[](size_t i) const { return ev_[i]; }
  float ms(size_t a, size_t b) const {
    float t = 0.0f;
    CUDA_CHECK(cudaEventElapsedTime(&t, ev_[a], ev_[b]));
    return t;
  }

 private:
  std::vector<cudaEvent_t> ev_;
};

double median(std::vector<double> v) {
  if (v.empty()) return NAN;
  std::sort(v.begin(), v.end());
  const size_t m = v.size() / 2;
  return v.size() % 2 ? v[m] : 0.5 * (v[m - 1] + v[m]);
}

// ---- byte accounting ---------------------------------------------------------------------------

int64_t forward_bytes_per_weight(ThresholdMode m) { return (m == ThresholdMode::Max ? 4 : 8) + 9; }
constexpr int64_t kBackwardBytesPerWeight = 13;

// ---- the buffers of one workload -----------------------------------------------------------------

// Layer l occupies [at[l], at[l] + n) of every per-element buffer, and its per-channel scales
// [row_at[l], row_at[l] + rows[l]) of the per-row ones.
struct Layout {
  std::vector<int64_t> at, n, row_at, rows;
  int64_t total = 0;  // padded
  int64_t total_rows = 0;
  int64_t max_n = 0;
  explicit Layout(const Workload& w) {
    for (const LayerSpec& l : w.layers) {
      at.push_back(total);
      n.push_back(l.n);
      row_at.push_back(total_rows);
      rows.push_back(l.rows);
      total += (l.n + kAlign - 1) / kAlign * kAlign;
      total_rows += l.rows;
      max_n = std::max(max_n, l.n);
    }
  }
  size_t layers() const { return at.size(); }
};

// What one variant writes: per-element outputs, per-layer device scalars, and the scale
// gradients: one per layer, or one per output channel (per_channel).
struct Outputs {
  DevArray<float> w_t, latent_grad, d, twn_scale, dwp, dwn;
  DevArray<int8_t> codes;
  Outputs(const Layout& lay, bool per_channel = false)
      : w_t(lay.total), latent_grad(lay.total), d(static_cast<int64_t>(lay.layers())),
        twn_scale(static_cast<int64_t>(lay.layers())), dwp(scales(lay, per_channel)),
        dwn(scales(lay, per_channel)), codes(lay.total) {}
  static int64_t scales(const Layout& lay, bool per_channel) {
    return per_channel ? lay.total_rows : static_cast<int64_t>(lay.layers());
  }
  // Before the verification pass: gradients accumulate in the per-layer path.
  void reset() {
    latent_grad.zero();
    for (DevArray<float>* s : {&d, &twn_scale, &dwp, &dwn}) s->zero();
    CUDA_CHECK(cudaStreamSynchronize(kStream));
  }
};

struct HostOutputs {
  std::vector<float> w_t, latent_grad, d, twn_scale, dwp, dwn;
  std::vector<int8_t> codes;
  explicit HostOutputs(const Outputs& o)
      : w_t(o.w_t.download()), latent_grad(o.latent_grad.download()), d(o.d.download()),
        twn_scale(o.twn_scale.download()), dwp(o.dwp.download()), dwn(o.dwn.download()),
        codes(o.codes.download()) {}
};

struct Inputs {
  DevArray<float> w, g, wp, wn;  // wp, wn: one device scalar per layer
  DevArray<float> wp_rows, wn_rows;  // per-channel scales, all equal to the per-layer ones
  Inputs(const Layout& lay)
      : w(lay.total), g(lay.total), wp(static_cast<int64_t>(lay.layers())),
        wn(static_cast<int64_t>(lay.layers())), wp_rows(lay.total_rows), wn_rows(lay.total_rows) {
    // w uniform in [-1, 1); g biased positive so that the dL/dWp, dL/dWn sums do not cancel and
    // their relative comparison means something. Only the bit patterns' spread matters here.
    bench::fill_uniform(w.get(), lay.total, kSeedW, -1.0f, 1.0f, kStream);
    bench::fill_uniform(g.get(), lay.total, kSeedG, -0.5e-3f, 1e-3f, kStream);
    wp.fill(kWp);
    wn.fill(kWn);
    wp_rows.fill(kWp);
    wn_rows.fill(kWn);
  }
};

// ---- variants ------------------------------------------------------------------------------------

struct Variant {
  std::string name;
  Outputs* out;
  std::function<void()> forward, backward;
  std::string launches;  // what one forward + backward enqueues, in words
};

// per_channel: one Wp/Wn per output channel (out must have been built per_channel; not Twn).
std::vector<cuda::TtqMultiLayer> multi_layers(const Layout& lay, const Inputs& in, Outputs& out,
                                              ThresholdMode mode, bool per_channel = false) {
  const bool twn = mode == ThresholdMode::Twn;
  std::vector<cuda::TtqMultiLayer> layers;
  for (size_t l = 0; l < lay.layers(); ++l) {
    cuda::TtqMultiLayer m;
    m.w = in.w.get() + lay.at[l];
    m.n = lay.n[l];
    m.w_t = out.w_t.get() + lay.at[l];
    m.codes = out.codes.get() + lay.at[l];
    m.wp = in.wp.get() + l;
    m.wn = in.wn.get() + l;
    m.d = out.d.get() + l;
    m.twn_scale = out.twn_scale.get() + l;
    m.mode = mode;
    m.t = kT;
    m.r = kR;
    m.g = in.g.get() + lay.at[l];
    m.latent_grad = out.latent_grad.get() + lay.at[l];
    m.dwp = twn ? nullptr : out.dwp.get() + l;  // TWN: the scale is not trained
    m.dwn = twn ? nullptr : out.dwn.get() + l;
    if (per_channel) {
      m.channels = lay.rows[l];
      m.wp = in.wp_rows.get() + lay.row_at[l];
      m.wn = in.wn_rows.get() + lay.row_at[l];
      m.dwp = out.dwp.get() + lay.row_at[l];
      m.dwn = out.dwn.get() + lay.row_at[l];
    }
    layers.push_back(m);
  }
  return layers;
}

// ---- verification --------------------------------------------------------------------------------

class Checker {
 public:
  explicit Checker(std::string where) : where_(std::move(where)) {}
  template <class... A>
  void fail(const A&... parts) {
    ++failures_;
    if (failures_ > 12) return;
    std::ostringstream os;
    os << where_ << ": ";
    (os << ... << parts);
    messages_.push_back(os.str());
  }
  bool ok() const { return failures_ == 0; }
  int failures() const { return failures_; }
  const std::vector<std::string>& messages() const { return messages_; }

 private:
  std::string where_;
  int failures_ = 0;
  std::vector<std::string> messages_;
};

bool same_bits(float a, float b) { return std::memcmp(&a, &b, sizeof a) == 0; }
bool near_rel(double a, double b, double rel) {
  return std::fabs(a - b) <= rel * std::max(std::fabs(a), std::fabs(b));
}

// Host reference D per layer (Max, Sparsity exact; Twn in double, sequential order).
struct HostThresholds {
  std::vector<float> d;
};

float host_threshold(ThresholdMode mode, const float* w, int64_t n) {
  if (n == 0) return 0.0f;
  if (mode == ThresholdMode::Max) {
    float m = 0.0f;
    for (int64_t i = 0; i < n; ++i) m = std::fmax(m, std::fabs(w[i]));
    return math::threshold_from_max(m, kT);
  }
  if (mode == ThresholdMode::Sparsity) {
    const int64_t k = math::sparsity_rank(kR, n);
    if (k < 0) return 0.0f;
    std::vector<float> a(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) a[static_cast<size_t>(i)] = std::fabs(w[i]);
    std::nth_element(a.begin(), a.begin() + k, a.end());
    return a[static_cast<size_t>(k)];
  }
  double s = 0.0;
  for (int64_t i = 0; i < n; ++i) s += std::fabs(w[i]);
  return math::twn_threshold(static_cast<float>(s / static_cast<double>(n)));
}

// One variant's results for layer l, checked against the inputs and its own D (and scale): codes,
// w_t and the latent gradient (one backward from zero) bitwise; D against the host reference;
// the scale gradients against host double sums.
void self_check(Checker& c, const std::string& variant, const Workload& wl, const Layout& lay,
                ThresholdMode mode, const std::vector<float>& w, const std::vector<float>& g,
                const HostOutputs& r, size_t l, float host_d) {
  const bool twn = mode == ThresholdMode::Twn;
  const std::string layer = variant + " " + wl.layers[l].name;
  const float d = r.d[l];
  if (twn ? !near_rel(d, host_d, kTwnRel) : !same_bits(d, host_d))
    c.fail(layer, ": D = ", d, ", host reference ", host_d);
  const int64_t at = lay.at[l], n = lay.n[l];
  double above_sum = 0.0, above_count = 0.0, dwp = 0.0, dwn = 0.0;
  int64_t bad_codes = 0, bad_wt = 0, bad_lg = 0, first_bad = -1;
  for (int64_t i = at; i < at + n; ++i) {
    const size_t k = static_cast<size_t>(i);
    const float a = std::fabs(w[k]);
    if (a > d) {
      above_sum += a;
      above_count += 1.0;
    }
    const int8_t code = math::ternary_code(w[k], d);
    if (r.codes[k] != code) {
      ++bad_codes;
      if (first_bad < 0) first_bad = i - at;
    }
    const float p = twn ? r.twn_scale[l] : kWp, m = twn ? r.twn_scale[l] : kWn;
    if (!same_bits(r.w_t[k], math::ternary_value(code, p, m))) ++bad_wt;
    const float lg = 0.0f + math::latent_grad_term(code, g[k], kWp, kWn, !twn);
    if (!same_bits(r.latent_grad[k], lg)) ++bad_lg;
    dwp += math::wp_grad_term(code, g[k]);
    dwn += math::wn_grad_term(code, g[k]);
  }
  if (bad_codes)
    c.fail(layer, ": ", bad_codes, " of ", n, " codes differ from ternary_code(w, D) (first at ", first_bad, ")");
  if (bad_wt) c.fail(layer, ": ", bad_wt, " of ", n, " w_t values differ from the codes' magnitudes");
  if (bad_lg) c.fail(layer, ": ", bad_lg, " of ", n, " latent gradients differ from the host's");
  if (twn) {
    const float scale = above_count > 0 ? static_cast<float>(above_sum / above_count) : 0.0f;
    if (!near_rel(r.twn_scale[l], scale, kTwnRel))
      c.fail(layer, ": TWN scale ", r.twn_scale[l], ", host ", scale);
  } else {
    if (!near_rel(r.dwp[l], dwp, kScaleGradRel)) c.fail(layer, ": dL/dWp ", r.dwp[l], ", host ", dwp);
    if (!near_rel(r.dwn[l], dwn, kScaleGradRel)) c.fail(layer, ": dL/dWn ", r.dwn[l], ", host ", dwn);
  }
}

// Another variant against fused, layer by layer.
void cross_check(Checker& c, const std::string& variant, const Workload& wl, const Layout& lay,
                 ThresholdMode mode, const std::vector<float>& w, const std::vector<float>& g,
                 const HostOutputs& ref, const HostOutputs& r, const std::vector<float>& host_d) {
  const bool twn = mode == ThresholdMode::Twn;
  for (size_t l = 0; l < lay.layers(); ++l) {
    const std::string layer = variant + " " + wl.layers[l].name;
    const size_t at = static_cast<size_t>(lay.at[l]), n = static_cast<size_t>(lay.n[l]);
    const float d0 = ref.d[l], d1 = r.d[l];
    if (!same_bits(d0, d1)) {
      if (!twn || !near_rel(d0, d1, kTwnRel)) {
        c.fail(layer, ": D = ", d1, ", fused ", d0);
        continue;
      }
      // TWN sums in another order: D may differ in the last bits. Then codes may differ only
      // where |w| lies between the two; everything else must follow from this variant's own D.
      const float lo = std::min(d0, d1), hi = std::max(d0, d1);
      for (size_t i = at; i < at + n; ++i) {
        const float a = std::fabs(w[i]);
        if (r.codes[i] != ref.codes[i] && !(a >= lo && a <= hi)) {
          c.fail(layer, ": code differs from fused at ", i - at, " with |w| outside [", lo, ", ", hi, "]");
          break;
        }
      }
      self_check(c, variant, wl, lay, mode, w, g, r, l, host_d[l]);
      continue;
    }
    if (std::memcmp(&r.codes[at], &ref.codes[at], n) != 0) c.fail(layer, ": codes differ from fused");
    if (std::memcmp(&r.latent_grad[at], &ref.latent_grad[at], n * sizeof(float)) != 0)
      c.fail(layer, ": latent gradients differ from fused");
    if (twn) {
      if (!near_rel(r.twn_scale[l], ref.twn_scale[l], kTwnRel))
        c.fail(layer, ": TWN scale ", r.twn_scale[l], ", fused ", ref.twn_scale[l]);
      else if (!same_bits(r.twn_scale[l], ref.twn_scale[l]))
        self_check(c, variant, wl, lay, mode, w, g, r, l, host_d[l]);  // w_t from its own scale
      else if (std::memcmp(&r.w_t[at], &ref.w_t[at], n * sizeof(float)) != 0)
        c.fail(layer, ": w_t differs from fused");
    } else {
      if (std::memcmp(&r.w_t[at], &ref.w_t[at], n * sizeof(float)) != 0) c.fail(layer, ": w_t differs from fused");
      if (!near_rel(r.dwp[l], ref.dwp[l], kScaleGradRel))
        c.fail(layer, ": dL/dWp ", r.dwp[l], ", fused ", ref.dwp[l], " (relative tolerance ", kScaleGradRel, ")");
      if (!near_rel(r.dwn[l], ref.dwn[l], kScaleGradRel))
        c.fail(layer, ": dL/dWn ", r.dwn[l], ", fused ", ref.dwn[l], " (relative tolerance ", kScaleGradRel, ")");
    }
  }
}

// fused_pc against fused: D, codes, w_t and the latent gradient bitwise (every row's scales equal
// the layer's), and each layer's row sums of dL/dWp, dL/dWn (added in double) against fused's.
void per_channel_check(Checker& c, const Workload& wl, const Layout& lay, const HostOutputs& ref,
                       const HostOutputs& r) {
  for (size_t l = 0; l < lay.layers(); ++l) {
    const std::string layer = "fused_pc " + wl.layers[l].name;
    const size_t at = static_cast<size_t>(lay.at[l]), n = static_cast<size_t>(lay.n[l]);
    if (!same_bits(r.d[l], ref.d[l])) c.fail(layer, ": D = ", r.d[l], ", fused ", ref.d[l]);
    if (std::memcmp(&r.codes[at], &ref.codes[at], n) != 0) c.fail(layer, ": codes differ from fused");
    if (std::memcmp(&r.w_t[at], &ref.w_t[at], n * sizeof(float)) != 0) c.fail(layer, ": w_t differs from fused");
    if (std::memcmp(&r.latent_grad[at], &ref.latent_grad[at], n * sizeof(float)) != 0)
      c.fail(layer, ": latent gradients differ from fused");
    double dwp = 0.0, dwn = 0.0;
    for (int64_t k = 0; k < lay.rows[l]; ++k) {
      dwp += r.dwp[static_cast<size_t>(lay.row_at[l] + k)];
      dwn += r.dwn[static_cast<size_t>(lay.row_at[l] + k)];
    }
    if (!near_rel(dwp, ref.dwp[l], kScaleGradRel))
      c.fail(layer, ": the rows' dL/dWp add up to ", dwp, ", fused ", ref.dwp[l]);
    if (!near_rel(dwn, ref.dwn[l], kScaleGradRel))
      c.fail(layer, ": the rows' dL/dWn add up to ", dwn, ", fused ", ref.dwn[l]);
  }
}

// ---- timing --------------------------------------------------------------------------------------

struct Timing {
  double fwd_us = NAN, bwd_us = NAN, total_us = NAN, min_total_us = NAN, host_us = NAN;
};

// Reads (never writes) a buffer of twice the L2 size between repetitions: the lines it leaves in
// L2 are clean, so the timed kernels do not pay for writing a flush back to memory.
struct Flush {
  DevArray<char> buf;
  DevArray<unsigned> sink;
  int64_t bytes = 0;
  void run() const {
    if (bytes > 0) bench::read_flush(buf.get(), static_cast<size_t>(bytes), sink.get(), kStream);
  }
};

Timing time_variant(const Variant& v, const Options& o, const Flush& flush) {
  for (int i = 0; i < o.warmup; ++i) {
    v.forward();
    v.backward();
  }
  CUDA_CHECK(cudaStreamSynchronize(kStream));
  const auto reps = static_cast<size_t>(o.reps);
  Events ev(3 * reps);
  std::vector<double> host_us(reps);
  for (size_t r = 0; r < reps; ++r) {
    flush.run();
    const auto t0 = std::chrono::steady_clock::now();
    CUDA_CHECK(cudaEventRecord(ev[3 * r], kStream));
    v.forward();
    CUDA_CHECK(cudaEventRecord(ev[3 * r + 1], kStream));
    v.backward();
    CUDA_CHECK(cudaEventRecord(ev[3 * r + 2], kStream));
    host_us[r] = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count();
  }
  CUDA_CHECK(cudaStreamSynchronize(kStream));
  std::vector<double> fwd(reps), bwd(reps), total(reps);
  for (size_t r = 0; r < reps; ++r) {
    fwd[r] = 1e3 * ev.ms(3 * r, 3 * r + 1);
    bwd[r] = 1e3 * ev.ms(3 * r + 1, 3 * r + 2);
    total[r] = 1e3 * ev.ms(3 * r, 3 * r + 2);
  }
  Timing t;
  t.fwd_us = median(fwd);
  t.bwd_us = median(bwd);
  t.total_us = median(total);
  t.min_total_us = *std::min_element(total.begin(), total.end());
  t.host_us = median(host_us);
  return t;
}

struct CopyFloor {
  int64_t bytes = 0;
  double us = NAN, gb_per_s = NAN;
};

CopyFloor measure_copy_floor(const Options& o) {
  CopyFloor c;
  c.bytes = o.copy_mib << 20;
  DevArray<char> src(c.bytes), dst(c.bytes);
  CUDA_CHECK(cudaMemsetAsync(src.get(), 1, static_cast<size_t>(c.bytes), kStream));
  for (int i = 0; i < std::max(o.warmup, 2); ++i)
    CUDA_CHECK(cudaMemcpyAsync(dst.get(), src.get(), static_cast<size_t>(c.bytes), cudaMemcpyDeviceToDevice, kStream));
  const auto reps = static_cast<size_t>(o.reps);
  Events ev(2 * reps);
  for (size_t r = 0; r < reps; ++r) {
    CUDA_CHECK(cudaEventRecord(ev[2 * r], kStream));
    CUDA_CHECK(cudaMemcpyAsync(dst.get(), src.get(), static_cast<size_t>(c.bytes), cudaMemcpyDeviceToDevice, kStream));
    CUDA_CHECK(cudaEventRecord(ev[2 * r + 1], kStream));
  }
  CUDA_CHECK(cudaStreamSynchronize(kStream));
  std::vector<double> us(reps);
  for (size_t r = 0; r < reps; ++r) us[r] = 1e3 * ev.ms(2 * r, 2 * r + 1);
  c.us = median(us);
  c.gb_per_s = 2.0 * static_cast<double>(c.bytes) / (c.us * 1e3);
  return c;
}

// ---- results and output --------------------------------------------------------------------------

struct Row {
  std::string workload, mode, variant, launches;
  int layers = 0;
  int64_t weights = 0, fwd_bytes = 0, bwd_bytes = 0;
  Timing t;
  double gb_per_s = NAN, fwd_gb_per_s = NAN, bwd_gb_per_s = NAN, fraction = NAN;
};

struct Verification {
  std::string workload, mode;
  bool ok = true;
  std::vector<std::string> messages;
};

struct DeviceInfo {
  std::string name, summary;
  int major = 0, minor = 0, sms = 0;
  int64_t memory = 0, l2 = 0;
};

std::string json_str(const std::string& s) {
  std::string o = "\"";
  for (char ch : s) {
    const auto u = static_cast<unsigned char>(ch);
    if (ch == '"' || ch == '\\') {
      o += '\\';
      o += ch;
    } else if (u < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", u);
      o += buf;
    } else {
      o += ch;
    }
  }
  return o + "\"";
}

std::string json_num(double x) {
  if (!std::isfinite(x)) return "null";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.6g", x);
  return buf;
}

const Row* find_target_row(const std::vector<Row>& rows) {
  for (const Row& r : rows)
    if (r.workload == "resnet18" && r.mode == "max" && r.variant == "fused") return &r;
  return nullptr;
}

void write_json(const std::string& path, const Options& o, const DeviceInfo& dev, const CopyFloor& copy,
                const std::vector<Row>& rows, const std::vector<Verification>& checks, bool verified) {
  std::ostringstream j;
  j << "{\n  \"program\": \"bench_ttq_gpu\",\n  \"schema_version\": 1,\n  \"skipped\": false,\n";
  j << "  \"device\": {\"name\": " << json_str(dev.name) << ", \"compute_capability\": \"" << dev.major << "."
    << dev.minor << "\", \"sms\": " << dev.sms << ", \"memory_bytes\": " << dev.memory
    << ", \"l2_bytes\": " << dev.l2 << ", \"summary\": " << json_str(dev.summary) << "},\n";
  j << "  \"settings\": {\"warmup\": " << o.warmup << ", \"reps\": " << o.reps
    << ", \"flush_l2\": " << (o.flush_l2 ? "true" : "false") << ", \"t\": " << json_num(kT)
    << ", \"sparsity_r\": " << json_num(kR) << ", \"wp\": " << json_num(kWp) << ", \"wn\": " << json_num(kWn)
    << ", \"statistic\": \"median\"},\n";
  j << "  \"bytes_per_weight\": {\"forward\": {\"max\": " << forward_bytes_per_weight(ThresholdMode::Max)
    << ", \"sparsity\": " << forward_bytes_per_weight(ThresholdMode::Sparsity)
    << ", \"twn\": " << forward_bytes_per_weight(ThresholdMode::Twn) << "}, \"backward\": " << kBackwardBytesPerWeight
    << "},\n";
  j << "  \"copy_floor\": {\"bytes\": " << copy.bytes << ", \"us\": " << json_num(copy.us)
    << ", \"gb_per_s\": " << json_num(copy.gb_per_s) << "},\n";
  j << "  \"verified\": " << (verified ? "true" : "false") << ",\n  \"verification\": [";
  for (size_t i = 0; i < checks.size(); ++i) {
    const Verification& v = checks[i];
    j << (i ? ",\n    " : "\n    ") << "{\"workload\": " << json_str(v.workload) << ", \"mode\": " << json_str(v.mode)
      << ", \"ok\": " << (v.ok ? "true" : "false") << ", \"messages\": [";
    for (size_t m = 0; m < v.messages.size(); ++m) j << (m ? ", " : "") << json_str(v.messages[m]);
    j << "]}";
  }
  j << (checks.empty() ? "],\n" : "\n  ],\n");
  j << "  \"results\": [";
  for (size_t i = 0; i < rows.size(); ++i) {
    const Row& r = rows[i];
    j << (i ? ",\n    " : "\n    ") << "{\"workload\": " << json_str(r.workload) << ", \"mode\": " << json_str(r.mode)
      << ", \"variant\": " << json_str(r.variant) << ", \"layers\": " << r.layers << ", \"weights\": " << r.weights
      << ", \"bytes\": {\"forward\": " << r.fwd_bytes << ", \"backward\": " << r.bwd_bytes
      << ", \"total\": " << r.fwd_bytes + r.bwd_bytes << "}, \"us\": {\"forward\": " << json_num(r.t.fwd_us)
      << ", \"backward\": " << json_num(r.t.bwd_us) << ", \"total\": " << json_num(r.t.total_us)
      << ", \"total_min\": " << json_num(r.t.min_total_us) << ", \"host_enqueue\": " << json_num(r.t.host_us)
      << "}, \"gb_per_s\": {\"forward\": " << json_num(r.fwd_gb_per_s) << ", \"backward\": "
      << json_num(r.bwd_gb_per_s) << ", \"total\": " << json_num(r.gb_per_s)
      << "}, \"fraction_of_copy_floor\": " << json_num(r.fraction) << ", \"launches\": " << json_str(r.launches)
      << "}";
  }
  j << (rows.empty() ? "],\n" : "\n  ],\n");
  const Row* t = find_target_row(rows);
  j << "  \"target\": {\"description\": "
    << json_str("TTQ forward+backward over all quantized layers of ResNet-18 (fused, max mode) at >= 80% of "
                "the copy-bandwidth floor for the bytes it must move")
    << ", \"fraction_required\": " << json_num(kTargetFraction)
    << ", \"fraction_measured\": " << json_num(t ? t->fraction : NAN)
    << ", \"total_us\": " << json_num(t ? t->t.total_us : NAN) << ", \"met\": "
    << (t ? (t->fraction >= kTargetFraction ? "true" : "false") : "null") << "}\n}\n";
  std::FILE* f = std::fopen(path.c_str(), "w");
  TTQ_CHECK(f != nullptr, "cannot open " << path << " for writing: " << std::strerror(errno));
  const std::string s = j.str();
  const bool written = std::fwrite(s.data(), 1, s.size(), f) == s.size();
  const bool closed = std::fclose(f) == 0;
  TTQ_CHECK(written && closed, "writing " << path << " failed");
}

void write_skipped_json(const std::string& path, const std::string& reason) {
  std::FILE* f = std::fopen(path.c_str(), "w");
  TTQ_CHECK(f != nullptr, "cannot open " << path << " for writing: " << std::strerror(errno));
  std::fprintf(f, "{\n  \"program\": \"bench_ttq_gpu\",\n  \"schema_version\": 1,\n  \"skipped\": true,\n"
                  "  \"reason\": %s\n}\n", json_str(reason).c_str());
  TTQ_CHECK(std::fclose(f) == 0, "writing " << path << " failed");
}

void print_header() {
  std::printf("\n%-12s %-9s %-10s %6s %11s %9s %9s %9s %9s %8s %7s %9s\n", "workload", "mode", "variant", "layers",
              "weights", "fwd_us", "bwd_us", "total_us", "MB", "GB/s", "%copy", "host_us");
}

void print_row(const Row& r) {
  std::printf("%-12s %-9s %-10s %6d %11lld %9.1f %9.1f %9.1f %9.1f %8.1f %6.1f%% %9.1f\n", r.workload.c_str(),
              r.mode.c_str(), r.variant.c_str(), r.layers, static_cast<long long>(r.weights), r.t.fwd_us, r.t.bwd_us,
              r.t.total_us, static_cast<double>(r.fwd_bytes + r.bwd_bytes) / 1e6, r.gb_per_s, 100.0 * r.fraction,
              r.t.host_us);
  std::fflush(stdout);
}

// ---- one workload --------------------------------------------------------------------------------

// Verifies, then times, every mode of one workload; appends rows and verification records. Returns
// false on a verification failure (nothing of that mode is timed).
bool run_workload(const Workload& wl, const Options& o, const CopyFloor& copy, const Flush& flush,
                  std::vector<Row>& rows, std::vector<Verification>& checks, bool& pc_failed) {
  const Layout lay(wl);
  Inputs in(lay);
  Outputs out_fused(lay), out_layer(lay), out_unfused(lay), out_pc(lay, true);
  DevArray<char> ws_threshold(static_cast<int64_t>(cuda::ttq_workspace_bytes(lay.max_n)));
  DevArray<char> ws_scale(static_cast<int64_t>(bench::scale_grad_workspace_bytes(lay.max_n)));
  const std::vector<float> w = in.w.download(), g = in.g.download();

  for (ThresholdMode mode : o.modes) {
    const bool twn = mode == ThresholdMode::Twn;
    cuda::TtqMultiTensor multi(multi_layers(lay, in, out_fused, mode));
    std::unique_ptr<cuda::TtqMultiTensor> multi_pc;  // per-channel scales (not Twn)
    if (!twn) multi_pc = std::make_unique<cuda::TtqMultiTensor>(multi_layers(lay, in, out_pc, mode, true));

    std::vector<Variant> variants;
    {
      std::ostringstream os;
      os << multi.fused_forward_launches() << " fused forward launches";
      if (multi.sparsity_layers()) os << " + " << multi.sparsity_layers() << " per-layer radix selects";
      os << ", " << multi.backward_launches() << " backward launches";
      variants.push_back({"fused", &out_fused, [&] { multi.forward(kStream); }, [&] { multi.backward(kStream); },
                          os.str()});
    }
    variants.push_back(
        {"per_layer", &out_layer,
         [&] {
           for (size_t l = 0; l < lay.layers(); ++l)
             cuda::ttq_forward(mode, kT, kR, in.w.get() + lay.at[l], lay.n[l], 1, in.wp.get() + l, in.wn.get() + l,
                               out_layer.d.get() + l, out_layer.twn_scale.get() + l, out_layer.w_t.get() + lay.at[l],
                               out_layer.codes.get() + lay.at[l]);
         },
         [&] {
           for (size_t l = 0; l < lay.layers(); ++l)
             cuda::ttq_backward_accumulate(out_layer.codes.get() + lay.at[l], in.g.get() + lay.at[l], lay.n[l], 1,
                                           in.wp.get() + l, in.wn.get() + l, !twn,
                                           out_layer.latent_grad.get() + lay.at[l], out_layer.dwp.get() + l,
                                           out_layer.dwn.get() + l);
         },
         "ops_cuda.h ttq_forward + ttq_backward_accumulate per layer"});
    variants.push_back(
        {"unfused", &out_unfused,
         [&] {
           for (size_t l = 0; l < lay.layers(); ++l) {
             float* d = out_unfused.d.get() + l;
             float* scale = out_unfused.twn_scale.get() + l;
             cuda::ttq_threshold(mode, in.w.get() + lay.at[l], lay.n[l], kT, kR, d, scale, ws_threshold.get(),
                                 ws_threshold.bytes(), kStream);
             cuda::ttq_ternarize(in.w.get() + lay.at[l], lay.n[l], d, twn ? scale : in.wp.get() + l,
                                 twn ? scale : in.wn.get() + l, out_unfused.w_t.get() + lay.at[l],
                                 out_unfused.codes.get() + lay.at[l], kStream);
           }
         },
         [&] {
           for (size_t l = 0; l < lay.layers(); ++l) {
             const int8_t* codes = out_unfused.codes.get() + lay.at[l];
             const float* gl = in.g.get() + lay.at[l];
             bench::latent_grad_pass(codes, gl, lay.n[l], in.wp.get() + l, in.wn.get() + l, !twn,
                                     out_unfused.latent_grad.get() + lay.at[l], kStream);
             if (!twn)
               bench::scale_grad_pass(codes, gl, lay.n[l], out_unfused.dwp.get() + l, out_unfused.dwn.get() + l,
                                      ws_scale.get(), ws_scale.bytes(), kStream);
           }
         },
         "per layer: threshold, ternarize, latent-gradient pass, scale-gradient pass"});
    if (multi_pc) {
      std::ostringstream os;
      os << multi_pc->fused_forward_launches() << " fused forward launches";
      if (multi_pc->sparsity_layers()) os << " + " << multi_pc->sparsity_layers() << " per-layer radix selects";
      os << ", " << multi_pc->backward_launches() << " backward launches (" << lay.total_rows << " channel rows)";
      variants.push_back({"fused_pc", &out_pc, [&] { multi_pc->forward(kStream); },
                          [&] { multi_pc->backward(kStream); }, os.str()});
    }

    // ---- verify: one forward + backward of each variant from zeroed gradients ----
    for (Variant& v : variants) {
      v.out->reset();
      v.forward();
      v.backward();
    }
    CUDA_CHECK(cudaStreamSynchronize(kStream));
    std::vector<float> host_d(lay.layers());
    for (size_t l = 0; l < lay.layers(); ++l) host_d[l] = host_threshold(mode, &w[static_cast<size_t>(lay.at[l])], lay.n[l]);
    Checker c(wl.name + "/" + mode_name(mode));
    const HostOutputs ref(out_fused);
    for (size_t l = 0; l < lay.layers(); ++l) self_check(c, "fused", wl, lay, mode, w, g, ref, l, host_d[l]);
    Checker pc(wl.name + "/" + mode_name(mode) + " per-channel");
    for (size_t k = 1; k < variants.size(); ++k) {
      const HostOutputs r(*variants[k].out);
      if (variants[k].name == "fused_pc")
        per_channel_check(pc, wl, lay, ref, r);
      else
        cross_check(c, variants[k].name, wl, lay, mode, w, g, ref, r, host_d);
    }
    checks.push_back({wl.name, mode_name(mode), c.ok(), c.messages()});
    if (multi_pc) {
      checks.push_back({wl.name, std::string(mode_name(mode)) + " per-channel", pc.ok(), pc.messages()});
      if (!pc.ok()) {  // reported; the other variants are still timed
        std::fprintf(stderr, "\nVERIFICATION FAILED: %s/%s per-channel, %d problem(s):\n", wl.name.c_str(),
                     mode_name(mode), pc.failures());
        for (const std::string& m : pc.messages()) std::fprintf(stderr, "  %s\n", m.c_str());
        pc_failed = true;
        variants.erase(std::remove_if(variants.begin(), variants.end(),
                                      [](const Variant& v) { return v.name == "fused_pc"; }),
                       variants.end());
      }
    }
    if (!c.ok()) {
      std::fprintf(stderr, "\nVERIFICATION FAILED: %s/%s, %d problem(s):\n", wl.name.c_str(), mode_name(mode),
                   c.failures());
      for (const std::string& m : c.messages()) std::fprintf(stderr, "  %s\n", m.c_str());
      return false;
    }
    std::printf("verified %s/%s: fused = host reference; per_layer, unfused%s = fused (scale gradients within "
                "%g relative; %zu layers, %lld weights)\n",
                wl.name.c_str(), mode_name(mode), multi_pc && pc.ok() ? ", fused_pc" : "", kScaleGradRel,
                lay.layers(), static_cast<long long>(wl.weights()));
    std::fflush(stdout);

    // ---- time ----
    for (const Variant& v : variants) {
      Row r;
      r.workload = wl.name;
      r.mode = mode_name(mode);
      r.variant = v.name;
      r.launches = v.launches;
      r.layers = static_cast<int>(lay.layers());
      r.weights = wl.weights();
      r.fwd_bytes = r.weights * forward_bytes_per_weight(mode);
      r.bwd_bytes = r.weights * kBackwardBytesPerWeight;
      r.t = time_variant(v, o, flush);
      r.fwd_gb_per_s = static_cast<double>(r.fwd_bytes) / (r.t.fwd_us * 1e3);
      r.bwd_gb_per_s = static_cast<double>(r.bwd_bytes) / (r.t.bwd_us * 1e3);
      r.gb_per_s = static_cast<double>(r.fwd_bytes + r.bwd_bytes) / (r.t.total_us * 1e3);
      r.fraction = r.gb_per_s / copy.gb_per_s;
      rows.push_back(r);
    }
  }
  return true;
}

int run(const Options& o) {
  const int count = cuda_device_count();
  if (count == 0) {
    const std::string reason = cuda_device_summary();
    std::printf("bench_ttq_gpu: %s\nSKIPPED: no GPU\n", reason.c_str());
    if (!o.json_path.empty()) write_skipped_json(o.json_path, reason);
    return 0;
  }
  TTQ_CHECK(o.device < count, "--device " << o.device << ": only " << count << " CUDA device(s) found");
  CUDA_CHECK(cudaSetDevice(o.device));
  cudaDeviceProp prop{};
  CUDA_CHECK(cudaGetDeviceProperties(&prop, o.device));
  DeviceInfo dev;
  dev.name = prop.name;
  dev.summary = cuda_device_summary();
  dev.major = prop.major;
  dev.minor = prop.minor;
  dev.sms = prop.multiProcessorCount;
  dev.memory = static_cast<int64_t>(prop.totalGlobalMem);
  dev.l2 = prop.l2CacheSize;
  std::printf("bench_ttq_gpu: device %d: %s (sm_%d%d, %d SMs, %.1f GiB, L2 %.1f MiB)\n", o.device, dev.name.c_str(),
              dev.major, dev.minor, dev.sms, static_cast<double>(dev.memory) / (1 << 30),
              static_cast<double>(dev.l2) / (1 << 20));
  std::printf("settings: %d warm-up + %d timed repetitions (median%s), L2 flush %s, t = %g, sparsity r = %g, "
              "Wp = %g, Wn = %g\n",
              o.warmup, o.reps, o.reps < 20 ? "; fewer than 20 repetitions: noisy" : "", o.flush_l2 ? "on" : "off",
              kT, kR, kWp, kWn);
  std::printf("bytes per weight: forward max %lld, sparsity %lld, twn %lld; backward %lld (see the file header)\n",
              static_cast<long long>(forward_bytes_per_weight(ThresholdMode::Max)),
              static_cast<long long>(forward_bytes_per_weight(ThresholdMode::Sparsity)),
              static_cast<long long>(forward_bytes_per_weight(ThresholdMode::Twn)),
              static_cast<long long>(kBackwardBytesPerWeight));

  const CopyFloor copy = measure_copy_floor(o);
  std::printf("copy floor: cudaMemcpy D2D of %lld MiB: %.1f us median, %.1f GB/s (read + write)\n",
              static_cast<long long>(copy.bytes >> 20), copy.us, copy.gb_per_s);
  Flush flush;
  if (o.flush_l2) {
    flush.bytes = std::max<int64_t>(2 * dev.l2, int64_t{64} << 20) / 16 * 16;
    flush.buf = DevArray<char>(flush.bytes);
    flush.sink = DevArray<unsigned>(1);
    CUDA_CHECK(cudaMemsetAsync(flush.buf.get(), 0, static_cast<size_t>(flush.bytes), kStream));
  }

  std::vector<Row> rows;
  std::vector<Verification> checks;
  bool verified = true, pc_failed = false;
  for (const std::string& name : o.workloads) {
    const Workload wl = make_workload(name, o);
    std::printf("\n%s: %zu quantized tensors, %lld weights:", wl.name.c_str(), wl.layers.size(),
                static_cast<long long>(wl.weights()));
    for (size_t i = 0; i < wl.layers.size() && i < 24; ++i) std::printf(" %s", wl.layers[i].shape.c_str());
    std::printf("\n");
    if (!run_workload(wl, o, copy, flush, rows, checks, pc_failed)) {
      verified = false;
      break;
    }
  }

  if (!rows.empty()) {
    print_header();
    for (const Row& r : rows) print_row(r);
  }
  std::printf("\nGB/s = bytes it must move / median time; %%copy = that rate / the copy floor (%.1f GB/s). "
              "host_us: time to enqueue one forward + backward.\n",
              copy.gb_per_s);
  for (const Row& r : rows)
    if (r.variant == "fused" || r.variant == "fused_pc")
      std::printf("RESULT ttq_%s_%s_%s total_us=%.2f gb_per_s=%.1f pct_copy_floor=%.1f\n", r.variant.c_str(),
                  r.workload.c_str(), r.mode.c_str(), r.t.total_us, r.gb_per_s, 100.0 * r.fraction);
  if (const Row* t = find_target_row(rows))
    std::printf("TARGET ResNet-18 TTQ forward+backward (fused, max): %.1f us, %.1f GB/s = %.1f%% of the copy floor; "
                "target >= %.0f%%: %s\n",
                t->t.total_us, t->gb_per_s, 100.0 * t->fraction, 100.0 * kTargetFraction,
                t->fraction >= kTargetFraction ? "met" : "NOT met");
  if (!o.json_path.empty()) {
    write_json(o.json_path, o, dev, copy, rows, checks, verified && !pc_failed);
    std::printf("wrote %s\n", o.json_path.c_str());
  }
  if (!verified || pc_failed) {
    std::fprintf(stderr, "bench_ttq_gpu: results differ between implementations (see above); exit status 1\n");
    return 1;
  }
  return 0;
}

}  // namespace
}  // namespace ttq

int main(int argc, char** argv) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);  // lines reach a log file as they come, also before a timeout
  ttq::Options o;
  try {
    o = ttq::parse_options(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_ttq_gpu: %s\n%s", e.what(), ttq::kUsage);
    return 2;
  }
  if (o.help) {
    std::printf("%s", ttq::kUsage);
    return 0;
  }
  try {
    return ttq::run(o);
  } catch (const std::exception& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "bench_ttq_gpu: error: %s\n", e.what());
    return 1;
  }
}
