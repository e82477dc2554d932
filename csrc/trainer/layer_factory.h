// Builds layers from plain descriptions (kind + numeric options), so the bindings stay a
// thin translation of Python dicts and new layer kinds are registered in one place.
#pragma once
#include <cmath>
#include <map>
#include <memory>
#include <string>

#include "layers/activation.h"
#include "layers/batchnorm.h"
#include "layers/conv2d.h"
#include "layers/dense.h"
#include "layers/dropout.h"
#include "layers/pooling.h"

namespace cr {

struct LayerSpec {
  std::string kind;
  std::map<std::string, double> opts;

  double num(const std::string& key) const {
    auto it = opts.find(key);
    if (it == opts.end()) fail(kind, ": missing option '", key, "'");
    return it->second;
  }
  double num(const std::string& key, double dflt) const {
    auto it = opts.find(key);
    return it == opts.end() ? dflt : it->second;
  }
  i64 integer(const std::string& key) const {
    double v = num(key);
    if (!std::isfinite(v) || v != std::floor(v)) fail(kind, ": option '", key, "' must be an integer; received ", v);
    // Beyond this the double cannot hold the integer exactly (and the cast could overflow);
    // no layer size comes near it.
    if (std::fabs(v) > double(kMaxElems)) fail(kind, ": option '", key, "' must be at most ", kMaxElems, "; received ", v);
    return i64(v);
  }
  Act activation() const {
    double a = num("activation", 0.0);
    if (!(a >= 0 && a < kActCount) || a != std::floor(a)) fail(kind, ": unknown activation code ", a);
    return Act(int(a));
  }
};

template <typename T>
std::unique_ptr<Layer<T>> make_layer(const LayerSpec& s) {
  if (s.kind == "dense")
    return std::make_unique<Dense<T>>(s.integer("in"), s.integer("units"), s.activation(),
                                      T(s.num("alpha", 0.0)));
  if (s.kind == "conv2d")
    return std::make_unique<Conv2D<T>>(s.integer("h"), s.integer("w"), s.integer("cin"),
                                       s.integer("filters"), s.integer("kh"), s.integer("kw"),
                                       s.integer("sh"), s.integer("sw"), s.integer("same") != 0,
                                       s.activation(), T(s.num("alpha", 0.0)));
  if (s.kind == "maxpool2d")
    return std::make_unique<MaxPooling2D<T>>(s.integer("h"), s.integer("w"), s.integer("c"),
                                             s.integer("ph"), s.integer("pw"), s.integer("sh"),
                                             s.integer("sw"), s.integer("same") != 0);
  if (s.kind == "avgpool2d")
    return std::make_unique<AveragePooling2D<T>>(s.integer("h"), s.integer("w"), s.integer("c"),
                                                 s.integer("ph"), s.integer("pw"), s.integer("sh"),
                                                 s.integer("sw"), s.integer("same") != 0);
  if (s.kind == "dropout") return std::make_unique<Dropout<T>>(s.integer("size"), s.num("rate"));
  if (s.kind == "batchnorm")
    return std::make_unique<BatchNormalization<T>>(s.integer("size"), s.integer("channels"),
                                                   s.integer("center") != 0, s.integer("scale") != 0,
                                                   s.num("momentum"), s.num("epsilon"));
  if (s.kind == "activation")
    return std::make_unique<Activation<T>>(s.integer("size"), s.integer("channels"), s.activation(),
                                           T(s.num("alpha", 0.0)));
  fail("unknown layer kind '", s.kind, "'");
}

}  // namespace cr
