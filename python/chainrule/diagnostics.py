"""Training diagnostics: the per-layer gradient statistics ``fit`` records each epoch, and the
GradientWarning / NonFiniteWarning it emits. The numbers are reduced in the C++ optimizer
loop; this module only names them by layer and decides what to warn about.
"""

from __future__ import annotations

import math
import os
import sys
import warnings

__all__ = ["GradientWarning", "NonFiniteWarning"]


class GradientWarning(UserWarning):
    """A layer's gradients vanished or exploded during fit."""


class NonFiniteWarning(RuntimeWarning):
    """Training left NaN or infinite weights in the model (without TerminateOnNaN, which
    stops at the last finite step instead)."""


# A layer whose RMS kernel gradient is this many times smaller (larger) than the output
# layer's is reported as vanishing (exploding).
_VANISH_RATIO = 1e-3
_EXPLODE_RATIO = 1e3

_REMEDIES = {
    "vanishing": "use ReLU-family activations with He initialisation, fewer layers, or normalised inputs",
    "exploding": "clip gradients (clipnorm=... on the optimizer), lower the learning rate, or use "
                 "Glorot/He initialisation",
}

_PACKAGE_DIR = os.path.dirname(__file__) + os.sep


def _warn(message, category):
    """``warnings.warn`` attributed to the first caller outside chainrule (the user's line
    that called fit or train_on_batch), however deep in the package the warning is raised."""
    level, frame = 2, sys._getframe(1)
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        frame = frame.f_back
        level += 1
    warnings.warn(message, category, stacklevel=level)


def warn_nonfinite(model, stats, when, warned=None):
    """A NonFiniteWarning when the core reports NaN/inf weights after a call (noted in
    ``warned``: one per fit)."""
    k = stats.get("nonfinite_param", -1)
    if k < 0:
        return
    if warned is not None:
        warned.add("nonfinite")
    p = model._core.params_info()[k]
    layer = [l for l in model.layers if l.core_spec() is not None][p["layer"]]
    _warn(f"after {when}, the {p['name']} of layer {layer.name!r} holds NaN or infinite "
          "values: training diverged. Lower the learning rate, clip gradients "
          "(clipnorm=...), scale the inputs, or add callbacks.TerminateOnNaN() to stop "
          "at the last finite step.", NonFiniteWarning)


def layer_stats(model):
    """This epoch's gradient monitor, by layer name (see History.layer_stats)."""
    health = model._core.param_health()
    dead = model._core.dead_fraction()
    out = {}
    i = 0
    core_index = 0
    for layer in model.layers:
        st = {}
        for pname, shape, *_ in layer.param_specs():
            h = health[i]
            if not layer.weight_trainable(pname):  # frozen, or moving statistics: no gradient
                i += 1
                continue
            st[f"{pname}_grad_norm"] = h["grad_norm"]
            if pname == "kernel":
                st["kernel_grad_norm_max"] = h["grad_norm_max"]
                st["kernel_update_ratio"] = h["update_ratio"]
                st["kernel_weight_norm"] = h["weight_norm"]
                st["kernel_grad_rms"] = h["grad_norm"] / math.sqrt(math.prod(shape))
            i += 1
        if layer.core_spec() is not None:
            if dead[core_index] >= 0:
                st["dead_fraction"] = dead[core_index]
            core_index += 1
        if st:
            out[layer.name] = st
    return out


def warn_gradients(stats, epoch, warned):
    """One GradientWarning per kind (vanishing, exploding) and fit, naming the layers whose
    RMS kernel gradient is far from the output layer's (``stats``: from layer_stats)."""
    rms = [(name, st["kernel_grad_rms"], st["kernel_grad_norm"]) for name, st in stats.items()
           if "kernel_grad_rms" in st]
    if not rms:
        return
    out_name, out_rms, _ = rms[-1]
    found = {"vanishing": [], "exploding": []}
    for name, r, norm in rms:
        if not math.isfinite(norm):
            found["exploding"].append(f"{name!r} (gradient norm {norm})")
        elif name != out_name and out_rms > 0 and r < _VANISH_RATIO * out_rms:
            found["vanishing"].append(f"{name!r} ({out_rms / max(r, 1e-300):.1e}x smaller than the output layer's)")
        elif name != out_name and out_rms > 0 and r > _EXPLODE_RATIO * out_rms:
            found["exploding"].append(f"{name!r} ({r / out_rms:.1e}x larger than the output layer's)")
    for kind, layers in found.items():
        if layers and kind not in warned:
            warned.add(kind)
            _warn(f"{kind} gradients in epoch {epoch + 1}: RMS kernel gradient of layer(s) "
                  f"{', '.join(layers)}; output layer {out_name!r}: {out_rms:.2e}; "
                  f"{_REMEDIES[kind]}. Per-layer norms are in History.layer_stats.", GradientWarning)
