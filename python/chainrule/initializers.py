"""Weight initializers (Glorot/Xavier, He, zeros), seeded through numpy's Generator.

Glorot keeps the variance of activations and gradients equal across a layer for
symmetric activations (tanh, sigmoid); He doubles it to make up for ReLU zeroing half the
units. Normal variants use a plain (untruncated) normal with the paper's standard deviation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from ._typing import Initializer

__all__ = ["glorot_uniform", "glorot_normal", "he_uniform", "he_normal", "zeros", "ones", "get", "NAMES"]


def glorot_uniform(shape: tuple[int, ...], fan_in: int, fan_out: int, rng: np.random.Generator) -> NDArray[np.float64]:
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, size=shape)


def glorot_normal(shape: tuple[int, ...], fan_in: int, fan_out: int, rng: np.random.Generator) -> NDArray[np.float64]:
    return rng.normal(0.0, np.sqrt(2.0 / (fan_in + fan_out)), size=shape)


def he_uniform(shape: tuple[int, ...], fan_in: int, fan_out: int, rng: np.random.Generator) -> NDArray[np.float64]:
    limit = np.sqrt(6.0 / fan_in)
    return rng.uniform(-limit, limit, size=shape)


def he_normal(shape: tuple[int, ...], fan_in: int, fan_out: int, rng: np.random.Generator) -> NDArray[np.float64]:
    return rng.normal(0.0, np.sqrt(2.0 / fan_in), size=shape)


def zeros(shape: tuple[int, ...], fan_in: int, fan_out: int, rng: np.random.Generator) -> NDArray[np.float64]:
    return np.zeros(shape)


def ones(shape: tuple[int, ...], fan_in: int, fan_out: int, rng: np.random.Generator) -> NDArray[np.float64]:
    return np.ones(shape)


_REGISTRY: dict[str, Initializer] = {
    "glorot_uniform": glorot_uniform,
    "glorot_normal": glorot_normal,
    "xavier_uniform": glorot_uniform,
    "xavier_normal": glorot_normal,
    "he_uniform": he_uniform,
    "he_normal": he_normal,
    "kaiming_uniform": he_uniform,
    "kaiming_normal": he_normal,
    "zeros": zeros,
    "ones": ones,
}
NAMES = tuple(_REGISTRY)


def default_for(activation_name: str) -> str:
    """He for the ReLU family, Glorot otherwise."""
    return "he_normal" if activation_name in ("relu", "leaky_relu") else "glorot_uniform"


def get(name: str) -> Initializer:
    if not isinstance(name, str):
        raise TypeError(f"initializer must be a name such as 'he_normal'; received {name!r}")
    fn = _REGISTRY.get(name.lower())
    if fn is None:
        raise ValueError(f"initializer: unknown name {name!r}; expected one of {list(NAMES)}")
    return fn
