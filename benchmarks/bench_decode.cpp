// The ImageNet input pipeline on one thread: JPEG decoding (full size and DCT-scaled) from
// memory, and whole samples as the loader fetches them (read the file, plan, decode, resize,
// crop, flip, normalise) for the evaluation transform and both training augmentations, with and
// without DCT-scaled decoding. Inputs are generated photograph-like JPEGs (smooth shading, hard
// edged shapes, sensor-like noise; quality 90, 4:2:0) of 500x375 (a typical ImageNet size) with
// moderate and with heavy noise, and of 1500x1125, eight different images each, written to a
// temporary ImageNet-style folder. Rates are images per second on one core (items_per_second).
#include <benchmark/benchmark.h>

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "engine/core/rng.h"
#include "engine/data/crop_plan.h"
#include "engine/data/image_folder.h"
#include "engine/data/jpeg.h"

#ifdef TTQ_HAVE_TURBOJPEG
#include <turbojpeg.h>
#endif

namespace {

namespace fs = std::filesystem;
using namespace ttq;

constexpr int kImagesPerSize = 8;

std::vector<uint8_t> photo_like(int w, int h, int noise, uint64_t seed) {
  Rng rng(seed);
  std::vector<double> base(3), gx(3), gy(3);
  for (int c = 0; c < 3; ++c) {
    base[c] = rng.uniform(60, 190);
    gx[c] = rng.uniform(-80, 80) / w;
    gy[c] = rng.uniform(-80, 80) / h;
  }
  std::vector<uint8_t> p(static_cast<size_t>(w) * h * 3);
  // Shading: a gradient plus two low-frequency waves.
  const double f1 = rng.uniform(2, 6) * 6.283 / w, f2 = rng.uniform(2, 6) * 6.283 / h;
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x)
      for (int c = 0; c < 3; ++c)
        p[(static_cast<size_t>(y) * w + x) * 3 + c] = static_cast<uint8_t>(
            std::clamp(base[c] + gx[c] * x + gy[c] * y + 25 * std::sin(f1 * x + c) * std::cos(f2 * y), 0.0, 255.0));
  // Objects: 40 hard-edged ellipses of flat, shaded colour.
  for (int k = 0; k < 40; ++k) {
    const double cx = rng.uniform(0, w), cy = rng.uniform(0, h);
    const double rx = rng.uniform(0.02, 0.2) * w, ry = rng.uniform(0.02, 0.2) * h;
    const double col[3] = {rng.uniform(0, 255), rng.uniform(0, 255), rng.uniform(0, 255)};
    const int x0 = std::max(0, int(cx - rx)), x1 = std::min(w, int(cx + rx) + 1);
    const int y0 = std::max(0, int(cy - ry)), y1 = std::min(h, int(cy + ry) + 1);
    for (int y = y0; y < y1; ++y)
      for (int x = x0; x < x1; ++x) {
        const double dx = (x - cx) / rx, dy = (y - cy) / ry, r2 = dx * dx + dy * dy;
        if (r2 > 1) continue;
        for (int c = 0; c < 3; ++c)
          p[(static_cast<size_t>(y) * w + x) * 3 + c] = static_cast<uint8_t>(col[c] * (1.0 - 0.4 * r2));
      }
  }
  // Sensor-like noise (+-noise levels, independent per channel): it sets the file size.
  for (auto& v : p) v = static_cast<uint8_t>(std::clamp(int(v) + int(rng.below(2 * noise + 1)) - noise, 0, 255));
  return p;
}

// One set of test images: eight of one size and noise level.
struct Variant {
  std::string name;
  int width, height, noise;
  std::vector<std::vector<uint8_t>> jpegs;  // the files' bytes
  std::unique_ptr<ImageFolderIndex> index;  // the same files in <tmp>/<name>/c/
};

struct Fixture {
  std::string dir;
  std::vector<Variant> variants;

  Fixture() {
    dir = (fs::temp_directory_path() / ("ttq_bench_decode_" + std::to_string(::getpid()))).string();
    // 500x375 with moderate noise (~64 kB, 0.34 bytes/pixel); the same with heavy noise (~98 kB,
    // near ImageNet's average of ~110 kB per training image); 1500x1125 with moderate noise.
    variants.push_back({"500x375", 500, 375, 12, {}, nullptr});
    variants.push_back({"500x375_dense", 500, 375, 30, {}, nullptr});
    variants.push_back({"1500x1125", 1500, 1125, 12, {}, nullptr});
    for (Variant& v : variants) {
      const std::string folder = dir + "/" + v.name + "/c";
      fs::create_directories(folder);
      for (int i = 0; i < kImagesPerSize; ++i) {
        const auto px = photo_like(v.width, v.height, v.noise, 1000 * v.width + i);
        v.jpegs.push_back(encode_jpeg(px.data(), v.width, v.height, JpegColor::rgb, 90));
        std::ofstream f(folder + "/" + std::to_string(i) + ".JPEG", std::ios::binary);
        f.write(reinterpret_cast<const char*>(v.jpegs.back().data()), static_cast<std::streamsize>(v.jpegs.back().size()));
      }
      v.index = std::make_unique<ImageFolderIndex>(scan_image_folder(dir + "/" + v.name));
    }
  }
  ~Fixture() {
    std::error_code ec;
    fs::remove_all(dir, ec);
  }
};

Fixture& fixture() {
  static Fixture f;
  return f;
}

const Variant& variant(int v) { return fixture().variants[v]; }

double mean_kb(const std::vector<std::vector<uint8_t>>& files) {
  double s = 0;
  for (const auto& f : files) s += f.size();
  return s / files.size() / 1000.0;
}

// Decoding only, from memory: full size, or at the DCT scale the evaluation transform allows.
void BM_Decode(benchmark::State& state, int v, bool scaled) {
  const auto& files = variant(v).jpegs;
  const CropPlan plan = plan_eval(variant(v).width, variant(v).height, 256, 224);
  const int mw = scaled ? plan.min_decode_width() : 0, mh = scaled ? plan.min_decode_height() : 0;
  JpegImage img;
  int64_t i = 0;
  for (auto _ : state) {
    const auto& f = files[i++ % files.size()];
    decode_jpeg(f.data(), f.size(), "bench.jpg", mw, mh, img);
    benchmark::DoNotOptimize(img.rgb.data());
  }
  state.SetItemsProcessed(state.iterations());
  state.counters["decoded_w"] = img.width;
  state.counters["file_kB"] = mean_kb(files);
}

#ifdef TTQ_HAVE_TURBOJPEG
// TurboJPEG's own decode at every scaling factor <= 1 (why only 1/2, 1/4 and 1/8 are used).
void BM_DecodeFactor(benchmark::State& state, int v, int num, int denom) {
  const auto& files = variant(v).jpegs;
  tjhandle h = tjInitDecompress();
  const tjscalingfactor f{num, denom};
  const int sw = TJSCALED(variant(v).width, f), sh = TJSCALED(variant(v).height, f);
  std::vector<uint8_t> out(static_cast<size_t>(sw) * sh * 3);
  int64_t i = 0;
  for (auto _ : state) {
    const auto& jpg = files[i++ % files.size()];
    tjDecompress2(h, jpg.data(), static_cast<unsigned long>(jpg.size()), out.data(), sw, sw * 3, sh, TJPF_RGB, 0);
    benchmark::DoNotOptimize(out.data());
  }
  tjDestroy(h);
  state.SetItemsProcessed(state.iterations());
}
#endif

// The evaluation transform alone (resize + centre crop + normalise) on an already decoded image.
void BM_EvalTransform(benchmark::State& state, int v) {
  const auto& f = variant(v).jpegs[0];
  const JpegImage img = decode_jpeg(f.data(), f.size(), "bench.jpg");
  const CropPlan plan = plan_eval(img.width, img.height, 256, 224);
  const std::vector<float> lut = normalization_lut(imagenet_normalization());
  std::vector<float> out(3 * 224 * 224);
  for (auto _ : state) {
    render_crop(img, plan, lut.data(), out.data());
    benchmark::DoNotOptimize(out.data());
  }
  state.SetItemsProcessed(state.iterations());
}

// A whole sample as the loader fetches it: file read (page cache), plan, decode, transform.
void BM_Fetch(benchmark::State& state, int v, std::string transform, bool scaled) {
  ImageFolderOptions opt;
  opt.train_augment = transform == "eval" ? "random_resized_crop" : transform;
  opt.scaled_decode = scaled;
  const ImageFolderSource src(*variant(v).index, opt);
  const bool augment = transform != "eval";
  std::vector<float> out(3 * 224 * 224);
  uint64_t k = 0;
  for (auto _ : state) {
    Rng rng(Rng::splitmix64(k));
    src.fetch(static_cast<int64_t>(k % kImagesPerSize), augment, rng, out.data());
    benchmark::DoNotOptimize(out.data());
    ++k;
  }
  state.SetItemsProcessed(state.iterations());
  state.counters["file_kB"] = mean_kb(variant(v).jpegs);
}

bool register_all() {
  if (!jpeg_supported()) {
    benchmark::RegisterBenchmark("decode/unavailable", [](benchmark::State& state) {
      for (auto _ : state) {
      }
      state.SkipWithError("built without TurboJPEG: no JPEG decoding to measure");
    });
    return false;
  }
  for (int v = 0; v < 3; ++v) {
    const std::string size = v == 0 ? "500x375" : v == 1 ? "500x375_dense" : "1500x1125";
    benchmark::RegisterBenchmark(("decode/full/" + size).c_str(), BM_Decode, v, false)->Unit(benchmark::kMicrosecond);
    benchmark::RegisterBenchmark(("decode/scaled_for_eval/" + size).c_str(), BM_Decode, v, true)
        ->Unit(benchmark::kMicrosecond);
    benchmark::RegisterBenchmark(("transform_only/eval/" + size).c_str(), BM_EvalTransform, v)
        ->Unit(benchmark::kMicrosecond);
#ifdef TTQ_HAVE_TURBOJPEG
    if (v != 1)
      for (int num : {8, 7, 6, 5, 4, 3, 2, 1})
        benchmark::RegisterBenchmark(("decode/factor_" + std::to_string(num) + "_8/" + size).c_str(), BM_DecodeFactor,
                                     v, num, 8)
            ->Unit(benchmark::kMicrosecond);
#endif
    for (const char* t : {"eval", "random_resized_crop", "alexnet"})
      for (bool scaled : {true, false})
        benchmark::RegisterBenchmark(
            ("fetch/" + std::string(t) + (scaled ? "/scaled_decode/" : "/full_decode/") + size).c_str(), BM_Fetch, v,
            std::string(t), scaled)
            ->Unit(benchmark::kMicrosecond);
  }
  return true;
}

const bool registered = register_all();

}  // namespace

BENCHMARK_MAIN();
