// 2-D convolution, channels-last: y = act(conv(x, W) + b) with x: (B, H, W, Cin),
// W: (KH, KW, Cin, Cout) (Keras layout), b: (Cout), y: (B, OH, OW, Cout).
// Lowered to one GEMM per chunk of samples through im2col, or direct loops for one input
// channel; the naive direct twin (kernels/conv_naive.h) runs instead when
// CHAINRULE_CONV_NAIVE=1 is set at layer construction (tests compare the two). The loops
// themselves live in csrc/kernels. Not here: dilation, groups, channels-first input.
#pragma once
#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "kernels/conv_c1.h"
#include "kernels/conv_naive.h"
#include "kernels/gemm.h"
#include "kernels/im2col.h"
#include "kernels/spatial.h"
#include "layers/layer.h"

namespace cr {

template <typename T>
class Conv2D final : public Layer<T> {
 public:
  // The im2col buffer is bounded: batches whose col matrix would exceed this are processed
  // in chunks of samples (one GEMM per chunk).
  static constexpr i64 kColBytes = i64(64) << 20;
  // Inference (no backward to feed) runs im2col and the GEMM on chunks of samples whose col
  // matrix stays in L2 between being written and being read: a batch-wide col matrix goes
  // to memory and back (at batch 256 the example CNN's second layer wrote 26 MB per call).
  static constexpr i64 kInferColBytes = i64(256) << 10;

  Conv2D(i64 h, i64 w, i64 cin, i64 cout, i64 kh, i64 kw, i64 sh, i64 sw, bool same, Act act,
         T alpha) {
    if (cin < 1) fail("Conv2D: input channels must be >= 1; received ", cin);
    if (cout < 1) fail("Conv2D: filters must be >= 1; received ", cout);
    s_.H = h;
    s_.W = w;
    s_.Cin = cin;
    s_.Cout = cout;
    s_.ah = Axis::make("Conv2D", "height", h, kh, sh, same);
    s_.aw = Axis::make("Conv2D", "width", w, kw, sw, same);
    // Every size the layer indexes with, checked once here; the products in ConvShape are
    // then known to fit.
    checked_mul(checked_mul(h, w, "Conv2D: input"), cin, "Conv2D: input (height x width x channels)");
    const i64 pixels = checked_mul(s_.OH(), s_.OW(), "Conv2D: output");
    checked_mul(pixels, cout, "Conv2D: output (height x width x filters)");
    const i64 k = checked_mul(checked_mul(kh, kw, "Conv2D: kernel"), cin, "Conv2D: kernel (kh x kw x channels)");
    checked_mul(k, cout, "Conv2D: kernel (kh x kw x channels x filters)");
    const i64 col_per_sample = checked_mul(pixels, k, "Conv2D: one sample's im2col matrix");
    this->in_ = s_.in_size();
    this->out_ = s_.out_size();
    this->act_ = act;
    this->alpha_ = alpha;
    // A 1x1 stride-1 convolution needs no im2col: x itself is the col matrix.
    pointwise_ = kh == 1 && kw == 1 && sh == 1 && sw == 1;
    // One input channel: direct loops (no im2col) for the forward pass and dW.
    direct_ = cin == 1 && !pointwise_;
    chunk_ = std::max<i64>(1, kColBytes / i64(sizeof(T) * col_per_sample));
    infer_chunk_ = std::max<i64>(1, kInferColBytes / i64(sizeof(T) * col_per_sample));
    const char* env = std::getenv("CHAINRULE_CONV_NAIVE");
    naive_ = env && env[0] == '1';
  }
  const char* kind() const override { return "conv2d"; }
  bool has_activation() const override { return true; }
  i64 units() const override { return s_.Cout; }  // channels-last: a unit is an output channel
  const ConvShape& shape() const { return s_; }
  std::vector<ParamShape> param_shapes() const override {
    return {{"kernel", {s_.ah.window, s_.aw.window, s_.Cin, s_.Cout}}, {"bias", {s_.Cout}}};
  }
  void bind(T* params, T* grads) override {
    const i64 nk = s_.K() * s_.Cout;
    W_ = params;
    b_ = params + nk;
    dW_ = grads;
    db_ = grads + nk;
  }
  bool naive() const { return naive_; }
  void reserve(i64 batch) override {
    const i64 nbs = bias_blocks(batch) * s_.Cout;
    if (i64(bsum_.size()) < nbs) bsum_.assign(nbs, T(0));
    if (pointwise_ || naive_) return;
    if (direct_) {
      const i64 nk = s_.K() * s_.Cout * max_threads();
      if (i64(partial_.size()) < nk) partial_.assign(nk, T(0));
    }
    const i64 per_sample = s_.OH() * s_.OW() * s_.K();
    const i64 need = std::max(std::min(batch, chunk_) * per_sample,
                              std::min(batch, infer_chunk_) * per_sample * infer_slices(batch));
    if (i64(col_.size()) < need) col_.assign(need, T(0));
  }

  // x: (B, H, W, Cin), y: (B, OH, OW, Cout). Per chunk of nb samples:
  // col: (nb·OH·OW, K) = im2col(x); y = col · W (K, Cout), then bias and activation per row.
  void forward(const T* x, T* y, i64 B, bool training) override {
    check_capacity(B);
    const i64 P = s_.OH() * s_.OW(), K = s_.K(), Co = s_.Cout;
    if (naive_) {
      conv2d_forward_naive(s_, x, W_, b_, y, B);
      activation_forward(this->act_, this->alpha_, y, B * P, Co);
      return;
    }
    if (direct_) {
      const bool relu = this->act_ == Act::Relu;
      if (!((relu || this->act_ == Act::Linear) &&
            conv2d_forward_c1_simd(s_, x, W_, b_, relu, y, B))) {
        conv2d_forward_c1(s_, x, W_, b_, y, B);
        add_bias_and_activate(y, B * P, false);
      }
      col_holds_ = nullptr;
      return;
    }
    if (!training && !pointwise_) {
      forward_inference(x, y, B);
      col_holds_ = nullptr;
      return;
    }
    for (i64 n0 = 0; n0 < B; n0 += chunk_) {
      const i64 nb = std::min(chunk_, B - n0);
      const T* xs = x + n0 * this->in_;
      T* ys = y + n0 * P * Co;
      const T* col = xs;
      if (!pointwise_) {
        im2col_nhwc(s_, xs, nb, col_.data());
        col = col_.data();
      }
      gemm(false, false, nb * P, Co, K, T(1), col, K, W_, Co, T(0), ys, Co);
      add_bias_and_activate(ys, nb * P, true);
    }
    // Backward can reuse this col matrix when the whole batch was one chunk.
    col_holds_ = training && !pointwise_ && B <= chunk_ ? x : nullptr;
    col_batch_ = B;
  }

  // dy: (B, OH, OW, Cout) -> dz in place; db += Σ dz; per chunk: dW += colᵀ·dz (K, Cout),
  // dcol = dz·Wᵀ (nb·OH·OW, K) into the col buffer (col is dead by then), dx = col2im(dcol).
  void backward(const T* x, const T* y, T* dy, T* dx, i64 B) override {
    check_capacity(B);
    const i64 P = s_.OH() * s_.OW(), K = s_.K(), Co = s_.Cout;
    const bool grads = this->trainable_;  // frozen: dz and dx only
    if (naive_) {
      activation_backward(this->act_, this->alpha_, y, dy, B * P, Co);
      conv2d_backward_naive(s_, x, W_, dy, grads ? dW_ : nullptr, grads ? db_ : nullptr, dx, B);
      return;
    }
    if (grads)
      backprop_activation_and_bias(y, dy, B * P);
    else
      activation_backward(this->act_, this->alpha_, y, dy, B * P, Co);
    const bool have_col = col_holds_ == x && col_batch_ == B && B <= chunk_;
    col_holds_ = nullptr;
    if (!grads && !dx) return;
    for (i64 n0 = 0; n0 < B; n0 += chunk_) {
      const i64 nb = std::min(chunk_, B - n0);
      const T* xs = x + n0 * this->in_;
      const T* dz = dy + n0 * P * Co;
      T* dxs = dx ? dx + n0 * this->in_ : nullptr;
      if (direct_) {
        if (grads) {
          const int nt = int(std::min<i64>(max_threads(), i64(partial_.size()) / (K * Co)));
          if (!conv2d_backward_weights_c1_simd(s_, xs, dz, dW_, partial_.data(), nt, nb))
            conv2d_backward_weights_c1(s_, xs, dz, dW_, partial_.data(), nt, nb);
        }
        if (dxs) {
          gemm(false, true, nb * P, K, Co, T(1), dz, Co, W_, Co, T(0), col_.data(), K);
          col2im_nhwc(s_, col_.data(), nb, dxs);
        }
        continue;
      }
      if (pointwise_) {
        if (grads) gemm(true, false, K, Co, nb * P, T(1), xs, K, dz, Co, T(1), dW_, Co);
        if (dxs) gemm(false, true, nb * P, K, Co, T(1), dz, Co, W_, Co, T(0), dxs, K);
        continue;
      }
      if (grads) {
        if (!have_col) im2col_nhwc(s_, xs, nb, col_.data());
        gemm(true, false, K, Co, nb * P, T(1), col_.data(), K, dz, Co, T(1), dW_, Co);
      }
      if (dxs) {
        gemm(false, true, nb * P, K, Co, T(1), dz, Co, W_, Co, T(0), col_.data(), K);
        col2im_nhwc(s_, col_.data(), nb, dxs);
      }
    }
  }

 private:
  void check_capacity(i64 B) const {
    if (B < 1) fail("Conv2D: batch must be >= 1; received ", B);
    if (!pointwise_ && !naive_ && i64(col_.size()) < std::min(B, chunk_) * s_.OH() * s_.OW() * s_.K())
      fail("Conv2D: batch of ", B, " exceeds the reserved capacity (reserve() was not called)");
    if (i64(bsum_.size()) < bias_blocks(B) * s_.Cout)
      fail("Conv2D: batch of ", B, " exceeds the reserved capacity (reserve() was not called)");
  }

  // Per-thread col slices for the inference forward: one per thread, but together no more
  // than the training bound (kColBytes). A sample whose col matrix alone is large (a big
  // image) gets one slice and the GEMM's own threads, not one copy per thread.
  i64 infer_slices(i64 batch) const {
    const i64 slice_bytes = i64(sizeof(T)) * std::min(batch, infer_chunk_) * s_.OH() * s_.OW() * s_.K();
    return std::clamp<i64>(kColBytes / slice_bytes, 1, max_threads());
  }

  // Forward without training: L2-sized chunks of samples (infer_chunk_), each im2col'd into
  // its thread's slice of col_ and multiplied at once. With at least as many chunks as
  // threads (and slices) the chunks run in parallel, each GEMM on its own thread; otherwise
  // chunk by chunk with the GEMM's own threads. Each row's result does not depend on which
  // rows share its GEMM, except where the GEMM picks its kernel by row count (outputs of
  // <= 12 channels with K >= 128: the dot form from 64 rows); there the bits can differ
  // from the training forward's batch-wide GEMM.
  void forward_inference(const T* x, T* y, i64 B) {
    const i64 P = s_.OH() * s_.OW(), K = s_.K(), Co = s_.Cout;
    const i64 nb_max = std::min(B, infer_chunk_);
    const i64 slice = nb_max * P * K;
    const i64 nchunks = (B + nb_max - 1) / nb_max;
    const int nt = int(std::min<i64>(max_threads(), i64(col_.size()) / slice));
    auto run = [&](i64 c, T* col) {
      const i64 n0 = c * nb_max, nb = std::min(nb_max, B - n0);
      T* ys = y + n0 * P * Co;
      im2col_nhwc(s_, x + n0 * this->in_, nb, col);
      gemm(false, false, nb * P, Co, K, T(1), col, K, W_, Co, T(0), ys, Co);
      add_bias_and_activate(ys, nb * P, true);
    };
    if (nt > 1 && nchunks >= nt) {
#pragma omp parallel for schedule(static) num_threads(nt)
      for (i64 c = 0; c < nchunks; ++c) run(c, col_.data() + i64(thread_index()) * slice);
    } else {
      for (i64 c = 0; c < nchunks; ++c) run(c, col_.data());
    }
  }

  // The bias gradient is summed over blocks of this many output rows (pixels), each block's
  // partial sums kept apart: float32 sums over large batches keep their precision, and the
  // blocks can run on different threads.
  static constexpr i64 kBiasBlock = 256;
  i64 bias_blocks(i64 B) const { return (B * s_.OH() * s_.OW() + kBiasBlock - 1) / kBiasBlock; }

  // y: (rows, Cout) GEMM output, in cache: add the bias (unless the direct kernel already
  // did) and apply the activation, one pass per row with the shared row kernel.
  void add_bias_and_activate(T* y, i64 rows, bool add_bias) {
    bias_activation_forward(this->act_, this->alpha_, add_bias ? b_ : nullptr, y, rows, s_.Cout);
  }

  // dy -> dz = dy ⊙ act'(y) in place and db += Σ_rows dz, one pass with the shared row
  // kernel (softmax, row-coupled: its own pass first). Blocks of rows in parallel, their
  // partial sums added to db in block order: the same sums whatever the thread count.
  void backprop_activation_and_bias(const T* y, T* dz, i64 rows) {
    dispatch_act(this->act_, [&](auto op) {
      using Op = decltype(op);
      const i64 Co = s_.Cout;
      const T alpha = this->alpha_;
      if constexpr (Op::row_coupled) activation_backward(this->act_, alpha, y, dz, rows, Co);
      using Elem = std::conditional_t<Op::row_coupled, act::Linear, Op>;
      const i64 nblk = (rows + kBiasBlock - 1) / kBiasBlock;
      T* bsum = bsum_.data();
#pragma omp parallel for schedule(static) if (rows * Co > kParallelElems && nblk > 1)
      for (i64 k = 0; k < nblk; ++k) {
        T* __restrict bs = bsum + k * Co;
        std::fill(bs, bs + Co, T(0));
        const i64 r1 = std::min(rows, (k + 1) * kBiasBlock);
        for (i64 r = k * kBiasBlock; r < r1; ++r)
          act_grad_sum_row<Elem>(y + r * Co, dz + r * Co, bs, Co, alpha);
      }
      for (i64 k = 0; k < nblk; ++k)
        for (i64 j = 0; j < Co; ++j) db_[j] += bsum[k * Co + j];
    });
  }

  ConvShape s_{};
  bool pointwise_ = false;
  bool direct_ = false;  // Cin == 1: direct forward and dW, col_ only for dx
  avec<T> partial_;      // (threads, K, Cout) per-thread dW sums of the direct path
  bool naive_ = false;  // run the direct twin (CHAINRULE_CONV_NAIVE=1)
  i64 chunk_ = 1;
  i64 infer_chunk_ = 1;  // samples per chunk of the inference forward (kInferColBytes)
  avec<T> col_;
  avec<T> bsum_;  // (bias blocks, Cout) partial sums for db
  const T* col_holds_ = nullptr;  // the x whose im2col the buffer holds (training forward)
  i64 col_batch_ = 0;
  T* W_ = nullptr;
  T* b_ = nullptr;
  T* dW_ = nullptr;
  T* db_ = nullptr;
};

}  // namespace cr
