// JPEG decoding (RGB, grayscale, CMYK, progressive, DCT-scaled, corrupt files), the antialiased
// bilinear resampler against hand-computed values and a plain double-precision reference, and the
// ImageNet crop plans (evaluation, AlexNet, RandomResizedCrop) and their rendering.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <set>

#include "engine/data/crop_plan.h"
#include "engine/data/image_folder.h"
#include "engine/data/jpeg.h"
#include "engine/data/resize.h"
#include "tests/test_util.h"

using namespace ttq;
using ttq::testing::error_of;
using ttq::testing::TempDir;

namespace {

#define SKIP_WITHOUT_TURBOJPEG() \
  if (!jpeg_supported()) GTEST_SKIP() << "built without TurboJPEG (JPEG decoding unavailable)"

// A smooth RGB test image (gradients and a low-frequency wave).
std::vector<uint8_t> smooth_rgb(int w, int h) {
  std::vector<uint8_t> p(static_cast<size_t>(w) * h * 3);
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x) {
      uint8_t* q = &p[(static_cast<size_t>(y) * w + x) * 3];
      q[0] = static_cast<uint8_t>(255.0 * x / std::max(1, w - 1));
      q[1] = static_cast<uint8_t>(255.0 * y / std::max(1, h - 1));
      q[2] = static_cast<uint8_t>(127.5 + 100.0 * std::sin(x * 0.05) * std::cos(y * 0.07));
    }
  return p;
}

// Deterministic pseudo-random bytes.
std::vector<uint8_t> noise_rgb(int w, int h, uint64_t seed) {
  Rng rng(seed);
  std::vector<uint8_t> p(static_cast<size_t>(w) * h * 3);
  for (auto& v : p) v = static_cast<uint8_t>(rng.below(256));
  return p;
}

double mean_abs_diff(const std::vector<uint8_t>& a, const std::vector<uint8_t>& b) {
  EXPECT_EQ(a.size(), b.size());
  double s = 0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) s += std::abs(int(a[i]) - int(b[i]));
  return s / std::max<size_t>(1, a.size());
}

RgbView view(const std::vector<uint8_t>& p, int w, int h) { return RgbView{p.data(), w, h, int64_t(w) * 3}; }

// Plain reference: the same triangle filter in double precision, separable, no rounding between
// the passes, taps clipped to the box's pixels.
std::vector<double> reference_resize(const std::vector<uint8_t>& src, int w, int h, Box box, int ow, int oh) {
  auto weights = [](double in0, double in1, int in_size, int out_size, int i, int& first, std::vector<double>& wt) {
    const double scale = (in1 - in0) / out_size, fs = std::max(scale, 1.0);
    const double center = in0 + (i + 0.5) * scale;
    const int lo = std::max(0, int(std::floor(in0))), hi = std::min(in_size, int(std::ceil(in1)));
    wt.clear();
    first = lo;
    double total = 0;
    for (int x = lo; x < hi; ++x) {
      const double d = std::fabs((x + 0.5 - center) / fs);
      wt.push_back(d < 1 ? 1 - d : 0);
      total += wt.back();
    }
    for (double& v : wt) v /= total;
  };
  std::vector<double> out(static_cast<size_t>(ow) * oh * 3, 0.0);
  std::vector<double> wx, wy;
  for (int oy = 0; oy < oh; ++oy) {
    int fy;
    weights(box.y0, box.y1, h, oh, oy, fy, wy);
    for (int ox = 0; ox < ow; ++ox) {
      int fx;
      weights(box.x0, box.x1, w, ow, ox, fx, wx);
      for (int c = 0; c < 3; ++c) {
        double s = 0;
        for (size_t j = 0; j < wy.size(); ++j)
          for (size_t i = 0; i < wx.size(); ++i) s += wy[j] * wx[i] * src[((fy + j) * w + fx + i) * 3 + c];
        out[(static_cast<size_t>(oy) * ow + ox) * 3 + c] = s;
      }
    }
  }
  return out;
}

JpegImage raw_image(const std::vector<uint8_t>& rgb, int w, int h) {
  JpegImage img;
  img.width = img.full_width = w;
  img.height = img.full_height = h;
  img.rgb = rgb;
  return img;
}

}  // namespace

// ---- resampling -------------------------------------------------------------------------------

TEST(Resize, IdentityIsExact) {
  const auto src = noise_rgb(37, 23, 1);
  EXPECT_EQ(resize_rgb(view(src, 37, 23), 37, 23), src);
}

TEST(Resize, ConstantImageStaysConstant) {
  std::vector<uint8_t> src(53 * 41 * 3);
  for (size_t i = 0; i < src.size(); i += 3) {
    src[i] = 200;
    src[i + 1] = 17;
    src[i + 2] = 255;
  }
  for (auto [ow, oh] : {std::pair{5, 7}, std::pair{17, 40}, std::pair{101, 9}, std::pair{160, 123}}) {
    const auto out = resize_rgb(view(src, 53, 41), ow, oh);
    for (size_t i = 0; i < out.size(); i += 3) {
      ASSERT_EQ(out[i], 200) << ow << "x" << oh;
      ASSERT_EQ(out[i + 1], 17);
      ASSERT_EQ(out[i + 2], 255);
    }
  }
}

TEST(Resize, HandComputedDownAndUpsampling) {
  // 4 -> 2 along x: scale 2, support 2; output 0 is centred at 1.0 and takes pixels 0, 1, 2 with
  // triangle weights 0.75, 0.75, 0.25 (/1.75), output 1 pixels 1, 2, 3 with 0.25, 0.75, 0.75.
  const std::vector<uint8_t> row{0, 0, 0, 70, 70, 70, 140, 140, 140, 210, 210, 210};
  const auto down = resize_rgb(view(row, 4, 1), 2, 1);
  EXPECT_EQ(down, (std::vector<uint8_t>{50, 50, 50, 160, 160, 160}));  // (3*0+3*70+140)/7, (70+3*140+3*210)/7
  // The same along y (separability).
  const auto col = resize_rgb(view(row, 1, 4), 1, 2);
  EXPECT_EQ(col, down);
  // 2 -> 4: plain bilinear, edges clamped: a, 0.75a + 0.25b, 0.25a + 0.75b, b.
  const std::vector<uint8_t> two{0, 40, 200, 200, 40, 0};
  const auto up = resize_rgb(view(two, 2, 1), 4, 1);
  EXPECT_EQ(up, (std::vector<uint8_t>{0, 40, 200, 50, 40, 150, 150, 40, 50, 200, 40, 0}));
}

TEST(Resize, MatchesAPlainReferenceWithinRounding) {
  const int w = 53, h = 41;
  const auto src = noise_rgb(w, h, 7);
  struct Case {
    Box box;
    int ow, oh;
  };
  const std::vector<Case> cases{{{0, 0, 53, 41}, 17, 29},   {{0, 0, 53, 41}, 120, 90},  {{0, 0, 53, 41}, 8, 8},
                                {{5, 3, 30, 40}, 24, 24},   {{10.5, 2.25, 52.75, 33.5}, 19, 13},
                                {{0, 0, 53, 41}, 53, 20}};
  for (const Case& c : cases) {
    const auto ref = reference_resize(src, w, h, c.box, c.ow, c.oh);
    std::vector<uint8_t> out(static_cast<size_t>(c.ow) * c.oh * 3);
    resize_rgb(view(src, w, h), c.box, c.ow, c.oh, 0, 0, c.ow, c.oh, out.data());
    double worst = 0;
    for (size_t i = 0; i < out.size(); ++i) worst = std::max(worst, std::fabs(out[i] - ref[i]));
    // Two roundings to 8 bits (after each pass) and 14-bit weights: at most one step off.
    EXPECT_LE(worst, 1.0 + 1e-6) << c.ow << "x" << c.oh;
  }
}

TEST(Resize, SimdAndPortablePassesGiveIdenticalBytes) {
  // Odd sizes, boxes reaching the last pixel of the last row (where the SIMD loads would run
  // past the data), up- and downscaling, narrow boxes.
  for (auto [w, h] : {std::pair{61, 47}, std::pair{500, 375}, std::pair{7, 5}}) {
    const auto src = noise_rgb(w, h, 100 + w);
    const std::vector<Box> boxes{{0, 0, double(w), double(h)}, {1, 2, double(w), double(h)},
                                 {w / 3.0, h / 4.0, w - 0.5, h - 0.25}, {double(w - 2), double(h - 2), double(w), double(h)}};
    for (const Box& b : boxes)
      for (auto [ow, oh] : {std::pair{13, 11}, std::pair{224, 224}, std::pair{3, 100}, std::pair{w, h}}) {
        std::vector<uint8_t> a(static_cast<size_t>(ow) * oh * 3), p(a.size());
        resize_rgb(view(src, w, h), b, ow, oh, 0, 0, ow, oh, a.data());
        resize_rgb_portable(view(src, w, h), b, ow, oh, 0, 0, ow, oh, p.data());
        ASSERT_EQ(a, p) << w << "x" << h << " -> " << ow << "x" << oh << " box " << b.x0 << "," << b.y0;
      }
  }
}

TEST(Resize, RegionEqualsTheSameRectangleOfTheWholeResult) {
  const auto src = noise_rgb(61, 47, 3);
  const Box box{0, 0, 61, 47};
  const auto full = resize_rgb(view(src, 61, 47), 40, 33);
  std::vector<uint8_t> part(13 * 9 * 3);
  resize_rgb(view(src, 61, 47), box, 40, 33, 21, 17, 13, 9, part.data());
  for (int y = 0; y < 9; ++y)
    for (int x = 0; x < 13 * 3; ++x) ASSERT_EQ(part[(y * 13) * 3 + x], full[((17 + y) * 40 + 21) * 3 + x]);
}

TEST(Resize, BoxEqualsCropThenResize) {
  const auto src = noise_rgb(61, 47, 5);
  const int x0 = 7, y0 = 11, cw = 30, ch = 25;
  std::vector<uint8_t> crop(static_cast<size_t>(cw) * ch * 3);
  for (int y = 0; y < ch; ++y)
    std::copy_n(&src[((y0 + y) * 61 + x0) * 3], cw * 3, &crop[static_cast<size_t>(y) * cw * 3]);
  const auto want = resize_rgb(view(crop, cw, ch), 16, 12);
  std::vector<uint8_t> got(16 * 12 * 3);
  resize_rgb(view(src, 61, 47), Box{double(x0), double(y0), double(x0 + cw), double(y0 + ch)}, 16, 12, 0, 0, 16, 12,
             got.data());
  EXPECT_EQ(got, want);
}

TEST(Resize, RefusesRegionsOutsideTheOutput) {
  const auto src = noise_rgb(8, 8, 1);
  std::vector<uint8_t> out(100 * 3);
  EXPECT_NE(error_of([&] { resize_rgb(view(src, 8, 8), Box{0, 0, 8, 8}, 4, 4, 2, 2, 3, 3, out.data()); })
                .find("outside the 4x4 output"),
            std::string::npos);
  EXPECT_NE(error_of([&] { resize_rgb(view(src, 8, 8), Box{0, 0, 9, 8}, 4, 4, 0, 0, 4, 4, out.data()); }).find("box"),
            std::string::npos);
}

// ---- crop plans -------------------------------------------------------------------------------

TEST(CropPlan, EvalResizesTheShortSideAndCentresWithPythonRounding) {
  CropPlan p = plan_eval(500, 375, 256, 224);
  EXPECT_EQ(p.resized_width, 341);  // int(256 * 500 / 375)
  EXPECT_EQ(p.resized_height, 256);
  EXPECT_EQ(p.crop_x, 58);  // round(58.5) = 58 (half to even)
  EXPECT_EQ(p.crop_y, 16);
  EXPECT_FALSE(p.flip);
  p = plan_eval(375, 500, 256, 224);
  EXPECT_EQ(p.resized_width, 256);
  EXPECT_EQ(p.resized_height, 341);
  EXPECT_EQ(p.crop_y, 58);
  p = plan_eval(257, 300, 257, 224);  // (257 - 224) / 2 = 16.5 -> 16
  EXPECT_EQ(p.crop_x, 16);
  EXPECT_EQ(p.crop_y, 38);  // (300 - 224) / 2 = 38
  p = plan_eval(259, 400, 259, 224);  // 17.5 -> 18
  EXPECT_EQ(p.crop_x, 18);
  // The minimum decode size keeps the resized size: 500x375 may decode down to 341x256.
  p = plan_eval(500, 375, 256, 224);
  EXPECT_EQ(p.min_decode_width(), 341);
  EXPECT_EQ(p.min_decode_height(), 256);
}

TEST(CropPlan, RandomResizedCropStaysInsideWithTorchvisionLimits) {
  std::set<int> lefts;
  int flips = 0;
  for (uint64_t seed = 0; seed < 2000; ++seed) {
    Rng rng(seed);
    const CropPlan p = plan_random_resized_crop(500, 375, 224, rng);
    const double w = p.box.x1 - p.box.x0, h = p.box.y1 - p.box.y0;
    ASSERT_GE(p.box.x0, 0);
    ASSERT_GE(p.box.y0, 0);
    ASSERT_LE(p.box.x1, 500);
    ASSERT_LE(p.box.y1, 375);
    ASSERT_EQ(p.box.x0, std::floor(p.box.x0));
    // Sides are rounded from the drawn area and ratio, so allow a pixel of slack.
    ASSERT_GE((w + 1) * (h + 1), 0.08 * 500 * 375);
    ASSERT_LE((w - 1) / (h + 1), 4.0 / 3.0);
    ASSERT_GE((w + 1) / (h - 1), 3.0 / 4.0);
    ASSERT_EQ(p.resized_width, 224);
    ASSERT_EQ(p.resized_height, 224);
    ASSERT_EQ(p.crop_x, 0);
    // Decoding keeps at least 224 pixels across the box.
    const JpegScale s = choose_jpeg_scale(500, 375, p.min_decode_width(), p.min_decode_height());
    ASSERT_GE(w * s.value(), std::min(w, 224.0) - 1e-9);
    ASSERT_GE(h * s.value(), std::min(h, 224.0) - 1e-9);
    lefts.insert(static_cast<int>(p.box.x0));
    flips += p.flip;
  }
  EXPECT_GT(lefts.size(), 100u);
  EXPECT_NEAR(flips / 2000.0, 0.5, 0.05);
}

TEST(CropPlan, RandomResizedCropFallsBackToTheCentralCrop) {
  // No 8-100% area crop with ratio 3/4..4/3 fits in 1000x10: the fallback takes the full height
  // and width round(10 * 4/3) = 13, centred.
  Rng rng(1);
  const CropPlan p = plan_random_resized_crop(1000, 10, 224, rng);
  EXPECT_EQ(p.box.y0, 0);
  EXPECT_EQ(p.box.y1, 10);
  EXPECT_EQ(p.box.x0, 493);  // (1000 - 13) // 2
  EXPECT_EQ(p.box.x1, 506);
  Rng rng2(1);
  const CropPlan q = plan_random_resized_crop(10, 1000, 224, rng2);  // tall: width 10, height round(10 / (3/4)) = 13
  EXPECT_EQ(q.box.x1 - q.box.x0, 10);
  EXPECT_EQ(q.box.y1 - q.box.y0, 13);
  EXPECT_EQ(q.box.y0, 493);
}

TEST(CropPlan, AlexNetFollowsTheAuthorsRecipe) {
  std::set<int> widths;
  for (uint64_t seed = 0; seed < 2000; ++seed) {
    Rng rng(seed);
    const CropPlan p = plan_alexnet(500, 375, 224, rng);
    // Short side in [224, 308) jittered by 0.85..1.15 per axis, never above the stored size,
    // never below 224.
    ASSERT_GE(p.resized_height, 224);
    ASSERT_LE(p.resized_height, 375);
    ASSERT_LE(p.resized_height, static_cast<int>(307 * 1.15) + 1);
    ASSERT_GE(p.resized_width, 224);
    ASSERT_LE(p.resized_width, 500);
    ASSERT_GE(p.resized_width, static_cast<int>(224.0 / 375 * 500 * 0.85));
    ASSERT_LE(p.crop_x + 224, p.resized_width);
    ASSERT_LE(p.crop_y + 224, p.resized_height);
    ASSERT_EQ(p.box.x1, 500);
    widths.insert(p.resized_width);
  }
  EXPECT_GT(widths.size(), 50u);
  // Small images are enlarged to 224 only.
  Rng rng(3);
  const CropPlan s = plan_alexnet(100, 80, 224, rng);
  EXPECT_EQ(s.resized_width, 224);
  EXPECT_EQ(s.resized_height, 224);
}

TEST(CropPlan, RenderedEvalCropIsTheCentreOfAnImageThatNeedsNoResize) {
  // 256 x 300: the short side already is 256, so the evaluation input is pixels [16, 240) x
  // [38, 262) normalised.
  const int w = 256, h = 300;
  const auto rgb = noise_rgb(w, h, 11);
  const JpegImage img = raw_image(rgb, w, h);
  const CropPlan p = plan_eval(w, h, 256, 224);
  const std::vector<float> lut = normalization_lut(imagenet_normalization());
  std::vector<float> out(3 * 224 * 224);
  render_crop(img, p, lut.data(), out.data());
  const float mean[3] = {0.485f, 0.456f, 0.406f}, sd[3] = {0.229f, 0.224f, 0.225f};
  for (int c = 0; c < 3; ++c)
    for (int y = 0; y < 224; ++y)
      for (int x = 0; x < 224; ++x) {
        const float raw = rgb[((38 + y) * w + 16 + x) * 3 + c];
        ASSERT_EQ(out[(c * 224 + y) * 224 + x], (raw / 255.0f - mean[c]) / sd[c]) << c << " " << y << " " << x;
      }
  // Flipped: column x comes from 223 - x.
  CropPlan f = p;
  f.flip = true;
  std::vector<float> flipped(out.size());
  render_crop(img, f, lut.data(), flipped.data());
  for (int c = 0; c < 3; ++c)
    for (int y = 0; y < 224; ++y)
      for (int x = 0; x < 224; ++x)
        ASSERT_EQ(flipped[(c * 224 + y) * 224 + x], out[(c * 224 + y) * 224 + 223 - x]);
}

TEST(CropPlan, RenderedConstantImageIsConstant) {
  std::vector<uint8_t> rgb(333 * 271 * 3);
  for (size_t i = 0; i < rgb.size(); i += 3) {
    rgb[i] = 10;
    rgb[i + 1] = 128;
    rgb[i + 2] = 250;
  }
  const JpegImage img = raw_image(rgb, 333, 271);
  const std::vector<float> lut = normalization_lut(Normalization::none(3));
  std::vector<float> out(3 * 64 * 64);
  for (uint64_t seed = 0; seed < 5; ++seed) {
    Rng rng(seed);
    for (const CropPlan& p : {plan_eval(333, 271, 73, 64), plan_alexnet(333, 271, 64, rng),
                              plan_random_resized_crop(333, 271, 64, rng)}) {
      render_crop(img, p, lut.data(), out.data());
      for (int i = 0; i < 64 * 64; ++i) {
        ASSERT_EQ(out[i], 10 / 255.0f);
        ASSERT_EQ(out[64 * 64 + i], 128 / 255.0f);
        ASSERT_EQ(out[2 * 64 * 64 + i], 250 / 255.0f);
      }
    }
  }
}

// ---- JPEG -------------------------------------------------------------------------------------

TEST(Jpeg, ChoosesTheSmallestSufficientScale) {
  SKIP_WITHOUT_TURBOJPEG();
  auto is = [](JpegScale s, int num, int denom) { return s.num * denom == num * s.denom; };
  EXPECT_TRUE(is(choose_jpeg_scale(2000, 1500, 256, 256), 1, 4));  // 1/8 gives 250 x 187.5
  EXPECT_TRUE(is(choose_jpeg_scale(2000, 1500, 250, 0), 1, 8));
  EXPECT_TRUE(is(choose_jpeg_scale(500, 375, 341, 256), 1, 1));  // 3/4 would do, but is slower than 1/1
  EXPECT_TRUE(is(choose_jpeg_scale(1500, 1125, 341, 256), 1, 4));
  EXPECT_TRUE(is(choose_jpeg_scale(1000, 800, 500, 256), 1, 2));
  EXPECT_TRUE(is(choose_jpeg_scale(100, 100, 200, 200), 1, 1));  // nothing smaller suffices
  EXPECT_TRUE(is(choose_jpeg_scale(100, 100, 0, 0), 1, 1));      // no minimum: full size
}

TEST(Jpeg, DecodesRgbWithinJpegTolerance) {
  SKIP_WITHOUT_TURBOJPEG();
  const int w = 96, h = 64;
  const auto rgb = smooth_rgb(w, h);
  for (bool subsample : {true, false}) {
    const auto jpg = encode_jpeg(rgb.data(), w, h, JpegColor::rgb, 95, false, subsample);
    const JpegHeader hd = read_jpeg_header(jpg.data(), jpg.size(), "mem.jpg");
    EXPECT_EQ(hd.width, w);
    EXPECT_EQ(hd.height, h);
    EXPECT_EQ(hd.color, JpegColor::rgb);
    const JpegImage img = decode_jpeg(jpg.data(), jpg.size(), "mem.jpg");
    EXPECT_EQ(img.width, w);
    EXPECT_EQ(img.height, h);
    EXPECT_EQ(img.scale.num, img.scale.denom);
    EXPECT_LT(mean_abs_diff(img.rgb, rgb), 3.0) << "subsample " << subsample;
  }
}

TEST(Jpeg, GrayscaleIsReplicatedToThreeChannels) {
  SKIP_WITHOUT_TURBOJPEG();
  const int w = 80, h = 50;
  std::vector<uint8_t> gray(w * h), want(w * h * 3);
  for (int i = 0; i < w * h; ++i) {
    gray[i] = static_cast<uint8_t>(40 + (i % w) * 2);
    want[3 * i] = want[3 * i + 1] = want[3 * i + 2] = gray[i];
  }
  const auto jpg = encode_jpeg(gray.data(), w, h, JpegColor::gray, 95);
  EXPECT_EQ(read_jpeg_header(jpg.data(), jpg.size(), "g.jpg").color, JpegColor::gray);
  const JpegImage img = decode_jpeg(jpg.data(), jpg.size(), "g.jpg");
  ASSERT_EQ(img.rgb.size(), want.size());
  for (int i = 0; i < w * h; ++i) {
    ASSERT_EQ(img.rgb[3 * i], img.rgb[3 * i + 1]);
    ASSERT_EQ(img.rgb[3 * i], img.rgb[3 * i + 2]);
  }
  EXPECT_LT(mean_abs_diff(img.rgb, want), 2.0);
}

TEST(Jpeg, CmykIsReadAsAdobeInvertedLikePillow) {
  SKIP_WITHOUT_TURBOJPEG();
  const int w = 64, h = 48;
  // Stored (inverted) c, m, y = the RGB values and k = 255 (no black) decode to that RGB.
  const auto rgb = smooth_rgb(w, h);
  std::vector<uint8_t> cmyk(w * h * 4);
  for (int i = 0; i < w * h; ++i) {
    for (int c = 0; c < 3; ++c) cmyk[4 * i + c] = rgb[3 * i + c];
    cmyk[4 * i + 3] = 255;
  }
  auto jpg = encode_jpeg(cmyk.data(), w, h, JpegColor::cmyk, 95);
  EXPECT_EQ(read_jpeg_header(jpg.data(), jpg.size(), "c.jpg").color, JpegColor::cmyk);
  JpegImage img = decode_jpeg(jpg.data(), jpg.size(), "c.jpg");
  EXPECT_LT(mean_abs_diff(img.rgb, rgb), 3.0);
  // A constant (c, m, y, k) = (255, 128, 0, 200): R = 200 - 200*0/255 = 200,
  // G = 200 - round(127*200/255) = 100, B = 200 - 200 = 0.
  for (int i = 0; i < w * h; ++i) {
    cmyk[4 * i] = 255;
    cmyk[4 * i + 1] = 128;
    cmyk[4 * i + 2] = 0;
    cmyk[4 * i + 3] = 200;
  }
  jpg = encode_jpeg(cmyk.data(), w, h, JpegColor::cmyk, 100, false, false);
  img = decode_jpeg(jpg.data(), jpg.size(), "c.jpg");
  double s[3] = {0, 0, 0};
  for (int i = 0; i < w * h; ++i)
    for (int c = 0; c < 3; ++c) s[c] += img.rgb[3 * i + c];
  EXPECT_NEAR(s[0] / (w * h), 200, 1.5);
  EXPECT_NEAR(s[1] / (w * h), 100, 1.5);
  EXPECT_NEAR(s[2] / (w * h), 0, 1.5);
}

TEST(Jpeg, ProgressiveDecodesLikeBaseline) {
  SKIP_WITHOUT_TURBOJPEG();
  const int w = 120, h = 90;
  const auto rgb = smooth_rgb(w, h);
  const auto base = encode_jpeg(rgb.data(), w, h, JpegColor::rgb, 90, false);
  const auto prog = encode_jpeg(rgb.data(), w, h, JpegColor::rgb, 90, true);
  EXPECT_NE(base, prog);
  const JpegImage a = decode_jpeg(base.data(), base.size(), "b.jpg");
  const JpegImage b = decode_jpeg(prog.data(), prog.size(), "p.jpg");
  EXPECT_EQ(a.rgb, b.rgb);  // the same coefficients, only stored in several scans
  const JpegImage c = decode_jpeg(prog.data(), prog.size(), "p.jpg", 30, 0);  // scaled too
  EXPECT_EQ(c.width, 30);
  EXPECT_EQ(c.scale.num * 4, c.scale.denom);
}

// libjpeg warns about bytes between segments but decodes the image; TurboJPEG 2.1's header call
// reports the warning as a failure, which must not make the file "corrupt".
TEST(Jpeg, ExtraneousBytesBeforeAMarkerStillDecode) {
  SKIP_WITHOUT_TURBOJPEG();
  const int w = 64, h = 48;
  const auto rgb = smooth_rgb(w, h);
  const auto jpg = encode_jpeg(rgb.data(), w, h, JpegColor::rgb, 90);
  // Three junk bytes in front of the first quantisation table marker (FF DB).
  std::vector<uint8_t> odd = jpg;
  size_t at = 2;
  while (at + 1 < odd.size() && !(odd[at] == 0xFF && odd[at + 1] == 0xDB)) ++at;
  ASSERT_LT(at + 1, odd.size());
  odd.insert(odd.begin() + static_cast<std::ptrdiff_t>(at), {0x01, 0x02, 0x03});
  const JpegHeader hd = read_jpeg_header(odd.data(), odd.size(), "odd.jpg");
  EXPECT_EQ(hd.width, w);
  EXPECT_EQ(hd.height, h);
  const JpegImage a = decode_jpeg(jpg.data(), jpg.size(), "plain.jpg");
  const JpegImage b = decode_jpeg(odd.data(), odd.size(), "odd.jpg");
  EXPECT_EQ(a.rgb, b.rgb);
}

// A truncated file whose decode first warned about something harmless (libjpeg passes on only
// the first warning of an image, so "premature end" is not in the message) is still an error.
TEST(Jpeg, TruncatedAfterAHarmlessWarningIsStillAnError) {
  SKIP_WITHOUT_TURBOJPEG();
  const int w = 256, h = 192;
  const auto rgb = noise_rgb(w, h, 5);
  std::vector<uint8_t> jpg = encode_jpeg(rgb.data(), w, h, JpegColor::rgb, 90);
  size_t at = 2;
  while (at + 1 < jpg.size() && !(jpg[at] == 0xFF && jpg[at + 1] == 0xDB)) ++at;
  ASSERT_LT(at + 1, jpg.size());
  jpg.insert(jpg.begin() + static_cast<std::ptrdiff_t>(at), {0x01, 0x02, 0x03});
  EXPECT_NO_THROW(decode_jpeg(jpg.data(), jpg.size(), "whole.jpg"));  // whole: decodes
  for (size_t keep : {jpg.size() / 2, jpg.size() - 40, jpg.size() - 2}) {
    SCOPED_TRACE(keep);
    const std::string e = error_of([&] { decode_jpeg(jpg.data(), keep, "cut.jpg"); });
    EXPECT_NE(e.find("'cut.jpg': corrupt JPEG"), std::string::npos) << e;
  }
}

TEST(Jpeg, ScaledDecodeHasTheScaledSizeAndContent) {
  SKIP_WITHOUT_TURBOJPEG();
  const int w = 2000, h = 1500;
  const auto rgb = smooth_rgb(w, h);
  const auto jpg = encode_jpeg(rgb.data(), w, h, JpegColor::rgb, 90);
  const JpegImage full = decode_jpeg(jpg.data(), jpg.size(), "big.jpg");
  EXPECT_EQ(full.width, 2000);
  const JpegImage quarter = decode_jpeg(jpg.data(), jpg.size(), "big.jpg", 256, 256);
  EXPECT_EQ(quarter.width, 500);
  EXPECT_EQ(quarter.height, 375);
  EXPECT_EQ(quarter.full_width, 2000);
  EXPECT_EQ(quarter.scale.num * 4, quarter.scale.denom);
  const JpegImage eighth = decode_jpeg(jpg.data(), jpg.size(), "big.jpg", 250, 180);
  EXPECT_EQ(eighth.width, 250);
  EXPECT_EQ(eighth.height, 188);  // ceil(187.5)
  // The 1/4 decode looks like the full decode shrunk 4x.
  const auto shrunk = resize_rgb(RgbView{full.rgb.data(), 2000, 1500, 2000 * 3}, 500, 375);
  EXPECT_LT(mean_abs_diff(quarter.rgb, shrunk), 2.0);
}

TEST(Jpeg, BadFilesAreErrorsNamingTheFile) {
  SKIP_WITHOUT_TURBOJPEG();
  TempDir d;
  const auto rgb = noise_rgb(256, 192, 3);
  const auto jpg = encode_jpeg(rgb.data(), 256, 192, JpegColor::rgb, 90);
  const std::string cut = d.file("truncated.jpg");
  ttq::testing::write_bytes(cut, std::string(jpg.begin(), jpg.begin() + jpg.size() / 2));
  std::string e = error_of([&] { decode_jpeg_file(cut); });
  EXPECT_NE(e.find("'" + cut + "'"), std::string::npos) << e;
  EXPECT_NE(e.find("corrupt JPEG"), std::string::npos) << e;
  const std::string junk = d.file("junk.jpg");
  ttq::testing::write_bytes(junk, "\xff\xd8\xff not a jpeg at all");
  e = error_of([&] { decode_jpeg_file(junk); });
  EXPECT_NE(e.find("'" + junk + "' is not a readable JPEG file"), std::string::npos) << e;
  // A failed file leaves this thread's decoder usable for the next one.
  EXPECT_NO_THROW(decode_jpeg(jpg.data(), jpg.size(), "good.jpg"));
  const std::string png = d.file("png.JPEG");  // as ImageNet holds one
  ttq::testing::write_bytes(png, "\x89PNG\r\n\x1a\n\0\0\0\rIHDR");
  e = error_of([&] { decode_jpeg_file(png); });
  EXPECT_NE(e.find("'" + png + "' holds a PNG image, not a JPEG"), std::string::npos) << e;
  const std::string empty = d.file("empty.jpg");
  ttq::testing::write_bytes(empty, "");
  e = error_of([&] { decode_jpeg_file(empty); });
  EXPECT_NE(e.find("'" + empty + "' is empty"), std::string::npos) << e;
  e = error_of([&] { decode_jpeg_file(d.file("missing.jpg")); });
  EXPECT_NE(e.find("cannot open '" + d.file("missing.jpg") + "'"), std::string::npos) << e;
  // Header intact but scan data cut short near the end: still an error, not a half-gray image.
  const std::string late = d.file("late_cut.jpg");
  ttq::testing::write_bytes(late, std::string(jpg.begin(), jpg.end() - 40));
  e = error_of([&] { decode_jpeg_file(late); });
  EXPECT_NE(e.find("corrupt JPEG"), std::string::npos) << e;
}

TEST(Jpeg, WithoutTurboJpegEveryCallSaysSo) {
  if (jpeg_supported()) GTEST_SKIP() << "built with TurboJPEG";
  const uint8_t b[4] = {0xff, 0xd8, 0xff, 0xd9};
  EXPECT_NE(error_of([&] { decode_jpeg(b, 4, "x.jpg"); }).find("TurboJPEG"), std::string::npos);
  EXPECT_NE(error_of([&] { encode_jpeg(b, 1, 1, JpegColor::gray, 90); }).find("TurboJPEG"), std::string::npos);
}
