#include "engine/nn/module.h"

namespace ttq {

const char* param_kind_name(ParamKind k) {
  switch (k) {
    case ParamKind::Weight: return "weight";
    case ParamKind::Bias: return "bias";
    case ParamKind::Norm: return "norm";
    case ParamKind::Scale: return "scale";
  }
  return "?";
}

void Parameter::init(const Shape& shape, ParamKind k) {
  value = Tensor::zeros(shape);
  grad = Tensor::zeros(shape);
  kind = k;
}

Tensor Module::forward(const Tensor& x) {
  TTQ_CHECK(x.defined(), who() << ": forward on an undefined tensor");
  TTQ_CHECK(x.dtype() == DType::F32 || x.dtype() == DType::BF16,
            who() << ": expects an f32 or bf16 tensor, got " << x.str());
  check_input(x);
  Tensor y = forward_impl(x);
  has_forward_ = true;
  return y;
}

Tensor Module::backward(const Tensor& dy) {
  require_forward();
  TTQ_CHECK(dy.defined(), who() << ": backward on an undefined gradient");
  Tensor dx = backward_impl(dy);
  has_forward_ = false;
  if (backward_hook_) backward_hook_(*this);
  return dx;
}

void Module::set_backward_hook(const BackwardHook& hook) {
  backward_hook_ = hook;
  for (auto& [name, child] : children_) child->set_backward_hook(hook);
}

void Module::require_forward() const {
  TTQ_CHECK(has_forward_, who() << ": backward called without a forward pass before it");
}

void Module::check_input(const Tensor&) const {}

void Module::train(bool on) {
  training_ = on;
  for (auto& [name, child] : children_) child->train(on);
}

std::string Module::who() const {
  return "layer '" + (path_.empty() ? std::string("<model>") : path_) + "' (" + type_ + ")";
}

void Module::register_parameter(const std::string& name, Parameter* p) { params_.emplace_back(name, p); }
void Module::register_buffer(const std::string& name, Tensor* t) { buffers_.emplace_back(name, t); }

void Module::add_child(const std::string& name, std::shared_ptr<Module> m) {
  TTQ_CHECK(m != nullptr, who() << ": null child '" << name << "'");
  for (auto& [n, c] : children_) TTQ_CHECK(n != name, who() << ": duplicate child name '" << name << "'");
  m->set_path(path_.empty() ? name : path_ + "." + name);
  children_.emplace_back(name, std::move(m));
}

void Module::set_path(const std::string& path) {
  path_ = path;
  for (auto& [name, child] : children_) child->set_path(path_ + "." + name);
}

void Module::collect_params(const std::string& prefix, std::vector<NamedParameter>& out) {
  for (auto& [name, p] : params_) out.push_back({prefix + name, p});
  for (auto& [name, child] : children_) child->collect_params(prefix + name + ".", out);
}

void Module::collect_buffers(const std::string& prefix, std::vector<NamedBuffer>& out) {
  for (auto& [name, t] : buffers_) out.push_back({prefix + name, t});
  for (auto& [name, child] : children_) child->collect_buffers(prefix + name + ".", out);
}

std::vector<NamedParameter> Module::named_parameters() {
  std::vector<NamedParameter> out;
  collect_params("", out);
  return out;
}

std::vector<NamedBuffer> Module::named_buffers() {
  std::vector<NamedBuffer> out;
  collect_buffers("", out);
  return out;
}

std::vector<std::pair<std::string, Module*>> Module::named_modules() {
  std::vector<std::pair<std::string, Module*>> out{{path_, this}};
  for (auto& [name, child] : children_) {
    auto sub = child->named_modules();
    out.insert(out.end(), sub.begin(), sub.end());
  }
  return out;
}

Module* Module::find(const std::string& path) {
  for (auto& [p, m] : named_modules())
    if (p == path) return m;
  return nullptr;
}

void Module::to(Device d) {
  for (auto& np : named_parameters()) {
    np.param->value = np.param->value.to(d);
    if (np.param->grad.defined()) np.param->grad = np.param->grad.to(d);
  }
  for (auto& nb : named_buffers()) *nb.tensor = nb.tensor->to(d);
}

Device Module::device() {
  auto params = named_parameters();
  return params.empty() ? Device::CPU : params.front().param->value.device();
}

void Module::zero_grad() {
  for (auto& np : named_parameters())
    if (np.param->grad.defined()) np.param->grad.zero();
}

Tensor Sequential::forward_impl(const Tensor& x) {
  Tensor h = x;
  for (auto& [name, child] : children()) h = child->forward(h);
  return h;
}

Tensor Sequential::backward_impl(const Tensor& dy) {
  Tensor g = dy;
  const auto& kids = children();
  for (auto it = kids.rbegin(); it != kids.rend(); ++it) g = it->second->backward(g);
  return g;
}

}  // namespace ttq
