#include "kernels/cpu/ops_ref.h"

#include "kernels/act_math.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

namespace ttq::ref {


void conv2d_forward(const Conv2dShape& s, const float* x, const float* w, const float* bias, float* y) {
  const int64_t oh = s.out_h(), ow = s.out_w(), cig = s.c_in_per_group(), cog = s.c_out_per_group();
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t n = 0; n < s.n; ++n) {
    for (int64_t co = 0; co < s.c_out; ++co) {
      const int64_t g = co / cog;
      float* yp = y + (n * s.c_out + co) * oh * ow;
      for (int64_t oy = 0; oy < oh; ++oy) {
        for (int64_t ox = 0; ox < ow; ++ox) {
          double acc = bias ? bias[co] : 0.0;
          for (int64_t ci = 0; ci < cig; ++ci) {
            const float* xp = x + (n * s.c_in + g * cig + ci) * s.h * s.w;
            const float* wp = w + (co * cig + ci) * s.kh * s.kw;
            for (int64_t ky = 0; ky < s.kh; ++ky) {
              const int64_t iy = oy * s.stride_h - s.pad_t + ky;
              if (iy < 0 || iy >= s.h) continue;
              for (int64_t kx = 0; kx < s.kw; ++kx) {
                const int64_t ix = ox * s.stride_w - s.pad_l + kx;
                if (ix < 0 || ix >= s.w) continue;
                acc += static_cast<double>(xp[iy * s.w + ix]) * wp[ky * s.kw + kx];
              }
            }
          }
          yp[oy * ow + ox] = static_cast<float>(acc);
        }
      }
    }
  }
}

void conv2d_backward_data(const Conv2dShape& s, const float* dy, const float* w, float* dx) {
  const int64_t oh = s.out_h(), ow = s.out_w(), cig = s.c_in_per_group(), cog = s.c_out_per_group();
  // Gather form: each input element sums over the outputs that read it (no races across threads).
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t n = 0; n < s.n; ++n) {
    for (int64_t c = 0; c < s.c_in; ++c) {
      const int64_t g = c / cig, ci = c % cig;
      float* dxp = dx + (n * s.c_in + c) * s.h * s.w;
      for (int64_t iy = 0; iy < s.h; ++iy) {
        for (int64_t ix = 0; ix < s.w; ++ix) {
          double acc = 0.0;
          for (int64_t ky = 0; ky < s.kh; ++ky) {
            const int64_t ty = iy + s.pad_t - ky;
            if (ty < 0 || ty % s.stride_h != 0) continue;
            const int64_t oy = ty / s.stride_h;
            if (oy >= oh) continue;
            for (int64_t kx = 0; kx < s.kw; ++kx) {
              const int64_t tx = ix + s.pad_l - kx;
              if (tx < 0 || tx % s.stride_w != 0) continue;
              const int64_t ox = tx / s.stride_w;
              if (ox >= ow) continue;
              for (int64_t k = 0; k < cog; ++k) {
                const int64_t co = g * cog + k;
                acc += static_cast<double>(dy[((n * s.c_out + co) * oh + oy) * ow + ox]) *
                       w[((co * cig + ci) * s.kh + ky) * s.kw + kx];
              }
            }
          }
          dxp[iy * s.w + ix] = static_cast<float>(acc);
        }
      }
    }
  }
}

void conv2d_backward_weights(const Conv2dShape& s, const float* x, const float* dy, float* dw, float* dbias) {
  const int64_t oh = s.out_h(), ow = s.out_w(), cig = s.c_in_per_group(), cog = s.c_out_per_group();
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t co = 0; co < s.c_out; ++co) {
    for (int64_t ci = 0; ci < cig; ++ci) {
      const int64_t g = co / cog;
      for (int64_t ky = 0; ky < s.kh; ++ky) {
        for (int64_t kx = 0; kx < s.kw; ++kx) {
          double acc = 0.0;
          for (int64_t n = 0; n < s.n; ++n) {
            const float* xp = x + (n * s.c_in + g * cig + ci) * s.h * s.w;
            const float* dyp = dy + (n * s.c_out + co) * oh * ow;
            for (int64_t oy = 0; oy < oh; ++oy) {
              const int64_t iy = oy * s.stride_h - s.pad_t + ky;
              if (iy < 0 || iy >= s.h) continue;
              for (int64_t ox = 0; ox < ow; ++ox) {
                const int64_t ix = ox * s.stride_w - s.pad_l + kx;
                if (ix < 0 || ix >= s.w) continue;
                acc += static_cast<double>(xp[iy * s.w + ix]) * dyp[oy * ow + ox];
              }
            }
          }
          dw[((co * cig + ci) * s.kh + ky) * s.kw + kx] = static_cast<float>(acc);
        }
      }
    }
  }
  if (dbias) {
    for (int64_t co = 0; co < s.c_out; ++co) {
      double acc = 0.0;
      for (int64_t n = 0; n < s.n; ++n) {
        const float* dyp = dy + (n * s.c_out + co) * oh * ow;
        for (int64_t i = 0; i < oh * ow; ++i) acc += dyp[i];
      }
      dbias[co] = static_cast<float>(acc);
    }
  }
}

namespace {
// Visits the valid input positions of one pooling window; returns the divisor for averaging.
template <typename F>
int64_t for_window(const Pool2dShape& s, int64_t oy, int64_t ox, F&& f) {
  const int64_t y0 = oy * s.stride_h - s.pad_t, x0 = ox * s.stride_w - s.pad_l;
  int64_t count = 0;
  for (int64_t ky = 0; ky < s.kh; ++ky) {
    const int64_t iy = y0 + ky;
    for (int64_t kx = 0; kx < s.kw; ++kx) {
      const int64_t ix = x0 + kx;
      // Padded positions past the input's end but inside the padding still count when
      // count_include_pad is set (PyTorch clips the window to the padded extent).
      const bool inside_padded = iy < s.h + s.pad_b && ix < s.w + s.pad_r;
      if (iy < 0 || ix < 0 || iy >= s.h || ix >= s.w) {
        if (inside_padded) count += s.count_include_pad ? 1 : 0;
        continue;
      }
      f(iy * s.w + ix);
      ++count;
    }
  }
  return count;
}
}  // namespace

void pool2d_forward(PoolKind kind, const Pool2dShape& s, const float* x, float* y) {
  const int64_t oh = s.out_h(), ow = s.out_w();
#pragma omp parallel for schedule(static)
  for (int64_t nc = 0; nc < s.n * s.c; ++nc) {
    const float* xp = x + nc * s.h * s.w;
    float* yp = y + nc * oh * ow;
    for (int64_t oy = 0; oy < oh; ++oy) {
      for (int64_t ox = 0; ox < ow; ++ox) {
        if (kind == PoolKind::Max) {
          float m = -std::numeric_limits<float>::infinity();
          for_window(s, oy, ox, [&](int64_t i) {
            if (math::max_pool_takes(xp[i], m)) m = xp[i];
          });
          yp[oy * ow + ox] = m;
        } else {
          double acc = 0.0;
          int64_t cnt = for_window(s, oy, ox, [&](int64_t i) { acc += xp[i]; });
          yp[oy * ow + ox] = cnt ? static_cast<float>(acc / cnt) : 0.0f;
        }
      }
    }
  }
}

void pool2d_backward(PoolKind kind, const Pool2dShape& s, const float* x, const float* dy, float* dx) {
  const int64_t oh = s.out_h(), ow = s.out_w();
  std::memset(dx, 0, sizeof(float) * s.in_numel());
#pragma omp parallel for schedule(static)
  for (int64_t nc = 0; nc < s.n * s.c; ++nc) {
    const float* xp = x + nc * s.h * s.w;
    const float* dyp = dy + nc * oh * ow;
    float* dxp = dx + nc * s.h * s.w;
    for (int64_t oy = 0; oy < oh; ++oy) {
      for (int64_t ox = 0; ox < ow; ++ox) {
        const float g = dyp[oy * ow + ox];
        if (kind == PoolKind::Max) {
          int64_t best = -1;
          float m = -std::numeric_limits<float>::infinity();
          for_window(s, oy, ox, [&](int64_t i) {
            if (best < 0 || math::max_pool_takes(xp[i], m)) { m = xp[i]; best = i; }
          });
          if (best >= 0) dxp[best] += g;
        } else {
          int64_t cnt = for_window(s, oy, ox, [](int64_t) {});
          if (cnt == 0) continue;
          const float share = g / static_cast<float>(cnt);
          for_window(s, oy, ox, [&](int64_t i) { dxp[i] += share; });
        }
      }
    }
  }
}

void batchnorm_forward_train(const BatchNormShape& s, const float* x, const float* gamma,
                             const float* beta, float eps, float* y, float* mean, float* var,
                             float* inv_std) {
  const int64_t m = s.n * s.s;
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < s.c; ++c) {
    double sum = 0.0;
    for (int64_t n = 0; n < s.n; ++n) {
      const float* xp = x + (n * s.c + c) * s.s;
      for (int64_t i = 0; i < s.s; ++i) sum += xp[i];
    }
    const double mu = sum / m;
    double sq = 0.0;
    for (int64_t n = 0; n < s.n; ++n) {
      const float* xp = x + (n * s.c + c) * s.s;
      for (int64_t i = 0; i < s.s; ++i) sq += (xp[i] - mu) * (xp[i] - mu);
    }
    const double v = sq / m;
    const double is = 1.0 / std::sqrt(v + eps);
    mean[c] = static_cast<float>(mu);
    var[c] = static_cast<float>(v);
    inv_std[c] = static_cast<float>(is);
    for (int64_t n = 0; n < s.n; ++n) {
      const float* xp = x + (n * s.c + c) * s.s;
      float* yp = y + (n * s.c + c) * s.s;
      for (int64_t i = 0; i < s.s; ++i)
        yp[i] = static_cast<float>((xp[i] - mu) * is * gamma[c] + beta[c]);
    }
  }
}

void batchnorm_forward_infer(const BatchNormShape& s, const float* x, const float* gamma,
                             const float* beta, const float* running_mean,
                             const float* running_var, float eps, float* y) {
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < s.c; ++c) {
    const float is = 1.0f / std::sqrt(running_var[c] + eps);
    const float scale = gamma[c] * is, shift = beta[c] - running_mean[c] * scale;
    for (int64_t n = 0; n < s.n; ++n) {
      const float* xp = x + (n * s.c + c) * s.s;
      float* yp = y + (n * s.c + c) * s.s;
      for (int64_t i = 0; i < s.s; ++i) yp[i] = xp[i] * scale + shift;
    }
  }
}

void batchnorm_backward(const BatchNormShape& s, const float* x, const float* dy,
                        const float* gamma, const float* mean, const float* inv_std, float* dx,
                        float* dgamma, float* dbeta) {
  const int64_t m = s.n * s.s;
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < s.c; ++c) {
    double sum_dy = 0.0, sum_dy_xhat = 0.0;
    for (int64_t n = 0; n < s.n; ++n) {
      const float* xp = x + (n * s.c + c) * s.s;
      const float* dyp = dy + (n * s.c + c) * s.s;
      for (int64_t i = 0; i < s.s; ++i) {
        const double xhat = (xp[i] - mean[c]) * static_cast<double>(inv_std[c]);
        sum_dy += dyp[i];
        sum_dy_xhat += dyp[i] * xhat;
      }
    }
    dgamma[c] = static_cast<float>(sum_dy_xhat);
    dbeta[c] = static_cast<float>(sum_dy);
    const double k = gamma[c] * static_cast<double>(inv_std[c]) / m;
    for (int64_t n = 0; n < s.n; ++n) {
      const float* xp = x + (n * s.c + c) * s.s;
      const float* dyp = dy + (n * s.c + c) * s.s;
      float* dxp = dx + (n * s.c + c) * s.s;
      for (int64_t i = 0; i < s.s; ++i) {
        const double xhat = (xp[i] - mean[c]) * static_cast<double>(inv_std[c]);
        dxp[i] = static_cast<float>(k * (m * dyp[i] - sum_dy - xhat * sum_dy_xhat));
      }
    }
  }
}

void linear_forward(int64_t n, int64_t in, int64_t out, const float* x, const float* w,
                    const float* bias, float* y) {
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < n; ++b) {
    for (int64_t o = 0; o < out; ++o) {
      double acc = bias ? bias[o] : 0.0;
      const float* xp = x + b * in;
      const float* wp = w + o * in;
      for (int64_t i = 0; i < in; ++i) acc += static_cast<double>(xp[i]) * wp[i];
      y[b * out + o] = static_cast<float>(acc);
    }
  }
}

void linear_backward(int64_t n, int64_t in, int64_t out, const float* x, const float* w,
                     const float* dy, float* dx, float* dw, float* dbias) {
  if (dx) {
#pragma omp parallel for collapse(2) schedule(static)
    for (int64_t b = 0; b < n; ++b) {
      for (int64_t i = 0; i < in; ++i) {
        double acc = 0.0;
        for (int64_t o = 0; o < out; ++o) acc += static_cast<double>(dy[b * out + o]) * w[o * in + i];
        dx[b * in + i] = static_cast<float>(acc);
      }
    }
  }
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t o = 0; o < out; ++o) {
    for (int64_t i = 0; i < in; ++i) {
      double acc = 0.0;
      for (int64_t b = 0; b < n; ++b) acc += static_cast<double>(dy[b * out + o]) * x[b * in + i];
      dw[o * in + i] = static_cast<float>(acc);
    }
  }
  if (dbias) {
    for (int64_t o = 0; o < out; ++o) {
      double acc = 0.0;
      for (int64_t b = 0; b < n; ++b) acc += dy[b * out + o];
      dbias[o] = static_cast<float>(acc);
    }
  }
}

void global_avgpool_forward(int64_t n, int64_t c, int64_t hw, const float* x, float* y) {
  for (int64_t i = 0; i < n * c; ++i) {
    double acc = 0.0;
    for (int64_t j = 0; j < hw; ++j) acc += x[i * hw + j];
    y[i] = static_cast<float>(acc / hw);
  }
}

void global_avgpool_backward(int64_t n, int64_t c, int64_t hw, const float* dy, float* dx) {
  for (int64_t i = 0; i < n * c; ++i) {
    const float g = dy[i] / static_cast<float>(hw);
    for (int64_t j = 0; j < hw; ++j) dx[i * hw + j] = g;
  }
}

// Elementwise loops: every value loaded unconditionally and selected (a blend, not a branch on
// the sign, which mispredicts on half of a ReLU's inputs), split over the threads when large.
void relu_forward(int64_t count, const float* x, float* y) {
#pragma omp parallel for simd schedule(static) if (count >= kElementwiseParallelMin)
  for (int64_t i = 0; i < count; ++i) {
    const float v = x[i];
    y[i] = math::relu_passes(v) ? v : 0.0f;
  }
}

void relu_backward(int64_t count, const float* y, const float* dy, float* dx) {
#pragma omp parallel for simd schedule(static) if (count >= kElementwiseParallelMin)
  for (int64_t i = 0; i < count; ++i) {
    const float g = dy[i];
    dx[i] = math::relu_passes(y[i]) ? g : 0.0f;
  }
}

void shortcut_a_forward(int64_t n, int64_t c_in, int64_t h, int64_t w, int64_t c_out,
                        int64_t pad_before, int64_t stride, const float* x, float* y) {
  const int64_t oh = (h + stride - 1) / stride, ow = (w + stride - 1) / stride;
  std::memset(y, 0, sizeof(float) * n * c_out * oh * ow);
#pragma omp parallel for collapse(2) schedule(static) if (n * c_in * h * w >= kElementwiseParallelMin)
  for (int64_t b = 0; b < n; ++b) {
    for (int64_t c = 0; c < c_in; ++c) {
      const float* xp = x + (b * c_in + c) * h * w;
      float* yp = y + (b * c_out + c + pad_before) * oh * ow;
      for (int64_t oy = 0; oy < oh; ++oy) {
        for (int64_t ox = 0; ox < ow; ++ox) {
          double acc = 0.0;
          int64_t cnt = 0;
          for (int64_t iy = oy * stride; iy < std::min(h, oy * stride + stride); ++iy)
            for (int64_t ix = ox * stride; ix < std::min(w, ox * stride + stride); ++ix, ++cnt)
              acc += xp[iy * w + ix];
          yp[oy * ow + ox] = static_cast<float>(acc / cnt);
        }
      }
    }
  }
}

void shortcut_a_backward(int64_t n, int64_t c_in, int64_t h, int64_t w, int64_t c_out,
                         int64_t pad_before, int64_t stride, const float* dy, float* dx) {
  const int64_t oh = (h + stride - 1) / stride, ow = (w + stride - 1) / stride;
#pragma omp parallel for collapse(2) schedule(static) if (n * c_in * h * w >= kElementwiseParallelMin)
  for (int64_t b = 0; b < n; ++b) {
    for (int64_t c = 0; c < c_in; ++c) {
      float* dxp = dx + (b * c_in + c) * h * w;
      const float* dyp = dy + (b * c_out + c + pad_before) * oh * ow;
      for (int64_t iy = 0; iy < h; ++iy) {
        for (int64_t ix = 0; ix < w; ++ix) {
          const int64_t oy = iy / stride, ox = ix / stride;
          const int64_t cnt = (std::min(h, oy * stride + stride) - oy * stride) *
                              (std::min(w, ox * stride + stride) - ox * stride);
          dxp[iy * w + ix] = dyp[oy * ow + ox] / static_cast<float>(cnt);
        }
      }
    }
  }
}

double softmax_xent_forward(int64_t n, int64_t classes, const float* logits, const int32_t* labels,
                            float label_smoothing, float* probs) {
  double total = 0.0;
  const double off = static_cast<double>(label_smoothing) / classes;
  for (int64_t b = 0; b < n; ++b) {
    const float* z = logits + b * classes;
    float* p = probs + b * classes;
    float zmax = z[0];
    for (int64_t k = 1; k < classes; ++k) zmax = std::max(zmax, z[k]);
    double sum = 0.0;
    for (int64_t k = 0; k < classes; ++k) sum += std::exp(static_cast<double>(z[k]) - zmax);
    const double log_sum = std::log(sum) + zmax;
    double loss = 0.0;
    for (int64_t k = 0; k < classes; ++k) {
      const double logp = z[k] - log_sum;
      p[k] = static_cast<float>(std::exp(logp));
      const double target = off + (k == labels[b] ? 1.0 - label_smoothing : 0.0);
      loss -= target * logp;
    }
    total += loss;
  }
  return total / n;
}

void softmax_xent_backward(int64_t n, int64_t classes, const float* probs, const int32_t* labels,
                           float label_smoothing, float* dlogits) {
  const float off = label_smoothing / classes;
  const float inv_n = 1.0f / static_cast<float>(n);
  for (int64_t b = 0; b < n; ++b) {
    for (int64_t k = 0; k < classes; ++k) {
      const float target = off + (k == labels[b] ? 1.0f - label_smoothing : 0.0f);
      dlogits[b * classes + k] = (probs[b * classes + k] - target) * inv_n;
    }
  }
}

}  // namespace ttq::ref
