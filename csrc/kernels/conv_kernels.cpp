// The run-time choice among the per-target builds of the direct-convolution kernels
// (kernels/dispatch.h). Not here: the kernels (conv_kernels_impl.h).
#include "kernels/conv_kernels.h"

#include "kernels/dispatch.h"

namespace cr {

const ConvKernels& conv_kernels_for_cpu() {
  static const PerTarget<ConvKernels> tables = CR_PER_TARGET(conv_kernels);
  static const ConvKernels& chosen = chosen_table(tables);
  return chosen;
}

}  // namespace cr
