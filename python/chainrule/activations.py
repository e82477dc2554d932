"""Activation functions by name. The arithmetic (and its exact derivative) lives in the
C++ core, which also owns the table of names and codes (csrc/kernels/activations.h,
exported as ``_core.ACTIVATIONS``); this module only names and configures them."""

from __future__ import annotations

import math
import numbers
from typing import Any

from . import _core
from ._checks import F32_MAX

__all__ = ["Activation", "LeakyReLU", "get", "NAMES"]

_CODES = dict(_core.ACTIVATIONS)           # name -> code, in the core's order
_DEFAULT_ALPHA = dict(_core.ACTIVATION_ALPHA)  # name -> default alpha, for those that take one
_ALIASES = {None: "linear", "identity": "linear", "none": "linear", "leakyrelu": "leaky_relu"}
NAMES = tuple(_CODES)


class Activation:
    """A named activation. ``alpha`` is the parameter of those that take one (the negative
    slope of ``leaky_relu``, default 0.01 as PyTorch); the other activations ignore it."""

    name: str
    alpha: float

    def __init__(self, name: str | None, alpha: float | None = None) -> None:
        if name is not None and not isinstance(name, str):
            raise TypeError(f"activation: name must be a string such as 'relu'; received {name!r}")
        key = _ALIASES.get(name, name)
        if key not in _CODES:
            raise ValueError(f"activation: unknown name {key!r}; expected one of {list(NAMES)}")
        assert key is not None  # None is an alias of "linear"
        if alpha is None:
            alpha = _DEFAULT_ALPHA.get(key, 0.0)
        if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real):
            raise TypeError(f"activation alpha must be a number; received {alpha!r}")
        try:
            value = float(alpha)
        except OverflowError:  # an integer too large for a float: out of range
            value = math.inf
        if not (value >= 0.0 and value < math.inf):
            raise ValueError(f"activation alpha must be a finite number >= 0; received {alpha!r}")
        if value > F32_MAX:
            raise ValueError(f"activation alpha must be at most {F32_MAX:.8g} (the float32 range); "
                             f"received {alpha!r}")
        self.name = key
        self.alpha = value

    @property
    def code(self) -> int:
        return _CODES[self.name]

    @property
    def takes_alpha(self) -> bool:
        return self.name in _DEFAULT_ALPHA

    def get_config(self) -> dict[str, Any]:
        return {"name": self.name, "alpha": self.alpha}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Activation) and (self.name, self.alpha) == (other.name, other.alpha)

    def __repr__(self) -> str:
        return f"Activation({self.name!r}, alpha={self.alpha})" if self.takes_alpha else f"Activation({self.name!r})"


def LeakyReLU(alpha: float = _DEFAULT_ALPHA["leaky_relu"]) -> Activation:
    """Leaky ReLU with negative slope ``alpha``: ``Dense(64, activation=LeakyReLU(0.2))``."""
    return Activation("leaky_relu", alpha)


def get(identifier: str | Activation | dict[str, Any] | None) -> Activation:
    """An :class:`Activation` from a name, a config dict, an Activation, or None (linear)."""
    if isinstance(identifier, Activation):
        return identifier
    if identifier is None or isinstance(identifier, str):
        key = identifier.lower() if isinstance(identifier, str) else identifier
        return Activation(key)
    if isinstance(identifier, dict) and "name" in identifier:
        return Activation(identifier["name"], identifier.get("alpha"))
    raise TypeError(f"activation must be a name such as 'relu', an Activation, or None; received {identifier!r}")
