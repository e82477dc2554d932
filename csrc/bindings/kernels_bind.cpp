// Bindings for the kernel layer: CPU detection report, thread control, and the GEMM test
// hooks (_gemm runs one named micro-kernel variant, _gemm_variants lists the runnable ones).
// Arguments are validated here, before the GIL is released and before any OpenMP region.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <string>
#include <vector>

#include "kernels/cpu.h"
#include "kernels/gemm.h"
#include "kernels/gemm_kernels.h"

namespace py = pybind11;
using cr::i64;

namespace {

std::string shape_of(const py::array& a) {
  std::string s = "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) {
    if (i) s += ", ";
    s += std::to_string(a.shape(i));
  }
  if (a.ndim() == 1) s += ",";
  return s + ")";
}

std::vector<std::string> runnable_variants() {
  std::vector<std::string> v{"ref"};
  for (cr::CpuTarget t : {cr::CpuTarget::generic, cr::CpuTarget::avx2, cr::CpuTarget::avx512})
    if (cr::sgemm_kernel_for(t)) v.push_back(cr::cpu_target_name(t));
  return v;
}

// A 2-D, C-contiguous float32 array, used as it is: no hidden conversion or copy.
void check_matrix(const py::array& a, const char* name, bool writable) {
  if (!py::isinstance<py::array_t<float>>(a) || a.dtype().kind() != 'f' || a.itemsize() != 4)
    cr::fail("_gemm expects ", name, " to be a float32 array; received dtype ",
             std::string(py::str(a.dtype())));
  if (a.ndim() != 2)
    cr::fail("_gemm expects ", name, " to be 2-D; received shape ", shape_of(a));
  if (!(a.flags() & py::array::c_style))
    cr::fail("_gemm expects ", name, " to be C-contiguous; received a strided view of shape ",
             shape_of(a));
  if (writable && !a.writeable()) cr::fail("_gemm expects ", name, " to be writable");
}

void gemm_hook(const std::string& variant, bool trans_a, bool trans_b, const py::array& A,
               const py::array& B, py::array C, float alpha, float beta) {
  bool is_ref = variant == "ref";
  cr::CpuTarget target = cr::CpuTarget::generic;
  if (!is_ref && !cr::cpu_target_from_name(variant, &target))
    cr::fail("_gemm expects variant to be one of 'ref', 'generic', 'avx2', 'avx512'; received '",
             variant, "'");
  if (!is_ref && !cr::sgemm_kernel_for(target))
    cr::fail("_gemm: variant '", variant, "' cannot run on this CPU (runnable: ",
             std::string(py::str(py::cast(runnable_variants()))), ")");
  check_matrix(A, "A", false);
  check_matrix(B, "B", false);
  check_matrix(C, "C", true);
  // Stored shapes: A is (M, K), or (K, M) with trans_a; B is (K, N), or (N, K) with trans_b.
  const i64 M = trans_a ? A.shape(1) : A.shape(0), K = trans_a ? A.shape(0) : A.shape(1);
  const i64 Kb = trans_b ? B.shape(1) : B.shape(0), N = trans_b ? B.shape(0) : B.shape(1);
  if (Kb != K)
    cr::fail("_gemm: inner dimensions differ: op(A) is (", M, ", ", K, ") but op(B) is (", Kb,
             ", ", N, "); received A ", shape_of(A), ", B ", shape_of(B),
             ", trans_a=", trans_a, ", trans_b=", trans_b);
  if (C.shape(0) != M || C.shape(1) != N)
    cr::fail("_gemm expects C of shape (", M, ", ", N, "); received shape ", shape_of(C));
  const float* a = static_cast<const float*>(A.data());
  const float* b = static_cast<const float*>(B.data());
  float* c = static_cast<float*>(C.mutable_data());
  // Leading dimensions of empty matrices are 0; the kernels' contract wants >= 1.
  const i64 lda = std::max<i64>(A.shape(1), 1), ldb = std::max<i64>(B.shape(1), 1);
  const i64 ldc = std::max<i64>(N, 1);
  py::gil_scoped_release nogil;
  if (is_ref)
    cr::sgemm_ref(trans_a, trans_b, M, N, K, alpha, a, lda, b, ldb, beta, c, ldc);
  else
    cr::sgemm_variant(target, trans_a, trans_b, M, N, K, alpha, a, lda, b, ldb, beta, c, ldc);
}

py::dict cpu_info() {
  const cr::CpuFeatures& f = cr::cpu_features();
  py::dict features;
  features["sse4_2"] = f.sse4_2;
  features["avx"] = f.avx;
  features["avx2"] = f.avx2;
  features["fma"] = f.fma;
  features["f16c"] = f.f16c;
  features["avx512f"] = f.avx512f;
  features["avx512bw"] = f.avx512bw;
  features["avx512dq"] = f.avx512dq;
  features["avx512vl"] = f.avx512vl;
  features["os_avx"] = f.os_avx;
  features["os_avx512"] = f.os_avx512;
  py::dict d;
  d["x86"] = f.x86;
  d["vendor"] = f.vendor;
  d["brand"] = f.brand;
  d["family"] = f.family;
  d["model"] = f.model;
  d["stepping"] = f.stepping;
  d["l2_bytes"] = cr::l2_cache_bytes();
  d["features"] = features;
  d["kernel"] = cr::cpu_target_name(cr::cpu_target());
  d["best_kernel"] = cr::cpu_target_name(cr::cpu_best_target());
  const std::string& env = cr::cpu_target_env();
  d["env_override"] = env.empty() ? py::object(py::none()) : py::object(py::str(env));
  d["variants"] = py::cast(runnable_variants());
  d["openmp"] = cr::openmp_available();
  d["max_threads"] = cr::get_num_threads();
  return d;
}

}  // namespace

void bind_kernels(py::module_& m) {
  m.def("cpu_info", &cpu_info,
        "The CPU (cpuid vendor, brand, family, model, stepping), its features (cpuid + OS "
        "support), the sgemm kernel chosen, the "
        "CHAINRULE_CPU_TARGET override if set, OpenMP availability and thread count.");
  m.def("set_num_threads", &cr::set_num_threads, py::arg("n"),
        "Threads used by the C++ core's parallel regions (n >= 1).");
  m.def("get_num_threads", &cr::get_num_threads,
        "Threads the C++ core's parallel regions use (1 without OpenMP).");
  m.def("_gemm", &gemm_hook, py::arg("variant"), py::arg("trans_a"), py::arg("trans_b"),
        py::arg("A").noconvert(), py::arg("B").noconvert(), py::arg("C").noconvert(),
        py::arg("alpha") = 1.0f, py::arg("beta") = 0.0f,
        "Test hook: C = alpha*op(A)op(B) + beta*C in place with one sgemm variant ('ref', "
        "'generic', 'avx2', 'avx512'). float32, 2-D, C-contiguous arrays only.");
  m.def("_gemm_variants", &runnable_variants, "sgemm variants runnable on this CPU.");
}
