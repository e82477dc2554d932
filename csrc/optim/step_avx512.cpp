// The optimizer's float32 loops compiled for AVX512 (see optim/step_target.h).
#define CR_STEP_TARGET avx512
#include "optim/step_target.h"
