// Run-time choice of the optimizer's float32 loop among its per-target builds
// (kernels/dispatch.h: the same target as the GEMM micro-kernel).
#include "optim/optimizer.h"

#include "kernels/dispatch.h"

namespace cr {

StepF32 step_f32_for_cpu() {
  static const PerTarget<OptimizerKernels> tables = CR_PER_TARGET(optimizer_kernels);
  return chosen_table(tables).step_f32;
}

}  // namespace cr
