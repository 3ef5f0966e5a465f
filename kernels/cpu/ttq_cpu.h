// CPU loops around the TTQ per-element math of kernels/ttq_math.h, one quantized tensor at a time.
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/ttq_math.h"

namespace ttq::cpu {

struct ThresholdResult {
  float threshold = 0.0f;  // D
  float twn_scale = 0.0f;  // TWN only: mean |w| over |w| > D (0 when no weight is above D)
};

// D for one tensor of n latent weights (t for Max mode, r for Sparsity mode).
ThresholdResult ttq_threshold(math::ThresholdMode mode, const float* w, int64_t n, float t, double r);

struct TernarizeCounts {
  int64_t positive = 0, negative = 0;
};

// w_t[i] = ternary_value(code_i, wp, wn), codes[i] = ternary_code(w[i], d).
TernarizeCounts ttq_ternarize(const float* w, int64_t n, float d, float wp, float wn, float* w_t,
                              int8_t* codes);

struct ScaleGrads {
  double wp = 0.0, wn = 0.0;  // dL/dWp, dL/dWn (the latter already carries the minus sign)
};

// latent_grad[i] += latent_grad_scale(code_i) * g[i]; returns the scale gradients. With
// scale_latent false (TWN baseline) the latent gradient is the plain straight-through g.
ScaleGrads ttq_backward(const int8_t* codes, const float* g, int64_t n, float wp, float wn,
                        bool scale_latent, float* latent_grad);

// Mean |w| over the positive and negative sets for the given threshold (used to initialise
// Wp/Wn from the weights); a set that is empty gives 0.
struct SetMeans {
  float positive = 0.0f, negative = 0.0f;
};
SetMeans ttq_set_means(const float* w, int64_t n, float d);

// Per-output-channel scales: the tensor is `channels` rows of n / channels weights (a conv's
// [C_out, C_in, kh, kw], a linear's [out, in]), and row c uses Wp = wp[c], Wn = wn[c]; D stays
// one value for the whole tensor. Row c gives bit for bit what the per-tensor function above gives
// on that row's slice with that row's scales. channels must divide n.
TernarizeCounts ttq_ternarize_channels(const float* w, int64_t n, int64_t channels, float d, const float* wp,
                                       const float* wn, float* w_t, int8_t* codes);
// latent_grad as ttq_backward with each row's scales; returns the scale gradients of every row.
std::vector<ScaleGrads> ttq_backward_channels(const int8_t* codes, const float* g, int64_t n, int64_t channels,
                                              const float* wp, const float* wn, float* latent_grad);
// The backward of one tensor with `channels` scale pairs (1: one per tensor): the latent gradient
// as above, and each pair's dL/dWp, dL/dWn rounded to float once and ADDED into dwp[c], dwn[c]
// (either may be null; untouched without scale_latent, when wp and wn are not read).
void ttq_backward_accumulate(const int8_t* codes, const float* g, int64_t n, int64_t channels, const float* wp,
                             const float* wn, bool scale_latent, float* latent_grad, float* dwp, float* dwn);
// The set means of every row (for initialising per-channel scales from the weights).
std::vector<SetMeans> ttq_set_means_channels(const float* w, int64_t n, int64_t channels, float d);

}  // namespace ttq::cpu
