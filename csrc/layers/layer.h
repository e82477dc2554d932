// The layer contract: a forward/backward pair over a batch of flattened samples.
// A layer sees (B, in_size) inputs and produces (B, out_size) outputs, row-major. It owns
// no parameter storage: the Network binds views into its one flat parameter block.
#pragma once
#include <string>
#include <utility>
#include <vector>

#include "common.h"
#include "kernels/activations.h"

namespace cr {

struct ParamShape {
  std::string name;          // "kernel", "bias"
  std::vector<i64> shape;    // e.g. (in, out) for a Dense kernel
  // false: state the layer updates itself (BatchNormalization's moving statistics), never
  // the optimizer's, whatever the layer's trainable flag says.
  bool trainable = true;
  i64 size() const {
    i64 n = 1;
    for (i64 d : shape) n = checked_mul(n, d, "parameter tensor size");
    return n;
  }
};

template <typename T>
class Layer {
 public:
  virtual ~Layer() = default;
  virtual const char* kind() const = 0;
  i64 in_size() const { return in_; }
  i64 out_size() const { return out_; }
  // Units whose outputs the monitor counts as alive/dead: out_size for Dense; the channel
  // count for channels-last image layers (a sample's output is (H, W, units)).
  virtual i64 units() const { return out_; }

  // Parameter tensors in order; the Network allocates them contiguously and calls bind().
  virtual std::vector<ParamShape> param_shapes() const { return {}; }
  virtual void bind(T* params, T* grads) {}
  // Grow scratch buffers for batches up to `batch`. Called outside the batch loop only.
  virtual void reserve(i64 batch) {}
  // For layers with randomness in training (dropout): reseeded once per fit call.
  virtual void seed(std::uint64_t s) {}
  // The random stream's position (dropout), so a trace can put it back: 0 for layers
  // without randomness.
  virtual std::uint64_t rng_state() const { return 0; }
  virtual void set_rng_state(std::uint64_t) {}

  // Around the passes of one inference call (predict, evaluate), in which the parameters do
  // not change: a layer may prepare its weights once for all the passes (Dense packs its
  // kernel for the GEMM). rows: the most rows of a pass. end_inference drops what
  // begin_inference made, before the parameters can change again.
  virtual void begin_inference(i64 rows) {}
  virtual void end_inference() {}

  // Whether a training step's forward and backward passes over B rows run on the calling
  // thread alone at any thread count: every product and element-wise loop below the sizes
  // at which they go parallel. False where unknown (the Network then starts no helper thread
  // beside the step: gather_ahead.h).
  virtual bool step_single_threaded(i64 B) const { return false; }

  // x: (B, in) -> y: (B, out). Caches what backward needs (usually just y, kept by caller).
  virtual void forward(const T* x, T* y, i64 B, bool training) = 0;
  // x, y: this layer's input and output from the forward pass. dy: (B, out) gradient w.r.t.
  // y, may be overwritten. Accumulates (+=) parameter gradients; writes dx: (B, in) unless
  // it is null (first layer: nobody needs it).
  virtual void backward(const T* x, const T* y, T* dy, T* dx, i64 B) = 0;

  // Frozen (trainable = false): the backward pass still computes dx, but accumulates no
  // parameter gradients (the Network takes no optimizer step on them either);
  // BatchNormalization then also runs in inference mode in training (as Keras's does).
  bool trainable() const { return trainable_; }
  void set_trainable(bool on) { trainable_ = on; }
  // Whether the layer applies an activation of its own (Dense, Conv2D, Activation): what
  // a trace records z, the pre-activation, for.
  virtual bool has_activation() const { return false; }

  // The activation applied at this layer's output. The Network may take a final softmax or
  // sigmoid away from the last layer to fuse it into the loss (set_activation(Linear)).
  Act activation() const { return act_; }
  T activation_alpha() const { return alpha_; }
  void set_activation(Act a) { act_ = a; }

 protected:
  i64 in_ = 0, out_ = 0;
  Act act_ = Act::Linear;
  T alpha_ = T(0);
  bool trainable_ = true;
};

}  // namespace cr
