"""Training diagnostics: the per-layer gradient statistics ``fit`` records each epoch, and the
warnings it emits: GradientWarning (vanishing or exploding gradients, a layer whose units are
all dead), NonFiniteWarning (NaN or infinite loss or weights), InputRangeWarning (inputs far
outside the usual range). The numbers are reduced in the C++ optimizer loop; this module only
names them by layer and decides what to warn about.
"""

from __future__ import annotations

import math
import os
import sys
import warnings

__all__ = ["GradientWarning", "NonFiniteWarning", "InputRangeWarning"]


class GradientWarning(UserWarning):
    """A layer's gradients vanished or exploded during fit, or all its units died."""


class NonFiniteWarning(RuntimeWarning):
    """The loss or the weights became NaN or infinite: ``fit`` stopped at the last finite
    step (its default), or training left NaN or infinite weights in the model
    (``stop_on_nonfinite=False``, ``train_on_batch``)."""


class InputRangeWarning(UserWarning):
    """The inputs of a model's first ``fit`` are far outside the range networks train well on."""


# Inputs whose largest |value| exceeds this get an InputRangeWarning at a model's first fit:
# raw 8-bit pixels (0..255) and unscaled measurements; standardized or [0, 1]-scaled data
# stays far below it.
INPUT_RANGE_LIMIT = 100.0


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


def warn_nonfinite_stop(model, epoch, stats, every):
    """fit's default stop at a non-finite loss or weight (stop_on_nonfinite=True); ``every``:
    the steps between the snapshots it restored from."""
    back = "the last finite step" if every == 1 else f"a finite step at most {every} steps earlier"
    _warn(f"fit stopped in epoch {epoch + 1}: the loss or the weights became NaN or infinite at step "
          f"{int(stats['steps']) + 1} of the epoch. The weights and optimizer state of {back} are "
          f"restored. Lower the learning rate (the last step's was {stats['learning_rate']:.3g}), "
          "clip gradients (clipnorm=... on the optimizer), or scale the inputs "
          "(cr.datasets.scale / standardize); fit(..., stop_on_nonfinite=False) trains on regardless.",
          NonFiniteWarning)


def warn_input_range(max_abs):
    """An InputRangeWarning when the inputs' largest |value| exceeds INPUT_RANGE_LIMIT."""
    if not max_abs > INPUT_RANGE_LIMIT:
        return
    _warn(f"the inputs are far outside the range networks train well on: inputs up to |x| = {max_abs:.4g}. "
          "With such inputs the first layer's pre-activations are huge, ReLU units die and training "
          "stalls or diverges. Scale them first: cr.datasets.scale(x) maps 0..255 pixels to [0, 1], "
          "cr.datasets.standardize(x_train, x_test) gives zero mean and unit variance per feature. "
          "(Said once, at the model's first fit.)", InputRangeWarning)


def warn_ran_out(what, epoch, steps_per_epoch):
    """A stream gave fewer batches than an epoch needs: fit stops (as Keras)."""
    need = (f"steps_per_epoch={steps_per_epoch} batches" if steps_per_epoch is not None
            else "a batch")
    _warn(f"{what} ran out of data in epoch {epoch + 1} (it must give {need} per epoch); training "
          "stopped. A generator is consumed across epochs: make it yield at least steps_per_epoch * "
          "epochs batches (e.g. loop forever), or pass an iterable or cr.data.Dataset, which is read "
          "afresh every epoch.", UserWarning)


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


def warn_dead_units(stats, epoch, warned):
    """One GradientWarning per fit naming the ReLU-family layers none of whose units produced
    a positive output on any training sample of the epoch (``stats``: from layer_stats)."""
    if "dead" in warned:
        return
    dead = [name for name, st in stats.items() if st.get("dead_fraction", -1.0) >= 1.0]
    if not dead:
        return
    warned.add("dead")
    _warn(f"all units of layer(s) {', '.join(repr(n) for n in dead)} are dead after epoch {epoch + 1}: "
          "none produced a positive output on any training sample, so no gradient flows through them "
          "and the layers before them stop learning. Remedies: a lower learning rate, "
          "activation='leaky_relu', He initialisation (kernel_initializer='he_normal'), or scaled inputs "
          "(cr.datasets.scale / standardize). dead_fraction per layer is in History.layer_stats.",
          GradientWarning)
