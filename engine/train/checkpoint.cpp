#include "engine/train/checkpoint.h"

#include <sys/stat.h>

#include <cmath>
#include <map>
#include <set>

#include "engine/nn/batchnorm.h"
#include "engine/nn/quantizable.h"
#include "engine/quant/packing.h"
#include "engine/quant/quantize_model.h"

namespace ttq {

namespace {

json ternary_to_json(const TernaryConfig& c) {
  return {{"mode", threshold_mode_name(c.mode)}, {"t", c.t}, {"r", c.r},
          {"init_scales_from_weights", c.init_scales_from_weights}, {"clamp_scales", c.clamp_scales},
          {"per_channel_scales", c.per_channel_scales}};
}

TernaryConfig ternary_from_json(const json& j, const std::string& file, const std::string& layer) {
  try {
    TernaryConfig c;
    c.mode = parse_threshold_mode(j.at("mode").get<std::string>());
    c.t = j.at("t").get<float>();
    c.r = j.at("r").get<double>();
    c.init_scales_from_weights = j.at("init_scales_from_weights").get<bool>();
    c.clamp_scales = j.at("clamp_scales").get<bool>();
    c.per_channel_scales = j.value("per_channel_scales", false);  // files from before the option
    c.validate();
    return c;
  } catch (const std::exception& e) {
    TTQ_FAIL("'" << file << "': bad ternary settings for layer '" << layer << "': " << e.what());
  }
}

std::string format_double(double v) {
  char buf[40];
  std::snprintf(buf, sizeof buf, "%.17g", v);
  return buf;
}

json parse_meta_json(const SafeTensorsFile& f, const std::string& key) {
  try {
    return json::parse(f.meta(key), json_depth_limit("'" + f.path() + "': metadata '" + key + "'"));
  } catch (const json::exception& e) {
    TTQ_FAIL("'" << f.path() << "': metadata '" << key << "' is not valid JSON: " << e.what());
  }
}

}  // namespace

json TrainingState::to_json() const {
  // Doubles as strings with 17 digits: the JSON round trip must not change a bit.
  return {{"stage", stage}, {"epoch", epoch}, {"batch", batch}, {"optimizer_steps", optimizer_steps},
          {"global_step", global_step}, {"best_error", format_double(best_error)},
          {"epoch_loss_sum", format_double(epoch_loss_sum)}, {"epoch_correct", epoch_correct},
          {"epoch_seen", epoch_seen}, {"elapsed_seconds", format_double(elapsed_seconds)}, {"world", world}};
}

TrainingState TrainingState::from_json(const json& j) {
  TrainingState s;
  s.stage = j.at("stage").get<int64_t>();
  s.epoch = j.at("epoch").get<int64_t>();
  s.batch = j.at("batch").get<int64_t>();
  s.optimizer_steps = j.at("optimizer_steps").get<int64_t>();
  s.global_step = j.at("global_step").get<int64_t>();
  s.best_error = std::stod(j.at("best_error").get<std::string>());
  s.epoch_loss_sum = std::stod(j.at("epoch_loss_sum").get<std::string>());
  s.epoch_correct = j.at("epoch_correct").get<int64_t>();
  s.epoch_seen = j.at("epoch_seen").get<int64_t>();
  s.elapsed_seconds = std::stod(j.at("elapsed_seconds").get<std::string>());
  s.world = j.value("world", int64_t{1});
  return s;
}

namespace {

json ternary_layers_json(Module& net) {
  json t = json::object();
  for (auto* l : quantizable_layers(net))
    if (l->is_ternary()) t[l->path()] = ternary_to_json(l->quantizer()->config());
  return t;
}

void check_finite(const std::string& path, const std::string& name, const Tensor& host_value) {
  if (host_value.dtype() != DType::F32) return;
  const float* p = host_value.data<float>();
  for (int64_t i = 0, n = host_value.numel(); i < n; ++i)
    TTQ_CHECK(std::isfinite(p[i]), "not writing '" << path << "': parameter '" << name << "' holds " << p[i]
                                                   << " at [" << i << "] (the model diverged)");
}

}  // namespace

void check_parameters_finite(Module& net, const std::string& path) {
  for (auto& np : net.named_parameters()) check_finite(path, np.name, np.param->value.to(Device::CPU));
}

void save_checkpoint(const std::string& path, Module& net, const Optimizer* opt, const TrainingState& state,
                     const json& config, const TrainingSetInfo* data) {
  SafeTensorsWriter w;
  for (auto& np : net.named_parameters()) {
    const Tensor v = np.param->value.to(Device::CPU);
    check_finite(path, np.name, v);  // a diverged model is not written over the last good checkpoint
    w.add(np.name, v);
  }
  for (auto& nb : net.named_buffers()) w.add(nb.name, nb.tensor->to(Device::CPU));
  if (opt)
    for (auto& nb : const_cast<Optimizer*>(opt)->state()) w.add("optim." + nb.name, nb.tensor->to(Device::CPU));
  w.add_metadata("format", "ttq-checkpoint");
  w.add_metadata("config", config.dump());
  w.add_metadata("state", state.to_json().dump());
  w.add_metadata("ternary", ternary_layers_json(net).dump());
  if (data) w.add_metadata("data", data->to_json().dump());
  w.write(path);
}

Checkpoint read_checkpoint(const std::string& path) {
  Checkpoint c{SafeTensorsFile::read(path), "", {}, {}, {}, std::nullopt};
  const auto& meta = c.file.metadata();
  if (!meta.count("format") || meta.at("format") == "pt") {
    // A plain PyTorch state dict (safetensors.torch.save_file, optionally with {"format": "pt"}).
    c.format = "state-dict";
    c.ternary = json::object();
    return c;
  }
  c.format = meta.at("format");
  if (meta.count("data"))
    c.data = TrainingSetInfo::from_json(parse_meta_json(c.file, "data"), "'" + path + "': metadata 'data'");
  TTQ_CHECK(c.format == "ttq-checkpoint" || c.format == "ttq-export",
            "'" << path << "' has format '" << c.format
                << "', expected ttq-checkpoint, ttq-export or a plain state dict (no format or \"pt\")");
  c.config = parse_meta_json(c.file, "config");
  c.ternary = parse_meta_json(c.file, "ternary");
  TTQ_CHECK(c.ternary.is_object(), "'" << path << "': metadata 'ternary' is not an object");
  if (c.format == "ttq-checkpoint") {
    try {
      c.state = TrainingState::from_json(parse_meta_json(c.file, "state"));
    } catch (const std::exception& e) {
      TTQ_FAIL("'" << path << "': bad training state metadata: " << e.what());
    }
  }
  return c;
}

namespace {

// "was saved from a different model" for the engine's own files; a plain state dict may come
// from anywhere.
std::string mismatch(const Checkpoint& ck) {
  return "'" + ck.file.path() + (ck.format == "state-dict" ? "' (a plain state dict) does not fit this model"
                                                            : "' was saved from a different model");
}

void copy_checked(const Checkpoint& ck, const std::string& name, Tensor& dst) {
  TTQ_CHECK(ck.file.has(name), mismatch(ck) << ": it has no tensor '" << name << "'");
  TTQ_CHECK(ck.file.shape(name) == dst.shape() && ck.file.dtype(name) == dst.dtype(),
            mismatch(ck) << ": tensor '" << name << "' is " << dtype_name(ck.file.dtype(name))
                         << shape_str(ck.file.shape(name)) << " in the file but " << dtype_name(dst.dtype())
                         << shape_str(dst.shape()) << " here");
  dst.copy_from(ck.file.tensor(name));
}

}  // namespace

void load_model(Module& net, const Checkpoint& ck) {
  const bool is_export = ck.format == "ttq-export";
  std::map<std::string, QuantizableLayer*> layers;
  for (auto* l : quantizable_layers(net)) layers[l->path()] = l;
  std::set<std::string> expected;
  for (auto it = ck.ternary.begin(); it != ck.ternary.end(); ++it) {
    auto found = layers.find(it.key());
    TTQ_CHECK(found != layers.end(), "'" << ck.file.path() << "' was saved from a different model: it has a ternary layer '"
                                         << it.key() << "' this model lacks");
    QuantizableLayer* l = found->second;
    if (is_export) {
      // The layer computes with its quantized weights, stored as a plain weight.
      TTQ_CHECK(!l->is_ternary(), "layer '" << it.key() << "' is already ternary; load exports into a fresh model");
      const std::string codes_name = it.key() + ".weight_codes";
      TTQ_CHECK(ck.file.has(codes_name), "'" << ck.file.path() << "' lacks '" << codes_name << "'");
      Tensor packed = ck.file.tensor(codes_name);
      TTQ_CHECK(packed.dtype() == DType::U8, "'" << ck.file.path() << "': '" << codes_name << "' holds "
                                                 << dtype_name(packed.dtype()) << " values, not u8 packed 2-bit codes");
      Tensor& w = l->weight().value;
      std::vector<int8_t> codes(static_cast<size_t>(w.numel()));
      try {
        unpack_ternary_codes(packed.data<uint8_t>(), packed.numel(), w.numel(), codes.data());
      } catch (const Error& e) {
        TTQ_FAIL("'" << ck.file.path() << "': '" << codes_name << "': " << e.what());
      }
      // One scale per layer, or one per output channel (row of the weight), as the layer's stored
      // settings say; copy_checked refuses a file whose scales have another shape.
      const bool per_channel = ternary_from_json(it.value(), ck.file.path(), it.key()).per_channel_scales;
      const int64_t channels = per_channel ? w.shape()[0] : 1;
      Tensor wp = Tensor::empty({channels}), wn = Tensor::empty({channels});
      copy_checked(ck, it.key() + ".wp", wp);
      copy_checked(ck, it.key() + ".wn", wn);
      const int64_t per = w.numel() / channels;
      Tensor host = Tensor::empty(w.shape());
      for (int64_t i = 0; i < w.numel(); ++i)
        host.data<float>()[i] = math::ternary_value(codes[i], wp.data<float>()[i / per], wn.data<float>()[i / per]);
      w.copy_from(host);
      expected.insert({codes_name, it.key() + ".wp", it.key() + ".wn"});
    } else if (!l->is_ternary()) {
      l->enable_ternary(ternary_from_json(it.value(), ck.file.path(), it.key()));
    }
  }
  for (auto& np : net.named_parameters()) {
    const bool exported_weight = is_export && ck.ternary.contains(np.name.substr(0, np.name.rfind('.'))) &&
                                 np.name.substr(np.name.rfind('.') + 1) == "weight";
    if (exported_weight) continue;
    copy_checked(ck, np.name, np.param->value);
    expected.insert(np.name);
  }
  for (auto& nb : net.named_buffers()) {
    copy_checked(ck, nb.name, *nb.tensor);
    expected.insert(nb.name);
  }
  // PyTorch's BatchNorm counter: the engine does not use it (momentum is fixed), so a state dict
  // may carry it for any BatchNorm of the model.
  std::set<std::string> ignorable;
  if (ck.format == "state-dict")
    for (auto& [path, m] : net.named_modules())
      if (dynamic_cast<BatchNorm*>(m)) ignorable.insert(path + ".num_batches_tracked");
  for (const auto& name : ck.file.names()) {
    if (ck.format != "state-dict" && name.rfind("optim.", 0) == 0) continue;
    if (ignorable.count(name)) continue;
    TTQ_CHECK(expected.count(name), mismatch(ck) << ": this model has no '" << name << "'");
  }
  // Recompute the ternary state (codes, statistics) from the loaded weights.
  for (auto* l : quantizable_layers(net))
    if (l->is_ternary()) l->quantizer()->forward(l->weight().value);
}

void load_optimizer(Optimizer& opt, const Checkpoint& ck) {
  TTQ_CHECK(ck.format == "ttq-checkpoint", "'" << ck.file.path() << "' is an export and holds no optimizer state");
  for (auto& nb : opt.state()) copy_checked(ck, "optim." + nb.name, *nb.tensor);
  opt.set_steps(ck.state.optimizer_steps);
}

ExportReport export_ternary(const std::string& path, Module& net, const json& config, const TrainingSetInfo* data) {
  SafeTensorsWriter w;
  ExportReport r;
  const ModelSize size = model_size(net);
  r.fp32_bytes = size.fp32_bytes;
  r.tensor_bytes = size.deployed_bytes;
  std::set<std::string> ternary_weights;
  for (auto* l : quantizable_layers(net)) {
    if (!l->is_ternary()) {
      ++r.full_precision_layers;
      continue;
    }
    ++r.ternary_layers;
    TernaryQuantizer* q = l->quantizer();
    q->forward(l->weight().value);  // codes and scales as of now
    const Tensor codes = q->codes().to(Device::CPU);
    std::vector<uint8_t> packed = pack_ternary_codes(codes.data<int8_t>(), codes.numel());
    Tensor t = Tensor::empty({static_cast<int64_t>(packed.size())}, DType::U8);
    std::copy(packed.begin(), packed.end(), t.data<uint8_t>());
    w.add(l->path() + ".weight_codes", t);
    if (!q->trainable_scales()) {  // TWN: the fixed scale, stored as Wp = Wn
      w.add(l->path() + ".wp", Tensor::full({1}, q->stats().wp));
      w.add(l->path() + ".wn", Tensor::full({1}, q->stats().wn));
    }
    ternary_weights.insert(l->path() + ".weight");
  }
  for (auto& np : net.named_parameters())
    if (!ternary_weights.count(np.name)) w.add(np.name, np.param->value.to(Device::CPU));
  for (auto& nb : net.named_buffers()) w.add(nb.name, nb.tensor->to(Device::CPU));
  w.add_metadata("format", "ttq-export");
  w.add_metadata("config", config.dump());
  w.add_metadata("ternary", ternary_layers_json(net).dump());
  if (data) w.add_metadata("data", data->to_json().dump());
  w.write(path);
  struct stat st{};
  if (::stat(path.c_str(), &st) == 0) r.file_bytes = st.st_size;
  return r;
}

}  // namespace ttq
