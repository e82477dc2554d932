"""Layers: configuration and shape inference only. The constructor stores configuration;
weights are created when the input shape is known (Keras's contract). Each layer describes
itself to the C++ core as a plain dict (``core_spec``) and lists its parameter tensors with
their initializers (``param_specs``)."""

from __future__ import annotations

import math
import numbers
import weakref
from typing import TYPE_CHECKING, Any, Sequence, TypeVar

from . import _checks
from . import activations as _activations
from . import initializers as _initializers
from . import regularizers as _regularizers

if TYPE_CHECKING:
    from typing_extensions import Self

    from ._typing import Config, IntPair, ShapeLike
    from .activations import Activation as ActivationFn
    from .regularizers import Regularizer

    ParamSpec = tuple[str, tuple[int, ...], str, int, int]

_L = TypeVar("_L", bound="type[Layer]")

__all__ = ["Layer", "Dense", "get", "register"]

_REGISTRY: dict[str, type[Layer]] = {}

# layer -> the model that built it (weakly: a layer does not keep its model alive). The weights
# live in that model's C++ core; Layer.get_weights / set_weights reach them through it.
_OWNERS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def attach(layer, model):
    """Record that ``model`` built ``layer`` and holds its weights."""
    _OWNERS[layer] = weakref.ref(model)

# The core's size limit (csrc/common.h, kMaxElems): one sample's input or output of any
# layer, one parameter tensor, the model's parameter count and each size argument hold at
# most this many values. Checked here, with the layer's name, before anything is allocated.
MAX_SIZE = (1 << 31) - 1


def register(cls: _L) -> _L:
    """Make a layer class known to ``from_config`` / ``load_model``."""
    _REGISTRY[cls.__name__] = cls
    return cls


def _positive_int(layer: str, name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{layer}: {name} must be a positive integer; received {value!r}")
    if not 1 <= int(value) <= MAX_SIZE:
        raise ValueError(f"{layer}: {name} must be a positive integer; received {value!r} (the limit is {MAX_SIZE})")
    return int(value)


def check_size(what: str, shape: Sequence[int]) -> int:
    """The number of values in ``shape``, or a ValueError naming ``what`` when it exceeds
    MAX_SIZE."""
    n = math.prod(shape)
    if n > MAX_SIZE:
        raise ValueError(f"{what} has {n} values (shape {tuple(shape)}); the limit is {MAX_SIZE}")
    return n


def shape_tuple(layer: str, name: str, shape: Any) -> tuple[int, ...]:
    """A per-sample shape as a tuple of positive ints within the size limit."""
    if isinstance(shape, numbers.Integral) and not isinstance(shape, bool):
        shape = (shape,)
    try:
        t = tuple(shape)
    except TypeError:
        raise TypeError(f"{layer}: {name} must be a tuple of positive sizes; received {shape!r}") from None
    if not t or any(isinstance(d, bool) or not isinstance(d, numbers.Integral) for d in t):
        raise ValueError(f"{layer}: {name} must be a tuple of positive integer sizes; received {shape!r}")
    if any(not 1 <= d <= MAX_SIZE for d in t):
        raise ValueError(f"{layer}: {name} must hold sizes in [1, {MAX_SIZE}]; received {shape!r}")
    t = tuple(int(d) for d in t)
    check_size(f"{layer}: {name}", t)
    return t


class Layer:
    """Base class. Subclasses implement ``compute_output_shape`` and, if they have weights or
    work to do in C++, ``core_spec`` and ``param_specs``.

    ``trainable`` (Keras's): False freezes the layer's weights. Training then takes no
    optimizer step on them (no weight decay, no penalty: Keras counts the penalties of
    trainable weights only), and they stay bit for bit what they were, while gradients still
    flow through the layer to the layers before it. A frozen BatchNormalization also
    normalizes with its moving statistics in training, as in Keras. The flag may be changed
    at any time, also after compile; a change takes effect at the next ``fit`` epoch or
    ``train_on_batch`` call (Keras needs a recompile; here none is needed).
    ``input_dim=n`` (Keras's) is ``input_shape=(n,)``."""

    # Parameters the layer updates itself in training (BatchNormalization's moving
    # statistics): never trainable, whatever ``trainable`` says.
    _stateful: tuple[str, ...] = ()

    # set by _configure_weights in the layers that have weights (Dense, Conv2D)
    activation: ActivationFn
    kernel_initializer: str
    bias_initializer: str
    kernel_regularizer: Regularizer | None

    def __init__(self, name: str | None = None, input_shape: ShapeLike | None = None,
                 trainable: bool = True, input_dim: int | None = None) -> None:
        if name is not None and not isinstance(name, str):
            raise TypeError(f"{type(self).__name__}: name must be a string; received {name!r}")
        self.name = name
        if input_dim is not None:
            if input_shape is not None:
                raise ValueError(f"{type(self).__name__}: pass input_shape or input_dim, not both; received "
                                 f"input_shape={input_shape!r} and input_dim={input_dim!r}")
            input_shape = (_positive_int(type(self).__name__, "input_dim", input_dim),)
        self._declared_input_shape = (
            None if input_shape is None else shape_tuple(type(self).__name__, "input_shape", input_shape))
        self.trainable = trainable
        self.input_shape: tuple[int, ...] | None = None   # per sample, without the batch dimension
        self.output_shape: tuple[int, ...] | None = None
        self.built = False

    @property
    def trainable(self):
        """Whether training updates this layer's weights (see the class docstring)."""
        return self._trainable

    @trainable.setter
    def trainable(self, value):
        self._trainable = _checks.flag(f"{type(self).__name__}: trainable", value)

    def weight_trainable(self, name):
        """Whether the parameter ``name`` (one of ``param_specs``) is trained: the layer is
        trainable and the parameter is not state the layer updates itself."""
        return self._trainable and name not in self._stateful

    # -- shapes ---------------------------------------------------------------------------
    def compute_output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        raise NotImplementedError

    def build(self, input_shape: Sequence[int]) -> tuple[int, ...]:
        input_shape = tuple(int(d) for d in input_shape)
        label = f"{type(self).__name__} layer {self.name!r}"
        output_shape = tuple(self.compute_output_shape(input_shape))
        check_size(f"{label}: one sample's output", output_shape)
        self.output_shape = output_shape
        self.input_shape = input_shape
        for pname, shape, *_ in self.param_specs():
            check_size(f"{label}: {pname}", shape)
        self.built = True
        return self.output_shape

    def _built_input(self) -> tuple[int, ...]:
        """The per-sample input shape; a ValueError if the layer is not built yet."""
        if self.input_shape is None:
            raise ValueError(f"{type(self).__name__} layer {self.name!r} is not built yet: build the "
                             f"model (model.build(input_shape)) first")
        return self.input_shape

    def _built_output(self) -> tuple[int, ...]:
        """The per-sample output shape; a ValueError if the layer is not built yet."""
        if self.output_shape is None:
            raise ValueError(f"{type(self).__name__} layer {self.name!r} is not built yet: build the "
                             f"model (model.build(input_shape)) first")
        return self.output_shape

    # -- the C++ side -----------------------------------------------------------------------
    def core_spec(self) -> dict[str, Any] | None:
        """The dict the C++ layer factory builds this layer from (numbers only + 'kind'), or
        None for a layer with no C++ twin (Flatten, Reshape)."""
        raise NotImplementedError

    def param_specs(self) -> list[ParamSpec]:
        """[(name, shape, initializer_name, fan_in, fan_out)] in the order the core stores them."""
        return []

    def regularizers(self) -> dict[str, Regularizer]:
        """{parameter name: Regularizer} for the parameters with a penalty."""
        reg = getattr(self, "kernel_regularizer", None)  # set by _configure_weights
        return {"kernel": reg} if reg is not None else {}

    def _configure_weights(self, activation: Any, kernel_initializer: Any, bias_initializer: Any,
                           kernel_regularizer: Any) -> None:
        """Shared by layers with a kernel, a bias and an output activation (Dense, Conv2D)."""
        self.activation = _activations.get(activation)
        if kernel_initializer is None:
            kernel_initializer = _initializers.default_for(self.activation.name)
        _initializers.get(kernel_initializer)
        _initializers.get(bias_initializer)
        self.kernel_initializer = kernel_initializer
        self.bias_initializer = bias_initializer
        self.kernel_regularizer = _regularizers.get(kernel_regularizer)

    def _weights_config(self) -> Config:
        act = self.activation
        cfg = {"activation": act.get_config() if act.takes_alpha else act.name,
               "kernel_initializer": self.kernel_initializer, "bias_initializer": self.bias_initializer}
        if self.kernel_regularizer is not None:
            cfg["kernel_regularizer"] = self.kernel_regularizer.get_config()
        return cfg

    def count_params(self, trainable=None) -> int:
        """The layer's parameter count (Keras's); ``trainable=True`` / ``False``: only those
        that training updates / does not (a frozen layer's, moving statistics)."""
        return sum(math.prod(shape) for name, shape, *_ in self.param_specs()
                   if trainable is None or self.weight_trainable(name) == trainable)

    # -- weights (held by the model that built the layer) ---------------------------------
    def _owner(self):
        ref = _OWNERS.get(self)
        model = ref() if ref is not None else None
        return model if model is not None and model.built and any(l is self for l in model.layers) else None

    def get_weights(self) -> list:
        """This layer's parameters as numpy arrays (copies), in ``param_specs`` order: Dense and
        Conv2D give ``[kernel, bias]``. ``[]`` for a layer without parameters or one no model
        has built yet (the weights live in the model that built the layer)."""
        model = self._owner()
        if model is None:
            return []
        first, count = model._layer_params(self)
        return [model._core.get_param(first + i) for i in range(count)]

    def set_weights(self, weights) -> None:
        """Set this layer's parameters from a list of arrays shaped as :meth:`get_weights`
        returns them; every array is checked (count, shapes, finite values) before any is set."""
        model = self._owner()
        if model is None:
            if self.built and not self.param_specs() and not list(weights):
                return
            raise ValueError(f"{type(self).__name__} layer {self.name!r} has no weights yet: add it to a model "
                             "and build the model first")
        first, count = model._layer_params(self)
        model._set_params(first, count, weights, f"{type(self).__name__} layer {self.name!r}: set_weights")

    # -- config -----------------------------------------------------------------------------
    def get_config(self) -> Config:
        cfg: Config = {"name": self.name, "trainable": self._trainable}
        if self._declared_input_shape is not None:
            cfg["input_shape"] = list(self._declared_input_shape)
        return cfg

    @classmethod
    def from_config(cls, config: Config) -> Self:
        return cls(**config)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} name={self.name!r} output_shape={self.output_shape}>"


@register
class Dense(Layer):
    """Fully connected layer: ``y = activation(x @ kernel + bias)``.

    kernel has shape (input_features, units) — Keras's layout; PyTorch's ``nn.Linear.weight``
    is its transpose. ``kernel_initializer`` defaults to He (normal) for ReLU and leaky ReLU
    and to Glorot (uniform) otherwise. ``input_dim=n`` is ``input_shape=(n,)``.
    """

    def __init__(self, units: int, activation: str | ActivationFn | Config | None = None,
                 kernel_initializer: str | None = None, bias_initializer: str = "zeros",
                 kernel_regularizer: Regularizer | str | Config | None = None, name: str | None = None,
                 input_shape: ShapeLike | None = None, trainable: bool = True,
                 input_dim: int | None = None) -> None:
        super().__init__(name=name, input_shape=input_shape, trainable=trainable, input_dim=input_dim)
        self.units = _positive_int("Dense", "units", units)
        self._configure_weights(activation, kernel_initializer, bias_initializer, kernel_regularizer)

    def compute_output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        if len(input_shape) != 1:
            raise ValueError(
                f"Dense layer {self.name!r} expects 1-D samples of shape (features,); received "
                f"samples of shape {input_shape} — add a Flatten layer before it")
        return (self.units,)

    def core_spec(self) -> dict[str, Any]:
        return {"kind": "dense", "in": self._built_input()[0], "units": self.units,
                "activation": self.activation.code, "alpha": self.activation.alpha}

    def param_specs(self) -> list[ParamSpec]:
        fan_in = self._built_input()[0]
        return [("kernel", (fan_in, self.units), self.kernel_initializer, fan_in, self.units),
                ("bias", (self.units,), self.bias_initializer, fan_in, self.units)]

    def get_config(self) -> Config:
        cfg = super().get_config()
        cfg.update(units=self.units, **self._weights_config())
        return cfg


def get(config: Config) -> Layer:
    """A layer from ``{"class_name": ..., "config": {...}}`` (as in a saved model)."""
    if not isinstance(config, dict) or "class_name" not in config:
        raise ValueError(f"layer config must be a dict with 'class_name'; received {config!r}")
    cls = _REGISTRY.get(config["class_name"])
    if cls is None:
        raise ValueError(f"unknown layer class {config['class_name']!r}; known: {sorted(_REGISTRY)}")
    return cls.from_config(dict(config.get("config", {})))


# ---------------------------------------------------------------------------------------
# Convolutional networks. Images are channels-last, (height, width, channels) per sample, as
# in Keras: im2col rows are then contiguous patches and a convolution is one GEMM whose
# output is already channels-last. A 2-D sample (height, width) is one channel.

def _pair(layer: str, name: str, value: Any) -> tuple[int, int]:
    """An int or a pair of ints, as a (rows, cols) tuple of positive ints."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{layer}: {name} must be an integer or a pair of integers; received {value!r}")
        return (_positive_int(layer, name, value[0]), _positive_int(layer, name, value[1]))
    v = _positive_int(layer, name, value)
    return (v, v)


def _padding(layer: str, value: Any) -> str:
    p = value.lower() if isinstance(value, str) else value
    if p not in ("valid", "same"):
        raise ValueError(f"{layer}: padding must be 'valid' or 'same'; received {value!r}")
    return p


def _window_out(size: int, window: int, stride: int, padding: str) -> int | None:
    """Output length of one spatial axis (TensorFlow's definition), or None if the window does
    not fit a 'valid' input."""
    if padding == "same":
        return -(-size // stride)
    if window > size:
        return None
    return (size - window) // stride + 1


def _image_shape(layer: str, input_shape: Sequence[int], allow_2d: bool) -> tuple[int, int, int]:
    shape = tuple(input_shape)
    if allow_2d and len(shape) == 2:
        shape = shape + (1,)
    if len(shape) != 3:
        want = "(height, width, channels) or (height, width)" if allow_2d else "(height, width, channels)"
        raise ValueError(f"{layer} expects samples of shape {want}; received samples of shape {tuple(input_shape)}")
    if any(d < 1 for d in shape):
        raise ValueError(f"{layer} received samples of shape {tuple(input_shape)}: sizes must be positive")
    return shape


def _spatial_out(layer: str, shape: tuple[int, int, int], window: tuple[int, int],
                 strides: tuple[int, int], padding: str, what: str) -> tuple[int, int]:
    h, w, _ = shape
    oh = _window_out(h, window[0], strides[0], padding)
    ow = _window_out(w, window[1], strides[1], padding)
    if oh is None or ow is None:
        raise ValueError(f"{layer}: {what} {window} is larger than the input's {h}x{w} spatial size "
                         f"(per-sample input shape {shape}) with padding='valid'; use a smaller "
                         f"{what}, padding='same', or a larger input")
    return oh, ow


@register
class Conv2D(Layer):
    """2-D convolution over channels-last images: ``y = activation(conv(x, kernel) + bias)``.

    Input samples are (height, width, channels) — or (height, width) for one channel; output
    samples are (out_height, out_width, filters). kernel has shape (kh, kw, in_channels,
    filters) — Keras's layout; PyTorch's ``nn.Conv2d.weight`` is (filters, in_channels, kh, kw),
    i.e. ``kernel.transpose(3, 2, 0, 1)``. padding 'same' pads as TensorFlow (the extra row
    or column, if any, goes at the bottom/right). ``kernel_initializer`` defaults to He (normal)
    for ReLU and leaky ReLU and to Glorot (uniform) otherwise, with Keras's fans
    (fan_in = kh·kw·in_channels, fan_out = kh·kw·filters).
    """

    def __init__(self, filters: int, kernel_size: IntPair, strides: IntPair = 1, padding: str = "valid",
                 activation: str | ActivationFn | Config | None = None, kernel_initializer: str | None = None,
                 bias_initializer: str = "zeros", kernel_regularizer: Regularizer | str | Config | None = None,
                 input_shape: ShapeLike | None = None, name: str | None = None,
                 trainable: bool = True) -> None:
        super().__init__(name=name, input_shape=input_shape, trainable=trainable)
        self.filters = _positive_int("Conv2D", "filters", filters)
        self.kernel_size = _pair("Conv2D", "kernel_size", kernel_size)
        self.strides = _pair("Conv2D", "strides", strides)
        self.padding = _padding("Conv2D", padding)
        self._configure_weights(activation, kernel_initializer, bias_initializer, kernel_regularizer)

    def _label(self) -> str:
        return f"Conv2D layer {self.name!r}" if self.name else "Conv2D"

    def compute_output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        shape = _image_shape(self._label(), input_shape, allow_2d=True)
        oh, ow = _spatial_out(self._label(), shape, self.kernel_size, self.strides, self.padding,
                              "kernel_size")
        return (oh, ow, self.filters)

    def build(self, input_shape: Sequence[int]) -> tuple[int, ...]:
        self._image = _image_shape(self._label(), tuple(input_shape), allow_2d=True)  # param_specs needs it
        return super().build(input_shape)

    def core_spec(self) -> dict[str, Any]:
        h, w, c = self._image
        return {"kind": "conv2d", "h": h, "w": w, "cin": c, "filters": self.filters,
                "kh": self.kernel_size[0], "kw": self.kernel_size[1],
                "sh": self.strides[0], "sw": self.strides[1], "same": int(self.padding == "same"),
                "activation": self.activation.code, "alpha": self.activation.alpha}

    def param_specs(self) -> list[ParamSpec]:
        kh, kw = self.kernel_size
        cin = self._image[2]
        fan_in, fan_out = kh * kw * cin, kh * kw * self.filters
        return [("kernel", (kh, kw, cin, self.filters), self.kernel_initializer, fan_in, fan_out),
                ("bias", (self.filters,), self.bias_initializer, fan_in, fan_out)]

    def get_config(self) -> Config:
        cfg = super().get_config()
        cfg.update(filters=self.filters, kernel_size=list(self.kernel_size), strides=list(self.strides),
                   padding=self.padding, **self._weights_config())
        return cfg


class _Pooling2D(Layer):
    _kind = ""

    def __init__(self, pool_size: IntPair = 2, strides: IntPair | None = None, padding: str = "valid",
                 input_shape: ShapeLike | None = None, name: str | None = None,
                 trainable: bool = True) -> None:
        super().__init__(name=name, input_shape=input_shape, trainable=trainable)
        cls = type(self).__name__
        self.pool_size = _pair(cls, "pool_size", pool_size)
        self.strides = self.pool_size if strides is None else _pair(cls, "strides", strides)
        self.padding = _padding(cls, padding)

    def _label(self) -> str:
        cls = type(self).__name__
        return f"{cls} layer {self.name!r}" if self.name else cls

    def compute_output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        shape = _image_shape(self._label(), input_shape, allow_2d=False)
        oh, ow = _spatial_out(self._label(), shape, self.pool_size, self.strides, self.padding, "pool_size")
        return (oh, ow, shape[2])

    def core_spec(self) -> dict[str, Any]:
        h, w, c = self._built_input()
        return {"kind": self._kind, "h": h, "w": w, "c": c,
                "ph": self.pool_size[0], "pw": self.pool_size[1],
                "sh": self.strides[0], "sw": self.strides[1], "same": int(self.padding == "same")}

    def get_config(self) -> Config:
        cfg = super().get_config()
        cfg.update(pool_size=list(self.pool_size), strides=list(self.strides), padding=self.padding)
        return cfg


@register
class MaxPooling2D(_Pooling2D):
    """Max over (pool_size) windows of channels-last images; strides default to pool_size.
    With padding 'same' the padded positions never win (TensorFlow)."""
    _kind = "maxpool2d"


@register
class AveragePooling2D(_Pooling2D):
    """Mean over (pool_size) windows of channels-last images; strides default to pool_size.
    With padding 'same' the mean is over the window's real elements only (TensorFlow)."""
    _kind = "avgpool2d"


@register
class Flatten(Layer):
    """Samples of any shape to 1-D. Free: samples are stored row-major and flattened already,
    so this layer has no C++ twin (``core_spec`` is None)."""

    def compute_output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        return (math.prod(input_shape),)

    def core_spec(self) -> None:
        return None


@register
class Reshape(Layer):
    """Samples to ``target_shape`` (one entry may be -1: inferred). Free, like Flatten."""

    def __init__(self, target_shape: Sequence[int], input_shape: ShapeLike | None = None,
                 name: str | None = None, trainable: bool = True) -> None:
        super().__init__(name=name, input_shape=input_shape, trainable=trainable)
        try:
            t = tuple(target_shape)
        except TypeError:
            raise TypeError(f"Reshape: target_shape must be a tuple of sizes; received {target_shape!r}") from None
        if any(isinstance(d, bool) or not isinstance(d, numbers.Integral) for d in t):
            raise TypeError(f"Reshape: target_shape must hold integers; received {target_shape!r}")
        t = tuple(int(d) for d in t)
        if not t or any(d == 0 or d < -1 or d > MAX_SIZE for d in t) or t.count(-1) > 1:
            raise ValueError(f"Reshape: target_shape must hold positive sizes and at most one -1; "
                             f"received {target_shape!r}")
        self.target_shape = t

    def compute_output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        n = math.prod(input_shape)
        t = self.target_shape
        label = f"Reshape layer {self.name!r}" if self.name else "Reshape"
        if -1 in t:
            known = -math.prod(t)
            if n % known:
                raise ValueError(f"{label}: cannot reshape samples of shape {tuple(input_shape)} "
                                 f"({n} values) to {t}")
            t = tuple(n // known if d == -1 else d for d in t)
        if math.prod(t) != n:
            raise ValueError(f"{label}: cannot reshape samples of shape {tuple(input_shape)} "
                             f"({n} values) to {t} ({math.prod(t)} values)")
        return t

    def core_spec(self) -> None:
        return None

    def get_config(self) -> Config:
        cfg = super().get_config()
        cfg.update(target_shape=list(self.target_shape))
        return cfg


@register
class Dropout(Layer):
    """Inverted dropout: in training each value is zeroed with probability ``rate`` and the
    kept ones are scaled by 1/(1-rate); predict and evaluate pass values through unchanged.
    Masks are drawn in C++ from a stream seeded by ``fit(seed=...)``."""

    def __init__(self, rate: float, input_shape: ShapeLike | None = None, name: str | None = None,
                 trainable: bool = True) -> None:
        super().__init__(name=name, input_shape=input_shape, trainable=trainable)
        if isinstance(rate, bool):
            raise TypeError(f"Dropout: rate must be a number in [0, 1); received {rate!r}")
        try:
            r = float(rate)
        except (TypeError, ValueError, OverflowError):
            raise TypeError(f"Dropout: rate must be a number in [0, 1); received {rate!r}") from None
        if not (0.0 <= r < 1.0):
            raise ValueError(f"Dropout: rate must be in [0, 1); received {rate!r}")
        self.rate = r

    def compute_output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(input_shape)

    def core_spec(self) -> dict[str, Any]:
        return {"kind": "dropout", "size": math.prod(self._built_input()), "rate": self.rate}

    def get_config(self) -> Config:
        cfg = super().get_config()
        cfg.update(rate=self.rate)
        return cfg


@register
class GlobalAveragePooling2D(Layer):
    """The mean over height and width of channels-last images: samples (height, width,
    channels) to (channels,), or to (1, 1, channels) with ``keepdims=True`` (Keras's). It is
    an average pooling whose window is the whole image, and runs as one in C++."""

    def __init__(self, keepdims=False, input_shape=None, name=None, trainable=True):
        super().__init__(name=name, input_shape=input_shape, trainable=trainable)
        self.keepdims = _checks.flag("GlobalAveragePooling2D: keepdims", keepdims)

    def _label(self):
        return f"GlobalAveragePooling2D layer {self.name!r}" if self.name else "GlobalAveragePooling2D"

    def compute_output_shape(self, input_shape):
        c = _image_shape(self._label(), input_shape, allow_2d=False)[2]
        return (1, 1, c) if self.keepdims else (c,)

    def core_spec(self):
        h, w, c = self.input_shape
        return {"kind": "avgpool2d", "h": h, "w": w, "c": c, "ph": h, "pw": w, "sh": h, "sw": w, "same": 0}

    def get_config(self):
        cfg = super().get_config()
        cfg.update(keepdims=self.keepdims)
        return cfg


@register
class Activation(Layer):
    """An activation on its own (Keras's ``Activation``): ``Activation("relu")`` after a
    linear Dense or Conv2D computes what ``activation="relu"`` on that layer computes.
    Element-wise, except softmax, which normalizes over the last axis (the features, or the
    channels of an image). Any name of :mod:`chainrule.activations` or an Activation such as
    ``LeakyReLU(0.2)``. As the model's last layer, a softmax or sigmoid is fused into the
    cross-entropy loss exactly as a Dense layer's is."""

    def __init__(self, activation, input_shape=None, name=None, trainable=True):
        super().__init__(name=name, input_shape=input_shape, trainable=trainable)
        self.activation = _activations.get(activation)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def core_spec(self):
        return {"kind": "activation", "size": math.prod(self.input_shape), "channels": self.input_shape[-1],
                "activation": self.activation.code, "alpha": self.activation.alpha}

    def get_config(self):
        cfg = super().get_config()
        act = self.activation
        cfg.update(activation=act.get_config() if act.takes_alpha else act.name)
        return cfg


def _unit_interval(layer, name, value):
    try:
        v = _checks.hyper_float(value)
    except TypeError:
        raise TypeError(f"{layer}: {name} must be a number in [0, 1]; received {value!r}") from None
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"{layer}: {name} must be in [0, 1]; received {value!r}")
    return v


@register
class BatchNormalization(Layer):
    """Batch normalization over the last axis — the features of a Dense output, the channels
    of a convolution's (chainrule's images are channels-last) — as Keras's.

    In training each channel is normalized with the batch's mean and (biased) variance over
    the samples (and pixels), ``y = gamma * (x - mean) / sqrt(var + epsilon) + beta``, and
    the moving statistics follow them: ``moving = moving * momentum + batch * (1 -
    momentum)`` (PyTorch's ``momentum`` is ``1 - momentum``, and its running variance is the
    unbiased one). ``predict``, ``evaluate`` and a frozen layer (``trainable=False``) use the
    moving statistics instead. A training batch of one sample (and no pixels) has variance
    0: its output is ``beta``, as in Keras.

    Weights, in :meth:`Sequential.get_weights` order as Keras's: ``gamma`` (if ``scale``),
    ``beta`` (if ``center``), ``moving_mean``, ``moving_variance``, each of shape
    (channels,). The moving statistics are non-trainable: the forward pass updates them, no
    optimizer step, weight decay, penalty or gradient clipping touches them.
    ``gamma_regularizer`` / ``beta_regularizer`` add an L1/L2 penalty as
    ``kernel_regularizer`` does. ``axis``: -1 or the index of the last axis counting the
    batch axis (3 for images), the only axis supported.
    """

    _stateful = ("moving_mean", "moving_variance")

    def __init__(self, axis=-1, momentum=0.99, epsilon=1e-3, center=True, scale=True,
                 beta_initializer="zeros", gamma_initializer="ones", moving_mean_initializer="zeros",
                 moving_variance_initializer="ones", beta_regularizer=None, gamma_regularizer=None,
                 input_shape=None, name=None, trainable=True):
        super().__init__(name=name, input_shape=input_shape, trainable=trainable)
        cls = "BatchNormalization"
        if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
            raise TypeError(f"{cls}: axis must be an integer; received {axis!r}")
        self.axis = int(axis)
        self.momentum = _unit_interval(cls, "momentum", momentum)
        try:
            eps = _checks.hyper_float(epsilon)
        except TypeError:
            raise TypeError(f"{cls}: epsilon must be a number > 0; received {epsilon!r}") from None
        if not (0.0 < eps <= _checks.F32_MAX):
            raise ValueError(f"{cls}: epsilon must be a finite number > 0; received {epsilon!r}")
        self.epsilon = eps
        self.center = _checks.flag(f"{cls}: center", center)
        self.scale = _checks.flag(f"{cls}: scale", scale)
        for init in (beta_initializer, gamma_initializer, moving_mean_initializer, moving_variance_initializer):
            _initializers.get(init)
        if moving_variance_initializer.lower() not in ("ones", "zeros"):
            raise ValueError(f"{cls}: moving_variance_initializer must give values >= 0 (a variance): "
                             f"'ones' or 'zeros'; received {moving_variance_initializer!r}")
        self.beta_initializer = beta_initializer
        self.gamma_initializer = gamma_initializer
        self.moving_mean_initializer = moving_mean_initializer
        self.moving_variance_initializer = moving_variance_initializer
        self.beta_regularizer = _regularizers.get(beta_regularizer)
        self.gamma_regularizer = _regularizers.get(gamma_regularizer)

    def _label(self):
        return f"BatchNormalization layer {self.name!r}" if self.name else "BatchNormalization"

    def compute_output_shape(self, input_shape):
        rank = len(input_shape)
        if self.axis not in (-1, rank):
            raise ValueError(f"{self._label()}: axis={self.axis} for samples of shape {tuple(input_shape)}; only "
                             f"the last axis (-1, or {rank} counting the batch axis: the features, or the "
                             "channels of chainrule's channels-last images) is supported")
        return tuple(input_shape)

    def core_spec(self):
        return {"kind": "batchnorm", "size": math.prod(self.input_shape), "channels": self.input_shape[-1],
                "center": int(self.center), "scale": int(self.scale), "momentum": self.momentum,
                "epsilon": self.epsilon}

    def param_specs(self):
        c = self.input_shape[-1]
        specs = []
        if self.scale:
            specs.append(("gamma", (c,), self.gamma_initializer, c, c))
        if self.center:
            specs.append(("beta", (c,), self.beta_initializer, c, c))
        return specs + [("moving_mean", (c,), self.moving_mean_initializer, c, c),
                        ("moving_variance", (c,), self.moving_variance_initializer, c, c)]

    def regularizers(self):
        regs = {}
        if self.scale and self.gamma_regularizer is not None:
            regs["gamma"] = self.gamma_regularizer
        if self.center and self.beta_regularizer is not None:
            regs["beta"] = self.beta_regularizer
        return regs

    def get_config(self):
        cfg = super().get_config()
        cfg.update(axis=self.axis, momentum=self.momentum, epsilon=self.epsilon, center=self.center,
                   scale=self.scale, beta_initializer=self.beta_initializer,
                   gamma_initializer=self.gamma_initializer,
                   moving_mean_initializer=self.moving_mean_initializer,
                   moving_variance_initializer=self.moving_variance_initializer)
        for key in ("beta_regularizer", "gamma_regularizer"):
            reg = getattr(self, key)
            if reg is not None:
                cfg[key] = reg.get_config()
        return cfg


@register
class InputLayer(Layer):
    """Declares the model's input: ``Sequential([Input(shape=(28, 28, 1)), Conv2D(...), ...])``
    as in Keras. ``shape`` is one sample's shape (no batch axis); ``batch_shape`` (Keras's)
    is the same with a leading batch size, which is ignored (None or any positive int). It
    computes nothing: the model takes its input shape from it and does not list it in
    :attr:`Sequential.layers`, as Keras does. It must be the model's first entry."""

    def __init__(self, shape=None, batch_shape=None, name=None):
        super().__init__(name=name)
        if (shape is None) == (batch_shape is None):
            raise ValueError("InputLayer: pass exactly one of shape and batch_shape; received "
                             f"shape={shape!r}, batch_shape={batch_shape!r}")
        if batch_shape is not None:
            try:
                bs = list(batch_shape)
            except TypeError:
                raise TypeError(f"InputLayer: batch_shape must be a tuple (batch, *sample shape); received "
                                f"{batch_shape!r}") from None
            if len(bs) < 2 or not (bs[0] is None or (isinstance(bs[0], numbers.Integral)
                                                     and not isinstance(bs[0], bool) and bs[0] >= 1)):
                raise ValueError("InputLayer: batch_shape must be (batch size or None, *sample shape); received "
                                 f"{batch_shape!r}")
            shape = bs[1:]
        self.shape = shape_tuple("InputLayer", "shape", shape)
        self._declared_input_shape = self.shape

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def core_spec(self):
        return None

    def get_config(self):
        return {"name": self.name, "batch_shape": [None, *self.shape]}


def Input(shape=None, batch_shape=None, name=None):
    """Keras's ``Input``: the :class:`InputLayer` that starts a Sequential model and fixes its
    input shape, e.g. ``Sequential([Input(shape=(784,)), Dense(10)])``."""
    return InputLayer(shape=shape, batch_shape=batch_shape, name=name)


__all__ += ["Conv2D", "MaxPooling2D", "AveragePooling2D", "Flatten", "Reshape", "Dropout",
            "GlobalAveragePooling2D", "Activation", "BatchNormalization", "InputLayer", "Input"]
