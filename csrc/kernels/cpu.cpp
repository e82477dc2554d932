// CPU detection (cpuid + xgetbv on x86, nothing elsewhere), the once-made choice of SIMD
// target with its CHAINRULE_CPU_TARGET override, and thread-count control.
#include <thread>
#include "kernels/cpu.h"

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <cstring>

#include <unistd.h>

#include "common.h"
#ifdef CR_X86
#include <cpuid.h>
#endif

namespace cr {

#ifdef CR_X86
// xgetbv without needing -mxsave on this baseline file.
static unsigned long long read_xcr0() {
  unsigned int eax = 0, edx = 0;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return (static_cast<unsigned long long>(edx) << 32) | eax;
}
#endif

static CpuFeatures detect() {
  CpuFeatures f;
#ifdef CR_X86
  f.x86 = true;
  unsigned int eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (!__get_cpuid(0, &eax, &ebx, &ecx, &edx)) return f;
  {
    char v[13] = {};
    std::memcpy(v, &ebx, 4);
    std::memcpy(v + 4, &edx, 4);
    std::memcpy(v + 8, &ecx, 4);
    f.vendor = v;
  }
  if (__get_cpuid_max(0x80000000u, nullptr) >= 0x80000004u) {
    char b[49] = {};
    for (unsigned int i = 0; i < 3; ++i) {
      __get_cpuid(0x80000002u + i, &eax, &ebx, &ecx, &edx);
      std::memcpy(b + 16 * i, &eax, 4);
      std::memcpy(b + 16 * i + 4, &ebx, 4);
      std::memcpy(b + 16 * i + 8, &ecx, 4);
      std::memcpy(b + 16 * i + 12, &edx, 4);
    }
    std::string brand(b);
    const size_t first = brand.find_first_not_of(' '), last = brand.find_last_not_of(' ');
    f.brand = first == std::string::npos ? "" : brand.substr(first, last - first + 1);
  }
  if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx)) return f;
  {
    const int base_family = int((eax >> 8) & 0xf), base_model = int((eax >> 4) & 0xf);
    f.family = base_family == 0xf ? base_family + int((eax >> 20) & 0xff) : base_family;
    f.model = base_family == 0x6 || base_family == 0xf ? base_model + (int((eax >> 16) & 0xf) << 4)
                                                       : base_model;
    f.stepping = int(eax & 0xf);
  }
  f.sse4_2 = ecx & (1u << 20);
  bool osxsave = ecx & (1u << 27);
  bool cpu_avx = ecx & (1u << 28);
  bool cpu_fma = ecx & (1u << 12);
  bool cpu_f16c = ecx & (1u << 29);
  if (osxsave) {
    unsigned long long xcr0 = read_xcr0();
    f.os_avx = (xcr0 & 0x6) == 0x6;            // xmm + ymm state
    f.os_avx512 = (xcr0 & 0xe6) == 0xe6;       // + opmask, zmm_hi256, hi16_zmm
  }
  f.avx = cpu_avx && f.os_avx;
  f.fma = cpu_fma && f.os_avx;
  f.f16c = cpu_f16c && f.os_avx;
  unsigned int max_leaf = __get_cpuid_max(0, nullptr);
  if (max_leaf >= 7) {
    __cpuid_count(7, 0, eax, ebx, ecx, edx);
    f.avx2 = (ebx & (1u << 5)) && f.os_avx;
    bool ok512 = f.os_avx512;
    f.avx512f = (ebx & (1u << 16)) && ok512;
    f.avx512dq = (ebx & (1u << 17)) && ok512;
    f.avx512bw = (ebx & (1u << 30)) && ok512;
    f.avx512vl = (ebx & (1u << 31)) && ok512;
  }
#endif
  return f;
}

long long l2_cache_bytes() {
  static const long long bytes = [] {
#if defined(__linux__) && defined(_SC_LEVEL2_CACHE_SIZE)
    const long v = sysconf(_SC_LEVEL2_CACHE_SIZE);
    if (v > 0) return static_cast<long long>(v);
#endif
    return 1LL << 20;
  }();
  return bytes;
}

const CpuFeatures& cpu_features() {
  static const CpuFeatures f = detect();
  return f;
}

bool cpu_target_supported(CpuTarget t) {
  const CpuFeatures& f = cpu_features();
  switch (t) {
    case CpuTarget::generic: return true;
#ifdef CR_X86
    // Matches the flags the *_avx2.cpp / *_avx512.cpp files are compiled with.
    case CpuTarget::avx2: return f.avx2 && f.fma && f.f16c;
    case CpuTarget::avx512:
      return f.avx512f && f.avx512bw && f.avx512dq && f.avx512vl && f.avx2 && f.fma && f.f16c;
#endif
    default: return false;
  }
  (void)f;
}

CpuTarget cpu_best_target() {
  if (cpu_target_supported(CpuTarget::avx512)) return CpuTarget::avx512;
  if (cpu_target_supported(CpuTarget::avx2)) return CpuTarget::avx2;
  return CpuTarget::generic;
}

const char* cpu_target_name(CpuTarget t) {
  switch (t) {
    case CpuTarget::avx512: return "avx512";
    case CpuTarget::avx2: return "avx2";
    default: return "generic";
  }
}

bool cpu_target_from_name(const std::string& name, CpuTarget* out) {
  std::string s = name;
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  if (s == "generic") *out = CpuTarget::generic;
  else if (s == "avx2") *out = CpuTarget::avx2;
  else if (s == "avx512") *out = CpuTarget::avx512;
  else return false;
  return true;
}

static std::string read_env() {
  const char* v = std::getenv("CHAINRULE_CPU_TARGET");
  return v ? std::string(v) : std::string();
}

const std::string& cpu_target_env() {
  static const std::string v = read_env();
  return v;
}

// The env can only lower the target: asking for more than the CPU runs is clamped to the
// best available, and an unknown value ("auto", typos) means auto.
static CpuTarget choose_target() {
  CpuTarget best = cpu_best_target();
  CpuTarget want;
  if (!cpu_target_from_name(cpu_target_env(), &want)) return best;
  return static_cast<int>(want) < static_cast<int>(best) ? want : best;
}

CpuTarget cpu_target() {
  static const CpuTarget t = choose_target();
  return t;
}

bool openmp_available() {
#ifdef _OPENMP
  return true;
#else
  return false;
#endif
}

// The same bound as chainrule.system.MAX_THREADS: 4x the logical CPUs, at least 64. OpenMP
// aborts the process when it cannot create the threads asked for.
int set_num_threads(int n) {
  const int cpus = int(std::max(1u, std::thread::hardware_concurrency()));
  const int most = std::max(4 * cpus, 64);
  if (n < 1 || n > most) fail("set_num_threads expects n in [1, ", most, "]; received n=", n);
  if (DenormalsFlushed::serial_after_fork().load(std::memory_order_relaxed)) n = 1;
#ifdef _OPENMP
  omp_set_num_threads(n);
#endif
  return max_threads();
}

int get_num_threads() { return max_threads(); }

}  // namespace cr
