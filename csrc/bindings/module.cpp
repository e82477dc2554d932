// pybind11 bindings: chainrule._core. Translates and validates arguments, then releases
// the GIL for the C++ work. The only place (with kernels_bind.cpp) that knows about Python.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "profile.h"
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
bool all_finite_nogil(const Arr<T>& a) {
  const T* p = a.data();
  const i64 n = a.size();
  if (n < (i64(1) << 16)) return cr::all_finite(p, n);
  py::gil_scoped_release nogil;
  return cr::all_finite(p, n);
}

template <typename T>
struct Checked {
  const T* x = nullptr;
  const T* y = nullptr;
  const T* w = nullptr;
  i64 n = 0;
  Arr<T> w_owner;  // keeps a converted sample_weight alive while the core reads it
};

// Every entry point that reads or changes a network runs its C++ work through here, after
// validating its arguments with the GIL held: release the GIL, then take the network's
// mutex. The lock order is thus always mutex -> GIL (the progress and poll hooks re-take
// the GIL while the mutex is held) and no thread waits for the mutex while holding the
// GIL, so the two locks cannot deadlock. Concurrent calls wait for each other.
template <typename Net, typename F>
auto locked(Net& n, F&& f) -> decltype(f()) {
  py::gil_scoped_release nogil;
  std::lock_guard<std::mutex> lk(n.mutex());
  return f();
}

// A member function bound to run under locked().
template <typename Net, typename R, typename... A>
auto locked_call(R (Net::*fn)(A...)) {
  return [fn](Net& n, A... args) -> R { return locked(n, [&] { return (n.*fn)(args...); }); };
}
template <typename Net, typename R, typename... A>
auto locked_call(R (Net::*fn)(A...) const) {
  return [fn](Net& n, A... args) -> R { return locked(n, [&] { return (n.*fn)(args...); }); };
}

// Python hooks of a long C++ loop: an optional progress callback and a signal poll. Both
// run with the GIL re-taken, between batches (never inside a parallel region). A Python
// exception in either (KeyboardInterrupt from Ctrl-C included) stops the loop after the
// current batch and is re-raised by rethrow() once the loop has returned. stop_owner, when
// given, has a stop_requested attribute that the poll also reads: a stop asked for without
// an exception (a data-parallel epoch turns Ctrl-C into one, as an exception could strike
// in the middle of a reduction).
class LoopHooks {
 public:
  explicit LoopHooks(const py::object& progress_cb, const py::object& stop_owner = py::none())
      : progress_cb_(progress_cb), stop_owner_(stop_owner) {
    poll = [this] {
      py::gil_scoped_acquire gil;
      if (PyErr_CheckSignals() != 0) return keep_error();
      try {
        return stop_owner_.is_none() || !stop_owner_.attr("stop_requested").cast<bool>();
      } catch (py::error_already_set& e) {
        pending_ = std::make_unique<py::error_already_set>(std::move(e));
        return false;
      }
    };
    if (!progress_cb_.is_none())
      progress = [this](i64 done, i64 total, double loss, const std::vector<double>& metrics) {
        py::gil_scoped_acquire gil;
        try {
          if (PyErr_CheckSignals() != 0) return keep_error();
          py::object r = progress_cb_(done, total, loss, py::cast(metrics));
          return r.is_none() || r.cast<bool>();
        } catch (py::error_already_set& e) {
          pending_ = std::make_unique<py::error_already_set>(std::move(e));
          return false;
        }
      };
  }
  void rethrow() {
    if (pending_) throw std::move(*pending_);
  }
  cr::ProgressFn progress;
  cr::PollFn poll;

 private:
  bool keep_error() {  // the Python error indicator is set: keep it for rethrow()
    pending_ = std::make_unique<py::error_already_set>();
    return false;
  }
  py::object progress_cb_, stop_owner_;
  std::unique_ptr<py::error_already_set> pending_;
};

// The data-parallel Reducer over a Python transport (chainrule.distributed's), which has
// start_sum(array) and start_max(array) returning a ticket, and wait(ticket). Buffers are
// handed over as numpy views of the core's memory (no copy). Runs in the training loop with
// the GIL released: each call re-takes it. The transport ends the job itself when its MPI
// calls fail, so no error comes back into the loop.
class PyReducer final : public cr::Reducer {
 public:
  explicit PyReducer(const py::object& transport)
      : start_sum_(transport.attr("start_sum")),
        start_max_(transport.attr("start_max")),
        wait_(transport.attr("wait")),
        base_(py::capsule(this, [](void*) {})) {}
  i64 start_sum(float* data, i64 n) override { return start(start_sum_, data, n); }
  i64 start_sum(double* data, i64 n) override { return start(start_sum_, data, n); }
  i64 start_max(float* data, i64 n) override { return start(start_max_, data, n); }
  i64 start_max(double* data, i64 n) override { return start(start_max_, data, n); }
  void wait(i64 ticket) override {
    py::gil_scoped_acquire gil;
    wait_(ticket);
  }

 private:
  template <typename U>
  i64 start(const py::object& fn, U* data, i64 n) {
    py::gil_scoped_acquire gil;
    // A base object makes the array a view of data instead of a copy; the core outlives it
    // for the duration of the call that uses it.
    Arr<U> view({py::ssize_t(n)}, {py::ssize_t(sizeof(U))}, data, base_);
    return fn(view).template cast<i64>();
  }
  py::object start_sum_, start_max_, wait_;
  py::capsule base_;
};

// The data-parallel configuration from its Python description (rank, size, shard_sizes:
// None when every process holds the same rows).
cr::DataParallel data_parallel_from(const py::object& d, cr::Reducer* reducer) {
  cr::DataParallel dp;
  dp.reducer = reducer;
  dp.rank = d.attr("rank").cast<int>();
  dp.size = d.attr("size").cast<int>();
  const py::object shards = d.attr("shard_sizes");
  if (!shards.is_none()) dp.shard_sizes = shards.cast<std::vector<i64>>();
  return dp;
}

// Validate (x, y, sample_weight) against the network before any C++ work starts.
template <typename T>
Checked<T> check_xy(cr::Network<T>& net, const Arr<T>& x, const Arr<T>& y, const py::object& sw) {
  Checked<T> c;
  if (x.ndim() != 2 || x.shape(1) != net.in_size())
    cr::fail("x must have shape (n, ", net.in_size(), "); received shape ", shape_str(x));
  c.n = x.shape(0);
  const i64 tc = net.target_cols();
  if (y.ndim() != 2 || y.shape(0) != c.n || y.shape(1) != tc)
    cr::fail("y must have shape (", c.n, ", ", tc, ") for loss '", net.loss_name(),
             "'; received shape ", shape_str(y));
  net.check_targets(y.data(), c.n);
  c.x = x.data();
  c.y = y.data();
  if (!sw.is_none()) {
    c.w_owner = sw.cast<Arr<T>>();
    if (c.w_owner.ndim() != 1 || c.w_owner.shape(0) != c.n)
      cr::fail("sample_weight must have shape (", c.n, ",); received shape ", shape_str(c.w_owner));
    c.w = c.w_owner.data();
  }
  return c;
}

py::dict stats_dict(const cr::EpochStats& s) {
  py::dict d;
  d["loss"] = s.loss;
  d["metrics"] = py::cast(s.metrics);
  d["samples"] = s.samples;
  d["steps"] = s.steps;
  d["stopped_nan"] = s.stopped_nan;
  d["learning_rate"] = s.learning_rate;
  d["interrupted"] = s.interrupted;
  d["nonfinite_param"] = s.nonfinite_param;
  return d;
}

double get_num(const py::dict& d, const char* key, double dflt) {
  return d.contains(key) ? d[key].cast<double>() : dflt;
}

// The optimizer as the Python side describes it (values already validated there; the
// checks here are the second line of defence).
cr::OptimConfig optim_from_dict(const py::dict& d) {
  cr::OptimConfig c;
  std::string kind = d.contains("kind") ? d["kind"].cast<std::string>() : "sgd";
  if (kind == "sgd") c.kind = cr::OptKind::SGD;
  else if (kind == "adam") c.kind = cr::OptKind::Adam;
  else if (kind == "rmsprop") c.kind = cr::OptKind::RMSprop;
  else if (kind == "adagrad") c.kind = cr::OptKind::Adagrad;
  else cr::fail("unknown optimizer '", kind, "'");
  c.learning_rate = get_num(d, "learning_rate", c.learning_rate);
  c.momentum = get_num(d, "momentum", c.momentum);
  c.nesterov = d.contains("nesterov") && d["nesterov"].cast<bool>();
  c.beta1 = get_num(d, "beta_1", c.beta1);
  c.beta2 = get_num(d, "beta_2", c.beta2);
  c.amsgrad = d.contains("amsgrad") && d["amsgrad"].cast<bool>();
  c.rho = get_num(d, "rho", c.rho);
  c.epsilon = get_num(d, "epsilon", c.epsilon);
  c.initial_accumulator = get_num(d, "initial_accumulator_value", c.initial_accumulator);
  c.weight_decay = get_num(d, "weight_decay", 0.0);
  c.clipvalue = get_num(d, "clipvalue", 0.0);
  c.clipnorm = get_num(d, "clipnorm", 0.0);
  if (!(c.momentum >= 0.0 && c.momentum < 1.0)) cr::fail("momentum must be in [0, 1); received ", c.momentum);
  if (!(c.beta1 >= 0.0 && c.beta1 < 1.0)) cr::fail("beta_1 must be in [0, 1); received ", c.beta1);
  if (!(c.beta2 >= 0.0 && c.beta2 < 1.0)) cr::fail("beta_2 must be in [0, 1); received ", c.beta2);
  if (!(c.rho >= 0.0 && c.rho < 1.0)) cr::fail("rho must be in [0, 1); received ", c.rho);
  if (!(c.epsilon > 0.0)) cr::fail("epsilon must be > 0; received ", c.epsilon);
  if (!(c.weight_decay >= 0.0)) cr::fail("weight_decay must be >= 0; received ", c.weight_decay);
  if (!(c.clipvalue >= 0.0)) cr::fail("clipvalue must be >= 0 (0: no clipping); received ", c.clipvalue);
  if (!(c.clipnorm >= 0.0)) cr::fail("clipnorm must be >= 0 (0: no clipping); received ", c.clipnorm);
  if (d.contains("schedule") && !d["schedule"].is_none()) {
    py::dict sd = d["schedule"].cast<py::dict>();
    std::string sk = sd["kind"].cast<std::string>();
    cr::Schedule& sc = c.schedule;
    if (sk == "step") sc.kind = cr::SchedKind::Step;
    else if (sk == "exponential") sc.kind = cr::SchedKind::Exponential;
    else if (sk == "cosine") sc.kind = cr::SchedKind::Cosine;
    else if (sk == "constant") sc.kind = cr::SchedKind::Constant;
    else cr::fail("unknown learning-rate schedule '", sk, "'");
    sc.decay_steps = get_num(sd, "decay_steps", 1.0);
    sc.decay_rate = get_num(sd, "decay_rate", 1.0);
    sc.staircase = sd.contains("staircase") && sd["staircase"].cast<bool>();
    sc.alpha = get_num(sd, "alpha", 0.0);
    sc.warmup_steps = get_num(sd, "warmup_steps", 0.0);
    sc.warmup_start = get_num(sd, "warmup_start", 0.0);
    if (!(sc.decay_steps > 0.0)) cr::fail("decay_steps must be > 0; received ", sc.decay_steps);
    if (!(sc.warmup_steps >= 0.0)) cr::fail("warmup_steps must be >= 0; received ", sc.warmup_steps);
  }
  return c;
}

// A Python object the core may drop without the GIL (compile replaces its hooks while the
// GIL is released): released with the GIL re-taken. Lock order as everywhere: mutex -> GIL.
struct PyRef {
  py::object obj;
  explicit PyRef(py::object o) : obj(std::move(o)) {}
  PyRef(const PyRef&) = delete;
  PyRef& operator=(const PyRef&) = delete;
  ~PyRef() {
    py::gil_scoped_acquire gil;
    obj = py::object();
  }
};

template <typename T>
Arr<T> copy_rows(const T* p, i64 rows, i64 cols) {
  Arr<T> a({rows, cols});
  std::memcpy(a.mutable_data(), p, sizeof(T) * rows * cols);
  return a;
}

// The core's external loss over a Python callable fn(out, y, need_grad) -> (loss, grad):
// loss a float64 array (B,), grad an array (B, C) of the model's dtype, or None when
// need_grad is False (chainrule.losses builds fn around the user's function). Python errors
// propagate as exceptions out of the core's call.
template <typename T>
cr::ExternalLossFn<T> external_loss(py::object fn) {
  auto ref = std::make_shared<PyRef>(std::move(fn));
  return [ref](const T* out, const T* y, i64 B, i64 C, double* loss, T* grad) {
    py::gil_scoped_acquire gil;
    py::tuple r = ref->obj(copy_rows(out, B, C), copy_rows(y, B, C), grad != nullptr);
    auto l = r[0].cast<py::array_t<double, py::array::c_style | py::array::forcecast>>();
    if (l.ndim() != 1 || l.shape(0) != B)
      cr::fail("custom loss: the per-sample loss must have shape (", B, ",); received shape ", shape_str(l));
    std::memcpy(loss, l.data(), sizeof(double) * B);
    if (grad) {
      auto g = r[1].cast<py::array_t<T, py::array::c_style | py::array::forcecast>>();
      if (g.ndim() != 2 || g.shape(0) != B || g.shape(1) != C)
        cr::fail("custom loss: the gradient must have shape (", B, ", ", C, "); received shape ", shape_str(g));
      std::memcpy(grad, g.data(), sizeof(T) * B * C);
    }
  };
}

// The core's external metrics over a Python callable fn(pred, y) -> float64 array (n,) of
// per-metric sums over the batch.
template <typename T>
cr::ExternalMetricsFn<T> external_metrics(py::object fn, i64 n) {
  auto ref = std::make_shared<PyRef>(std::move(fn));
  return [ref, n](const T* pred, const T* y, i64 B, i64 C, i64 tc, double* sums) {
    py::gil_scoped_acquire gil;
    py::object r = ref->obj(copy_rows(pred, B, C), copy_rows(y, B, tc));
    auto v = r.cast<py::array_t<double, py::array::c_style | py::array::forcecast>>();
    if (v.ndim() != 1 || v.shape(0) != n)
      cr::fail("custom metrics: expected ", n, " sums; received shape ", shape_str(v));
    std::memcpy(sums, v.data(), sizeof(double) * n);
  };
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
      // Fixed at construction: no lock needed.
      .def_property_readonly("in_size", &Net::in_size)
      .def_property_readonly("out_size", &Net::out_size)
      .def_property_readonly("num_params", &Net::num_params)
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
               d["stateful"] = p.stateful;
               out.append(d);
             }
             return out;
           })
      // Configuration: each waits for a running epoch to end.
      .def("compile",
           [](Net& n, int loss, const py::dict& opt, bool from_logits) {
             if (loss < 0 || loss >= cr::kLossCount) cr::fail("unknown loss code ", loss);
             const cr::OptimConfig c = optim_from_dict(opt);
             locked(n, [&] { n.compile(cr::Loss(loss), from_logits, c); });
           },
           py::arg("loss"), py::arg("optimizer"), py::arg("from_logits") = false)
      .def("compile_external",
           [](Net& n, py::object fn, const py::dict& opt) {
             if (!PyCallable_Check(fn.ptr())) cr::fail("compile_external: the loss must be callable");
             const cr::OptimConfig c = optim_from_dict(opt);
             auto f = external_loss<T>(std::move(fn));
             locked(n, [&] { n.compile_external(std::move(f), c); });
           },
           py::arg("loss"), py::arg("optimizer"))
      // specs: [(metric code, param)]; then n_external metrics computed by fn (or None).
      .def("set_metrics",
           [](Net& n, const std::vector<std::pair<int, double>>& specs, i64 n_external, py::object fn) {
             std::vector<cr::MetricSpec> ms;
             for (auto& [code, param] : specs) {
               if (code < 0 || code >= cr::kMetricCount) cr::fail("unknown metric code ", code);
               ms.push_back({cr::Metric(code), param});
             }
             cr::ExternalMetricsFn<T> f;
             if (n_external > 0) {
               if (!PyCallable_Check(fn.ptr())) cr::fail("set_metrics: the external metrics must be callable");
               f = external_metrics<T>(std::move(fn), n_external);
             }
             locked(n, [&] { n.set_metrics(ms, n_external, std::move(f)); });
           },
           py::arg("specs"), py::arg("n_external") = 0, py::arg("fn") = py::none())
      .def("set_optimizer",
           [](Net& n, const py::dict& opt) {
             const cr::OptimConfig c = optim_from_dict(opt);
             locked(n, [&] { n.set_optimizer(c); });
           })
      .def("set_learning_rate", locked_call(&Net::set_learning_rate))
      .def("seed_layers", locked_call(&Net::seed_layers))
      .def("set_regularization", locked_call(&Net::set_regularization), py::arg("index"), py::arg("l1"),
           py::arg("l2"))
      .def("set_layer_trainable", locked_call(&Net::set_layer_trainable), py::arg("layer"), py::arg("trainable"))
      .def("set_stop_on_nan", locked_call(&Net::set_stop_on_nan), py::arg("on"), py::arg("every") = 1)
      .def("set_monitor", locked_call(&Net::set_monitor))
      .def("set_gather_ahead", locked_call(&Net::set_gather_ahead), py::arg("on"),
           py::arg("min_epoch_bytes") = cr::GatherAhead<T>::kMinEpochBytes)
      .def("step_single_threaded", locked_call(&Net::step_single_threaded), py::arg("batch"))
      .def("set_lr_scale", locked_call(&Net::set_lr_scale))
      .def("set_step_count", locked_call(&Net::set_step_count))
      .def_property_readonly("step_count", locked_call(&Net::step_count))
      .def_property_readonly("lr_scale", locked_call(&Net::lr_scale))
      .def("current_learning_rate", locked_call(&Net::current_learning_rate))
      // Weights and state: copied in or out under the lock.
      .def("get_param",
           [](Net& n, i64 i, bool grad) {
             auto& info = n.params_info();
             if (i < 0 || i >= i64(info.size())) cr::fail("parameter index out of range: ", i);
             Arr<T> a(info[i].shape);
             T* dst = a.mutable_data();
             locked(n, [&] {
               const T* src = (grad ? n.grads() : n.params()) + info[i].offset;
               std::memcpy(dst, src, sizeof(T) * info[i].size);
             });
             return a;
           },
           py::arg("index"), py::arg("grad") = false)
      .def("set_param",
           [](Net& n, i64 i, const Arr<T>& a) {
             auto& info = n.params_info();
             if (i < 0 || i >= i64(info.size())) cr::fail("parameter index out of range: ", i);
             bool same = a.ndim() == py::ssize_t(info[i].shape.size());
             for (py::ssize_t d = 0; same && d < a.ndim(); ++d) same = a.shape(d) == info[i].shape[d];
             if (!same)
               cr::fail("weights for '", info[i].name, "' of layer ", info[i].layer, " must have shape ",
                        shape_str(Arr<T>(info[i].shape)), "; received shape ", shape_str(a));
             const T* src = a.data();
             for (i64 k = 0; k < info[i].size; ++k)
               if (!std::isfinite(src[k]))
                 cr::fail("weights for '", info[i].name, "' of layer ", info[i].layer,
                          " must be finite; received ", double(src[k]), " at flat index ", k);
             locked(n, [&] {
               std::memcpy(n.params() + info[i].offset, src, sizeof(T) * info[i].size);
               n.state_changed();
             });
           },
           py::arg("index"), py::arg("value").noconvert())
      .def("get_optimizer_state",
           [](Net& n) {
             std::vector<cr::avec<T>> copy = locked(n, [&] { return n.optimizer_state(); });
             py::list out;
             for (auto& s : copy) {
               Arr<T> a(py::ssize_t(s.size()));
               std::memcpy(a.mutable_data(), s.data(), sizeof(T) * s.size());
               out.append(a);
             }
             return out;
           })
      .def("set_optimizer_state",
           [](Net& n, const std::vector<Arr<T>>& slots) {
             locked(n, [&] {
               auto& st = n.optimizer_state();
               if (slots.size() != st.size())
                 cr::fail("optimizer state must have ", st.size(), " slots; received ", slots.size());
               for (size_t k = 0; k < st.size(); ++k) {
                 if (slots[k].ndim() != 1 || size_t(slots[k].shape(0)) != st[k].size())
                   cr::fail("optimizer state slot ", k, " must have ", st[k].size(), " values; received ",
                            slots[k].size());
                 for (size_t e = 0; e < st[k].size(); ++e)
                   if (!std::isfinite(slots[k].data()[e]))
                     cr::fail("optimizer state slot ", k, " must be finite; received ",
                              double(slots[k].data()[e]), " at index ", e);
               }
               for (size_t k = 0; k < st.size(); ++k)
                 std::memcpy(st[k].data(), slots[k].data(), sizeof(T) * st[k].size());
               n.state_changed();
             });
           })
      // The gradient monitor of the last epoch.
      .def("param_health",
           [](Net& n) {
             auto health = locked(n, [&] { return n.param_health(); });
             py::list out;
             for (auto& h : health) {
               py::dict d;
               d["grad_norm"] = h.grad_norm;
               d["grad_norm_max"] = h.grad_norm_max;
               d["update_ratio"] = h.update_ratio;
               d["weight_norm"] = h.weight_norm;
               out.append(d);
             }
             return out;
           })
      .def("dead_fraction", [](Net& n) { return locked(n, [&] { return n.dead_fraction(); }); })
      // Training and inference.
      .def("train_epoch",
           [](Net& n, const Arr<T>& x, const Arr<T>& y, const py::object& sw, i64 batch,
              bool shuffle, std::uint64_t seed, const py::object& progress, i64 every,
              const py::object& data_parallel) {
             auto c = check_xy(n, x, y, sw);
             LoopHooks hooks(progress, data_parallel);
             cr::EpochStats s;
             if (data_parallel.is_none()) {
               s = locked(n, [&] {
                 return n.train_epoch(c.x, c.y, c.w, c.n, batch, shuffle, seed, hooks.progress,
                                      every, hooks.poll);
               });
             } else {
               PyReducer reducer(data_parallel);
               const cr::DataParallel dp = data_parallel_from(data_parallel, &reducer);
               s = locked(n, [&] {
                 return n.train_epoch_parallel(c.x, c.y, c.w, c.n, batch, shuffle, seed, dp,
                                               hooks.progress, every, hooks.poll);
               });
             }
             hooks.rethrow();
             return stats_dict(s);
           },
           py::arg("x").noconvert(), py::arg("y").noconvert(), py::arg("sample_weight") = py::none(),
           py::arg("batch_size") = 32, py::arg("shuffle") = true, py::arg("seed") = 0,
           py::arg("progress") = py::none(), py::arg("progress_every") = 0,
           py::arg("data_parallel") = py::none())
      .def("check_data",
           [](Net& n, const Arr<T>& x, const Arr<T>& y, const py::object& sw) { check_xy(n, x, y, sw); },
           py::arg("x").noconvert(), py::arg("y").noconvert(), py::arg("sample_weight") = py::none())
      // An epoch streamed one batch per call (see Network::begin_epoch).
      .def("begin_epoch", locked_call(&Net::begin_epoch))
      .def("train_stream_batches",
           [](Net& n, const Arr<T>& x, const Arr<T>& y, const py::object& sw, const std::vector<i64>& sizes) {
             auto c = check_xy(n, x, y, sw);
             i64 total = 0;
             for (i64 s : sizes) {
               if (s < 1) cr::fail("batch sizes must be >= 1; received ", s);
               total += s;
             }
             if (total != c.n) cr::fail("the batch sizes sum to ", total, " but x has ", c.n, " rows");
             LoopHooks hooks{py::none()};
             i64 used = locked(n, [&] {
               return n.train_stream_batches(c.x, c.y, c.w, sizes.data(), i64(sizes.size()), hooks.poll);
             });
             hooks.rethrow();
             return used;
           },
           py::arg("x").noconvert(), py::arg("y").noconvert(), py::arg("sample_weight"), py::arg("sizes"))
      .def("running_stats", [](Net& n) { return stats_dict(locked(n, [&] { return n.running_stats(); })); })
      .def("end_epoch", [](Net& n) { return stats_dict(locked(n, [&] { return n.end_epoch(); })); })
      .def("train_batch",
           [](Net& n, const Arr<T>& x, const Arr<T>& y, const py::object& sw) {
             auto c = check_xy(n, x, y, sw);
             return stats_dict(locked(n, [&] { return n.train_batch(c.x, c.y, c.w, c.n); }));
           },
           py::arg("x").noconvert(), py::arg("y").noconvert(), py::arg("sample_weight") = py::none())
      .def("compute_gradients",
           [](Net& n, const Arr<T>& x, const Arr<T>& y, const py::object& sw) {
             auto c = check_xy(n, x, y, sw);
             return stats_dict(locked(n, [&] { return n.compute_gradients(c.x, c.y, c.w, c.n); }));
           },
           py::arg("x").noconvert(), py::arg("y").noconvert(), py::arg("sample_weight") = py::none())
      .def("trace",
           [](Net& n, const Arr<T>& x, const Arr<T>& y, const py::object& sw) {
             auto c = check_xy(n, x, y, sw);
             cr::TraceRecord<T> tr = locked(n, [&] { return n.trace(c.x, c.y, c.w, c.n); });
             auto arr = [](const std::vector<T>& v) -> py::object {
               if (v.empty()) return py::none();
               Arr<T> a(py::ssize_t(v.size()));
               std::memcpy(a.mutable_data(), v.data(), sizeof(T) * v.size());
               return std::move(a);
             };
             py::list layers;
             for (auto& r : tr.layers) {
               py::dict d;
               d["input"] = arr(r.input);
               d["z"] = arr(r.z);
               d["a"] = arr(r.a);
               d["dout"] = arr(r.dout);
               d["delta"] = arr(r.delta);
               d["dinput"] = arr(r.dinput);
               layers.append(d);
             }
             py::dict out;
             out["layers"] = layers;
             out["output"] = arr(tr.output);
             out["output_grad"] = arr(tr.output_grad);
             out["grads"] = arr(tr.grads);
             out["updates"] = arr(tr.updates);
             out["loss"] = tr.loss;
             out["learning_rate"] = tr.learning_rate;
             return out;
           },
           py::arg("x").noconvert(), py::arg("y").noconvert(), py::arg("sample_weight") = py::none())
      .def("evaluate",
           [](Net& n, const Arr<T>& x, const Arr<T>& y, const py::object& sw, i64 batch) {
             auto c = check_xy(n, x, y, sw);
             LoopHooks hooks{py::none()};
             cr::EpochStats s = locked(n, [&] { return n.evaluate(c.x, c.y, c.w, c.n, batch, hooks.poll); });
             hooks.rethrow();
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
             LoopHooks hooks{py::none()};
             locked(n, [&] { n.predict(xp, N, batch, op, hooks.poll); });
             hooks.rethrow();
             return out;
           },
           py::arg("x").noconvert(), py::arg("batch_size") = 256);
}

// Test hook of gather_ahead.h: gathers X[order], Y[order] (SW[order]) batch by batch through
// a GatherAhead as train_epoch does, the caller busy for step_us between batches in place of
// a step. Returns (x, y, w or None, rows the helper copied).
py::tuple gather_ahead_hook(const Arr<float>& X, const Arr<float>& Y, const py::object& sw,
                            const py::array_t<long long, py::array::c_style>& order, i64 batch,
                            double step_us) {
  if (X.ndim() != 2 || Y.ndim() != 2 || X.shape(0) != Y.shape(0))
    cr::fail("_gather_ahead expects X (N, in) and Y (N, tc); received shapes ", shape_str(X),
             " and ", shape_str(Y));
  const i64 N = X.shape(0), in = X.shape(1), tc = Y.shape(1);
  std::optional<Arr<float>> SW;
  if (!sw.is_none()) {
    SW = sw.cast<Arr<float>>();
    if (SW->ndim() != 1 || SW->shape(0) != N)
      cr::fail("_gather_ahead expects sample weights of shape (", N, ",); received ", shape_str(*SW));
  }
  if (order.ndim() != 1 || order.shape(0) != N)
    cr::fail("_gather_ahead expects order of shape (", N, ",); received ", shape_str(order));
  std::vector<i64> idx(order.data(), order.data() + N);
  for (i64 i : idx)
    if (i < 0 || i >= N) cr::fail("_gather_ahead: order holds ", i, ", outside [0, ", N, ")");
  if (batch < 1) cr::fail("_gather_ahead expects batch >= 1; received ", batch);
  if (!(step_us >= 0.0 && step_us <= 1e5)) cr::fail("_gather_ahead expects step_us in [0, 1e5]; received ", step_us);
  Arr<float> xo({N, in}), yo({N, tc}), wo({N});
  using Ahead = cr::GatherAhead<float>;
  std::vector<cr::avec<float>> bx(Ahead::kSlots), by(Ahead::kSlots), bw(Ahead::kSlots);
  for (int s = 0; s < Ahead::kSlots; ++s) {
    bx[s].assign(batch * in, 0.f);
    by[s].assign(batch * tc, 0.f);
    bw[s].assign(batch, 0.f);
  }
  i64 helper_rows = 0;
  {
    py::gil_scoped_release nogil;
    Ahead ahead(X.data(), Y.data(), SW ? SW->data() : nullptr, in, tc);
    auto post = [&](i64 j) {
      const i64 first = j * batch;
      const int s = int(j % Ahead::kSlots);
      if (first < N)
        ahead.post(std::uint64_t(j), idx.data() + first, std::min(batch, N - first),
                   {bx[s].data(), by[s].data(), bw[s].data()});
    };
    for (i64 j = 0; j < Ahead::kAhead; ++j) post(j);
    for (i64 k = 0, start = 0; start < N; ++k, start += batch) {
      ahead.collect(std::uint64_t(k));
      const int s = int(k % Ahead::kSlots);
      const i64 B = std::min(batch, N - start);
      std::memcpy(xo.mutable_data() + start * in, bx[s].data(), sizeof(float) * B * in);
      std::memcpy(yo.mutable_data() + start * tc, by[s].data(), sizeof(float) * B * tc);
      std::memcpy(wo.mutable_data() + start, bw[s].data(), sizeof(float) * B);
      post(k + Ahead::kAhead);
      const auto until = std::chrono::steady_clock::now() + std::chrono::duration<double, std::micro>(step_us);
      while (std::chrono::steady_clock::now() < until) {
      }
    }
    helper_rows = ahead.helper_rows();
  }
  return py::make_tuple(xo, yo, SW ? py::object(wo) : py::object(py::none()), helper_rows);
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "chainrule's C++ core (private: use the chainrule package)";
  // The tables the Python package reads names and codes from (one owner: the C++ lists).
  py::dict activations, activation_alpha, losses;
  for (int c = 0; c < cr::kActCount; ++c)
    cr::dispatch_act(cr::Act(c), [&](auto op) {
      using Op = decltype(op);
      activations[Op::name] = c;
      if (Op::takes_alpha) activation_alpha[Op::name] = Op::default_alpha;
    });
  for (int c = 0; c < cr::kLossCount; ++c) losses[cr::loss_name(cr::Loss(c))] = c;
  py::dict metrics;  // name -> (code, sparse targets)
  for (int c = 0; c < cr::kMetricCount; ++c)
    metrics[cr::metric_info(cr::Metric(c)).name] = py::make_tuple(c, cr::metric_info(cr::Metric(c)).sparse);
  m.attr("ACTIVATIONS") = activations;
  m.attr("ACTIVATION_ALPHA") = activation_alpha;
  m.attr("LOSSES") = losses;
  m.attr("METRICS") = metrics;
  bind_network<float>(m, "Network32");
  bind_network<double>(m, "Network64");
  bind_kernels(m);
  // The finiteness check of the arrays the package hands to the core (its _checks module):
  // one pass, no temporary; large arrays without the GIL.
  m.def("all_finite", [](const Arr<float>& a) { return all_finite_nogil(a); }, py::arg("a").noconvert());
  m.def("all_finite", [](const Arr<double>& a) { return all_finite_nogil(a); }, py::arg("a").noconvert(),
        "Whether a C-contiguous float32 or float64 array holds no NaN or inf.");
  m.def("set_profile", &cr::profile::set_enabled, py::arg("on"),
        "Turn the step profile (time per phase of training) on or off; off by default. "
        "Takes effect at the next training call.");
  m.def("profile_enabled", &cr::profile::enabled, "Whether the step profile is on.");
  m.def("profile",
        [] {
          const cr::profile::Totals t = cr::profile::totals();  // a short lock, GIL held
          py::dict d;
          for (int k = 0; k < cr::profile::kPhaseCount; ++k)
            d[cr::profile::kPhaseNames[k]] = double(t.ns[k]) * 1e-9;
          d["total"] = double(t.total_ns) * 1e-9;
          d["steps"] = t.steps;
          return d;
        },
        "The step profile so far: seconds per phase (they add up to 'total', the wall time "
        "of the training calls recorded) and the number of steps, over every training call "
        "made with the profile on since the last reset_profile().");
  m.def("reset_profile", &cr::profile::reset, "Clear the step profile's totals.");
  m.def("_gather_ahead", &gather_ahead_hook, py::arg("x").noconvert(), py::arg("y").noconvert(),
        py::arg("sample_weight"), py::arg("order"), py::arg("batch"), py::arg("step_us"),
        "Test hook: gather rows in the given order batch by batch through the helper thread of "
        "a training epoch; returns (x, y, w, rows the helper copied).");
}
