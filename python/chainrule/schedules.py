"""Learning-rate schedules, evaluated per optimizer step inside the C++ core (as Keras's
LearningRateSchedule are). Pass one as an optimizer's ``learning_rate``:

    cr.optimizers.SGD(learning_rate=cr.schedules.CosineDecay(0.1, decay_steps=5000, warmup_steps=500))

The rate at step t (t = 0 for the first update) is also available as ``schedule(t)``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Mapping

from ._checks import F32_MAX, hyper_float

if TYPE_CHECKING:
    from typing_extensions import Self

    from ._typing import Config

__all__ = ["LearningRateSchedule", "StepDecay", "ExponentialDecay", "CosineDecay", "get"]





def _num(cls: str, name: str, value: Any, lo: float = 0.0, strict: bool = True, hi: float | None = None) -> float:
    try:
        v = hyper_float(value)
    except TypeError:
        raise TypeError(f"{cls}: {name} must be a number; received {value!r}") from None
    ok = math.isfinite(v) and (v > lo if strict else v >= lo) and (hi is None or v <= hi)
    if not ok:
        rng = f"{'>' if strict else '>='} {lo}" + (f" and <= {hi}" if hi is not None else "")
        raise ValueError(f"{cls}: {name} must be a finite number {rng}; received {value!r}")
    if v > F32_MAX:
        raise ValueError(f"{cls}: {name} must be at most {F32_MAX:.8g} (the float32 range); received {value!r}")
    return v


def _floor(e: float) -> float:
    """floor(e), keeping +inf (a step count over a tiny period) instead of raising."""
    return math.floor(e) if math.isfinite(e) else e


class LearningRateSchedule:
    initial_learning_rate: float

    def __call__(self, step: float) -> float:
        """The learning rate at optimizer step ``step`` (0-based), as the core computes it."""
        raise NotImplementedError

    def _core_config(self) -> Config:
        raise NotImplementedError

    def get_config(self) -> Config:
        raise NotImplementedError

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Self:
        config = dict(config)
        config.pop("class_name", None)
        return cls(**config)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items() if k != "class_name")
        return f"{type(self).__name__}({args})"


class StepDecay(LearningRateSchedule):
    """``lr = initial_learning_rate * factor ** floor(step / drop_every)``."""

    def __init__(self, initial_learning_rate: float, drop_every: float, factor: float = 0.5) -> None:
        self.initial_learning_rate = _num("StepDecay", "initial_learning_rate", initial_learning_rate)
        self.drop_every = _num("StepDecay", "drop_every", drop_every)
        self.factor = _num("StepDecay", "factor", factor, hi=1.0)

    def __call__(self, step: float) -> float:
        return self.initial_learning_rate * self.factor ** _floor(step / self.drop_every)

    def _core_config(self) -> Config:
        return {"kind": "step", "decay_steps": self.drop_every, "decay_rate": self.factor}

    def get_config(self) -> Config:
        return {"class_name": "StepDecay", "initial_learning_rate": self.initial_learning_rate,
                "drop_every": self.drop_every, "factor": self.factor}


class ExponentialDecay(LearningRateSchedule):
    """``lr = initial_learning_rate * decay_rate ** (step / decay_steps)`` (integer division
    when ``staircase``), as Keras's ExponentialDecay. ``decay_rate`` is in (0, 1]: a rate
    above 1 would grow the learning rate without bound (to inf) as training goes on."""

    def __init__(self, initial_learning_rate: float, decay_steps: float, decay_rate: float,
                 staircase: bool = False) -> None:
        self.initial_learning_rate = _num("ExponentialDecay", "initial_learning_rate", initial_learning_rate)
        self.decay_steps = _num("ExponentialDecay", "decay_steps", decay_steps)
        self.decay_rate = _num("ExponentialDecay", "decay_rate", decay_rate, hi=1.0)
        if not isinstance(staircase, bool):
            raise TypeError(f"ExponentialDecay: staircase must be True or False; received {staircase!r}")
        self.staircase = staircase

    def __call__(self, step: float) -> float:
        e = step / self.decay_steps
        return self.initial_learning_rate * self.decay_rate ** (_floor(e) if self.staircase else e)

    def _core_config(self) -> Config:
        return {"kind": "exponential", "decay_steps": self.decay_steps, "decay_rate": self.decay_rate,
                "staircase": self.staircase}

    def get_config(self) -> Config:
        return {"class_name": "ExponentialDecay", "initial_learning_rate": self.initial_learning_rate,
                "decay_steps": self.decay_steps, "decay_rate": self.decay_rate, "staircase": self.staircase}


class CosineDecay(LearningRateSchedule):
    """Linear warm-up from ``warmup_start`` to ``initial_learning_rate`` over
    ``warmup_steps``, then cosine decay to ``alpha * initial_learning_rate`` over
    ``decay_steps`` (then constant)."""

    def __init__(self, initial_learning_rate: float, decay_steps: float, alpha: float = 0.0,
                 warmup_steps: float = 0, warmup_start: float = 0.0) -> None:
        self.initial_learning_rate = _num("CosineDecay", "initial_learning_rate", initial_learning_rate)
        self.decay_steps = _num("CosineDecay", "decay_steps", decay_steps)
        self.alpha = _num("CosineDecay", "alpha", alpha, strict=False, hi=1.0)
        self.warmup_steps = _num("CosineDecay", "warmup_steps", warmup_steps, strict=False)
        self.warmup_start = _num("CosineDecay", "warmup_start", warmup_start, strict=False)

    def __call__(self, step: float) -> float:
        if step < self.warmup_steps:
            return self.warmup_start + (self.initial_learning_rate - self.warmup_start) * step / self.warmup_steps
        progress = min(step - self.warmup_steps, self.decay_steps) / self.decay_steps
        cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.initial_learning_rate * ((1.0 - self.alpha) * cosine + self.alpha)

    def _core_config(self) -> Config:
        return {"kind": "cosine", "decay_steps": self.decay_steps, "alpha": self.alpha,
                "warmup_steps": self.warmup_steps, "warmup_start": self.warmup_start}

    def get_config(self) -> Config:
        return {"class_name": "CosineDecay", "initial_learning_rate": self.initial_learning_rate,
                "decay_steps": self.decay_steps, "alpha": self.alpha, "warmup_steps": self.warmup_steps,
                "warmup_start": self.warmup_start}


_REGISTRY: dict[str, type[LearningRateSchedule]] = {c.__name__: c for c in (StepDecay, ExponentialDecay, CosineDecay)}


def get(config: LearningRateSchedule | Config) -> LearningRateSchedule:
    """A schedule from an instance or a config dict (``get_config()``'s output)."""
    if isinstance(config, LearningRateSchedule):
        if not isinstance(config, tuple(_REGISTRY.values())):  # the core evaluates only these
            raise ValueError(f"learning-rate schedule {type(config).__name__} is not a built-in one; "
                             f"expected one of {sorted(_REGISTRY)}")
        return config
    if isinstance(config, dict) and isinstance(config.get("class_name"), str) and config["class_name"] in _REGISTRY:
        return _REGISTRY[config["class_name"]].from_config(config)
    raise ValueError(f"unknown learning-rate schedule {config!r}; expected a LearningRateSchedule or a "
                     f"config dict with class_name in {sorted(_REGISTRY)}")
