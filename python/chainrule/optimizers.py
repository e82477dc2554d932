"""Optimizers: configuration only. Each step runs in the C++ core as one fused loop over
the model's flat parameter block."""

from __future__ import annotations

import math

__all__ = ["Optimizer", "SGD", "get"]


def _positive_float(name, value, allow_zero=False):
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number; received {value!r}") from None
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        raise ValueError(f"{name} must be a finite number {'>=' if allow_zero else '>'} 0; received {value!r}")
    return v


class Optimizer:
    kind = ""

    def __init__(self, learning_rate):
        self.learning_rate = _positive_float("learning_rate", learning_rate)

    def get_config(self):
        raise NotImplementedError

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config.pop("class_name", None)
        return cls(**config)

    def _core_config(self):
        raise NotImplementedError

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items() if k != "class_name")
        return f"{type(self).__name__}({args})"


class SGD(Optimizer):
    """Mini-batch stochastic gradient descent with optional (Nesterov) momentum.

    With velocity ``v`` (zero at the start): ``v = momentum * v + g`` and
    ``w -= learning_rate * v`` (Nesterov: ``w -= learning_rate * (g + momentum * v)``),
    the form PyTorch uses; with a constant rate it equals Keras's formulation.
    """

    kind = "sgd"

    def __init__(self, learning_rate=0.01, momentum=0.0, nesterov=False):
        super().__init__(learning_rate)
        m = _positive_float("momentum", momentum, allow_zero=True)
        if m >= 1.0:
            raise ValueError(f"momentum must be in [0, 1); received {momentum!r}")
        if not isinstance(nesterov, bool):
            raise TypeError(f"nesterov must be True or False; received {nesterov!r}")
        if nesterov and m == 0.0:
            raise ValueError("nesterov=True requires momentum > 0; received momentum=0")
        self.momentum = m
        self.nesterov = nesterov

    def get_config(self):
        return {"class_name": "SGD", "learning_rate": self.learning_rate,
                "momentum": self.momentum, "nesterov": self.nesterov}

    def _core_config(self):
        return {"kind": "sgd", "learning_rate": self.learning_rate, "momentum": self.momentum,
                "nesterov": self.nesterov}


_REGISTRY = {"sgd": SGD}


def get(identifier) -> Optimizer:
    """An optimizer from an instance, a name ('sgd') or a config dict."""
    if isinstance(identifier, Optimizer):
        return identifier
    if isinstance(identifier, str):
        cls = _REGISTRY.get(identifier.lower())
        if cls is None:
            raise ValueError(f"optimizer: unknown name {identifier!r}; expected one of {list(_REGISTRY)}")
        return cls()
    if isinstance(identifier, dict) and "class_name" in identifier:
        cls = {c.__name__: c for c in _REGISTRY.values()}.get(identifier["class_name"])
        if cls is None:
            raise ValueError(f"optimizer: unknown class_name {identifier['class_name']!r}")
        return cls.from_config(identifier)
    raise TypeError(f"optimizer must be an Optimizer or a name such as 'sgd'; received {identifier!r}")
