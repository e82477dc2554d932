"""Losses by name or object, and custom losses as Python callables.

Values and gradients of the built-in losses are computed in the C++ core; softmax +
categorical cross-entropy and sigmoid + binary cross-entropy are fused there into their
numerically stable forms (log-sum-exp, softplus) when the last layer has that activation.
``from_logits=True`` (Keras's) takes a linear last layer's outputs as logits: the loss runs
the same fused computation, so the model trains exactly as with a softmax/sigmoid last layer,
and ``predict`` returns the logits.

A custom loss is any callable ``fn(y_true, y_pred)`` (or a :class:`Loss` subclass with a
``call(y_true, y_pred)`` method). It is the slower path: the C++ loop calls it once per batch
with the GIL taken. It receives float64 arrays of shape ``(batch, outputs)`` — ``y_pred`` is
the model's output (after the last layer's activation), ``y_true`` the targets, which have
one value per output — and returns either

- a tuple ``(loss, grad)``: ``loss`` the per-sample losses, shape ``(batch,)``, and ``grad``
  their gradient with respect to ``y_pred``, shape ``(batch, outputs)``, row ``i`` being
  ``d loss[i] / d y_pred[i]``; or
- the per-sample losses alone: the gradient is then taken by central finite differences in
  float64, two calls per output per batch — for checking a gradient, not for training
  large models.

As for the built-in losses, the model minimises the mean over the batch of
``sample_weight[i] * loss[i]``. A custom loss must not call the model it trains.
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np

from . import _core

__all__ = ["get", "resolve", "NAMES", "Loss", "MeanSquaredError", "BinaryCrossentropy",
           "CategoricalCrossentropy", "SparseCategoricalCrossentropy"]

# name -> code: the core owns the table (csrc/losses/loss.h, exported as _core.LOSSES).
_CODES = dict(_core.LOSSES)
_ALIASES = {"mse": "mean_squared_error", "bce": "binary_crossentropy",
            "cce": "categorical_crossentropy", "sparse_cce": "sparse_categorical_crossentropy"}
NAMES = tuple(_CODES)
# The losses whose inputs are probabilities (and that take from_logits=True).
PROBABILITY_LOSSES = ("binary_crossentropy", "categorical_crossentropy", "sparse_categorical_crossentropy")


class Loss:
    """A loss. The built-in ones are the subclasses below; subclass it with a
    ``call(y_true, y_pred)`` method for a custom loss (see the module's documentation)."""

    name = ""

    def call(self, y_true: Any, y_pred: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} is not a built-in loss and defines no call()")

    def get_config(self) -> dict[str, Any]:
        return {"name": self.name}

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class MeanSquaredError(Loss):
    name = "mean_squared_error"


class _ProbabilityLoss(Loss):
    """A cross-entropy: on probabilities, or on logits with ``from_logits=True``."""

    def __init__(self, from_logits=False):
        if not isinstance(from_logits, bool):
            raise TypeError(f"{type(self).__name__}: from_logits must be True or False; received {from_logits!r}")
        self.from_logits = from_logits

    def get_config(self):
        return {"name": self.name, "from_logits": self.from_logits}

    def __repr__(self):
        return f"{type(self).__name__}(from_logits={self.from_logits})"


class BinaryCrossentropy(_ProbabilityLoss):
    name = "binary_crossentropy"


class CategoricalCrossentropy(_ProbabilityLoss):
    name = "categorical_crossentropy"


class SparseCategoricalCrossentropy(_ProbabilityLoss):
    name = "sparse_categorical_crossentropy"


class LossSpec:
    """A resolved loss: a built-in ``name`` (with ``from_logits``), or ``fn``, a custom
    callable (``name`` is then None)."""

    def __init__(self, name, from_logits=False, fn=None, identifier=None):
        self.name, self.from_logits, self.fn, self.identifier = name, from_logits, fn, identifier

    @property
    def custom(self):
        return self.fn is not None

    def config(self):
        """What a model file stores: the name, or {"name", "from_logits"} for logits."""
        if self.custom:
            raise ValueError(f"the custom loss {self.identifier!r} is Python code and cannot be stored in a "
                             "model file; save_weights() stores the weights, and the model can be compiled "
                             "again after loading them")
        return {"name": self.name, "from_logits": True} if self.from_logits else self.name


def _check_callable(what, fn):
    """A callable that can be called as fn(y_true, y_pred), or TypeError."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # builtins without a signature: trust them
        return
    try:
        sig.bind(None, None)
    except TypeError:
        raise TypeError(f"{what} must be callable as fn(y_true, y_pred); {fn!r} has the signature {sig}") from None


def resolve(identifier) -> LossSpec:
    """A :class:`LossSpec` for a name, alias, config dict, Loss object or callable."""
    if isinstance(identifier, Loss):
        if identifier.name in _CODES:
            return LossSpec(identifier.name, getattr(identifier, "from_logits", False), identifier=identifier)
        if type(identifier).call is Loss.call:  # the base class, or a subclass without call()
            raise ValueError(f"loss: {identifier!r} is not a built-in loss (name {identifier.name!r}) and defines "
                             f"no call(y_true, y_pred); expected one of {list(NAMES)} or a custom loss")
        _check_callable("loss", identifier.call)
        return LossSpec(None, fn=identifier.call, identifier=identifier)
    if isinstance(identifier, str):
        key = _ALIASES.get(identifier.lower(), identifier.lower())
        if key in _CODES:
            return LossSpec(key, identifier=identifier)
        raise ValueError(f"loss: unknown name {identifier!r}; expected one of {list(NAMES)} (or mse)")
    if isinstance(identifier, dict) and set(identifier) <= {"name", "from_logits"} and "name" in identifier:
        spec = resolve(identifier["name"]) if isinstance(identifier["name"], str) else None
        if spec is None:
            raise ValueError(f"loss: a loss config needs a loss name; received {identifier!r}")
        logits = identifier.get("from_logits", False)
        if not isinstance(logits, bool):
            raise TypeError(f"loss: from_logits must be True or False; received {logits!r}")
        if logits and spec.name not in PROBABILITY_LOSSES:
            raise ValueError(f"loss: from_logits applies to {list(PROBABILITY_LOSSES)}; received it for {spec.name!r}")
        spec.from_logits = logits
        return spec
    if callable(identifier) and not isinstance(identifier, type):
        _check_callable("loss", identifier)
        return LossSpec(None, fn=identifier, identifier=identifier)
    raise TypeError("loss must be a name such as 'sparse_categorical_crossentropy', a Loss or a callable "
                    f"fn(y_true, y_pred); received {identifier!r}")


def get(identifier) -> str:
    """The canonical name of a built-in loss given by name, alias, config or Loss object."""
    spec = resolve(identifier)
    if spec.custom:
        raise ValueError(f"loss: {identifier!r} is a custom loss, not a built-in one")
    return spec.name


def code(name: str) -> int:
    return _CODES[name]


# -- the custom-loss bridge ------------------------------------------------------------------

def _per_sample(what, value, batch):
    arr = np.asarray(value, dtype=np.float64)
    if arr.shape == (batch, 1):
        arr = arr[:, 0]
    if arr.shape != (batch,):
        raise ValueError(f"{what} must return the per-sample losses, shape ({batch},); received shape {arr.shape}")
    return np.ascontiguousarray(arr)


def numeric_gradient(fn, y_true, y_pred):
    """d loss_i / d y_pred_i by central differences in float64 (step eps**(1/3) scaled by
    max(1, |y_pred|)): two calls of ``fn`` per output column. ``fn`` returns (batch,) losses."""
    y_pred = np.asarray(y_pred, dtype=np.float64)
    batch, width = y_pred.shape
    grad = np.empty_like(y_pred)
    h = np.finfo(np.float64).eps ** (1.0 / 3.0) * np.maximum(1.0, np.abs(y_pred))
    for j in range(width):
        col = y_pred[:, j].copy()
        up, down = y_pred.copy(), y_pred.copy()
        up[:, j] = col + h[:, j]
        down[:, j] = col - h[:, j]
        step = up[:, j] - down[:, j]  # the step actually taken, after rounding
        grad[:, j] = (_per_sample("the custom loss", fn(y_true, up), batch)
                      - _per_sample("the custom loss", fn(y_true, down), batch)) / step
    return grad


def external(fn, dtype):
    """The callable the core calls for a custom loss: (out, y, need_grad) -> (loss, grad)."""
    np_dtype = np.dtype(dtype)

    def bridge(out, y, need_grad):
        y_pred = out.astype(np.float64)
        y_true = y.astype(np.float64)
        batch, width = y_pred.shape
        result = fn(y_true, y_pred)
        if isinstance(result, tuple):
            if len(result) != 2:
                raise ValueError(f"the custom loss {fn!r} must return (loss, grad) or the per-sample losses; "
                                 f"received a tuple of {len(result)}")
            loss = _per_sample(f"the custom loss {fn!r}", result[0], batch)
            if not need_grad:
                return loss, None
            grad = np.asarray(result[1], dtype=np.float64)
            if grad.shape != (batch, width):
                raise ValueError(f"the custom loss {fn!r} must return a gradient of shape ({batch}, {width}) "
                                 f"(d loss[i] / d y_pred[i]); received shape {grad.shape}")
        else:
            loss = _per_sample(f"the custom loss {fn!r}", result, batch)
            if not need_grad:
                return loss, None
            grad = numeric_gradient(fn, y_true, y_pred)
        return loss, np.ascontiguousarray(grad, dtype=np_dtype)

    return bridge
