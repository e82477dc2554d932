// Matrix products for training: C = alpha * op(A) · op(B) + beta * C, row-major.
// op(A) is (M, K): A itself (lda >= K) or, with trans_a, the transpose of a stored (K, M)
// matrix (lda >= M). Likewise op(B) is (K, N). Transposes are never materialised.
// The three products of a Dense layer: forward X·W, backward dY·Wᵀ (trans_b), Xᵀ·dY (trans_a).
#pragma once
#include "common.h"

namespace cr {

// Fast float32 path: packed, cache-blocked, SIMD micro-kernel chosen at run time, OpenMP.
void sgemm(bool trans_a, bool trans_b, i64 M, i64 N, i64 K, float alpha, const float* A,
           i64 lda, const float* B, i64 ldb, float beta, float* C, i64 ldc);
// A fused epilogue for a linear layer's forward product: C = act(C + bias) applied to each
// register tile right after its last K block, while the tile is still in L1. act is an
// element-wise activation code of kernels/activations.h (never softmax, which couples a
// row); bias has one value per column of C.
struct GemmEpilogue {
  const float* bias = nullptr;
  int act = 0;  // Act::Linear
  float alpha = 0.0f;
};
// op(B) packed once for many products with the same B (a layer's weights over the passes of
// one predict call): the panels that the blocked path packs on every call otherwise, made
// once. A product handed it reads them only if they are for its B, shape and kernel and it
// takes the blocked path; any other product ignores them. The owner keeps them in step with
// B: sgemm_pack_b after B changes, or release() first.
class PackedB {
 public:
  bool packed() const { return kernel_ != nullptr; }
  // Forget the panels (B is about to change); the memory is kept for the next packing.
  void release() { kernel_ = nullptr; }

 private:
  friend void sgemm_pack_b(bool, i64, i64, const float*, i64, PackedB&);
  friend const float* packed_panels(const PackedB*, const void*, bool, i64, i64, const float*, i64);
  const void* kernel_ = nullptr;  // the SgemmKernel packed for (nullptr: none)
  const float* source_ = nullptr;
  bool trans_b_ = false;
  i64 N_ = 0, K_ = 0, ldb_ = 0;
  avec<float> panels_;
};
// Pack op(B) (K, N) for products of many rows (M above a few) with this process's kernel;
// leaves `out` unpacked where such products would not pack B (N within one register tile,
// or narrow N taking the dot form).
void sgemm_pack_b(bool trans_b, i64 N, i64 K, const float* B, i64 ldb, PackedB& out);

// sgemm with beta = 0 followed by the epilogue: C = act(alpha·op(A)·op(B) + bias). packed:
// op(B) packed beforehand (sgemm_pack_b), or null.
void sgemm_bias_act(bool trans_a, bool trans_b, i64 M, i64 N, i64 K, float alpha,
                    const float* A, i64 lda, const float* B, i64 ldb, float* C, i64 ldc,
                    const GemmEpilogue& ep, const PackedB* packed = nullptr);

// Whether a product of this shape runs on the calling thread alone, however many threads
// are allowed (below the sizes at which sgemm or dgemm go parallel).
template <typename T>
bool gemm_single_threaded(i64 M, i64 N, i64 K);

// float64 (gradient checks, reference training): correct first, reasonably fast.
void dgemm(bool trans_a, bool trans_b, i64 M, i64 N, i64 K, double alpha, const double* A,
           i64 lda, const double* B, i64 ldb, double beta, double* C, i64 ldc);

// Naive reference twins: always compiled; the oracle for kernel tests.
void sgemm_ref(bool trans_a, bool trans_b, i64 M, i64 N, i64 K, float alpha, const float* A,
               i64 lda, const float* B, i64 ldb, float beta, float* C, i64 ldc);
void dgemm_ref(bool trans_a, bool trans_b, i64 M, i64 N, i64 K, double alpha,
               const double* A, i64 lda, const double* B, i64 ldb, double beta, double* C,
               i64 ldc);

inline void gemm(bool ta, bool tb, i64 M, i64 N, i64 K, float alpha, const float* A, i64 lda,
                 const float* B, i64 ldb, float beta, float* C, i64 ldc) {
  sgemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}
inline void gemm(bool ta, bool tb, i64 M, i64 N, i64 K, double alpha, const double* A,
                 i64 lda, const double* B, i64 ldb, double beta, double* C, i64 ldc) {
  dgemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

}  // namespace cr
