#include "engine/quant/quantize_model.h"

#include <algorithm>
#include <cmath>
#include <set>
#include <sstream>

#include "engine/config/json_reader.h"
#include "engine/nn/quantizable.h"

namespace ttq {

std::vector<QuantizableLayer*> quantizable_layers(Module& model) {
  std::vector<QuantizableLayer*> out;
  for (auto& [path, m] : model.named_modules())
    if (auto* q = dynamic_cast<QuantizableLayer*>(m)) out.push_back(q);
  return out;
}

std::vector<std::string> quantize_model(Module& model, const QuantizeOptions& opt) {
  const Device device = model.device();
  if (device != Device::CPU) {
    // The one-time set-up (normalisation, each quantizer's scales, registered as parameters) runs
    // on the CPU, exactly as for a CPU model; then the model, new parameters included, goes back.
    model.to(Device::CPU);
    std::vector<std::string> done;
    try {
      done = quantize_model(model, opt);
    } catch (...) {
      model.to(device);
      throw;
    }
    model.to(device);
    return done;
  }
  opt.ternary.validate();
  auto layers = quantizable_layers(model);
  std::vector<std::string> paths;
  for (auto* l : layers) paths.push_back(l->path());
  const std::set<std::string> keep(opt.full_precision_layers.begin(), opt.full_precision_layers.end());
  for (const auto& name : keep) {
    if (std::find(paths.begin(), paths.end(), name) != paths.end()) continue;
    const std::string hint = closest_match(name, paths);
    TTQ_FAIL("full-precision layer '" << name << "' is not a Conv2d/Linear of this model"
                                      << (hint.empty() ? std::string() : " (did you mean '" + hint + "'?)"));
  }
  std::vector<std::string> done;
  for (auto* l : layers) {
    if (l->is_ternary()) {
      // Already ternary (a resumed run, or weights from a ternary checkpoint): only with the very
      // settings asked for now; anything else would train on silently with the old ones.
      const TernaryConfig& had = l->quantizer()->config();
      const TernaryConfig& want = opt.ternary;
      TTQ_CHECK(!keep.count(l->path()), "layer '" << l->path() << "' is already ternary but is listed as a "
                                                  "full-precision layer (start from full-precision weights)");
      auto settings = [](const TernaryConfig& c) {
        std::ostringstream os;
        os << threshold_mode_name(c.mode) << ", t " << c.t << ", r " << c.r << ", clamp " << c.clamp_scales
           << ", per-channel " << c.per_channel_scales;
        return os.str();
      };
      TTQ_CHECK(had.trains_like(want), "layer '" << l->path() << "' is already ternary (" << settings(had)
                                                 << "), not as this quantization asks (" << settings(want)
                                                 << "); start from full-precision weights to ternarize it differently");
      continue;
    }
    if (keep.count(l->path())) continue;
    if (opt.normalize_init) {
      Tensor& w = l->weight().value;
      float* p = w.data<float>();
      float m = 0.0f;
      for (int64_t i = 0; i < w.numel(); ++i) m = std::max(m, std::fabs(p[i]));
      if (m > 0.0f)
        for (int64_t i = 0; i < w.numel(); ++i) p[i] /= m;
    }
    l->enable_ternary(opt.ternary);
    done.push_back(l->path());
  }
  return done;
}

}  // namespace ttq

namespace ttq {

ModelSize model_size(Module& model) {
  ModelSize s;
  for (auto& np : model.named_parameters()) {
    if (np.param->kind == ParamKind::Scale) continue;  // counted with their layer below
    s.fp32_bytes += np.param->value.numel() * 4;
  }
  for (auto& nb : model.named_buffers()) s.fp32_bytes += nb.tensor->numel() * 4;
  s.deployed_bytes = s.fp32_bytes;
  for (auto* l : quantizable_layers(model)) {
    if (!l->is_ternary()) continue;
    const int64_t n = l->weight().value.numel();
    s.deployed_bytes += (n + 3) / 4 + 2 * 4 * l->quantizer()->wp().value.numel() - n * 4;
  }
  return s;
}

}  // namespace ttq
