// pybind11 bindings: chainrule._core. Translates and validates arguments, then releases
// the GIL for the C++ work. The only place (with kernels_bind.cpp) that knows about Python.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <mutex>
#include <string>

#include "trainer/layer_factory.h"
#include "trainer/network.h"

namespace py = pybind11;
using cr::i64;

void bind_kernels(py::module_& m);

namespace {

std::string shape_str(const py::array& a) {
  std::string s = "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) {
    if (i) s += ", ";
    s += std::to_string(a.shape(i));
  }
  if (a.ndim() == 1) s += ",";
  return s + ")";
}

template <typename T>
using Arr = py::array_t<T, py::array::c_style>;

template <typename T>
struct Checked {
  const T* x = nullptr;
  const T* y = nullptr;
  const T* w = nullptr;
  i64 n = 0;
};

// Validate (x, y, sample_weight) against the network before any C++ work starts.
template <typename T>
Checked<T> check_xy(cr::Network<T>& net, const Arr<T>& x, const Arr<T>& y, const py::object& sw) {
  Checked<T> c;
  if (x.ndim() != 2 || x.shape(1) != net.in_size())
    cr::fail("x must have shape (n, ", net.in_size(), "); received shape ", shape_str(x));
  c.n = x.shape(0);
  const i64 C = net.out_size();
  const i64 tc = cr::target_cols(net.loss(), C);
  if (y.ndim() != 2 || y.shape(0) != c.n || y.shape(1) != tc)
    cr::fail("y must have shape (", c.n, ", ", tc, ") for loss '", cr::loss_name(net.loss()),
             "'; received shape ", shape_str(y));
  if (net.loss() == cr::Loss::SparseCategoricalCE) {
    const T* yy = y.data();
    for (i64 i = 0; i < c.n; ++i) {
      T v = yy[i];
      if (!(v >= T(0) && v < T(C)) || v != std::floor(v))
        cr::fail("y: labels must be integers in [0, ", C, "); received ", double(v), " at index ", i);
    }
  }
  c.x = x.data();
  c.y = y.data();
  if (!sw.is_none()) {
    auto w = sw.cast<Arr<T>>();
    if (w.ndim() != 1 || w.shape(0) != c.n)
      cr::fail("sample_weight must have shape (", c.n, ",); received shape ", shape_str(w));
    c.w = w.data();
  }
  return c;
}

py::dict stats_dict(const cr::EpochStats& s) {
  py::dict d;
  d["loss"] = s.loss;
  d["accuracy"] = s.accuracy;
  d["samples"] = s.samples;
  d["steps"] = s.steps;
  return d;
}

cr::OptimConfig optim_from_dict(const py::dict& d) {
  cr::OptimConfig c;
  std::string kind = d.contains("kind") ? d["kind"].cast<std::string>() : "sgd";
  if (kind == "sgd") c.kind = cr::OptKind::SGD;
  else cr::fail("unknown optimizer '", kind, "'");
  if (d.contains("learning_rate")) c.learning_rate = d["learning_rate"].cast<double>();
  if (d.contains("momentum")) c.momentum = d["momentum"].cast<double>();
  if (d.contains("nesterov")) c.nesterov = d["nesterov"].cast<bool>();
  if (!(c.momentum >= 0.0 && c.momentum < 1.0)) cr::fail("momentum must be in [0, 1); received ", c.momentum);
  return c;
}

template <typename T>
void bind_network(py::module_& m, const char* name) {
  using Net = cr::Network<T>;
  py::class_<Net>(m, name)
      .def(py::init([](const std::vector<py::dict>& specs) {
             std::vector<std::unique_ptr<cr::Layer<T>>> layers;
             for (auto& d : specs) {
               cr::LayerSpec s;
               for (auto item : d) {
                 std::string k = item.first.cast<std::string>();
                 if (k == "kind") s.kind = item.second.cast<std::string>();
                 else s.opts[k] = item.second.cast<double>();
               }
               layers.push_back(cr::make_layer<T>(s));
             }
             return std::make_unique<Net>(std::move(layers));
           }),
           py::arg("layers"))
      .def_property_readonly("in_size", &Net::in_size)
      .def_property_readonly("out_size", &Net::out_size)
      .def_property_readonly("num_params", &Net::num_params)
      .def_property_readonly("step_count", &Net::step_count)
      .def("compile",
           [](Net& n, int loss, const py::dict& opt) {
             if (loss < 0 || loss > 3) cr::fail("unknown loss code ", loss);
             n.compile(cr::Loss(loss), optim_from_dict(opt));
           })
      .def("set_optimizer", [](Net& n, const py::dict& opt) { n.set_optimizer(optim_from_dict(opt)); })
      .def("set_learning_rate", &Net::set_learning_rate)
      .def("seed_layers", &Net::seed_layers)
      .def("params_info",
           [](Net& n) {
             py::list out;
             for (auto& p : n.params_info()) {
               py::dict d;
               d["layer"] = p.layer;
               d["name"] = p.name;
               d["shape"] = py::tuple(py::cast(p.shape));
               d["offset"] = p.offset;
               d["size"] = p.size;
               out.append(d);
             }
             return out;
           })
      .def("get_param",
           [](Net& n, i64 i, bool grad) {
             auto& info = n.params_info();
             if (i < 0 || i >= i64(info.size())) cr::fail("parameter index out of range: ", i);
             Arr<T> a(info[i].shape);
             const T* src = (grad ? n.grads() : n.params()) + info[i].offset;
             std::memcpy(a.mutable_data(), src, sizeof(T) * info[i].size);
             return a;
           },
           py::arg("index"), py::arg("grad") = false)
      .def("set_param",
           [](Net& n, i64 i, const Arr<T>& a) {
             auto& info = n.params_info();
             if (i < 0 || i >= i64(info.size())) cr::fail("parameter index out of range: ", i);
             if (a.size() != info[i].size || a.ndim() != py::ssize_t(info[i].shape.size()))
               cr::fail("weights for '", info[i].name, "' of layer ", info[i].layer,
                        " must have shape ", shape_str(Arr<T>(info[i].shape)), "; received shape ", shape_str(a));
             for (py::ssize_t d = 0; d < a.ndim(); ++d)
               if (a.shape(d) != info[i].shape[d])
                 cr::fail("weights for '", info[i].name, "' of layer ", info[i].layer,
                          " must have shape ", shape_str(Arr<T>(info[i].shape)), "; received shape ", shape_str(a));
             std::lock_guard<std::mutex> lk(n.mutex());
             std::memcpy(n.params() + info[i].offset, a.data(), sizeof(T) * info[i].size);
           },
           py::arg("index"), py::arg("value").noconvert())
      .def("train_epoch",
           [](Net& n, const Arr<T>& x, const Arr<T>& y, const py::object& sw, i64 batch,
              bool shuffle, std::uint64_t seed) {
             auto c = check_xy(n, x, y, sw);
             cr::EpochStats s;
             {
               py::gil_scoped_release nogil;
               std::lock_guard<std::mutex> lk(n.mutex());
               s = n.train_epoch(c.x, c.y, c.w, c.n, batch, shuffle, seed);
             }
             return stats_dict(s);
           },
           py::arg("x").noconvert(), py::arg("y").noconvert(), py::arg("sample_weight") = py::none(),
           py::arg("batch_size") = 32, py::arg("shuffle") = true, py::arg("seed") = 0)
      .def("train_batch",
           [](Net& n, const Arr<T>& x, const Arr<T>& y, const py::object& sw) {
             auto c = check_xy(n, x, y, sw);
             cr::EpochStats s;
             {
               py::gil_scoped_release nogil;
               std::lock_guard<std::mutex> lk(n.mutex());
               s = n.train_batch(c.x, c.y, c.w, c.n);
             }
             return stats_dict(s);
           },
           py::arg("x").noconvert(), py::arg("y").noconvert(), py::arg("sample_weight") = py::none())
      .def("compute_gradients",
           [](Net& n, const Arr<T>& x, const Arr<T>& y, const py::object& sw) {
             auto c = check_xy(n, x, y, sw);
             cr::EpochStats s;
             {
               py::gil_scoped_release nogil;
               std::lock_guard<std::mutex> lk(n.mutex());
               s = n.compute_gradients(c.x, c.y, c.w, c.n);
             }
             return stats_dict(s);
           },
           py::arg("x").noconvert(), py::arg("y").noconvert(), py::arg("sample_weight") = py::none())
      .def("evaluate",
           [](Net& n, const Arr<T>& x, const Arr<T>& y, const py::object& sw, i64 batch) {
             auto c = check_xy(n, x, y, sw);
             cr::EpochStats s;
             {
               py::gil_scoped_release nogil;
               std::lock_guard<std::mutex> lk(n.mutex());
               s = n.evaluate(c.x, c.y, c.w, c.n, batch);
             }
             return stats_dict(s);
           },
           py::arg("x").noconvert(), py::arg("y").noconvert(), py::arg("sample_weight") = py::none(),
           py::arg("batch_size") = 256)
      .def("predict",
           [](Net& n, const Arr<T>& x, i64 batch) {
             if (x.ndim() != 2 || x.shape(1) != n.in_size())
               cr::fail("x must have shape (n, ", n.in_size(), "); received shape ", shape_str(x));
             const i64 N = x.shape(0);
             Arr<T> out({N, n.out_size()});
             if (N == 0) return out;
             const T* xp = x.data();
             T* op = out.mutable_data();
             {
               py::gil_scoped_release nogil;
               std::lock_guard<std::mutex> lk(n.mutex());
               n.predict(xp, N, batch, op);
             }
             return out;
           },
           py::arg("x").noconvert(), py::arg("batch_size") = 256);
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "chainrule's C++ core (private: use the chainrule package)";
  bind_network<float>(m, "Network32");
  bind_network<double>(m, "Network64");
  bind_kernels(m);
}
