"""Losses by name. Values and gradients are computed in the C++ core; softmax +
categorical cross-entropy and sigmoid + binary cross-entropy are fused there into their
numerically stable forms (log-sum-exp, softplus) when the last layer has that activation.
The classes and aliases here are API sugar over the core's table of names."""

from __future__ import annotations

from typing import Any

from . import _core

__all__ = ["get", "NAMES", "MeanSquaredError", "BinaryCrossentropy", "CategoricalCrossentropy",
           "SparseCategoricalCrossentropy"]

# name -> code: the core owns the table (csrc/losses/loss.h, exported as _core.LOSSES).
_CODES = dict(_core.LOSSES)
_ALIASES = {"mse": "mean_squared_error", "bce": "binary_crossentropy",
            "cce": "categorical_crossentropy", "sparse_cce": "sparse_categorical_crossentropy"}
NAMES = tuple(_CODES)


class Loss:
    """Base class of the named losses; ``compile(loss=...)`` takes one of them or its name."""

    name = ""

    def get_config(self) -> dict[str, Any]:
        return {"name": self.name}

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class MeanSquaredError(Loss):
    name = "mean_squared_error"


class BinaryCrossentropy(Loss):
    name = "binary_crossentropy"


class CategoricalCrossentropy(Loss):
    name = "categorical_crossentropy"


class SparseCategoricalCrossentropy(Loss):
    name = "sparse_categorical_crossentropy"


def get(identifier: str | Loss) -> str:
    """The canonical loss name for a name, alias or Loss object."""
    if isinstance(identifier, Loss):
        if identifier.name not in _CODES:  # the base class, or a user subclass: no C++ loss to run
            raise ValueError(f"loss: {identifier!r} is not a built-in loss (name {identifier.name!r}); "
                             f"expected one of {list(NAMES)}")
        return identifier.name
    if isinstance(identifier, str):
        key = _ALIASES.get(identifier.lower(), identifier.lower())
        if key in _CODES:
            return key
        raise ValueError(f"loss: unknown name {identifier!r}; expected one of {list(NAMES)} (or mse)")
    raise TypeError(f"loss must be a name such as 'sparse_categorical_crossentropy' or a Loss; received {identifier!r}")


def code(name: str) -> int:
    return _CODES[name]
