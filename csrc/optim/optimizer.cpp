// Run-time choice of the optimizer's float32 loop: the widest target the CPU (and
// CHAINRULE_CPU_TARGET) allows, as for the GEMM micro-kernel.
#include "optim/optimizer.h"

#include "kernels/cpu.h"

namespace cr {

namespace {
SegmentStats step_f32_baseline(bool stats, const OptimConfig& c, float lr, i64 t, float gscale,
                               float* p, float* g, float* s0, float* s1, float* s2, i64 n) {
  return detail::step_any<float>(stats, c, lr, t, gscale, p, g, s0, s1, s2, n);
}
}  // namespace

StepF32 step_f32_for_cpu() {
#ifdef CR_X86
  switch (cpu_target()) {
    case CpuTarget::avx512: return &avx512::step_f32;
    case CpuTarget::avx2: return &avx2::step_f32;
    default: break;
  }
#endif
  return &step_f32_baseline;
}

}  // namespace cr
