#include "engine/optim/optimizer.h"

#include <cmath>
#include <set>

#include "engine/config/json_reader.h"

#include "kernels/ops.h"

namespace ttq {

void OptimizerConfig::validate() const {
  TTQ_CHECK(type == "sgd" || type == "adam", "unknown optimizer type '" << type << "' (expected sgd or adam)");
  TTQ_CHECK(lr > 0.0 && std::isfinite(lr), "optimizer lr must be positive, got " << lr);
  TTQ_CHECK(weight_decay >= 0.0, "optimizer weight_decay must be >= 0, got " << weight_decay);
  TTQ_CHECK(momentum >= 0.0 && momentum < 1.0, "optimizer momentum must be in [0, 1), got " << momentum);
  TTQ_CHECK(!nesterov || momentum > 0.0, "nesterov needs momentum > 0");
  TTQ_CHECK(beta1 >= 0.0 && beta1 < 1.0 && beta2 >= 0.0 && beta2 < 1.0,
            "adam betas must be in [0, 1), got " << beta1 << ", " << beta2);
  TTQ_CHECK(eps > 0.0, "adam eps must be positive, got " << eps);
  for (const auto& g : groups) TTQ_CHECK(g.lr_mult >= 0.0, "lr_mult must be >= 0, got " << g.lr_mult);
}

Optimizer::Optimizer(std::vector<NamedParameter> params, const OptimizerConfig& cfg) : cfg_(cfg) {
  cfg_.validate();
  for (auto& np : params)
    if (np.param->trainable) params_.push_back(np);
  // The layer of "layer1.0.conv1.weight" is "layer1.0.conv1".
  auto layer_of = [](const std::string& name) {
    const size_t dot = name.rfind('.');
    return dot == std::string::npos ? std::string() : name.substr(0, dot);
  };
  std::set<std::string> layers;
  for (auto& np : params) layers.insert(layer_of(np.name));
  for (const std::string& l : cfg_.weight_decay_layers)
    if (!layers.count(l)) {
      const std::string hint = closest_match(l, std::vector<std::string>(layers.begin(), layers.end()));
      TTQ_FAIL("optimizer weight_decay_layers: the model has no layer '"
               << l << "'" << (hint.empty() ? "" : " (did you mean '" + hint + "'?)"));
    }
  const std::set<std::string> decayed(cfg_.weight_decay_layers.begin(), cfg_.weight_decay_layers.end());
  for (auto& np : params_) {
    const int kind = static_cast<int>(np.param->kind);
    const bool excluded = !decayed.empty() && !decayed.count(layer_of(np.name));
    group_.push_back(excluded ? kind + 4 : kind);
  }
}

ops::GroupRates Optimizer::group_rates(double lr) const {
  static_assert(ops::kParamGroups == 8, "one rate per ParamKind, with and without weight decay");
  ops::GroupRates r;
  for (int k = 0; k < 4; ++k) {
    const GroupOptions& g = cfg_.groups[static_cast<size_t>(k)];
    r.lr[k] = r.lr[k + 4] = static_cast<float>(lr * g.lr_mult);
    r.wd[k] = g.weight_decay ? static_cast<float>(cfg_.weight_decay) : 0.0f;
    r.wd[k + 4] = 0.0f;
  }
  return r;
}

void Optimizer::step(double lr) {
  ++steps_;
  apply(group_rates(lr));
}

ops::MultiTensorOptimizer& Optimizer::multi(std::vector<Tensor>* s1, std::vector<Tensor>* s2) {
  if (!multi_) {
    std::vector<ops::OptimTensorRefs> refs;
    for (size_t i = 0; i < params_.size(); ++i) {
      Parameter& p = *params_[i].param;
      refs.push_back({&p.value, &p.grad, s1 && !s1->empty() ? &(*s1)[i] : nullptr,
                      s2 && !s2->empty() ? &(*s2)[i] : nullptr, group_[i]});
    }
    multi_ = std::make_unique<ops::MultiTensorOptimizer>(std::move(refs));
  }
  return *multi_;
}

void Optimizer::zero_grad() {
  for (auto& np : params_) np.param->grad.zero();
}

Sgd::Sgd(std::vector<NamedParameter> params, const OptimizerConfig& cfg) : Optimizer(std::move(params), cfg) {
  if (cfg_.momentum != 0.0)
    for (auto& np : params_)
      momentum_.push_back(Tensor::zeros(np.param->value.shape(), DType::F32, np.param->value.device()));
}

void Sgd::apply(const ops::GroupRates& rates) {
  multi(&momentum_, nullptr).sgd(rates, static_cast<float>(cfg_.momentum), cfg_.nesterov, steps_ == 1);
}

std::vector<NamedBuffer> Sgd::state() {
  std::vector<NamedBuffer> out;
  for (size_t i = 0; i < momentum_.size(); ++i) out.push_back({params_[i].name + ".momentum_buffer", &momentum_[i]});
  return out;
}

Adam::Adam(std::vector<NamedParameter> params, const OptimizerConfig& cfg) : Optimizer(std::move(params), cfg) {
  for (auto& np : params_) {
    m_.push_back(Tensor::zeros(np.param->value.shape(), DType::F32, np.param->value.device()));
    v_.push_back(Tensor::zeros(np.param->value.shape(), DType::F32, np.param->value.device()));
  }
}

void Adam::apply(const ops::GroupRates& rates) {
  const float bc1 = static_cast<float>(1.0 - std::pow(cfg_.beta1, static_cast<double>(steps_)));
  const float bc2 = static_cast<float>(1.0 - std::pow(cfg_.beta2, static_cast<double>(steps_)));
  multi(&m_, &v_).adam(rates, static_cast<float>(cfg_.beta1), static_cast<float>(cfg_.beta2),
                       static_cast<float>(cfg_.eps), bc1, bc2);
}

std::vector<NamedBuffer> Adam::state() {
  std::vector<NamedBuffer> out;
  for (size_t i = 0; i < m_.size(); ++i) {
    out.push_back({params_[i].name + ".exp_avg", &m_[i]});
    out.push_back({params_[i].name + ".exp_avg_sq", &v_[i]});
  }
  return out;
}

std::unique_ptr<Optimizer> make_optimizer(std::vector<NamedParameter> params, const OptimizerConfig& cfg) {
  cfg.validate();
  if (cfg.type == "sgd") return std::make_unique<Sgd>(std::move(params), cfg);
  return std::make_unique<Adam>(std::move(params), cfg);
}

}  // namespace ttq
