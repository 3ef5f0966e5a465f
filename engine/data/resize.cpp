// Antialiased bilinear resampling of 8-bit RGB (see resize.h): Pillow's filter geometry
// (ImagingResample in libImaging/Resample.c) in 14-bit fixed point, with an SSSE3 horizontal pass
// where the CPU has it and a portable one that computes the same integers elsewhere.
#include "engine/data/resize.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "engine/core/error.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define TTQ_RESIZE_X86 1
#endif

namespace ttq {

namespace {

// Weights are int16 so that SSE's pmaddwd can apply two taps at once; 14 bits keep every
// weight (at most 1.0 = 16384) and every sum (255 * ~16384 per output) in range.
constexpr int kPrecisionBits = 14;
constexpr int32_t kHalf = 1 << (kPrecisionBits - 1);

// The filter taps of the output pixels [first, first + count) along one axis: output i takes
// `size[i]` source pixels from `start[i]` with the first size[i] of its `kpad` weights (the rest
// are zero; kpad is the filter's largest tap count rounded up to even, so taps go in pairs).
struct Taps {
  std::vector<int> start, size;
  std::vector<int16_t> weight;  // kpad per output pixel
  int kpad = 0;
};

inline double triangle(double x) {
  x = std::fabs(x);
  return x < 1.0 ? 1.0 - x : 0.0;
}

void compute_taps(double in0, double in1, int in_size, int out_size, int first, int count, Taps& t) {
  const double scale = (in1 - in0) / out_size;
  const double filterscale = std::max(scale, 1.0);
  const double support = 1.0 * filterscale;  // the triangle's support is 1
  // Taps stay within the pixels the box touches (crop-then-resize semantics).
  const int lo = std::max(0, static_cast<int>(std::floor(in0)));
  const int hi = std::min(in_size, static_cast<int>(std::ceil(in1)));
  const int ksize = static_cast<int>(std::ceil(support)) * 2 + 1;
  t.kpad = (ksize + 1) & ~1;
  t.start.assign(count, 0);
  t.size.assign(count, 0);
  t.weight.assign(static_cast<size_t>(count) * t.kpad, 0);
  std::vector<double> w(ksize);
  const double ss = 1.0 / filterscale;
  for (int i = 0; i < count; ++i) {
    const double center = in0 + (first + i + 0.5) * scale;
    // Pillow rounds with (int)(v + 0.5), truncating toward zero.
    int xmin = static_cast<int>(center - support + 0.5);
    int xmax = static_cast<int>(center + support + 0.5);
    xmin = std::max(xmin, lo);
    xmax = std::min(xmax, hi);
    // The box touches pixel floor(center), which lies in [xmin, xmax) with a positive weight, so
    // n >= 1 and total > 0.
    const int n = std::min(xmax - xmin, ksize);
    TTQ_CHECK(n >= 1, "resize: no source pixel for output " << first + i);
    double total = 0.0;
    for (int x = 0; x < n; ++x) {
      w[x] = triangle((x + xmin - center + 0.5) * ss);
      total += w[x];
    }
    int16_t* k = &t.weight[static_cast<size_t>(i) * t.kpad];
    for (int x = 0; x < n; ++x) k[x] = static_cast<int16_t>(0.5 + w[x] / total * (1 << kPrecisionBits));
    t.start[i] = xmin;
    t.size[i] = n;
  }
}

inline uint8_t clip8(int32_t v) {
  v >>= kPrecisionBits;
  return static_cast<uint8_t>(v < 0 ? 0 : v > 255 ? 255 : v);
}

// Output pixels [begin, end) of one row of the horizontal pass, portable.
void horizontal_span(const uint8_t* in, uint8_t* out, int begin, int end, const Taps& t) {
  for (int i = begin; i < end; ++i) {
    const uint8_t* p = in + int64_t(t.start[i]) * 3;
    const int16_t* k = &t.weight[static_cast<size_t>(i) * t.kpad];
    int32_t s0 = kHalf, s1 = kHalf, s2 = kHalf;
    for (int j = 0; j < t.size[i]; ++j) {
      s0 += p[3 * j] * k[j];
      s1 += p[3 * j + 1] * k[j];
      s2 += p[3 * j + 2] * k[j];
    }
    out[3 * i] = clip8(s0);
    out[3 * i + 1] = clip8(s1);
    out[3 * i + 2] = clip8(s2);
  }
}

#ifdef TTQ_RESIZE_X86
// One row of the horizontal pass with SSSE3: per pair of taps, one 8-byte load, one byte shuffle
// to (r0, r1, g0, g1, b0, b1) as int16, one pmaddwd with (k0, k1). The loads read up to 2 bytes
// past the last tap (and a zero-weighted padding tap), so pixels whose reads would pass `end_of_data`
// go through the portable loop; the integers are the same.
__attribute__((target("ssse3"))) void horizontal_row_ssse3(const uint8_t* in, uint8_t* out, int n, const Taps& t,
                                                            const uint8_t* end_of_data) {
  const __m128i shuffle = _mm_setr_epi8(0, -1, 3, -1, 1, -1, 4, -1, 2, -1, 5, -1, -1, -1, -1, -1);
  const int pairs = t.kpad / 2;
  int i = 0;
  for (; i < n; ++i) {
    const uint8_t* p = in + int64_t(t.start[i]) * 3;
    if (end_of_data - p < 6 * pairs + 2) break;  // the rest of the row is near the end of the image
    const int16_t* k = &t.weight[static_cast<size_t>(i) * t.kpad];
    __m128i acc = _mm_setr_epi32(kHalf, kHalf, kHalf, 0);
    for (int q = 0; q < pairs; ++q) {
      const __m128i px = _mm_shuffle_epi8(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + 6 * q)), shuffle);
      int32_t kk;
      std::memcpy(&kk, k + 2 * q, 4);
      acc = _mm_add_epi32(acc, _mm_madd_epi16(px, _mm_set1_epi32(kk)));
    }
    acc = _mm_srai_epi32(acc, kPrecisionBits);
    acc = _mm_packus_epi16(_mm_packs_epi32(acc, acc), acc);
    // A 4-byte store: its 4th byte (0) lands on the next pixel, which is written afterwards (the
    // intermediate buffer has slack after the last row).
    const int32_t rgb0 = _mm_cvtsi128_si32(acc);
    std::memcpy(out + 3 * i, &rgb0, 4);
  }
  horizontal_span(in, out, i, n, t);
}

bool have_ssse3() {
  static const bool yes = __builtin_cpu_supports("ssse3");
  return yes;
}
#endif

// One output row of the vertical pass: the weighted sum of `taps` rows `stride` bytes apart
// (vectorized by the compiler).
void vertical_row(const uint8_t* rows, int64_t stride, int taps, const int16_t* k, int64_t n, int32_t* acc,
                  uint8_t* out) {
  for (int64_t x = 0; x < n; ++x) acc[x] = kHalf;
  for (int j = 0; j < taps; ++j) {
    const uint8_t* row = rows + j * stride;
    const int32_t kj = k[j];
    for (int64_t x = 0; x < n; ++x) acc[x] += static_cast<int16_t>(row[x]) * kj;
  }
  for (int64_t x = 0; x < n; ++x) {
    const int32_t v = acc[x] >> kPrecisionBits;  // weights are >= 0: never negative
    out[x] = static_cast<uint8_t>(v > 255 ? 255 : v);
  }
}

void resize_impl(const RgbView& src, const Box& box, int out_width, int out_height, int rx, int ry, int rw, int rh,
                 uint8_t* dst, bool simd) {
  TTQ_CHECK(src.data && src.width > 0 && src.height > 0 && src.stride >= int64_t(src.width) * 3,
            "resize: bad source image " << src.width << "x" << src.height);
  TTQ_CHECK(out_width > 0 && out_height > 0 && rw > 0 && rh > 0 && rx >= 0 && ry >= 0 && rx + rw <= out_width &&
                ry + rh <= out_height,
            "resize: region " << rw << "x" << rh << "+" << rx << "+" << ry << " outside the " << out_width << "x"
                              << out_height << " output");
  TTQ_CHECK(box.x0 >= 0 && box.y0 >= 0 && box.x1 > box.x0 && box.y1 > box.y0 && box.x1 <= src.width + 1e-9 &&
                box.y1 <= src.height + 1e-9,
            "resize: box [" << box.x0 << ", " << box.x1 << ") x [" << box.y0 << ", " << box.y1 << ") outside the "
                            << src.width << "x" << src.height << " source");
  thread_local Taps tx, ty;
  thread_local std::vector<uint8_t> tmp;
  thread_local std::vector<int32_t> acc;
  compute_taps(box.x0, box.x1, src.width, out_width, rx, rw, tx);
  compute_taps(box.y0, box.y1, src.height, out_height, ry, rh, ty);

  // Source rows the vertical pass needs.
  const int y_first = ty.start[0];
  const int y_last = ty.start[rh - 1] + ty.size[rh - 1];
  const int rows = y_last - y_first;
  const int64_t row_bytes = int64_t(rw) * 3;

  // Horizontal pass (first, as Pillow): rows [y_first, y_last) of the source, output columns
  // [rx, rx + rw), into an 8-bit intermediate.
  tmp.resize(static_cast<size_t>(rows) * row_bytes + 4);
  const uint8_t* end_of_data = src.data + (src.height - 1) * src.stride + int64_t(src.width) * 3;
  for (int y = 0; y < rows; ++y) {
    const uint8_t* in = src.data + (y_first + y) * src.stride;
    uint8_t* out = tmp.data() + y * row_bytes;
#ifdef TTQ_RESIZE_X86
    if (simd && have_ssse3()) {
      horizontal_row_ssse3(in, out, rw, tx, end_of_data);
      continue;
    }
#endif
    (void)end_of_data;
    (void)simd;
    horizontal_span(in, out, 0, rw, tx);
  }

  // Vertical pass: whole rows at a time.
  acc.resize(static_cast<size_t>(row_bytes));
  for (int i = 0; i < rh; ++i)
    vertical_row(tmp.data() + (ty.start[i] - y_first) * row_bytes, row_bytes, ty.size[i],
                 &ty.weight[static_cast<size_t>(i) * ty.kpad], row_bytes, acc.data(), dst + i * row_bytes);
}

}  // namespace

void resize_rgb(const RgbView& src, const Box& box, int out_width, int out_height, int rx, int ry, int rw, int rh,
                uint8_t* dst) {
  resize_impl(src, box, out_width, out_height, rx, ry, rw, rh, dst, true);
}

void resize_rgb_portable(const RgbView& src, const Box& box, int out_width, int out_height, int rx, int ry, int rw,
                         int rh, uint8_t* dst) {
  resize_impl(src, box, out_width, out_height, rx, ry, rw, rh, dst, false);
}

std::vector<uint8_t> resize_rgb(const RgbView& src, int out_width, int out_height) {
  std::vector<uint8_t> out(static_cast<size_t>(out_width) * out_height * 3);
  resize_rgb(src, Box{0, 0, double(src.width), double(src.height)}, out_width, out_height, 0, 0, out_width, out_height,
             out.data());
  return out;
}

}  // namespace ttq
