"""Weight penalties for ``kernel_regularizer=``: ``L1(l1)``, ``L2(l2)``, ``L1L2(l1, l2)``.
The penalty ``l1 Σ|w| + l2 Σw²`` is added to the reported loss and its gradient to the
kernel's gradient, inside the C++ step (as Keras's regularizers)."""

from __future__ import annotations

import math

from ._checks import F32_MAX, hyper_float

__all__ = ["Regularizer", "L1", "L2", "L1L2", "get"]





def _factor(name, v):
    try:
        f = hyper_float(v)
    except TypeError:
        raise TypeError(f"regularizer {name} must be a number; received {v!r}") from None
    if not (math.isfinite(f) and f >= 0):
        raise ValueError(f"regularizer {name} must be a finite number >= 0; received {v!r}")
    if f > F32_MAX:
        raise ValueError(f"regularizer {name} must be at most {F32_MAX:.8g} (the float32 range); received {v!r}")
    return f


class Regularizer:
    def __init__(self, l1=0.0, l2=0.0):
        self.l1 = _factor("l1", l1)
        self.l2 = _factor("l2", l2)

    def __call__(self, w):
        """The penalty of a weight array (numpy), for reference."""
        import numpy as np
        w = np.asarray(w, dtype=np.float64)
        return self.l1 * np.abs(w).sum() + self.l2 * np.square(w).sum()

    def get_config(self):
        return {"class_name": "L1L2", "l1": self.l1, "l2": self.l2}

    def __repr__(self):
        return f"L1L2(l1={self.l1}, l2={self.l2})"


def L1(l1=0.01):
    return Regularizer(l1=l1)


def L2(l2=0.01):
    return Regularizer(l2=l2)


def L1L2(l1=0.0, l2=0.0):
    return Regularizer(l1=l1, l2=l2)


def get(identifier):
    """A Regularizer from an instance, None, 'l1' / 'l2' / 'l1_l2' (factor 0.01) or a config."""
    if identifier is None or isinstance(identifier, Regularizer):
        return identifier
    if isinstance(identifier, str):
        key = identifier.lower()
        if key == "l1":
            return L1()
        if key == "l2":
            return L2()
        if key in ("l1_l2", "l1l2"):
            return L1L2(0.01, 0.01)
        raise ValueError(f"kernel_regularizer: unknown name {identifier!r}; expected 'l1', 'l2' or 'l1_l2'")
    if isinstance(identifier, dict) and identifier.get("class_name") in ("L1L2", "L1", "L2"):
        return Regularizer(identifier.get("l1", 0.0), identifier.get("l2", 0.0))
    raise TypeError(f"kernel_regularizer must be a Regularizer, a name or None; received {identifier!r}")
