"""Layers: configuration and shape inference only. The constructor stores configuration;
weights are created when the input shape is known (Keras's contract). Each layer describes
itself to the C++ core as a plain dict (``core_spec``) and lists its parameter tensors with
their initializers (``param_specs``)."""

from __future__ import annotations

import math
import numbers
import weakref

from . import activations as _activations
from . import initializers as _initializers
from . import regularizers as _regularizers

__all__ = ["Layer", "Dense", "get", "register"]

_REGISTRY: dict[str, type] = {}

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


def register(cls):
    """Make a layer class known to ``from_config`` / ``load_model``."""
    _REGISTRY[cls.__name__] = cls
    return cls


def _positive_int(layer, name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{layer}: {name} must be a positive integer; received {value!r}")
    if not 1 <= value <= MAX_SIZE:
        raise ValueError(f"{layer}: {name} must be a positive integer; received {value!r} (the limit is {MAX_SIZE})")
    return int(value)


def check_size(what, shape):
    """The number of values in ``shape``, or a ValueError naming ``what`` when it exceeds
    MAX_SIZE."""
    n = math.prod(shape)
    if n > MAX_SIZE:
        raise ValueError(f"{what} has {n} values (shape {tuple(shape)}); the limit is {MAX_SIZE}")
    return n


def shape_tuple(layer, name, shape):
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
    work to do in C++, ``core_spec`` and ``param_specs``."""

    def __init__(self, name=None, input_shape=None):
        if name is not None and not isinstance(name, str):
            raise TypeError(f"{type(self).__name__}: name must be a string; received {name!r}")
        self.name = name
        self._declared_input_shape = (
            None if input_shape is None else shape_tuple(type(self).__name__, "input_shape", input_shape))
        self.input_shape = None   # per sample, without the batch dimension
        self.output_shape = None
        self.built = False

    # -- shapes ---------------------------------------------------------------------------
    def compute_output_shape(self, input_shape):
        raise NotImplementedError

    def build(self, input_shape):
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

    # -- the C++ side -----------------------------------------------------------------------
    def core_spec(self) -> dict:
        """The dict the C++ layer factory builds this layer from (numbers only + 'kind')."""
        raise NotImplementedError

    def param_specs(self) -> list:
        """[(name, shape, initializer_name, fan_in, fan_out)] in the order the core stores them."""
        return []

    def regularizers(self) -> dict:
        """{parameter name: Regularizer} for the parameters with a penalty."""
        reg = getattr(self, "kernel_regularizer", None)  # set by _configure_weights
        return {"kernel": reg} if reg is not None else {}

    def _configure_weights(self, activation, kernel_initializer, bias_initializer, kernel_regularizer):
        """Shared by layers with a kernel, a bias and an output activation (Dense, Conv2D)."""
        self.activation = _activations.get(activation)
        if kernel_initializer is None:
            kernel_initializer = _initializers.default_for(self.activation.name)
        _initializers.get(kernel_initializer)
        _initializers.get(bias_initializer)
        self.kernel_initializer = kernel_initializer
        self.bias_initializer = bias_initializer
        self.kernel_regularizer = _regularizers.get(kernel_regularizer)

    def _weights_config(self) -> dict:
        act = self.activation
        cfg = {"activation": act.get_config() if act.takes_alpha else act.name,
               "kernel_initializer": self.kernel_initializer, "bias_initializer": self.bias_initializer}
        if self.kernel_regularizer is not None:
            cfg["kernel_regularizer"] = self.kernel_regularizer.get_config()
        return cfg

    def count_params(self) -> int:
        return sum(math.prod(shape) for _, shape, *_ in self.param_specs())

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
                 kernel_regularizer=None, name=None, input_shape=None):
        super().__init__(name=name, input_shape=input_shape)
        self.units = _positive_int("Dense", "units", units)
        self._configure_weights(activation, kernel_initializer, bias_initializer, kernel_regularizer)

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
        cfg.update(units=self.units, **self._weights_config())
        return cfg


def get(config: dict) -> Layer:
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

def _pair(layer, name, value):
    """An int or a pair of ints, as a (rows, cols) tuple of positive ints."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{layer}: {name} must be an integer or a pair of integers; received {value!r}")
        return (_positive_int(layer, name, value[0]), _positive_int(layer, name, value[1]))
    v = _positive_int(layer, name, value)
    return (v, v)


def _padding(layer, value):
    p = value.lower() if isinstance(value, str) else value
    if p not in ("valid", "same"):
        raise ValueError(f"{layer}: padding must be 'valid' or 'same'; received {value!r}")
    return p


def _window_out(size, window, stride, padding):
    """Output length of one spatial axis (TensorFlow's definition), or None if the window does
    not fit a 'valid' input."""
    if padding == "same":
        return -(-size // stride)
    if window > size:
        return None
    return (size - window) // stride + 1


def _image_shape(layer, input_shape, allow_2d):
    shape = tuple(input_shape)
    if allow_2d and len(shape) == 2:
        shape = shape + (1,)
    if len(shape) != 3:
        want = "(height, width, channels) or (height, width)" if allow_2d else "(height, width, channels)"
        raise ValueError(f"{layer} expects samples of shape {want}; received samples of shape {tuple(input_shape)}")
    if any(d < 1 for d in shape):
        raise ValueError(f"{layer} received samples of shape {tuple(input_shape)}: sizes must be positive")
    return shape


def _spatial_out(layer, shape, window, strides, padding, what):
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

    def __init__(self, filters, kernel_size, strides=1, padding="valid", activation=None,
                 kernel_initializer=None, bias_initializer="zeros", kernel_regularizer=None,
                 input_shape=None, name=None):
        super().__init__(name=name, input_shape=input_shape)
        self.filters = _positive_int("Conv2D", "filters", filters)
        self.kernel_size = _pair("Conv2D", "kernel_size", kernel_size)
        self.strides = _pair("Conv2D", "strides", strides)
        self.padding = _padding("Conv2D", padding)
        self._configure_weights(activation, kernel_initializer, bias_initializer, kernel_regularizer)

    def _label(self):
        return f"Conv2D layer {self.name!r}" if self.name else "Conv2D"

    def compute_output_shape(self, input_shape):
        shape = _image_shape(self._label(), input_shape, allow_2d=True)
        oh, ow = _spatial_out(self._label(), shape, self.kernel_size, self.strides, self.padding,
                              "kernel_size")
        return (oh, ow, self.filters)

    def build(self, input_shape):
        self._image = _image_shape(self._label(), tuple(input_shape), allow_2d=True)  # param_specs needs it
        return super().build(input_shape)

    def core_spec(self):
        h, w, c = self._image
        return {"kind": "conv2d", "h": h, "w": w, "cin": c, "filters": self.filters,
                "kh": self.kernel_size[0], "kw": self.kernel_size[1],
                "sh": self.strides[0], "sw": self.strides[1], "same": int(self.padding == "same"),
                "activation": self.activation.code, "alpha": self.activation.alpha}

    def param_specs(self):
        kh, kw = self.kernel_size
        cin = self._image[2]
        fan_in, fan_out = kh * kw * cin, kh * kw * self.filters
        return [("kernel", (kh, kw, cin, self.filters), self.kernel_initializer, fan_in, fan_out),
                ("bias", (self.filters,), self.bias_initializer, fan_in, fan_out)]

    def get_config(self):
        cfg = super().get_config()
        cfg.update(filters=self.filters, kernel_size=list(self.kernel_size), strides=list(self.strides),
                   padding=self.padding, **self._weights_config())
        return cfg


class _Pooling2D(Layer):
    _kind = ""

    def __init__(self, pool_size=2, strides=None, padding="valid", input_shape=None, name=None):
        super().__init__(name=name, input_shape=input_shape)
        cls = type(self).__name__
        self.pool_size = _pair(cls, "pool_size", pool_size)
        self.strides = self.pool_size if strides is None else _pair(cls, "strides", strides)
        self.padding = _padding(cls, padding)

    def _label(self):
        cls = type(self).__name__
        return f"{cls} layer {self.name!r}" if self.name else cls

    def compute_output_shape(self, input_shape):
        shape = _image_shape(self._label(), input_shape, allow_2d=False)
        oh, ow = _spatial_out(self._label(), shape, self.pool_size, self.strides, self.padding, "pool_size")
        return (oh, ow, shape[2])

    def core_spec(self):
        h, w, c = self.input_shape
        return {"kind": self._kind, "h": h, "w": w, "c": c,
                "ph": self.pool_size[0], "pw": self.pool_size[1],
                "sh": self.strides[0], "sw": self.strides[1], "same": int(self.padding == "same")}

    def get_config(self):
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

    def compute_output_shape(self, input_shape):
        return (math.prod(input_shape),)

    def core_spec(self):
        return None


@register
class Reshape(Layer):
    """Samples to ``target_shape`` (one entry may be -1: inferred). Free, like Flatten."""

    def __init__(self, target_shape, input_shape=None, name=None):
        super().__init__(name=name, input_shape=input_shape)
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

    def compute_output_shape(self, input_shape):
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

    def core_spec(self):
        return None

    def get_config(self):
        cfg = super().get_config()
        cfg.update(target_shape=list(self.target_shape))
        return cfg


@register
class Dropout(Layer):
    """Inverted dropout: in training each value is zeroed with probability ``rate`` and the
    kept ones are scaled by 1/(1-rate); predict and evaluate pass values through unchanged.
    Masks are drawn in C++ from a stream seeded by ``fit(seed=...)``."""

    def __init__(self, rate, input_shape=None, name=None):
        super().__init__(name=name, input_shape=input_shape)
        if isinstance(rate, bool):
            raise TypeError(f"Dropout: rate must be a number in [0, 1); received {rate!r}")
        try:
            r = float(rate)
        except (TypeError, ValueError, OverflowError):
            raise TypeError(f"Dropout: rate must be a number in [0, 1); received {rate!r}") from None
        if not (0.0 <= r < 1.0):
            raise ValueError(f"Dropout: rate must be in [0, 1); received {rate!r}")
        self.rate = r

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def core_spec(self):
        return {"kind": "dropout", "size": math.prod(self.input_shape), "rate": self.rate}

    def get_config(self):
        cfg = super().get_config()
        cfg.update(rate=self.rate)
        return cfg


__all__ += ["Conv2D", "MaxPooling2D", "AveragePooling2D", "Flatten", "Reshape", "Dropout"]
