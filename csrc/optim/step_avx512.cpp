// The optimizer's float32 loops compiled for AVX-512 (see optim/step_target.h).
#define CR_TARGET avx512
#include "optim/step_target.h"
