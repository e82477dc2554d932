// The optimizer's float32 loops compiled for the baseline of the architecture (SSE2 on
// x86-64), the generic target (see optim/step_target.h).
#define CR_TARGET generic
#include "optim/step_target.h"
