// The optimizer's float32 loops compiled for AVX512 (CMake gives this file, and only
// this file, the avx512 flags). Called only after the run-time CPU check in optimizer.cpp.
#include "optim/optimizer.h"

namespace cr {
namespace avx512 {
namespace impl {
#include "optim/step_impl.h"
}  // namespace impl

SegmentStats step_f32(bool stats, const OptimConfig& c, float lr, i64 t, float gscale, float* p,
                      float* g, float* s0, float* s1, float* s2, i64 n) {
  return impl::step_any<float>(stats, c, lr, t, gscale, p, g, s0, s1, s2, n);
}

}  // namespace avx512
}  // namespace cr
