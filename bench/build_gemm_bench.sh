#!/usr/bin/env bash
# Build the standalone sgemm harness (correctness vs sgemm_ref + timings vs OpenBLAS) without
# CMake or Python: the kernel sources compiled with the same per-file target flags as
# CMakeLists.txt. Usage: bench/build_gemm_bench.sh [out=/tmp/gemm_bench]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-/tmp/gemm_bench}"
obj="$(mktemp -d)"
trap 'rm -rf "$obj"' EXIT
CXX="${CXX:-g++}"
common=(-std=c++17 -O3 -fopenmp -fno-math-errno -Wall -Wextra -Wno-unused-parameter -I"$root/csrc")
arch="$(uname -m)"
if [[ "$arch" == x86_64 ]]; then common+=(-DCR_X86=1); fi
srcs=("$root"/csrc/kernels/*.cpp "$root"/bench/gemm_bench.cpp)
pids=()
for s in "${srcs[@]}"; do
  flags=()
  case "$s" in
    *_avx512.cpp) [[ "$arch" == x86_64 ]] || continue
                  flags=(-mavx512f -mavx512bw -mavx512dq -mavx512vl -mavx2 -mfma -mf16c) ;;
    *_avx2.cpp)   [[ "$arch" == x86_64 ]] || continue
                  flags=(-mavx2 -mfma -mf16c) ;;
  esac
  "$CXX" "${common[@]}" "${flags[@]}" -c "$s" -o "$obj/$(basename "$s" .cpp).o" &
  pids+=($!)
  # at most two compilers at a time: the machine is shared
  if (( ${#pids[@]} >= 2 )); then wait "${pids[0]}"; pids=("${pids[@]:1}"); fi
done
for p in "${pids[@]}"; do wait "$p"; done
"$CXX" -fopenmp "$obj"/*.o -ldl -o "$out"
echo "built $out"
lib="$(python3 - <<'PY' 2>/dev/null || true
import glob, os, numpy
d = os.path.dirname(numpy.__file__)
libs = glob.glob(os.path.join(d, "..", "numpy.libs", "*openblas*.so*")) + glob.glob(os.path.join(d, ".libs", "*openblas*.so*"))
print(os.path.realpath(libs[0]) if libs else "")
PY
)"
if [[ -n "$lib" ]]; then
  echo "compare with numpy's OpenBLAS: OPENBLAS_LIB=$lib $out time 1 all  (unset OPENBLAS_CORETYPE)"
fi
