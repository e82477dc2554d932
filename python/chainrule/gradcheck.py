"""cr.gradient_check: the analytic gradient of every parameter against central finite
differences of the training loss, in float64, on a copy of the model.

The analytic gradient is the one training uses (``Sequential.trace``: batch mean,
regularization included); the loss is the trace's training loss, which with Dropout uses the
same masks on every evaluation (the trace puts the dropout streams back), so it is a
deterministic function of the weights.
"""

from __future__ import annotations

import copy
import numbers
from typing import TYPE_CHECKING

import numpy as np

from . import _checks

if TYPE_CHECKING:
    from ._typing import ArrayLike
    from .models import Sequential

__all__ = ["gradient_check"]


def _float64_copy(model):
    from .models import Sequential
    if not isinstance(model, Sequential):
        raise TypeError(f"gradient_check: model must be a chainrule Sequential; received {model!r}")
    if not model._compiled:
        raise ValueError("gradient_check: model must be compiled first: call "
                         "model.compile(optimizer=..., loss=...)")
    if not model.built:
        raise ValueError("gradient_check: model is not built yet: call build(input_shape) or fit first")
    cfg = model.get_config()
    cfg["dtype"] = "float64"
    twin = Sequential.from_config(cfg)
    if not twin.built:
        twin.build(model.input_shape)
    spec = model._loss_spec  # the same loss: from_logits kept, a custom callable reused
    twin.compile(optimizer=copy.deepcopy(model.optimizer), loss=spec.fn if spec.custom else spec.config())
    twin.set_weights([np.asarray(w, dtype=np.float64) for w in model.get_weights()])
    return twin


def gradient_check(model: Sequential, x: ArrayLike, y: ArrayLike, eps: float = 1e-6,
                   sample_weight: ArrayLike | None = None) -> dict[str, dict[str, float]]:
    """Compare the analytic gradient of every parameter with central differences
    (L(w + eps) - L(w - eps)) / (2 eps) of the training loss on (x, y), in float64 on a copy
    of ``model`` (the model itself is not touched). Returns ``{layer name: {parameter name:
    worst relative error}}``, the error of a tensor being max |analytic - numeric| over its
    elements divided by the larger of max |analytic| and max |numeric| over the tensor (so
    elements whose gradient is ~0 do not divide by ~0). Correct gradients give ~1e-8 or less
    with the default eps on smooth models; ReLU kinks and max-pooling ties crossed by eps
    give larger errors. Only trainable weights are checked (moving statistics and the weights
    of frozen layers get no gradient). Cost: two forward/backward passes per parameter
    element."""
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise TypeError(f"gradient_check: eps must be a number; received {eps!r}")
    eps = float(eps)
    if not (0.0 < eps < 1.0):
        raise ValueError(f"gradient_check: eps must be in (0, 1); received {eps!r}")
    twin = _float64_copy(model)
    analytic = twin.trace(x, y, sample_weight)
    core = twin._core
    info = core.params_info()
    weights = twin.get_weights()
    X, Y, SW = twin._prepare(x, y, sample_weight)

    def loss():
        return float(core.trace(X, Y, SW)["loss"])

    out, pi = {}, 0
    for layer, lt in zip(twin._layers, analytic.layers):
        errs = {}
        for name in lt.grads:
            if not layer.weight_trainable(name):  # no gradient to check: the loss ignores
                pi += 1                           # moving statistics; a frozen weight has none
                continue
            w = weights[pi].copy()
            num = np.empty_like(w)
            for j in range(w.size):
                orig = w.flat[j]
                w.flat[j] = orig + eps
                core.set_param(pi, w)
                lp = loss()
                w.flat[j] = orig - eps
                core.set_param(pi, w)
                lm = loss()
                w.flat[j] = orig
                num.flat[j] = (lp - lm) / (2.0 * eps)
            core.set_param(pi, w)
            g = lt.grads[name]
            scale = max(float(np.abs(g).max(initial=0.0)), float(np.abs(num).max(initial=0.0)))
            diff = float(np.abs(g - num).max(initial=0.0))
            errs[name] = diff / scale if scale > 0.0 else diff
            pi += 1
        if errs:
            out[layer.name] = errs
    return out
