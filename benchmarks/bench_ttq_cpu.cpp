// CPU TTQ passes (kernels/cpu/ttq_cpu.h): threshold, ternarize, backward, and the whole per-layer
// quantizer forward+backward (threshold + ternarize + backward) over every quantized weight tensor
// of CIFAR ResNet-20 and ImageNet ResNet-18, plus two single tensors. A memcpy of the same tensors
// gives a memory-bandwidth baseline.
//
// Bytes counted per weight (what each pass must read + write, extra sort traffic not counted):
//   threshold  max: 4 (read w)   sparsity: 8 (radix select: two reads of w)   twn: 8 (two reads of w)
//   ternarize  9  (read w 4, write w_t 4 + code 1)
//   backward   13 (read code 1 + g 4, read+write latent grad 4 + 4)
//   layer      threshold + 9 + 13
//   memcpy     8  (read 4, write 4)
#include <benchmark/benchmark.h>

#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "kernels/cpu/ttq_cpu.h"
#include "kernels/ttq_math.h"

namespace {

using ttq::math::ThresholdMode;

constexpr float kMaxT = 0.05f;        // D = t * max|w| (Zhu et al. use t = 0.05)
constexpr double kSparsityR = 0.5;    // half of the weights in the zero band
constexpr float kWp = 0.6f, kWn = 0.55f;

// Uniform in [lo, hi), reproducible from the seed (same as tests/test_util.cpp's fill_random).
void fill_random(float* p, int64_t n, uint64_t seed, float lo = -1.0f, float hi = 1.0f) {
  std::mt19937_64 gen(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  for (int64_t i = 0; i < n; ++i) p[i] = dist(gen);
}

// The buffers of one quantized weight tensor.
struct Tensor {
  int64_t n = 0;
  std::vector<float> w, w_t, g, latent_grad;
  std::vector<int8_t> codes;
  float d_half = 0.0f;  // D that puts a fraction 0.5 in the zero band (used by ternarize/backward)
};

// The tensors one benchmark iteration processes. Single-tensor workloads hold kCopies
// independently seeded tensors and use the next one each iteration: with one small tensor reused
// every iteration the branch predictor learns its whole code pattern and the branchy loops look
// ~10x faster than they are in training (where a whole network step runs between two calls).
struct Workload {
  std::vector<std::vector<Tensor>> copies;
  int64_t total = 0;  // weights per iteration
  size_t next = 0;
  std::vector<Tensor>& tensors() {
    std::vector<Tensor>& t = copies[next];
    next = (next + 1) % copies.size();
    return t;
  }
};
constexpr int kCopies = 8;

int64_t conv(int64_t co, int64_t ci, int64_t k) { return co * ci * k * k; }

// CIFAR ResNet-20: every conv except the 3->16 stem, plus the 10x64 fc.
std::vector<int64_t> resnet20_sizes() {
  std::vector<int64_t> s;
  for (int i = 0; i < 6; ++i) s.push_back(conv(16, 16, 3));
  s.push_back(conv(32, 16, 3));
  for (int i = 0; i < 5; ++i) s.push_back(conv(32, 32, 3));
  s.push_back(conv(64, 32, 3));
  for (int i = 0; i < 5; ++i) s.push_back(conv(64, 64, 3));
  s.push_back(10 * 64);
  return s;
}

// torchvision resnet18: every conv except the 7x7 stem (1x1 downsamples included); the
// 1000x512 fc stays full precision.
std::vector<int64_t> resnet18_sizes() {
  std::vector<int64_t> s;
  for (int i = 0; i < 4; ++i) s.push_back(conv(64, 64, 3));  // layer1
  int64_t c = 64;
  for (int64_t out : {128, 256, 512}) {                       // layer2..4
    s.push_back(conv(out, c, 3));
    for (int i = 0; i < 3; ++i) s.push_back(conv(out, out, 3));
    s.push_back(conv(out, c, 1));                             // downsample
    c = out;
  }
  return s;
}

std::vector<int64_t> sizes_of(const std::string& name) {
  if (name == "resnet20_all") return resnet20_sizes();
  if (name == "resnet18_all") return resnet18_sizes();
  if (name == "64x64x3x3") return {conv(64, 64, 3)};
  return {conv(512, 512, 3)};  // "512x512x3x3"
}

const std::vector<std::string> kWorkloads = {"resnet20_all", "resnet18_all", "64x64x3x3",
                                             "512x512x3x3"};

// Built once per workload and shared by every benchmark that uses it.
Workload& workload(const std::string& name) {
  static std::map<std::string, std::unique_ptr<Workload>> cache;
  auto& slot = cache[name];
  if (!slot) {
    slot = std::make_unique<Workload>();
    const std::vector<int64_t> sizes = sizes_of(name);
    const int copies = sizes.size() == 1 ? kCopies : 1;
    uint64_t seed = 1234;
    slot->copies.resize(copies);
    for (int copy = 0; copy < copies; ++copy) {
      for (int64_t n : sizes) {
        Tensor t;
        t.n = n;
        t.w.resize(n);
        t.g.resize(n);
        t.w_t.assign(n, 0.0f);
        t.latent_grad.assign(n, 0.0f);
        t.codes.assign(n, 0);
        fill_random(t.w.data(), n, seed++);
        fill_random(t.g.data(), n, seed++, -1e-3f, 1e-3f);
        t.d_half = ttq::cpu::ttq_threshold(ThresholdMode::Sparsity, t.w.data(), n, kMaxT, 0.5).threshold;
        ttq::cpu::ttq_ternarize(t.w.data(), n, t.d_half, kWp, kWn, t.w_t.data(), t.codes.data());
        if (copy == 0) slot->total += n;
        slot->copies[copy].push_back(std::move(t));
      }
    }
  }
  return *slot;
}

int64_t threshold_bytes(ThresholdMode m) { return m == ThresholdMode::Max ? 4 : 8; }
constexpr int64_t kTernarizeBytes = 9, kBackwardBytes = 13;

const char* mode_name(ThresholdMode m) {
  switch (m) {
    case ThresholdMode::Max: return "max";
    case ThresholdMode::Sparsity: return "sparsity_r0.5";
    default: return "twn";
  }
}

void set_rates(benchmark::State& state, int64_t weights, int64_t bytes_per_weight) {
  state.SetItemsProcessed(state.iterations() * weights);
  state.SetBytesProcessed(state.iterations() * weights * bytes_per_weight);
}

void BM_Threshold(benchmark::State& state, std::string name, ThresholdMode mode) {
  Workload& wl = workload(name);
  for (auto _ : state) {
    for (Tensor& t : wl.tensors()) {
      auto r = ttq::cpu::ttq_threshold(mode, t.w.data(), t.n, kMaxT, kSparsityR);
      benchmark::DoNotOptimize(r);
    }
  }
  set_rates(state, wl.total, threshold_bytes(mode));
}

void BM_Ternarize(benchmark::State& state, std::string name) {
  Workload& wl = workload(name);
  for (auto _ : state) {
    for (Tensor& t : wl.tensors()) {
      auto c = ttq::cpu::ttq_ternarize(t.w.data(), t.n, t.d_half, kWp, kWn, t.w_t.data(), t.codes.data());
      benchmark::DoNotOptimize(c);
    }
    benchmark::ClobberMemory();
  }
  set_rates(state, wl.total, kTernarizeBytes);
}

void BM_Backward(benchmark::State& state, std::string name) {
  Workload& wl = workload(name);
  for (auto _ : state) {
    for (Tensor& t : wl.tensors()) {
      auto s = ttq::cpu::ttq_backward(t.codes.data(), t.g.data(), t.n, kWp, kWn, true, t.latent_grad.data());
      benchmark::DoNotOptimize(s);
    }
    benchmark::ClobberMemory();
  }
  set_rates(state, wl.total, kBackwardBytes);
}

// One quantized layer's share of a training step: threshold, ternarize, backward. TWN uses its
// fixed scale for both signs and the plain straight-through latent gradient.
void BM_Layer(benchmark::State& state, std::string name, ThresholdMode mode) {
  Workload& wl = workload(name);
  const bool twn = mode == ThresholdMode::Twn;
  for (auto _ : state) {
    for (Tensor& t : wl.tensors()) {
      const auto th = ttq::cpu::ttq_threshold(mode, t.w.data(), t.n, kMaxT, kSparsityR);
      const float wp = twn ? th.twn_scale : kWp, wn = twn ? th.twn_scale : kWn;
      auto c = ttq::cpu::ttq_ternarize(t.w.data(), t.n, th.threshold, wp, wn, t.w_t.data(), t.codes.data());
      benchmark::DoNotOptimize(c);
      auto s = ttq::cpu::ttq_backward(t.codes.data(), t.g.data(), t.n, wp, wn, !twn, t.latent_grad.data());
      benchmark::DoNotOptimize(s);
    }
    benchmark::ClobberMemory();
  }
  set_rates(state, wl.total, threshold_bytes(mode) + kTernarizeBytes + kBackwardBytes);
}

// Baseline: copy every latent weight tensor (w -> w_t), 8 B per weight.
void BM_Memcpy(benchmark::State& state, std::string name) {
  Workload& wl = workload(name);
  for (auto _ : state) {
    for (Tensor& t : wl.tensors()) std::memcpy(t.w_t.data(), t.w.data(), t.n * sizeof(float));
    benchmark::ClobberMemory();
  }
  set_rates(state, wl.total, 8);
}

// The passes split large tensors over OpenMP threads, so the rates use wall-clock time (the
// default CPU time would count only the calling thread).
bool register_all() {
  const ThresholdMode modes[] = {ThresholdMode::Max, ThresholdMode::Sparsity, ThresholdMode::Twn};
  for (const std::string& wl : kWorkloads) {
    for (ThresholdMode m : modes)
      benchmark::RegisterBenchmark((std::string("threshold_") + mode_name(m) + "/" + wl).c_str(),
                                   BM_Threshold, wl, m)->UseRealTime();
    benchmark::RegisterBenchmark(("ternarize/" + wl).c_str(), BM_Ternarize, wl)->UseRealTime();
    benchmark::RegisterBenchmark(("backward/" + wl).c_str(), BM_Backward, wl)->UseRealTime();
    for (ThresholdMode m : modes)
      benchmark::RegisterBenchmark((std::string("layer_fwd_bwd_") + mode_name(m) + "/" + wl).c_str(),
                                   BM_Layer, wl, m)->UseRealTime();
    benchmark::RegisterBenchmark(("memcpy/" + wl).c_str(), BM_Memcpy, wl)->UseRealTime();
  }
  return true;
}

const bool registered = register_all();

}  // namespace

BENCHMARK_MAIN();
