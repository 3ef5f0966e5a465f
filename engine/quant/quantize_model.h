// Turning a full-precision model into a TTQ model: every Conv2d and Linear becomes ternary except
// the layers named as full precision.
#pragma once

#include <string>
#include <vector>

#include "engine/nn/module.h"
#include "engine/quant/ternary.h"

namespace ttq {

class QuantizableLayer;

struct QuantizeOptions {
  TernaryConfig ternary;
  // Layer paths ("conv1", "fc") that stay full precision. Unknown names are an error.
  std::vector<std::string> full_precision_layers;
  // Divide each quantized layer's latent weights by their max |w| once, before quantizing, so
  // they lie in [-1, 1] (the TTQ paper's step 1). The quantized forward is unchanged by it.
  bool normalize_init = true;
};

// Quantizes the model in place, on whichever device it lives; returns the paths of the layers made
// ternary, in model order.
std::vector<std::string> quantize_model(Module& model, const QuantizeOptions& opt);

// Every Conv2d/Linear in model order, ternary or not.
std::vector<QuantizableLayer*> quantizable_layers(Module& model);

}  // namespace ttq

namespace ttq {

// Storage of the model's parameters: all in fp32, and as deployed (ternary weights packed at
// 2 bits plus Wp and Wn per layer; everything else fp32). Buffers (BN running stats) included.
struct ModelSize {
  int64_t fp32_bytes = 0;
  int64_t deployed_bytes = 0;
};
ModelSize model_size(Module& model);

}  // namespace ttq
