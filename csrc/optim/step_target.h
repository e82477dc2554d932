// The body of step_generic.cpp, step_avx2.cpp and step_avx512.cpp: the optimizer's float32
// loops (optim/step_impl.h) compiled for the target CR_TARGET, in namespace cr::CR_TARGET,
// with its table cr::CR_TARGET::optimizer_kernels (kernels/dispatch.h). Only the files
// named for a target get its flags from CMake; optimizer.cpp calls them only after the
// run-time CPU check.
#ifndef CR_TARGET
#error "define CR_TARGET (generic, avx2 or avx512) before including optim/step_target.h"
#endif
#include "optim/optimizer.h"

namespace cr {
namespace CR_TARGET {
namespace impl {
#include "optim/step_impl.h"
}  // namespace impl

namespace {
SegmentStats step_f32(bool stats, const OptimConfig& c, float lr, i64 t, float gscale, float* p,
                      float* g, float* s0, float* s1, float* s2, i64 n) {
  return impl::step_any<float>(stats, c, lr, t, gscale, p, g, s0, s1, s2, n);
}
}  // namespace

const OptimizerKernels optimizer_kernels = {CR_TARGET_NAME, step_f32};

}  // namespace CR_TARGET
}  // namespace cr
