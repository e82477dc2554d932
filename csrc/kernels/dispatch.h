// The one mechanism by which every per-CPU-target kernel family is compiled and chosen
// (the GEMM micro-kernels, the direct-convolution kernels, the optimizer loops), after
// Highway's HWY_DYNAMIC_DISPATCH. Not here: the CPU detection itself (kernels/cpu.h).
//
// A family is a table struct of function pointers (and constants). Each target defines one
// table, always named `cr::<target>::<name>` with <target> a CpuTarget (generic, avx2, avx512).
//
// Compile once per target. A file named *_avx2.cpp / *_avx512.cpp gets that target's flags
// from CMake and nothing else does. A family written once (portable code or GCC vector
// types) has an impl header and one two-line file per target, each
//     #define CR_TARGET avx2
//     #include "kernels/conv_kernels_impl.h"
// where the impl header puts all its code, the table included, in `namespace cr::CR_TARGET`
// (CR_TARGET_NAME is the target's name as a string). A family written with intrinsics has a
// hand-written file per target that defines its table in `namespace cr::avx2` directly.
// Either way, code compiled for a wider target has external names only inside its own
// namespace, so the linker can never hand a baseline caller an AVX copy of a function.
//
// Declare, in the family's header inside namespace cr (seen by the per-target files and the
// caller):
//     CR_DECLARE_PER_TARGET(ConvKernels, conv_kernels)
//
// Select, in baseline code only (a .cpp not named for a target), once per process:
//     const ConvKernels& conv_kernels_for_cpu() {
//       static const PerTarget<ConvKernels> tables = CR_PER_TARGET(conv_kernels);
//       static const ConvKernels& chosen = chosen_table(tables);
//       return chosen;
//     }
// and table_for(tables, CpuTarget::avx2) for a test hook that runs one target (nullptr if
// it is not compiled in or cannot run here). chosen_table follows cpu_target(): the best
// target this CPU runs, lowered by CHAINRULE_CPU_TARGET, the choice cpu_info()['kernel']
// reports, so every family runs the same target. The chosen table sits in a function-local
// static: resolved on first use, never per call. The templates below are instantiated only
// in baseline code, so no AVX copy of them exists.
#pragma once
#include "kernels/cpu.h"

#define CR_STRINGIFY_IMPL(x) #x
#define CR_STRINGIFY(x) CR_STRINGIFY_IMPL(x)
// The name of the target being compiled ("avx2"), inside a family's impl header.
#define CR_TARGET_NAME CR_STRINGIFY(CR_TARGET)

// The x86 targets exist only where CMake compiles the *_avx2.cpp / *_avx512.cpp files.
#ifdef CR_X86
#define CR_DECLARE_PER_TARGET(Table, name)   \
  namespace generic {                        \
  extern const Table name;                   \
  }                                          \
  namespace avx2 {                           \
  extern const Table name;                   \
  }                                          \
  namespace avx512 {                         \
  extern const Table name;                   \
  }
#define CR_PER_TARGET(name) {{&::cr::generic::name, &::cr::avx2::name, &::cr::avx512::name}}
#else
#define CR_DECLARE_PER_TARGET(Table, name) \
  namespace generic {                      \
  extern const Table name;                 \
  }
#define CR_PER_TARGET(name) {{&::cr::generic::name, nullptr, nullptr}}
#endif

namespace cr {

// One family's tables indexed by CpuTarget; nullptr where a target is not compiled in.
template <typename Table>
struct PerTarget {
  const Table* by_target[kCpuTargetCount];
};

// The table of target t, or nullptr if it is not compiled in or cannot run on this CPU.
template <typename Table>
const Table* table_for(const PerTarget<Table>& tables, CpuTarget t) {
  return cpu_target_supported(t) ? tables.by_target[static_cast<int>(t)] : nullptr;
}

// The table of the target chosen for this process (cpu_target(), always runnable here).
template <typename Table>
const Table& chosen_table(const PerTarget<Table>& tables) {
  return *table_for(tables, cpu_target());
}

}  // namespace cr
