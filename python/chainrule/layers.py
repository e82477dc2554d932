"""Layers: configuration and shape inference only. The constructor stores configuration;
weights are created when the input shape is known (Keras's contract). Each layer describes
itself to the C++ core as a plain dict (``core_spec``) and lists its parameter tensors with
their initializers (``param_specs``)."""

from __future__ import annotations

import math
import numbers

from . import activations as _activations
from . import initializers as _initializers

__all__ = ["Layer", "Dense", "get", "register"]

_REGISTRY: dict[str, type] = {}


def register(cls):
    """Make a layer class known to ``from_config`` / ``load_model``."""
    _REGISTRY[cls.__name__] = cls
    return cls


def _positive_int(layer, name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{layer}: {name} must be a positive integer; received {value!r}")
    if value < 1:
        raise ValueError(f"{layer}: {name} must be a positive integer; received {value!r}")
    return int(value)


def _shape_tuple(layer, name, shape):
    try:
        t = tuple(int(d) for d in shape)
    except TypeError:
        t = (int(shape),) if isinstance(shape, int) else None
    if not t or any(d < 1 for d in t):
        raise ValueError(f"{layer}: {name} must be a tuple of positive sizes; received {shape!r}")
    return t


class Layer:
    """Base class. Subclasses implement ``compute_output_shape`` and, if they have weights or
    work to do in C++, ``core_spec`` and ``param_specs``."""

    def __init__(self, name=None, input_shape=None):
        if name is not None and not isinstance(name, str):
            raise TypeError(f"{type(self).__name__}: name must be a string; received {name!r}")
        self.name = name
        self._declared_input_shape = (
            None if input_shape is None else _shape_tuple(type(self).__name__, "input_shape", input_shape))
        self.input_shape = None   # per sample, without the batch dimension
        self.output_shape = None
        self.built = False

    # -- shapes ---------------------------------------------------------------------------
    def compute_output_shape(self, input_shape):
        raise NotImplementedError

    def build(self, input_shape):
        input_shape = tuple(int(d) for d in input_shape)
        self.output_shape = tuple(self.compute_output_shape(input_shape))
        self.input_shape = input_shape
        self.built = True
        return self.output_shape

    # -- the C++ side -----------------------------------------------------------------------
    def core_spec(self) -> dict:
        """The dict the C++ layer factory builds this layer from (numbers only + 'kind')."""
        raise NotImplementedError

    def param_specs(self) -> list:
        """[(name, shape, initializer_name, fan_in, fan_out)] in the order the core stores them."""
        return []

    def count_params(self) -> int:
        return sum(math.prod(shape) for _, shape, *_ in self.param_specs())

    # -- config -----------------------------------------------------------------------------
    def get_config(self) -> dict:
        cfg = {"name": self.name}
        if self._declared_input_shape is not None:
            cfg["input_shape"] = list(self._declared_input_shape)
        return cfg

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        return f"<{type(self).__name__} name={self.name!r} output_shape={self.output_shape}>"


@register
class Dense(Layer):
    """Fully connected layer: ``y = activation(x @ kernel + bias)``.

    kernel has shape (input_features, units) — Keras's layout; PyTorch's ``nn.Linear.weight``
    is its transpose. ``kernel_initializer`` defaults to He (normal) for ReLU and leaky ReLU
    and to Glorot (uniform) otherwise.
    """

    def __init__(self, units, activation=None, kernel_initializer=None, bias_initializer="zeros",
                 name=None, input_shape=None):
        super().__init__(name=name, input_shape=input_shape)
        self.units = _positive_int("Dense", "units", units)
        self.activation = _activations.get(activation)
        if kernel_initializer is None:
            kernel_initializer = _initializers.default_for(self.activation.name)
        _initializers.get(kernel_initializer)
        _initializers.get(bias_initializer)
        self.kernel_initializer = kernel_initializer
        self.bias_initializer = bias_initializer

    def compute_output_shape(self, input_shape):
        if len(input_shape) != 1:
            raise ValueError(
                f"Dense layer {self.name!r} expects 1-D samples of shape (features,); received "
                f"samples of shape {input_shape} — add a Flatten layer before it")
        return (self.units,)

    def core_spec(self):
        return {"kind": "dense", "in": self.input_shape[0], "units": self.units,
                "activation": self.activation.code, "alpha": self.activation.alpha}

    def param_specs(self):
        fan_in = self.input_shape[0]
        return [("kernel", (fan_in, self.units), self.kernel_initializer, fan_in, self.units),
                ("bias", (self.units,), self.bias_initializer, fan_in, self.units)]

    def get_config(self):
        cfg = super().get_config()
        act = self.activation
        cfg.update(units=self.units,
                   activation=act.get_config() if act.name == "leaky_relu" else act.name,
                   kernel_initializer=self.kernel_initializer,
                   bias_initializer=self.bias_initializer)
        return cfg


def get(config: dict) -> Layer:
    """A layer from ``{"class_name": ..., "config": {...}}`` (as in a saved model)."""
    if not isinstance(config, dict) or "class_name" not in config:
        raise ValueError(f"layer config must be a dict with 'class_name'; received {config!r}")
    cls = _REGISTRY.get(config["class_name"])
    if cls is None:
        raise ValueError(f"unknown layer class {config['class_name']!r}; known: {sorted(_REGISTRY)}")
    return cls.from_config(dict(config.get("config", {})))
