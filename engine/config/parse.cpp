#include "engine/config/parse.h"

namespace ttq {

QuantizeOptions parse_quantize_options(JsonReader& r, const std::vector<std::string>& model_default) {
  QuantizeOptions q;
  const std::string mode = r.get<std::string>("mode", "max");
  try {
    q.ternary.mode = parse_threshold_mode(mode);
  } catch (const Error& e) {
    TTQ_FAIL("config: '" << r.path_of("mode") << "': unknown threshold mode '" << mode
                         << "' (expected one of: max, sparsity, twn)");
  }
  q.ternary.t = static_cast<float>(r.get<double>("t", 0.05));
  q.ternary.r = r.get<double>("r", q.ternary.r);
  TTQ_CHECK(q.ternary.t >= 0.0f && q.ternary.t < 1.0f, "config: '" << r.path_of("t") << "' must be in [0, 1), got " << q.ternary.t);
  TTQ_CHECK(q.ternary.r >= 0.0 && q.ternary.r < 1.0, "config: '" << r.path_of("r") << "' must be in [0, 1), got " << q.ternary.r);
  q.ternary.init_scales_from_weights = r.get<bool>("init_scales_from_weights", false);
  q.ternary.clamp_scales = r.get<bool>("clamp_scales", false);
  q.ternary.per_channel_scales = r.get<bool>("per_channel_scales", false);
  TTQ_CHECK(!(q.ternary.per_channel_scales && q.ternary.mode == math::ThresholdMode::Twn),
            "config: '" << r.path_of("per_channel_scales") << "' needs trained scales; mode 'twn' has one fixed "
                        << "scale per layer");
  // TTQ divides the full-precision weights by their max once when it starts (TTQ-SPEC.md); the
  // TWN baseline ternarizes the weights as they are, as TWN does (its forward, unlike TTQ's, would
  // scale with the division: w_t = +-mean|w|).
  q.normalize_init = r.get<bool>("normalize_init", q.ternary.mode != math::ThresholdMode::Twn);
  q.full_precision_layers = r.get<std::vector<std::string>>("full_precision_layers", model_default);
  r.finish();
  return q;
}

OptimizerConfig parse_optimizer(JsonReader& r) {
  OptimizerConfig c;
  c.type = r.get<std::string>("type", c.type);
  TTQ_CHECK(c.type == "sgd" || c.type == "adam",
            "config: '" << r.path_of("type") << "': unknown optimizer '" << c.type << "' (expected sgd or adam)");
  c.lr = r.get<double>("lr", c.lr);
  c.weight_decay = r.get<double>("weight_decay", c.weight_decay);
  c.momentum = r.get<double>("momentum", c.momentum);
  c.nesterov = r.get<bool>("nesterov", c.nesterov);
  c.beta1 = r.get<double>("beta1", c.beta1);
  c.beta2 = r.get<double>("beta2", c.beta2);
  c.eps = r.get<double>("eps", c.eps);
  JsonReader groups = r.child("groups");
  const std::pair<const char*, ParamKind> kinds[] = {
      {"weight", ParamKind::Weight}, {"bias", ParamKind::Bias}, {"norm", ParamKind::Norm}, {"scale", ParamKind::Scale}};
  for (const auto& [name, kind] : kinds) {
    JsonReader g = groups.child(name);
    GroupOptions& go = c.group(kind);
    go.lr_mult = g.get<double>("lr_mult", go.lr_mult);
    go.weight_decay = g.get<bool>("weight_decay", go.weight_decay);
    TTQ_CHECK(go.lr_mult >= 0.0, "config: '" << g.path_of("lr_mult") << "' must be >= 0");
    g.finish();
  }
  groups.finish();
  c.weight_decay_layers = r.get<std::vector<std::string>>("weight_decay_layers", c.weight_decay_layers);
  r.finish();
  try {
    c.validate();
  } catch (const Error& e) {
    TTQ_FAIL("config: '" << r.path() << "': " << e.what());
  }
  return c;
}

ScheduleConfig parse_schedule(JsonReader& r) {
  ScheduleConfig s;
  s.type = r.get<std::string>("type", s.type);
  s.milestones = r.get<std::vector<double>>("milestones", s.milestones);
  s.gamma = r.get<double>("gamma", s.gamma);
  s.values = r.get<std::vector<double>>("values", s.values);
  s.final_lr = r.get<double>("final_lr", s.final_lr);
  s.total_epochs = r.get<double>("total_epochs", s.total_epochs);
  s.warmup_epochs = r.get<double>("warmup_epochs", s.warmup_epochs);
  s.warmup_start_factor = r.get<double>("warmup_start_factor", s.warmup_start_factor);
  r.finish();
  try {
    s.validate();
  } catch (const Error& e) {
    TTQ_FAIL("config: '" << r.path() << "': " << e.what());
  }
  return s;
}

}  // namespace ttq
