#include "kernels/cpu/ops.h"

#include <limits>

#include "engine/core/error.h"
#include "kernels/cpu/ops_ref.h"
#ifdef TTQ_HAVE_ONEDNN
#include "kernels/onednn/ops_onednn.h"
#endif

namespace ttq::cpu {

namespace {
#ifdef TTQ_HAVE_ONEDNN
Kernels g_kernels = Kernels::OneDNN;
#else
Kernels g_kernels = Kernels::Reference;
#endif
}  // namespace

bool onednn_built() {
#ifdef TTQ_HAVE_ONEDNN
  return true;
#else
  return false;
#endif
}

Kernels kernels() { return g_kernels; }

void set_kernels(Kernels k) {
  TTQ_CHECK(k != Kernels::OneDNN || onednn_built(), "oneDNN kernels requested but this build has no oneDNN");
  g_kernels = k;
}

const char* kernels_name(Kernels k) { return k == Kernels::OneDNN ? "onednn" : "reference"; }

#ifdef TTQ_HAVE_ONEDNN
#define TTQ_CPU_DISPATCH(fn, ...)                      \
  do {                                                 \
    if (g_kernels == Kernels::OneDNN) return onednn::fn(__VA_ARGS__); \
    return ref::fn(__VA_ARGS__);                       \
  } while (0)
#else
#define TTQ_CPU_DISPATCH(fn, ...) return ref::fn(__VA_ARGS__)
#endif

void conv2d_forward(const Conv2dShape& s, const float* x, const float* w, const float* bias, float* y) {
  TTQ_CPU_DISPATCH(conv2d_forward, s, x, w, bias, y);
}
void conv2d_backward_data(const Conv2dShape& s, const float* dy, const float* w, float* dx) {
  TTQ_CPU_DISPATCH(conv2d_backward_data, s, dy, w, dx);
}
void conv2d_backward_weights(const Conv2dShape& s, const float* x, const float* dy, float* dw, float* dbias) {
  TTQ_CPU_DISPATCH(conv2d_backward_weights, s, x, dy, dw, dbias);
}
#ifdef TTQ_HAVE_ONEDNN
namespace {
// oneDNN's max pooling skips NaN, and a window whose inputs are all -inf gives -FLT_MAX (its
// starting value); the reference passes NaN on (as PyTorch) and gives -inf. An input holding NaN
// or -inf goes to the reference, both ways.
bool max_pool_needs_reference(PoolKind kind, const Pool2dShape& s, const float* x) {
  if (kind != PoolKind::Max || g_kernels != Kernels::OneDNN) return false;
  const float neg_inf = -std::numeric_limits<float>::infinity();
  bool odd = false;
  for (int64_t i = 0, n = s.in_numel(); i < n; ++i) odd |= !(x[i] > neg_inf);  // NaN or -inf
  return odd;
}
}  // namespace
#endif

void pool2d_forward(PoolKind kind, const Pool2dShape& s, const float* x, float* y) {
#ifdef TTQ_HAVE_ONEDNN
  if (max_pool_needs_reference(kind, s, x)) return ref::pool2d_forward(kind, s, x, y);
#endif
  TTQ_CPU_DISPATCH(pool2d_forward, kind, s, x, y);
}
void pool2d_backward(PoolKind kind, const Pool2dShape& s, const float* x, const float* dy, float* dx) {
#ifdef TTQ_HAVE_ONEDNN
  if (max_pool_needs_reference(kind, s, x)) return ref::pool2d_backward(kind, s, x, dy, dx);
#endif
  TTQ_CPU_DISPATCH(pool2d_backward, kind, s, x, dy, dx);
}
void batchnorm_forward_train(const BatchNormShape& s, const float* x, const float* gamma,
                             const float* beta, float eps, float* y, float* mean, float* var,
                             float* inv_std) {
  TTQ_CPU_DISPATCH(batchnorm_forward_train, s, x, gamma, beta, eps, y, mean, var, inv_std);
}
void batchnorm_forward_infer(const BatchNormShape& s, const float* x, const float* gamma,
                             const float* beta, const float* running_mean,
                             const float* running_var, float eps, float* y) {
  TTQ_CPU_DISPATCH(batchnorm_forward_infer, s, x, gamma, beta, running_mean, running_var, eps, y);
}
void batchnorm_backward(const BatchNormShape& s, const float* x, const float* dy,
                        const float* gamma, const float* mean, const float* inv_std, float* dx,
                        float* dgamma, float* dbeta) {
  TTQ_CPU_DISPATCH(batchnorm_backward, s, x, dy, gamma, mean, inv_std, dx, dgamma, dbeta);
}
void linear_forward(int64_t n, int64_t in, int64_t out, const float* x, const float* w,
                    const float* bias, float* y) {
  TTQ_CPU_DISPATCH(linear_forward, n, in, out, x, w, bias, y);
}
void linear_backward(int64_t n, int64_t in, int64_t out, const float* x, const float* w,
                     const float* dy, float* dx, float* dw, float* dbias) {
  TTQ_CPU_DISPATCH(linear_backward, n, in, out, x, w, dy, dx, dw, dbias);
}

}  // namespace ttq::cpu
