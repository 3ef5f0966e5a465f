#include <map>

#include "models/model.h"

namespace ttq {

std::vector<std::string> model_names() {
  return {"resnet20", "resnet32", "resnet44", "resnet56", "cifar_resnet", "small_convnet",
          "alexnet", "resnet18", "resnet34"};
}

Model build_model(JsonReader& cfg, const InputSpec& in, uint64_t seed) {
  const std::string name = cfg.require<std::string>("name");
  static const std::map<std::string, int> fixed_depth{{"resnet20", 20}, {"resnet32", 32}, {"resnet44", 44}, {"resnet56", 56}};
  Model m;
  if (name == "cifar_resnet" || fixed_depth.count(name)) {
    CifarResNetOptions o;
    o.depth = name == "cifar_resnet" ? cfg.require<int>("depth") : fixed_depth.at(name);
    const std::string sc = cfg.get<std::string>("shortcut", "A");
    TTQ_CHECK(sc == "A" || sc == "B", "config: '" << cfg.path_of("shortcut") << "' must be \"A\" or \"B\", got \"" << sc << "\"");
    o.shortcut = sc[0];
    o.base_width = cfg.get<int>("base_width", o.base_width);
    o.bn_eps = static_cast<float>(cfg.get<double>("bn_eps", 1e-5));
    o.bn_momentum = static_cast<float>(cfg.get<double>("bn_momentum", 0.1));
    m = make_cifar_resnet(o, in, seed);
  } else if (name == "small_convnet") {
    SmallConvNetOptions o;
    o.width = cfg.get<int>("width", o.width);
    m = make_small_convnet(o, in, seed);
  } else if (name == "alexnet") {
    AlexNetOptions o;
    o.bn_eps = static_cast<float>(cfg.get<double>("bn_eps", 1e-4));
    o.bn_momentum = static_cast<float>(cfg.get<double>("bn_momentum", 0.1));
    m = make_alexnet(o, in, seed);
  } else if (name == "resnet18" || name == "resnet34") {
    ImageNetResNetOptions o;
    o.depth = name == "resnet18" ? 18 : 34;
    o.bn_eps = static_cast<float>(cfg.get<double>("bn_eps", 1e-5));
    o.bn_momentum = static_cast<float>(cfg.get<double>("bn_momentum", 0.1));
    m = make_imagenet_resnet(o, in, seed);
  } else {
    const std::string hint = closest_match(name, model_names());
    TTQ_FAIL("config: '" << cfg.path_of("name") << "': unknown model '" << name << "'"
                         << (hint.empty() ? std::string() : " (did you mean '" + hint + "'?)"));
  }
  cfg.finish();
  return m;
}

Model build_model(const json& cfg, const InputSpec& in, uint64_t seed, const std::string& path) {
  JsonReader r(cfg, path);
  return build_model(r, in, seed);
}

}  // namespace ttq
