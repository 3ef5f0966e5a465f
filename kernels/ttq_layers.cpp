#include "kernels/ttq_layers.h"

#include "kernels/cpu/ttq_cpu.h"
#include "kernels/ops.h"
#ifdef TTQ_HAVE_CUDA
#include <cuda_runtime_api.h>

#include "kernels/cuda/ttq_multi.h"
#endif

namespace ttq::ops {

#ifdef TTQ_HAVE_CUDA
struct TtqLayerSet::Gpu {
  std::unique_ptr<cuda::TtqMultiTensor> multi;
};
#else
struct TtqLayerSet::Gpu {};
#endif

namespace {
bool twn(const TtqLayerRefs& l) { return l.mode == math::ThresholdMode::Twn; }

std::vector<const Tensor*> tensors_of(const std::vector<TtqLayerRefs>& layers) {
  std::vector<const Tensor*> t;
  for (const auto& l : layers)
    t.insert(t.end(), {l.latent, l.wp, l.wn, l.threshold, l.twn_scale, l.w_t, l.codes, l.g, l.latent_grad, l.dwp, l.dwn});
  return t;
}
}  // namespace

TtqLayerSet::TtqLayerSet(std::vector<TtqLayerRefs> layers) : layers_(std::move(layers)) {
  check();
  watch_.watch(tensors_of(layers_));
}

TtqLayerSet::~TtqLayerSet() = default;

void TtqLayerSet::check() {
  bool first = true;
  Device dev = Device::CPU;
  auto same_device = [&](const Tensor* t, size_t i, const char* what) {
    if (!t) return;
    TTQ_CHECK(t->defined(), "TTQ layer set: layer " << i << ": " << what << " is undefined");
    if (first) {
      dev = t->device();
      first = false;
    }
    TTQ_CHECK(t->device() == dev, "TTQ layer set: layer " << i << ": " << what << " is on another device ("
                                                          << t->str() << ")");
  };
  for (size_t i = 0; i < layers_.size(); ++i) {
    const TtqLayerRefs& l = layers_[i];
    TTQ_CHECK(l.latent && l.threshold && l.twn_scale && l.w_t && l.codes,
              "TTQ layer set: layer " << i << " lacks latent weights, D, TWN scale, w_t or codes");
    TTQ_CHECK(twn(l) || (l.wp && l.wn), "TTQ layer set: layer " << i << " lacks Wp or Wn");
    const int64_t n = l.latent->numel();
    if (!twn(l)) {
      const int64_t c = l.wp->numel();
      TTQ_CHECK(l.wn->numel() == c && math::scale_rows_fit(c, n),
                "TTQ layer set: layer " << i << ": Wp " << l.wp->str() << " and Wn " << l.wn->str()
                                        << " must both hold 1 scale or 1 per row of " << l.latent->str());
      TTQ_CHECK((!l.dwp || l.dwp->numel() == c) && (!l.dwn || l.dwn->numel() == c),
                "TTQ layer set: layer " << i << ": scale gradients do not match Wp " << l.wp->str());
    }
    TTQ_CHECK(l.w_t->numel() == n && l.codes->numel() == n && l.codes->dtype() == DType::I8,
              "TTQ layer set: layer " << i << ": w_t " << l.w_t->str() << " / codes " << l.codes->str()
                                      << " do not match the latent weights " << l.latent->str());
    TTQ_CHECK(l.w_t->dtype() == DType::F32 || l.w_t->dtype() == DType::BF16,
              "TTQ layer set: layer " << i << ": w_t " << l.w_t->str() << " must be f32 or bf16");
    TTQ_CHECK(!l.g || l.g->numel() == n, "TTQ layer set: layer " << i << ": gradient " << l.g->str()
                                                                 << " does not match " << l.latent->str());
    TTQ_CHECK(!l.latent_grad || l.latent_grad->numel() == n,
              "TTQ layer set: layer " << i << ": latent gradient " << l.latent_grad->str() << " does not match "
                                      << l.latent->str());
    same_device(l.latent, i, "latent weights");
    same_device(l.wp, i, "Wp");
    same_device(l.wn, i, "Wn");
    same_device(l.threshold, i, "D");
    same_device(l.twn_scale, i, "TWN scale");
    same_device(l.w_t, i, "w_t");
    same_device(l.codes, i, "codes");
    same_device(l.g, i, "gradient");
    same_device(l.latent_grad, i, "latent gradient");
    same_device(l.dwp, i, "dWp");
    same_device(l.dwn, i, "dWn");
  }
  device_ = dev;
}

void TtqLayerSet::refresh() {
  const bool moved = watch_.moved();
  if (moved) {
    check();
    watch_.remember();
  }
#ifdef TTQ_HAVE_CUDA
  if (device_ == Device::CUDA && (moved || !gpu_ || !gpu_->multi)) plan();
#endif
}

void TtqLayerSet::plan() {
#ifdef TTQ_HAVE_CUDA
  std::vector<cuda::TtqMultiLayer> ml;
  ml.reserve(layers_.size());
  auto fp = [](const Tensor* t) { return t ? t->data_ptr<float>() : nullptr; };
  for (const auto& l : layers_) {
    cuda::TtqMultiLayer m;
    m.w = fp(l.latent);
    m.n = l.latent->numel();
    if (l.w_t->dtype() == DType::BF16)
      m.w_t_bf16 = l.w_t->data_ptr<bf16>();
    else
      m.w_t = fp(l.w_t);
    m.codes = l.codes->data_ptr<int8_t>();
    m.wp = twn(l) ? nullptr : fp(l.wp);
    m.wn = twn(l) ? nullptr : fp(l.wn);
    m.channels = twn(l) ? 1 : l.wp->numel();
    m.d = fp(l.threshold);
    m.twn_scale = fp(l.twn_scale);
    m.mode = l.mode;
    m.t = l.t;
    m.r = l.r;
    m.g = fp(l.g);
    m.latent_grad = fp(l.latent_grad);
    m.dwp = twn(l) ? nullptr : fp(l.dwp);
    m.dwn = twn(l) ? nullptr : fp(l.dwn);
    ml.push_back(m);
  }
  if (!gpu_) gpu_ = std::make_unique<Gpu>();
  gpu_->multi.reset();
  gpu_->multi = std::make_unique<cuda::TtqMultiTensor>(std::move(ml));
#endif
}

void TtqLayerSet::forward() {
  refresh();
  if (device_ == Device::CUDA) {
#ifdef TTQ_HAVE_CUDA
    gpu_->multi->forward(cudaStreamPerThread);
    return;
#else
    TTQ_FAIL("TTQ layer set: CUDA tensors in a build without the CUDA backend");
#endif
  }
  for (const auto& l : layers_)
    ttq_forward(l.mode, l.t, l.r, *l.latent, twn(l) ? *l.twn_scale : *l.wp, twn(l) ? *l.twn_scale : *l.wn,
                *l.threshold, *l.twn_scale, *l.w_t, *l.codes);
}

void TtqLayerSet::backward() {
  for (size_t i = 0; i < layers_.size(); ++i)
    TTQ_CHECK(layers_[i].g && layers_[i].latent_grad,
              "TTQ layer set: backward needs the gradient and latent gradient of layer " << i);
  refresh();
  if (device_ == Device::CUDA) {
#ifdef TTQ_HAVE_CUDA
    gpu_->multi->backward(cudaStreamPerThread);
    return;
#else
    TTQ_FAIL("TTQ layer set: CUDA tensors in a build without the CUDA backend");
#endif
  }
  auto fp = [](const Tensor* t) { return t ? t->data<float>() : nullptr; };
  for (const auto& l : layers_) {
    const bool scale = !twn(l);
    cpu::ttq_backward_accumulate(l.codes->data<int8_t>(), l.g->data<float>(), l.latent->numel(),
                                 scale ? l.wp->numel() : 1, scale ? fp(l.wp) : nullptr, scale ? fp(l.wn) : nullptr,
                                 scale, l.latent_grad->data<float>(), fp(l.dwp), fp(l.dwn));
  }
}

int TtqLayerSet::forward_launches() const {
#ifdef TTQ_HAVE_CUDA
  if (gpu_ && gpu_->multi) return gpu_->multi->fused_forward_launches();
#endif
  return 0;
}

int TtqLayerSet::backward_launches() const {
#ifdef TTQ_HAVE_CUDA
  if (gpu_ && gpu_->multi) return gpu_->multi->backward_launches();
#endif
  return 0;
}

}  // namespace ttq::ops
