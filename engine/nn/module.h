// Module: a layer (or a container of layers) with an explicit forward and backward.
// forward() saves what backward() needs in the module itself (the saved context); a module is
// used once per step. Parameter gradients accumulate (like PyTorch) until zero_grad().
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "engine/core/tensor.h"

namespace ttq {

// What kind of tensor a parameter is; optimizers pick learning-rate multipliers and weight decay
// by kind (for example Wp/Wn apart from the latent weights).
enum class ParamKind { Weight, Bias, Norm, Scale };
const char* param_kind_name(ParamKind k);

struct Parameter {
  Tensor value;
  Tensor grad;
  ParamKind kind = ParamKind::Weight;
  bool trainable = true;

  void init(const Shape& shape, ParamKind k);
};

struct NamedParameter {
  std::string name;
  Parameter* param;
};
struct NamedBuffer {
  std::string name;
  Tensor* tensor;
};

class Module {
 public:
  explicit Module(std::string type) : type_(std::move(type)) {}
  virtual ~Module() = default;
  Module(const Module&) = delete;
  Module& operator=(const Module&) = delete;

  // Checks the input (errors name this layer), then runs forward_impl.
  Tensor forward(const Tensor& x);
  // Returns dL/dx for dL/dy; adds parameter gradients into Parameter::grad.
  Tensor backward(const Tensor& dy);

  void train(bool on = true);
  void eval() { train(false); }
  bool training() const { return training_; }

  const std::string& type() const { return type_; }
  // Full dotted name inside the model ("layer1.0.conv1"); "" for the root.
  const std::string& path() const { return path_; }
  // "layer 'layer1.0.conv1' (Conv2d)": used in error messages.
  std::string who() const;

  // PyTorch state-dict order: own parameters first, then children in registration order.
  std::vector<NamedParameter> named_parameters();
  std::vector<NamedBuffer> named_buffers();
  std::vector<std::pair<std::string, Module*>> named_modules();
  Module* find(const std::string& path);
  void zero_grad();
  // Moves every parameter, gradient and buffer to the device (optimizers are created after).
  void to(Device d);
  // The device of the parameters (CPU for a module without any).
  Device device();

  const std::vector<std::pair<std::string, std::shared_ptr<Module>>>& children() const { return children_; }

  // Called with the module right after each backward() of it, i.e. once its parameter gradients
  // for this step are final (the data-parallel gradient reducer launches buckets this way).
  // Sets the hook on this module and every module below it; an empty function removes it.
  using BackwardHook = std::function<void(Module&)>;
  void set_backward_hook(const BackwardHook& hook);

 protected:
  virtual void check_input(const Tensor& x) const;
  virtual Tensor forward_impl(const Tensor& x) = 0;
  virtual Tensor backward_impl(const Tensor& dy) = 0;

  void register_parameter(const std::string& name, Parameter* p);
  void register_buffer(const std::string& name, Tensor* t);
  template <typename M> std::shared_ptr<M> register_module(const std::string& name, std::shared_ptr<M> m) {
    add_child(name, m);
    return m;
  }
  void add_child(const std::string& name, std::shared_ptr<Module> m);
  // Requires that forward ran since the last backward (catches misuse with a clear message).
  void require_forward() const;

 private:
  void set_path(const std::string& path);
  void collect_params(const std::string& prefix, std::vector<NamedParameter>& out);
  void collect_buffers(const std::string& prefix, std::vector<NamedBuffer>& out);

  std::string type_;
  std::string path_;
  bool training_ = true;
  bool has_forward_ = false;
  BackwardHook backward_hook_;
  std::vector<std::pair<std::string, Parameter*>> params_;
  std::vector<std::pair<std::string, Tensor*>> buffers_;
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> children_;
};

// Runs children in order; backward in reverse.
class Sequential : public Module {
 public:
  Sequential() : Module("Sequential") {}
  template <typename M> std::shared_ptr<M> add(const std::string& name, std::shared_ptr<M> m) {
    return register_module(name, std::move(m));
  }

 protected:
  void check_input(const Tensor&) const override {}
  Tensor forward_impl(const Tensor& x) override;
  Tensor backward_impl(const Tensor& dy) override;
};

}  // namespace ttq
