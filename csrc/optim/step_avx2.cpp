// The optimizer's float32 loops compiled for AVX2 (see optim/step_target.h).
#define CR_TARGET avx2
#include "optim/step_target.h"
