// CPU TTQ loops. Speed without changing what comes out:
//
// - The per-element math (kernels/ttq_math.h) is branch-free, and every loop here is a plain
//   counted loop over __restrict pointers with no early exit, so GCC -O3 vectorizes it (SSE2 in
//   the default build, no -march needed).
// - Every pass walks the tensor in fixed chunks of kChunk elements. A chunk reduces to one
//   partial; partials are combined serially in chunk order. Chunks may run on several OpenMP
//   threads (only for tensors of kParallelMin or more elements), but a chunk's partial never
//   depends on which thread computes it, so every result is bitwise the same for any thread count.
//   The per-channel passes (*_channels) spread whole rows over the threads instead and walk each
//   row in kChunk pieces in order, so a row's results are those of the per-tensor pass on it.
// - Floating-point sums are accumulated in double, within a chunk in kLanes interleaved
//   accumulators (element i goes to lane i % kLanes) folded in a fixed tree. This rounds slightly
//   differently from one serial double sum, but the same way on every run, machine and thread
//   count (the compiler may not reassociate: no -ffast-math).
// - Sparsity: an exact radix select on the bit patterns of |w|, which for non-negative floats order
//   like the values, so it returns exactly the value nth_element gives. NaN input falls back to
//   nth_element on those bit patterns, where NaN ranks after +inf (as on the GPU).
#include "kernels/cpu/ttq_cpu.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <vector>

#include "engine/core/error.h"

namespace ttq::cpu {
namespace {

constexpr int64_t kChunk = 16384;
// Fork/join costs microseconds (more with OMP_WAIT_POLICY=PASSIVE); smaller tensors stay on the
// calling thread. Does not affect results.
constexpr int64_t kParallelMin = 4 * kChunk;
constexpr int kLanes = 8;

int64_t chunk_count(int64_t n) { return (n + kChunk - 1) / kChunk; }

// body(c, begin, end) for every chunk c, possibly on several threads.
template <class Body>
void for_each_chunk(int64_t n, const Body& body) {
  const int64_t chunks = chunk_count(n);
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
  for (int64_t c = 0; c < chunks; ++c) body(c, c * kChunk, std::min(n, (c + 1) * kChunk));
}

// body(c, begin, size) for every row c of a tensor of `rows` equal rows, possibly on several
// threads (one row never spans two). Within a row the caller walks kChunk pieces in order, as the
// per-tensor functions walk the whole tensor, so a row's results never depend on the threads.
template <class Body>
void for_each_row(int64_t n, int64_t rows, const Body& body) {
  TTQ_CHECK(math::scale_rows_fit(rows, n),
            "TTQ per-channel scales: " << rows << " channels do not divide " << n << " weights");
  const int64_t per = n / rows;
#pragma omp parallel for schedule(static) if (n >= kParallelMin && rows > 1)
  for (int64_t c = 0; c < rows; ++c) body(c, c * per, per);
}

// body(begin, end) for the kChunk pieces of [0, n), in order.
template <class Body>
void for_each_piece(int64_t n, const Body& body) {
  for (int64_t b = 0; b < n; b += kChunk) body(b, std::min(n, b + kChunk));
}

// A chunk's kLanes double accumulators folded in a fixed tree.
double fold(const double (&a)[kLanes]) {
  return ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
}

// Fixed-order sum of per-chunk partials.
template <class T, class Get>
double sum_partials(const std::vector<T>& parts, Get get) {
  double s = 0.0;
  for (const T& p : parts) s += get(p);
  return s;
}

// ---- per-chunk kernels ---------------------------------------------------------------------------
// Each works on [0, n) of its own pointers (the chunk). A double sum over a chunk goes to kLanes
// accumulators: lane j takes the elements i < n - n % kLanes with i % kLanes == j (chunks start at
// multiples of kChunk, so that is the global index mod kLanes); the last n % kLanes elements go,
// in order, to a separate tail accumulator. The chunk's sum is fold(lanes) + tail. Loops that need
// a per-element condition first write their terms for a block of kBlock elements to a small
// float buffer (a plain elementwise loop, vectorized), then add the buffer to the lanes.

constexpr int64_t kBlock = 512;  // a multiple of kLanes, dividing kChunk
static_assert(kChunk % kBlock == 0 && kBlock % kLanes == 0);

struct Lanes {
  double v[kLanes] = {};
  double tail = 0.0;
  double total() const { return fold(v) + tail; }
};

// Adds term(i) for i in [0, n) to acc, where n % kLanes != 0 only for the last call of a chunk.
template <class Term>
void add_lanes(Lanes& acc, int64_t n, const Term& term) {
  double v[kLanes];
  for (int j = 0; j < kLanes; ++j) v[j] = acc.v[j];
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int j = 0; j < kLanes; ++j) v[j] += static_cast<double>(term(i + j));
  for (int j = 0; j < kLanes; ++j) acc.v[j] = v[j];
  for (; i < n; ++i) acc.tail += static_cast<double>(term(i));
}

// max |w| over the chunk, skipping NaN (like std::max(m, NaN) == m), starting from +0. Done on
// the bit patterns of |w|, which for non-NaN values order like the values: an exact integer max,
// the same in any order. 16 running maxima so the vectorized loop is not one dependency chain.
int32_t abs_key_no_nan(float x) {
  const auto k = static_cast<int32_t>(math::detail::abs_bits(x));
  return k > 0x7f800000 ? 0 : k;
}

float max_abs_chunk(const float* __restrict w, int64_t n) {
  constexpr int kMaxLanes = 16;
  int32_t m[kMaxLanes] = {};
  int64_t i = 0;
  for (; i + kMaxLanes <= n; i += kMaxLanes) {
    for (int j = 0; j < kMaxLanes; ++j) {
      const int32_t k = abs_key_no_nan(w[i + j]);
      m[j] = m[j] > k ? m[j] : k;
    }
  }
  int32_t r = 0;
  for (; i < n; ++i) r = std::max(r, abs_key_no_nan(w[i]));
  for (int32_t v : m) r = std::max(r, v);
  return math::detail::bits_float(static_cast<uint32_t>(r));
}

double sum_abs_chunk(const float* __restrict w, int64_t n) {
  Lanes acc;
  add_lanes(acc, n, [&](int64_t i) { return std::fabs(w[i]); });
  return acc.total();
}

struct SumCount {
  double sum = 0.0;
  int64_t count = 0;
};

// Sum and count of |w| over |w| > d.
SumCount sum_abs_above_chunk(const float* __restrict w, int64_t n, float d) {
  Lanes acc;
  int64_t count = 0;
  float t[kBlock];
  for (int64_t b = 0; b < n; b += kBlock) {
    const int64_t m = std::min(kBlock, n - b);
    int32_t c = 0;
#pragma omp simd reduction(+ : c)
    for (int64_t i = 0; i < m; ++i) {
      const float a = std::fabs(w[b + i]);
      t[i] = math::detail::select(a > d, a, 0.0f);
      c += a > d;
    }
    count += c;
    add_lanes(acc, m, [&](int64_t i) { return t[i]; });
  }
  return {acc.total(), count};
}

TernarizeCounts ternarize_chunk(const float* __restrict w, int64_t n, float d, float wp, float wn,
                                float* __restrict w_t, int8_t* __restrict codes) {
  // ternary_code and ternary_value through the set tests they are made of: the vectorized loop
  // then stays in 32-bit lanes instead of narrowing to the int8 code and widening it back.
  int32_t pos = 0, neg = 0;
#pragma omp simd reduction(+ : pos, neg)
  for (int64_t i = 0; i < n; ++i) {
    const int p = math::in_positive_set(w[i], d);
    const int m = math::in_negative_set(w[i], d);
    codes[i] = static_cast<int8_t>(p - m);
    w_t[i] = math::ternary_value_of_sets(p, m, wp, wn);
    pos += p;
    neg += m;
  }
  return {pos, neg};
}

// latent_grad += scale * g for the chunk; returns the scale-gradient sums.
template <bool kScaleLatent>
ScaleGrads backward_chunk(const int8_t* __restrict codes, const float* __restrict g, int64_t n,
                          float wp, float wn, float* __restrict latent_grad) {
  Lanes sp, sn;
  float tp[kBlock], tn[kBlock];
  for (int64_t b = 0; b < n; b += kBlock) {
    const int64_t m = std::min(kBlock, n - b);
#pragma omp simd
    for (int64_t i = 0; i < m; ++i) {
      const int8_t code = codes[b + i];
      const float gi = g[b + i];
      tp[i] = math::wp_grad_term(code, gi);
      tn[i] = math::wn_grad_term(code, gi);
      latent_grad[b + i] += math::latent_grad_term(code, gi, wp, wn, kScaleLatent);
    }
    add_lanes(sp, m, [&](int64_t i) { return tp[i]; });
    add_lanes(sn, m, [&](int64_t i) { return tn[i]; });
  }
  return {sp.total(), sn.total()};
}

struct MeansPartial {
  double sp = 0.0, sn = 0.0;  // sum of w over code > 0, sum of -w over code < 0
  int64_t cp = 0, cn = 0;
};

SetMeans means_of(const MeansPartial& m) {
  return {m.cp ? static_cast<float>(m.sp / m.cp) : 0.0f, m.cn ? static_cast<float>(m.sn / m.cn) : 0.0f};
}

MeansPartial set_means_chunk(const float* __restrict w, int64_t n, float d) {
  Lanes sp, sn;
  MeansPartial r;
  float tp[kBlock], tn[kBlock];
  for (int64_t b = 0; b < n; b += kBlock) {
    const int64_t m = std::min(kBlock, n - b);
    int32_t cp = 0, cn = 0;
#pragma omp simd reduction(+ : cp, cn)
    for (int64_t i = 0; i < m; ++i) {
      const float x = w[b + i];
      const int p = math::in_positive_set(x, d);  // ternary_code(x, d) > 0
      const int m = math::in_negative_set(x, d);  // ternary_code(x, d) < 0
      tp[i] = math::detail::select(p, x, 0.0f);
      tn[i] = math::detail::select(m, -x, 0.0f);
      cp += p;
      cn += m;
    }
    r.cp += cp;
    r.cn += cn;
    add_lanes(sp, m, [&](int64_t i) { return tp[i]; });
    add_lanes(sn, m, [&](int64_t i) { return tn[i]; });
  }
  r.sp = sp.total();
  r.sn = sn.total();
  return r;
}

// ---- sparsity: k-th smallest |w| -------------------------------------------------------------

// Keys: |w| as bits (math::detail::abs_bits), ordered like |w|, NaN after +inf.
using math::detail::abs_bits;
constexpr uint32_t kInfKey = 0x7f800000u;  // keys above this are NaN

// On the keys, not on fabs(w): NaN has no place in a float order (nth_element's result would be
// unspecified), while its key sorts after +inf, as in the GPU's radix select.
float kth_smallest_abs_nth_element(const float* w, int64_t n, int64_t k) {
  std::vector<uint32_t> a(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) a[i] = abs_bits(w[i]);
  std::nth_element(a.begin(), a.begin() + k, a.end());
  return math::detail::bits_float(a[k]);
}

// Radix digits of the 31-bit key, from the top: bits 30..20, 19..9, 8..0.
constexpr int kDigitShift[3] = {20, 9, 0};
constexpr int kDigitBits[3] = {11, 11, 9};
constexpr int kBins = 1 << 11;
constexpr int64_t kRadixMin = 2048;   // below this nth_element on a copy is as fast
constexpr size_t kFinishSmall = 512;  // candidates left: finish with nth_element on the keys

// The bin holding rank (0-based) in hist, and the rank within that bin.
int find_bin(const int64_t* hist, int bins, int64_t& rank) {
  for (int b = 0; b < bins; ++b) {
    if (rank < hist[b]) return b;
    rank -= hist[b];
  }
  TTQ_FAIL("radix select: rank out of range");
}

float kth_smallest_abs(const float* w, int64_t n, int64_t k) {
  if (n < kRadixMin) return kth_smallest_abs_nth_element(w, n, k);

  // Pass 1: histogram of the top digit over all of w (per-thread histograms, integer sums: the
  // same for any thread count), plus a NaN count.
  std::array<int64_t, kBins> hist{};
  int64_t nans = 0;
  {
    const int64_t chunks = chunk_count(n);
#pragma omp parallel if (n >= kParallelMin) reduction(+ : nans)
    {
      std::array<int64_t, kBins> local{};
#pragma omp for schedule(static)
      for (int64_t c = 0; c < chunks; ++c) {
        const int64_t end = std::min(n, (c + 1) * kChunk);
        for (int64_t i = c * kChunk; i < end; ++i) {
          const uint32_t key = abs_bits(w[i]);
          ++local[key >> kDigitShift[0]];
          nans += key > kInfKey;
        }
      }
#pragma omp critical(ttq_radix_hist)
      for (int b = 0; b < kBins; ++b) hist[b] += local[b];
    }
  }
  if (nans) return kth_smallest_abs_nth_element(w, n, k);
  int64_t rank = k;
  uint32_t prefix = static_cast<uint32_t>(find_bin(hist.data(), kBins, rank)) << kDigitShift[0];

  // Pass 2: the keys in that bin, in any order (only their multiset matters). Each thread
  // compacts its chunks branch-free (always write, advance on a match), then appends. A thread's
  // buffer grows with what it found (the bin may hold most of a large tensor: one buffer of the
  // bin's size per thread would be threads x the tensor).
  const uint32_t top = prefix >> kDigitShift[0];
  const auto in_bin = static_cast<size_t>(hist[top]);
  std::vector<uint32_t> cand;
  cand.reserve(in_bin);
  {
    const int64_t chunks = chunk_count(n);
#pragma omp parallel if (n >= kParallelMin)
    {
      std::vector<uint32_t> local;
      size_t m = 0;
#pragma omp for schedule(static) nowait
      for (int64_t c = 0; c < chunks; ++c) {
        const int64_t begin = c * kChunk, end = std::min(n, begin + kChunk);
        // Written at m <= min(in_bin, m + chunk length - 1): room for that.
        const size_t need = std::min(in_bin, m + static_cast<size_t>(end - begin)) + 1;
        if (local.size() < need) local.resize(std::max(need, std::min(in_bin + 1, 2 * local.size())));
        uint32_t* __restrict out = local.data();
        for (int64_t i = begin; i < end; ++i) {
          const uint32_t key = abs_bits(w[i]);
          out[m] = key;
          m += (key >> kDigitShift[0]) == top;
        }
      }
#pragma omp critical(ttq_radix_cand)
      cand.insert(cand.end(), local.begin(), local.begin() + static_cast<std::ptrdiff_t>(m));
    }
  }

  // Remaining digits on the candidates, until few are left.
  for (int d = 1; d < 3; ++d) {
    if (cand.size() <= kFinishSmall) break;
    const int shift = kDigitShift[d];
    const uint32_t mask = (1u << kDigitBits[d]) - 1u;
    std::fill(hist.begin(), hist.end(), 0);
    for (uint32_t key : cand) ++hist[(key >> shift) & mask];
    const uint32_t digit = static_cast<uint32_t>(find_bin(hist.data(), 1 << kDigitBits[d], rank));
    prefix |= digit << shift;
    size_t m = 0;
    for (uint32_t key : cand) {
      cand[m] = key;
      m += ((key >> shift) & mask) == digit;
    }
    cand.resize(m);
    if (d == 2) return math::detail::bits_float(prefix);  // every candidate is the answer
  }
  std::nth_element(cand.begin(), cand.begin() + rank, cand.end());
  return math::detail::bits_float(cand[static_cast<size_t>(rank)]);
}

}  // namespace

ThresholdResult ttq_threshold(math::ThresholdMode mode, const float* w, int64_t n, float t, double r) {
  ThresholdResult out;
  if (n == 0) return out;
  switch (mode) {
    case math::ThresholdMode::Max: {
      std::vector<float> parts(static_cast<size_t>(chunk_count(n)));
      for_each_chunk(n, [&](int64_t c, int64_t b, int64_t e) { parts[c] = max_abs_chunk(w + b, e - b); });
      float m = 0.0f;
      for (float p : parts) m = std::max(m, p);
      out.threshold = math::threshold_from_max(m, t);
      break;
    }
    case math::ThresholdMode::Sparsity: {
      const int64_t k = math::sparsity_rank(r, n);
      if (k < 0) break;  // D = 0
      out.threshold = kth_smallest_abs(w, n, k);
      break;
    }
    case math::ThresholdMode::Twn: {
      std::vector<SumCount> parts(static_cast<size_t>(chunk_count(n)));
      for_each_chunk(n, [&](int64_t c, int64_t b, int64_t e) { parts[c].sum = sum_abs_chunk(w + b, e - b); });
      const double sum = sum_partials(parts, [](const SumCount& p) { return p.sum; });
      out.threshold = math::twn_threshold(static_cast<float>(sum / n));
      const float d = out.threshold;
      for_each_chunk(n, [&](int64_t c, int64_t b, int64_t e) { parts[c] = sum_abs_above_chunk(w + b, e - b, d); });
      const double above = sum_partials(parts, [](const SumCount& p) { return p.sum; });
      int64_t count = 0;
      for (const SumCount& p : parts) count += p.count;
      out.twn_scale = count ? static_cast<float>(above / count) : 0.0f;
      break;
    }
    default:
      TTQ_FAIL("unknown threshold mode " << static_cast<int>(mode));
  }
  return out;
}

TernarizeCounts ttq_ternarize(const float* w, int64_t n, float d, float wp, float wn, float* w_t,
                              int8_t* codes) {
  std::vector<TernarizeCounts> parts(static_cast<size_t>(chunk_count(n)));
  for_each_chunk(n, [&](int64_t c, int64_t b, int64_t e) {
    parts[c] = ternarize_chunk(w + b, e - b, d, wp, wn, w_t + b, codes + b);
  });
  TernarizeCounts total;
  for (const TernarizeCounts& p : parts) {
    total.positive += p.positive;
    total.negative += p.negative;
  }
  return total;
}

ScaleGrads ttq_backward(const int8_t* codes, const float* g, int64_t n, float wp, float wn,
                        bool scale_latent, float* latent_grad) {
  std::vector<ScaleGrads> parts(static_cast<size_t>(chunk_count(n)));
  for_each_chunk(n, [&](int64_t c, int64_t b, int64_t e) {
    parts[c] = scale_latent ? backward_chunk<true>(codes + b, g + b, e - b, wp, wn, latent_grad + b)
                            : backward_chunk<false>(codes + b, g + b, e - b, wp, wn, latent_grad + b);
  });
  ScaleGrads s;
  s.wp = sum_partials(parts, [](const ScaleGrads& p) { return p.wp; });
  s.wn = sum_partials(parts, [](const ScaleGrads& p) { return p.wn; });
  return s;
}

SetMeans ttq_set_means(const float* w, int64_t n, float d) {
  std::vector<MeansPartial> parts(static_cast<size_t>(chunk_count(n)));
  for_each_chunk(n, [&](int64_t c, int64_t b, int64_t e) { parts[c] = set_means_chunk(w + b, e - b, d); });
  MeansPartial m;
  m.sp = sum_partials(parts, [](const MeansPartial& p) { return p.sp; });
  m.sn = sum_partials(parts, [](const MeansPartial& p) { return p.sn; });
  for (const MeansPartial& p : parts) {
    m.cp += p.cp;
    m.cn += p.cn;
  }
  return means_of(m);
}

TernarizeCounts ttq_ternarize_channels(const float* w, int64_t n, int64_t channels, float d, const float* wp,
                                       const float* wn, float* w_t, int8_t* codes) {
  std::vector<TernarizeCounts> rows(static_cast<size_t>(std::max<int64_t>(channels, 0)));
  for_each_row(n, channels, [&](int64_t c, int64_t at, int64_t per) {
    TernarizeCounts& r = rows[c];
    for_each_piece(per, [&](int64_t b, int64_t e) {
      const TernarizeCounts p = ternarize_chunk(w + at + b, e - b, d, wp[c], wn[c], w_t + at + b, codes + at + b);
      r.positive += p.positive;
      r.negative += p.negative;
    });
  });
  TernarizeCounts total;
  for (const TernarizeCounts& r : rows) {
    total.positive += r.positive;
    total.negative += r.negative;
  }
  return total;
}

std::vector<ScaleGrads> ttq_backward_channels(const int8_t* codes, const float* g, int64_t n, int64_t channels,
                                              const float* wp, const float* wn, float* latent_grad) {
  std::vector<ScaleGrads> rows(static_cast<size_t>(std::max<int64_t>(channels, 0)));
  for_each_row(n, channels, [&](int64_t c, int64_t at, int64_t per) {
    ScaleGrads& r = rows[c];
    for_each_piece(per, [&](int64_t b, int64_t e) {
      const ScaleGrads p = backward_chunk<true>(codes + at + b, g + at + b, e - b, wp[c], wn[c], latent_grad + at + b);
      r.wp += p.wp;
      r.wn += p.wn;
    });
  });
  return rows;
}

void ttq_backward_accumulate(const int8_t* codes, const float* g, int64_t n, int64_t channels, const float* wp,
                             const float* wn, bool scale_latent, float* latent_grad, float* dwp, float* dwn) {
  if (!scale_latent) {  // TWN: the plain straight-through gradient, no scale gradients
    ttq_backward(codes, g, n, 1.0f, 1.0f, false, latent_grad);
    return;
  }
  const std::vector<ScaleGrads> rows = channels > 1 ? ttq_backward_channels(codes, g, n, channels, wp, wn, latent_grad)
                                                    : std::vector{ttq_backward(codes, g, n, wp[0], wn[0], true, latent_grad)};
  for (size_t c = 0; c < rows.size(); ++c) {
    if (dwp) dwp[c] += static_cast<float>(rows[c].wp);
    if (dwn) dwn[c] += static_cast<float>(rows[c].wn);
  }
}

std::vector<SetMeans> ttq_set_means_channels(const float* w, int64_t n, int64_t channels, float d) {
  std::vector<SetMeans> rows(static_cast<size_t>(std::max<int64_t>(channels, 0)));
  for_each_row(n, channels, [&](int64_t c, int64_t at, int64_t per) {
    MeansPartial m;
    for_each_piece(per, [&](int64_t b, int64_t e) {
      const MeansPartial p = set_means_chunk(w + at + b, e - b, d);
      m.sp += p.sp;
      m.sn += p.sn;
      m.cp += p.cp;
      m.cn += p.cn;
    });
    rows[c] = means_of(m);
  });
  return rows;
}

}  // namespace ttq::cpu
