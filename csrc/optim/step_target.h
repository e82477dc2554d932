// The body of step_avx2.cpp and step_avx512.cpp: the optimizer's float32 loops compiled
// for one target, in namespace cr::CR_STEP_TARGET. Those files, and only they, get that
// target's flags from CMake; they are called only after the run-time CPU check in
// optimizer.cpp.
#include "optim/optimizer.h"

namespace cr {
namespace CR_STEP_TARGET {
namespace impl {
#include "optim/step_impl.h"
}  // namespace impl

SegmentStats step_f32(bool stats, const OptimConfig& c, float lr, i64 t, float gscale, float* p,
                      float* g, float* s0, float* s1, float* s2, i64 n) {
  return impl::step_any<float>(stats, c, lr, t, gscale, p, g, s0, s1, s2, n);
}

}  // namespace CR_STEP_TARGET
}  // namespace cr
