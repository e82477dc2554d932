// CPU feature detection, SIMD target choice (made once, overridable by CHAINRULE_CPU_TARGET)
// and thread-count control. Pure C++: no Python, no SIMD intrinsics (this file is baseline).
#pragma once
#include <string>

namespace cr {

// Kernel targets, lowest to highest. A higher target implies the lower ones run too.
// Each names the namespace its kernels are compiled in (kernels/dispatch.h).
enum class CpuTarget : int { generic = 0, avx2 = 1, avx512 = 2 };
constexpr int kCpuTargetCount = 3;

// What cpuid reports, already combined with the OS (XCR0) check for the AVX/AVX-512 state:
// `avx` is false on a CPU with AVX whose OS does not save ymm registers.
struct CpuFeatures {
  bool x86 = false;
  bool sse4_2 = false, avx = false, avx2 = false, fma = false, f16c = false;
  bool avx512f = false, avx512bw = false, avx512dq = false, avx512vl = false;
  bool os_avx = false, os_avx512 = false;  // XCR0 enables ymm / zmm+opmask state
  // Which CPU: cpuid's vendor string ("GenuineIntel", "AuthenticAMD"), display family and
  // model (base + extended fields, as Linux's /proc/cpuinfo shows them) and brand string.
  // Reported with benchmark results (a VM's lscpu may show only a generic model name); no
  // kernel choice depends on them.
  std::string vendor, brand;
  int family = 0, model = 0, stepping = 0;
};

const CpuFeatures& cpu_features();             // detected once
CpuTarget cpu_best_target();                   // best target this CPU + OS can run
bool cpu_target_supported(CpuTarget t);        // compiled in and runnable here
CpuTarget cpu_target();                        // the one all kernel families run (env applied)
const char* cpu_target_name(CpuTarget t);      // "generic" / "avx2" / "avx512"
bool cpu_target_from_name(const std::string& name, CpuTarget* out);  // false if unknown
// Raw value of CHAINRULE_CPU_TARGET when the choice was made ("" if unset).
const std::string& cpu_target_env();

// One core's L2 cache in bytes (Linux: sysconf, which reads cpuid on x86); 1 MiB where the
// system does not say. Sizes the blocks that should stay in L2 (predict's rows per pass).
long long l2_cache_bytes();

// Threads: wrap omp_set_num_threads / omp_get_max_threads; 1 and a no-op without OpenMP.
bool openmp_available();
// Returns the count in effect: 1 in a child forked after the core ran a team of threads
// (DenormalsFlushed::serial_after_fork), whatever n is.
int set_num_threads(int n);  // throws std::invalid_argument when n < 1
int get_num_threads();

}  // namespace cr
