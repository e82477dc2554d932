// Dense (fully connected) layer: y = act(x·W + b), W: (in, out), b: (out).
#pragma once
#include <type_traits>

#include "kernels/gemm.h"
#include "layers/layer.h"

namespace cr {

template <typename T>
class Dense final : public Layer<T> {
 public:
  Dense(i64 in, i64 out, Act act, T alpha) {
    if (in < 1) fail("Dense: input size must be >= 1; received ", in);
    if (out < 1) fail("Dense: units must be >= 1; received ", out);
    checked_mul(in, out, "Dense: kernel (input size x units)");
    this->in_ = in;
    this->out_ = out;
    this->act_ = act;
    this->alpha_ = alpha;
  }
  const char* kind() const override { return "dense"; }
  bool has_activation() const override { return true; }
  std::vector<ParamShape> param_shapes() const override {
    return {{"kernel", {this->in_, this->out_}}, {"bias", {this->out_}}};
  }
  void bind(T* params, T* grads) override {
    W_ = params;
    b_ = params + this->in_ * this->out_;
    dW_ = grads;
    db_ = grads + this->in_ * this->out_;
  }

  // The kernel packed once for the GEMM of every pass (float32; a narrow layer is left
  // unpacked, and a product of a few rows ignores the panels).
  void begin_inference(i64) override {
    if constexpr (std::is_same_v<T, float>)
      sgemm_pack_b(false, this->out_, this->in_, W_, this->out_, packed_);
  }
  void end_inference() override { packed_.release(); }

  // The products: y = x·W (B, out, in), dW += xᵀ·dz (in, out, B), dx = dz·Wᵀ (B, in, out);
  // the activation's element-wise loops over B·out values (from kParallelElems / 4 for the
  // expensive ones).
  bool step_single_threaded(i64 B) const override {
    const i64 in = this->in_, out = this->out_;
    return gemm_single_threaded<T>(B, out, in) && gemm_single_threaded<T>(in, out, B) &&
           gemm_single_threaded<T>(B, in, out) && B * out <= kParallelElems / 4;
  }

  // x: (B, in), y: (B, out)
  void forward(const T* x, T* y, i64 B, bool training) override {
    const i64 in = this->in_, out = this->out_;
    if constexpr (std::is_same_v<T, float>) {
      if (!act_row_coupled(this->act_)) {  // bias + activation on each tile as the GEMM finishes it
        sgemm_bias_act(false, false, B, out, in, 1.0f, x, in, W_, out, y, out,
                       GemmEpilogue{b_, int(this->act_), this->alpha_},
                       training ? nullptr : &packed_);
        return;
      }
    }
    gemm(false, false, B, out, in, T(1), x, in, W_, out, T(0), y, out);
    bias_activation_forward(this->act_, this->alpha_, b_, y, B, out);
  }

  // dy: (B, out) -> dz in place (with db += Σ_rows dz); dW += xᵀ·dz; dx = dz·Wᵀ. Frozen:
  // dz and dx only.
  void backward(const T* x, const T* y, T* dy, T* dx, i64 B) override {
    const i64 in = this->in_, out = this->out_;
    if (this->trainable_) {
      activation_backward_bias(this->act_, this->alpha_, y, dy, db_, B, out);
      gemm(true, false, in, out, B, T(1), x, in, dy, out, T(1), dW_, out);
    } else {
      activation_backward(this->act_, this->alpha_, y, dy, B, out);
    }
    if (dx) gemm(false, true, B, in, out, T(1), dy, out, W_, out, T(0), dx, in);
  }

 private:
  PackedB packed_;  // W packed for the passes of one inference call, or nothing
  T* W_ = nullptr;
  T* b_ = nullptr;
  T* dW_ = nullptr;
  T* db_ = nullptr;
};

}  // namespace cr
