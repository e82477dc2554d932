"""Weight penalties for ``kernel_regularizer=``: ``L1(l1)``, ``L2(l2)``, ``L1L2(l1, l2)``.
The penalty ``l1 Σ|w| + l2 Σw²`` is added to the reported loss and its gradient to the
kernel's gradient, inside the C++ step (as Keras's regularizers)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from ._checks import F32_MAX, hyper_float

if TYPE_CHECKING:
    from ._typing import ArrayLike, Config

__all__ = ["Regularizer", "L1", "L2", "L1L2", "get"]





def _factor(name: str, v: Any) -> float:
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
    """The penalty ``l1 * sum(|w|) + l2 * sum(w**2)`` of a layer's kernel."""

    def __init__(self, l1: float = 0.0, l2: float = 0.0) -> None:
        self.l1 = _factor("l1", l1)
        self.l2 = _factor("l2", l2)

    def __call__(self, w: ArrayLike) -> float:
        """The penalty of a weight array (numpy), for reference."""
        import numpy as np
        a = np.asarray(w, dtype=np.float64)
        return float(self.l1 * np.abs(a).sum() + self.l2 * np.square(a).sum())

    def get_config(self) -> Config:
        return {"class_name": "L1L2", "l1": self.l1, "l2": self.l2}

    def __repr__(self) -> str:
        return f"L1L2(l1={self.l1}, l2={self.l2})"


def L1(l1: float = 0.01) -> Regularizer:
    return Regularizer(l1=l1)


def L2(l2: float = 0.01) -> Regularizer:
    return Regularizer(l2=l2)


def L1L2(l1: float = 0.0, l2: float = 0.0) -> Regularizer:
    return Regularizer(l1=l1, l2=l2)


def get(identifier: Regularizer | str | Config | None) -> Regularizer | None:
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
