"""Optimizers: configuration only. Each step runs in the C++ core as one fused loop over
the model's flat parameter block (gradient clipping and decoupled weight decay included).

Update rules follow PyTorch's torch.optim formulas. Every optimizer accepts:
- ``learning_rate``: a number or a schedule from :mod:`chainrule.schedules`;
- ``clipvalue``: clip each gradient element to [-clipvalue, clipvalue];
- ``clipnorm``: rescale all gradients together so their global L2 norm is at most clipnorm
  (``g * clipnorm / max(||g||, clipnorm)``, as ``tf.clip_by_global_norm``);
- ``weight_decay``: decoupled weight decay, ``w -= learning_rate * weight_decay * w`` before
  the update (as AdamW; for SGD this differs from PyTorch's coupled ``weight_decay``).
Clipping sees the gradient of the loss plus any ``kernel_regularizer`` penalty.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Mapping

from . import schedules as _schedules
from ._checks import F32_MAX, hyper_float

if TYPE_CHECKING:
    from typing_extensions import Self

    from ._typing import Config

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "get", "MIN_EPSILON"]

# The smallest epsilon accepted: the smallest normal float32. A smaller one rounds (or is
# flushed) to 0 in a float32 model, and a zero gradient then gives 0/0 = NaN weights.
MIN_EPSILON = 1.1754943508222875e-38




def _number(cls: str, name: str, value: Any, lo: float = 0.0, strict: bool = False, hi: float | None = None,
            hi_strict: bool = True) -> float:
    try:
        v = hyper_float(value)
    except TypeError:
        raise TypeError(f"{cls}: {name} must be a number; received {value!r}") from None
    ok = math.isfinite(v) and (v > lo if strict else v >= lo)
    if hi is not None:
        ok = ok and (v < hi if hi_strict else v <= hi)
    if not ok:
        rng = f"{'>' if strict else '>='} {lo}"
        if hi is not None:
            rng += f" and {'<' if hi_strict else '<='} {hi}"
        raise ValueError(f"{cls}: {name} must be a finite number {rng}; received {value!r}")
    if v > F32_MAX:
        raise ValueError(f"{cls}: {name} must be at most {F32_MAX:.8g} (the float32 range); received {value!r}")
    return v


def _epsilon(cls: str, value: Any) -> float:
    v = _number(cls, "epsilon", value, strict=True)
    if v < MIN_EPSILON:
        raise ValueError(f"{cls}: epsilon must be >= {MIN_EPSILON!r} (the smallest normal float32: a "
                         f"smaller one is 0 in a float32 model and 0/0 gives NaN); received {value!r}")
    return v


def _bool(cls: str, name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{cls}: {name} must be True or False; received {value!r}")
    return value


class Optimizer:
    """Base class: learning rate (number or schedule), clipping and weight decay."""

    kind = ""

    def __init__(self, learning_rate: float | _schedules.LearningRateSchedule | Config,
                 clipvalue: float | None = None, clipnorm: float | None = None,
                 weight_decay: float = 0.0) -> None:
        cls = type(self).__name__
        self.learning_rate: float | _schedules.LearningRateSchedule
        if isinstance(learning_rate, (_schedules.LearningRateSchedule, dict)):
            self.learning_rate = _schedules.get(learning_rate)
        else:
            self.learning_rate = _number(cls, "learning_rate", learning_rate, strict=True)
        self.clipvalue = None if clipvalue is None else _number(cls, "clipvalue", clipvalue, strict=True)
        self.clipnorm = None if clipnorm is None else _number(cls, "clipnorm", clipnorm, strict=True)
        self.weight_decay = _number(cls, "weight_decay", weight_decay)

    @property
    def base_learning_rate(self) -> float:
        lr = self.learning_rate
        return lr.initial_learning_rate if isinstance(lr, _schedules.LearningRateSchedule) else lr

    def _base_config(self) -> Config:
        lr = self.learning_rate
        return {"class_name": type(self).__name__,
                "learning_rate": lr.get_config() if isinstance(lr, _schedules.LearningRateSchedule) else lr,
                "clipvalue": self.clipvalue, "clipnorm": self.clipnorm, "weight_decay": self.weight_decay}

    def get_config(self) -> Config:
        return self._base_config()

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Self:
        config = dict(config)
        config.pop("class_name", None)
        return cls(**config)

    def _core_config(self) -> Config:
        lr = self.learning_rate
        cfg: Config = {"kind": self.kind, "learning_rate": self.base_learning_rate,
               "clipvalue": self.clipvalue or 0.0, "clipnorm": self.clipnorm or 0.0,
               "weight_decay": self.weight_decay}
        if isinstance(lr, _schedules.LearningRateSchedule):
            cfg["schedule"] = lr._core_config()
        return cfg

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items() if k != "class_name")
        return f"{type(self).__name__}({args})"


class SGD(Optimizer):
    """Mini-batch stochastic gradient descent with optional (Nesterov) momentum.

    With velocity ``v`` (zero at the start): ``v = momentum * v + g`` and
    ``w -= learning_rate * v`` (Nesterov: ``w -= learning_rate * (g + momentum * v)``),
    PyTorch's form; with a constant rate it equals Keras's formulation.
    """

    kind = "sgd"

    def __init__(self, learning_rate: float | _schedules.LearningRateSchedule | Config = 0.01,
                 momentum: float = 0.0, nesterov: bool = False, **kwargs: Any) -> None:
        super().__init__(learning_rate, **kwargs)
        self.momentum = _number("SGD", "momentum", momentum, hi=1.0)
        self.nesterov = _bool("SGD", "nesterov", nesterov)
        if nesterov and self.momentum == 0.0:
            raise ValueError("SGD: nesterov=True requires momentum > 0; received momentum=0")

    def get_config(self) -> Config:
        return {**self._base_config(), "momentum": self.momentum, "nesterov": self.nesterov}

    def _core_config(self) -> Config:
        return {**super()._core_config(), "momentum": self.momentum, "nesterov": self.nesterov}


class Adam(Optimizer):
    """Adam (Kingma & Ba): ``m = β1 m + (1-β1) g``, ``v = β2 v + (1-β2) g²``,
    ``w -= lr · m̂ / (√v̂ + ε)`` with bias-corrected m̂, v̂; ``amsgrad`` uses the running
    maximum of v. PyTorch's formula (ε outside the square root)."""

    kind = "adam"

    def __init__(self, learning_rate: float | _schedules.LearningRateSchedule | Config = 0.001,
                 beta_1: float = 0.9, beta_2: float = 0.999, epsilon: float = 1e-8, amsgrad: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(learning_rate, **kwargs)
        cls = type(self).__name__
        self.beta_1 = _number(cls, "beta_1", beta_1, hi=1.0)
        self.beta_2 = _number(cls, "beta_2", beta_2, hi=1.0)
        self.epsilon = _epsilon(cls, epsilon)
        self.amsgrad = _bool(cls, "amsgrad", amsgrad)

    def get_config(self) -> Config:
        return {**self._base_config(), "beta_1": self.beta_1, "beta_2": self.beta_2,
                "epsilon": self.epsilon, "amsgrad": self.amsgrad}

    def _core_config(self) -> Config:
        return {**super()._core_config(), "beta_1": self.beta_1, "beta_2": self.beta_2,
                "epsilon": self.epsilon, "amsgrad": self.amsgrad}


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter), default ``weight_decay=0.01``
    as torch.optim.AdamW."""

    def __init__(self, learning_rate: float | _schedules.LearningRateSchedule | Config = 0.001,
                 weight_decay: float = 0.01, **kwargs: Any) -> None:
        super().__init__(learning_rate, weight_decay=weight_decay, **kwargs)


class RMSprop(Optimizer):
    """RMSprop: ``v = ρ v + (1-ρ) g²``, ``u = g / (√v + ε)`` (with momentum:
    ``b = μ b + u``), ``w -= lr · u`` (or ``lr · b``)."""

    kind = "rmsprop"

    def __init__(self, learning_rate: float | _schedules.LearningRateSchedule | Config = 0.001,
                 rho: float = 0.9, momentum: float = 0.0, epsilon: float = 1e-7, **kwargs: Any) -> None:
        super().__init__(learning_rate, **kwargs)
        self.rho = _number("RMSprop", "rho", rho, hi=1.0)
        self.momentum = _number("RMSprop", "momentum", momentum, hi=1.0)
        self.epsilon = _epsilon("RMSprop", epsilon)

    def get_config(self) -> Config:
        return {**self._base_config(), "rho": self.rho, "momentum": self.momentum, "epsilon": self.epsilon}

    def _core_config(self) -> Config:
        return {**super()._core_config(), "rho": self.rho, "momentum": self.momentum, "epsilon": self.epsilon}


class Adagrad(Optimizer):
    """Adagrad: ``a += g²``, ``w -= lr · g / (√a + ε)``, ``a`` starting at
    ``initial_accumulator_value``."""

    kind = "adagrad"

    def __init__(self, learning_rate: float | _schedules.LearningRateSchedule | Config = 0.01,
                 initial_accumulator_value: float = 0.1, epsilon: float = 1e-7, **kwargs: Any) -> None:
        super().__init__(learning_rate, **kwargs)
        self.initial_accumulator_value = _number("Adagrad", "initial_accumulator_value", initial_accumulator_value)
        self.epsilon = _epsilon("Adagrad", epsilon)

    def get_config(self) -> Config:
        return {**self._base_config(), "initial_accumulator_value": self.initial_accumulator_value,
                "epsilon": self.epsilon}

    def _core_config(self) -> Config:
        return {**super()._core_config(), "initial_accumulator_value": self.initial_accumulator_value,
                "epsilon": self.epsilon}


_REGISTRY: dict[str, type[Optimizer]] = {"sgd": SGD, "adam": Adam, "adamw": AdamW, "rmsprop": RMSprop, "adagrad": Adagrad}


def get(identifier: Optimizer | str | Config) -> Optimizer:
    """An optimizer from an instance, a name ('sgd', 'adam', 'adamw', 'rmsprop', 'adagrad')
    or a config dict."""
    if isinstance(identifier, Optimizer):
        if not isinstance(identifier, tuple(_REGISTRY.values())):  # the core steps only these
            raise ValueError(f"optimizer: {type(identifier).__name__} is not a built-in optimizer; "
                             f"expected one of {[c.__name__ for c in _REGISTRY.values()]}")
        return identifier
    if isinstance(identifier, str):
        cls = _REGISTRY.get(identifier.lower())
        if cls is None:
            raise ValueError(f"optimizer: unknown name {identifier!r}; expected one of {list(_REGISTRY)}")
        return cls()  # type: ignore[call-arg]  # every built-in optimizer has a default learning rate
    if isinstance(identifier, dict) and "class_name" in identifier:
        name = identifier["class_name"]
        cls = {c.__name__: c for c in _REGISTRY.values()}.get(name) if isinstance(name, str) else None
        if cls is None:
            raise ValueError(f"optimizer: unknown class_name {identifier['class_name']!r}")
        return cls.from_config(identifier)
    raise TypeError(f"optimizer must be an Optimizer or a name such as 'sgd'; received {identifier!r}")
