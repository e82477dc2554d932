"""Weights to and from PyTorch: :func:`to_torch` builds the ``torch.nn.Sequential`` that
computes what a model computes, with its weights; :func:`load_state_dict` puts the weights
of such a module (or of any torch module with the same layers) back into a model.

>>> import torch
>>> from chainrule.torch_interop import to_torch, load_state_dict
>>> net = to_torch(model)                    # eval mode, the model's dtype
>>> y = net(torch.from_numpy(x)).detach().numpy()  # == model.predict(x); images: x.transpose(0, 3, 1, 2)
>>> ...                                      # fine-tune net in PyTorch
>>> load_state_dict(model, net.state_dict())  # and back

Layouts. chainrule is channels-last, PyTorch channels-first: a model whose samples are images
(3-D, (height, width, channels)) takes NCHW input in torch, ``x.transpose(0, 3, 1, 2)``, and
an image output comes out NCHW; every other input and output has the shape ``predict``
uses. Dense's kernel (in, units) is ``Linear.weight`` (units, in) transposed; Conv2D's kernel
(kh, kw, in, out) is ``Conv2d.weight`` (out, in, kh, kw). A Dense layer after the Flatten of
an image takes its inputs in torch's (channels, height, width) order, so its kernel rows are
permuted from chainrule's (height, width, channels) order (and back by load_state_dict).

The modules: Dense -> Linear, Conv2D -> Conv2d, MaxPooling2D -> MaxPool2d,
AveragePooling2D -> AvgPool2d (``count_include_pad=False``), GlobalAveragePooling2D ->
AdaptiveAvgPool2d(1) (then Flatten unless ``keepdims``), BatchNormalization -> BatchNorm2d
over an image's channels or BatchNorm1d over features, with gamma, beta and the moving
statistics as weight, bias, running_mean and running_var (``affine=False`` when the layer has
neither center nor scale; torch's ``momentum`` is ``1 - momentum``; in ``.train()`` mode
torch keeps the unbiased variance as running_var where chainrule, as Keras, keeps the biased
one), Dropout -> Dropout, Flatten / Reshape -> Flatten / Unflatten, activations (of a layer
or an Activation layer) -> ReLU, LeakyReLU, Sigmoid, Tanh, Softmax(dim=1) (over the channels
of an image, as in chainrule). TensorFlow's 'same' padding
puts an odd extra row or column at the bottom/right, which torch's symmetric ``padding``
cannot: a ZeroPad2d (convolution), a ConstantPad2d of -inf (max pooling) or
:class:`AvgPool2dSame` comes first. Moving channels between layouts where a plain reshape
cannot uses :class:`Permute`. These two are small torch modules defined here, created when
first used, so importing this module never imports torch.
"""

from __future__ import annotations

import math

import numpy as np

from . import layers as _layers

__all__ = ["to_torch", "load_state_dict", "Permute", "AvgPool2dSame"]


# -- the plan: the torch modules that compute what a model computes --------------------------

class _Plan:
    """Walks a built model's layers and lists the torch modules (as plain tuples) that compute
    the same, tracking how the torch tensor's layout relates to chainrule's.

    ``shape``: chainrule's per-sample shape here. ``hwc``: None when torch's flat order of
    the sample equals chainrule's; (h, w, c) when torch holds that image channels-first
    (chainrule holds it channels-last). ``tshape``: the per-sample shape the torch tensor
    should have; ``emitted``: the one it has after the modules so far (reshapes are emitted
    lazily, so consecutive ones merge)."""

    def __init__(self, model):
        self.ops = []     # ("linear", in, out) / ("conv2d", ...) / ("act", name, alpha) / …
        self.params = []  # (layer, index of its op, hwc of a Dense's input or None)
        shape = tuple(model.input_shape)
        self.shape = shape
        if len(shape) == 3:
            h, w, c = shape
            self.tshape = (c, h, w)
            self.hwc = shape if c > 1 else None
        else:
            self.tshape = shape
            self.hwc = None
        self.emitted = self.tshape
        for layer in model._layers:
            self._layer(layer)
        if len(self.shape) == 3:  # an image comes out channels-first
            self._to_image(*self.shape)
        else:
            self._to_same()
            self.tshape = self.shape
        self._flush()

    # torch tensor layout moves
    def _flush(self):
        if self.tshape == (1,) + self.emitted:  # (h, w) -> (1, h, w): one channel
            self.ops.append(("unflatten", (1, self.emitted[0])))
            self.emitted = self.tshape
        elif self.emitted != self.tshape:
            if len(self.emitted) > 1:
                self.ops.append(("flatten",))
            if len(self.tshape) > 1:
                self.ops.append(("unflatten", self.tshape))
            self.emitted = self.tshape

    def _op(self, *spec):
        self._flush()
        self.ops.append(spec)
        return len(self.ops) - 1

    def _permute(self, dims, out):
        self._flush()
        if self.ops and self.ops[-1][0] == "permute":  # two in a row: one (or none)
            first = self.ops.pop()[1]
            dims = tuple(first[d] for d in dims)
        if dims != tuple(range(len(dims))):
            self.ops.append(("permute", dims))
        self.emitted = self.tshape = out

    def _to_same(self):
        """torch's flat order of the sample becomes chainrule's."""
        if self.hwc is not None:
            h, w, c = self.hwc
            self.tshape = (c, h, w)
            self._permute((0, 2, 3, 1), (h, w, c))
            self.hwc = None

    def _to_image(self, h, w, c):
        """The torch tensor becomes the image (h, w, c) channels-first: (c, h, w)."""
        if self.hwc is not None and self.hwc != (h, w, c):
            self._to_same()
        if self.hwc is None:
            if c == 1:
                self.tshape = (1, h, w)
            else:
                self.tshape = (h, w, c)
                self._permute((0, 3, 1, 2), (c, h, w))
                self.hwc = (h, w, c)
        else:
            self.tshape = (c, h, w)
        self._flush()

    def _image_out(self, oh, ow, f):
        self.shape = (oh, ow, f)
        self.hwc = self.shape if f > 1 else None
        self.emitted = self.tshape = (f, oh, ow)

    def _activation(self, layer):
        act = layer.activation
        if act.name != "linear":
            self._op("act", act.name, act.alpha)

    # one chainrule layer
    def _layer(self, layer):
        kind = type(layer)
        if kind is _layers.Dense:
            n = self.shape[0]
            self.tshape = (n,)
            idx = self._op("linear", n, layer.units)
            self.params.append((layer, idx, self.hwc))
            self._activation(layer)
            self.shape = self.emitted = self.tshape = (layer.units,)
            self.hwc = None
        elif kind is _layers.Conv2D:
            h, w, c = layer._image
            self._to_image(h, w, c)
            pads = _same_pads((h, w), layer.kernel_size, layer.strides, layer.padding)
            if pads is not None and not _even(pads):
                self._op("zeropad", pads)
                pads = None
            idx = self._op("conv2d", c, layer.filters, layer.kernel_size, layer.strides,
                           (0, 0) if pads is None else (pads[2], pads[0]))
            self.params.append((layer, idx, None))
            self._activation(layer)
            self._image_out(*layer.output_shape)
        elif kind in (_layers.MaxPooling2D, _layers.AveragePooling2D):
            h, w, c = self.shape
            self._to_image(h, w, c)
            pads = _same_pads((h, w), layer.pool_size, layer.strides, layer.padding)
            k, s = layer.pool_size, layer.strides
            if kind is _layers.MaxPooling2D:
                if pads is not None and not _even(pads):
                    self._op("pad", pads, -math.inf)
                    pads = None
                self._op("maxpool", k, s, (0, 0) if pads is None else (pads[2], pads[0]))
            elif pads is not None and not _even(pads):
                self._op("avgpool_same", k, s, pads)
            else:
                self._op("avgpool", k, s, (0, 0) if pads is None else (pads[2], pads[0]))
            self._image_out(*layer.output_shape)
        elif kind is _layers.Flatten or (kind is _layers.Reshape and len(layer.output_shape) == 1):
            self.shape = self.tshape = (math.prod(self.shape),)  # hwc (the flat order) stays
        elif kind is _layers.Reshape:
            self._to_same()
            self.shape = self.tshape = tuple(layer.output_shape)
        elif kind is _layers.Dropout:
            self._op("dropout", layer.rate)
        elif kind is _layers.GlobalAveragePooling2D:
            h, w, c = self.shape
            self._to_image(h, w, c)
            self._op("gap")
            self._image_out(1, 1, c)
            if not layer.keepdims:  # torch's (c, 1, 1) flattens in chainrule's (1, 1, c) order
                self.shape = self.tshape = (c,)
                self.hwc = None
        elif kind is _layers.BatchNormalization:
            self._batchnorm(layer)
        elif kind is _layers.Activation:
            act = layer.activation
            if act.name == "softmax":  # over the last axis: torch must hold it where dim says
                if len(self.shape) == 3:
                    self._to_image(*self.shape)
                    dim = 1
                else:  # 1-D: over every value, in any order; 2-D: torch holds (h, w) as chainrule
                    self.tshape = self.shape
                    dim = -1
                self._op("act", act.name, act.alpha, dim)
            elif act.name != "linear":
                self._op("act", act.name, act.alpha)
        else:
            raise TypeError(f"layer {layer.name!r} ({kind.__name__}) has no PyTorch counterpart here; "
                            "known: Dense, Conv2D, MaxPooling2D, AveragePooling2D, GlobalAveragePooling2D, "
                            "BatchNormalization, Activation, Flatten, Reshape, Dropout")

    def _batchnorm(self, layer):
        shape = self.shape
        spec = (shape[-1], layer.epsilon, 1.0 - layer.momentum, layer.center or layer.scale)
        if len(shape) == 3:  # an image: BatchNorm2d over torch's channel axis
            self._to_image(*shape)
            idx = self._op("batchnorm", 2, *spec)
        elif len(shape) == 1:  # features: BatchNorm1d, with torch holding them in chainrule's order
            self._to_same()
            self.tshape = shape
            idx = self._op("batchnorm", 1, *spec)
        elif len(shape) == 2:  # (h, w): BatchNorm1d over w wants (batch, w, h)
            self.tshape = shape
            self._flush()
            self.ops.append(("permute", (0, 2, 1)))
            idx = len(self.ops)
            self.ops += [("batchnorm", 1, *spec), ("permute", (0, 2, 1))]
        else:
            raise TypeError(f"layer {layer.name!r} (BatchNormalization) over samples of shape {shape} has no "
                            "PyTorch counterpart here (1-D, 2-D and image samples do)")
        self.params.append((layer, idx, None))


def _same_pads(size, window, strides, padding):
    """TensorFlow's 'same' padding as (left, right, top, bottom) (the odd one at the end), or
    None for 'valid'."""
    if padding != "same":
        return None
    out = []
    for n, k, s in zip(size, window, strides):
        total = max((-(-n // s) - 1) * s + k - n, 0)
        out.append((total // 2, total - total // 2))
    (top, bottom), (left, right) = out
    return (left, right, top, bottom)


def _even(pads):
    left, right, top, bottom = pads
    return left == right and top == bottom


def _plan(model, what):
    from .models import Sequential
    if not isinstance(model, Sequential):
        raise TypeError(f"{what}: model must be a chainrule Sequential; received {type(model).__name__}")
    if not model._build_if_declared():
        raise ValueError(f"{what}: the model is not built yet: call model.build(input_shape) first")
    return _Plan(model)


# -- torch modules defined here -----------------------------------------------------------------

_CLASSES: dict = {}


def _classes():
    """Permute and AvgPool2dSame, created (and torch imported) on first use; module attributes
    of this module from then on, so ``torch.save`` of a whole module finds them."""
    if _CLASSES:
        return _CLASSES
    import torch
    import torch.nn.functional as F

    class Permute(torch.nn.Module):
        """``x.permute(*dims)`` (dims include the batch axis, as torchvision's Permute)."""

        def __init__(self, dims):
            super().__init__()
            self.dims = tuple(int(d) for d in dims)

        def forward(self, x):
            return x.permute(*self.dims)

        def extra_repr(self):
            return f"dims={self.dims}"

    class AvgPool2dSame(torch.nn.Module):
        """Average pooling with uneven zero padding ``(left, right, top, bottom)``, the mean
        taken over each window's real elements only: TensorFlow's 'same' average pooling
        where the padding is odd (the extra row/column at the bottom/right)."""

        def __init__(self, kernel_size, stride, padding):
            super().__init__()
            self.kernel_size = tuple(int(k) for k in kernel_size)
            self.stride = tuple(int(s) for s in stride)
            self.padding = tuple(int(p) for p in padding)

        def forward(self, x):
            sums = F.avg_pool2d(F.pad(x, self.padding), self.kernel_size, self.stride, divisor_override=1)
            ones = torch.ones((1, 1) + tuple(x.shape[-2:]), dtype=x.dtype, device=x.device)
            counts = F.avg_pool2d(F.pad(ones, self.padding), self.kernel_size, self.stride, divisor_override=1)
            return sums / counts

        def extra_repr(self):
            return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"

    for cls in (Permute, AvgPool2dSame):
        cls.__module__ = __name__
        cls.__qualname__ = cls.__name__
        _CLASSES[cls.__name__] = cls
    return _CLASSES


def __getattr__(name):
    if name in ("Permute", "AvgPool2dSame"):
        return _classes()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _module(spec, torch):
    nn = torch.nn
    kind, *a = spec
    if kind == "linear":
        return nn.Linear(a[0], a[1])
    if kind == "conv2d":
        cin, cout, k, s, p = a
        return nn.Conv2d(cin, cout, k, stride=s, padding=p)
    if kind == "act":
        name, alpha, *dim = a
        return {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh,
                "leaky_relu": lambda: nn.LeakyReLU(alpha),
                "softmax": lambda: nn.Softmax(dim=dim[0] if dim else 1)}[name]()
    if kind == "batchnorm":
        dims, channels, eps, momentum, affine = a
        cls = nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d
        return cls(channels, eps=eps, momentum=momentum, affine=affine)
    if kind == "gap":
        return nn.AdaptiveAvgPool2d(1)
    if kind == "zeropad":
        return nn.ZeroPad2d(a[0])
    if kind == "pad":
        return nn.ConstantPad2d(a[0], a[1])
    if kind == "maxpool":
        return nn.MaxPool2d(a[0], a[1], padding=a[2])
    if kind == "avgpool":
        return nn.AvgPool2d(a[0], a[1], padding=a[2], count_include_pad=False)
    if kind == "avgpool_same":
        return _classes()["AvgPool2dSame"](*a)
    if kind == "dropout":
        return nn.Dropout(a[0])
    if kind == "flatten":
        return nn.Flatten()
    if kind == "unflatten":
        return nn.Unflatten(1, a[0])
    if kind == "permute":
        return _classes()["Permute"](a[0])
    raise AssertionError(kind)


# -- weight layouts -------------------------------------------------------------------------------

def _torch_weight(layer, kernel, hwc):
    """chainrule kernel -> torch weight."""
    if isinstance(layer, _layers.Conv2D):
        return kernel.transpose(3, 2, 0, 1)
    if hwc is not None:  # rows (h, w, c) -> (c, h, w)
        h, w, c = hwc
        kernel = kernel.reshape(h, w, c, -1).transpose(2, 0, 1, 3).reshape(h * w * c, -1)
    return kernel.T


def _chainrule_kernel(layer, weight, hwc):
    """torch weight -> chainrule kernel (the inverse of _torch_weight)."""
    if isinstance(layer, _layers.Conv2D):
        return weight.transpose(2, 3, 1, 0)
    kernel = weight.T
    if hwc is not None:  # rows (c, h, w) -> (h, w, c)
        h, w, c = hwc
        kernel = kernel.reshape(c, h, w, -1).transpose(1, 2, 0, 3).reshape(h * w * c, -1)
    return kernel


def _torch_shape(layer, hwc):
    kernel = tuple(layer.param_specs()[0][1])
    return tuple(_torch_weight(layer, np.empty(kernel, dtype=np.uint8), hwc).shape)


# -- public API -----------------------------------------------------------------------------------

def to_torch(model):
    """A ``torch.nn.Sequential`` that computes what ``model`` (a built Sequential) computes,
    with copies of its weights, in the model's dtype (float32 / float64), in eval mode
    (Dropout off, as in ``predict``; call ``.train()`` to train it).

    Its input is what ``predict`` takes, except that image samples (height, width, channels)
    are NCHW: ``torch.from_numpy(x.transpose(0, 3, 1, 2))``; an image output comes out NCHW
    too. Its ``state_dict()`` is what :func:`load_state_dict` reads back."""
    plan = _plan(model, "to_torch")
    import torch
    dtype = torch.float64 if model.dtype == "float64" else torch.float32
    net = torch.nn.Sequential(*(_module(spec, torch) for spec in plan.ops)).to(dtype)
    weights = _weights_by_layer(model)
    with torch.no_grad():
        for layer, idx, hwc in plan.params:
            mod, w = net[idx], weights[id(layer)]
            if isinstance(layer, _layers.BatchNormalization):
                c = layer.input_shape[-1]
                if mod.affine:
                    mod.weight.copy_(torch.from_numpy(w.get("gamma", np.ones(c, dtype=w["moving_mean"].dtype))))
                    mod.bias.copy_(torch.from_numpy(w.get("beta", np.zeros(c, dtype=w["moving_mean"].dtype))))
                mod.running_mean.copy_(torch.from_numpy(w["moving_mean"]))
                mod.running_var.copy_(torch.from_numpy(w["moving_variance"]))
                continue
            mod.weight.copy_(torch.from_numpy(np.ascontiguousarray(_torch_weight(layer, w["kernel"], hwc))))
            mod.bias.copy_(torch.from_numpy(w["bias"]))
    return net.eval()


def _weights_by_layer(model):
    """{id(layer): {parameter name: array}} from get_weights."""
    weights = iter(model.get_weights())
    return {id(layer): {name: next(weights) for name, *_ in layer.param_specs()} for layer in model._layers}


def load_state_dict(model, state_dict):
    """Set ``model``'s weights (a built Sequential) from a torch module or its
    ``state_dict()``: the module :func:`to_torch` builds, or any torch module whose
    Linear / Conv2d / BatchNorm layers are the model's Dense / Conv2D / BatchNormalization
    layers in the same order (taking images NCHW and flattening them in torch's (channels,
    height, width) order).

    The entries are read in order. A Dense or Conv2D layer takes the next ``*.weight`` entry
    and the ``*.bias`` after it (none: a module built with ``bias=False``, zeros). A
    BatchNormalization layer takes ``*.weight`` and ``*.bias`` (gamma and beta; none: a
    BatchNorm with ``affine=False``, ones and zeros), ``*.running_mean``, ``*.running_var``
    and, if present, ``*.num_batches_tracked`` (ignored); a layer without scale (center)
    accepts only a weight of ones (a bias of zeros). Shapes must match exactly; other
    entries, a count that does not match, non-finite values or a negative running variance
    raise ValueError / TypeError naming the layer and the entry; the model is then left
    unchanged. Values are converted to the model's dtype."""
    plan = _plan(model, "load_state_dict")
    import torch
    if isinstance(state_dict, torch.nn.Module):
        state_dict = state_dict.state_dict()
    if not hasattr(state_dict, "items"):
        raise TypeError(f"load_state_dict: state_dict must be a torch module or its state_dict() (a mapping "
                        f"of names to tensors); received {type(state_dict).__name__}")
    entries = list(state_dict.items())
    for key, value in entries:
        if not isinstance(key, str):
            raise TypeError(f"load_state_dict: state_dict keys must be strings; received {key!r}")
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"load_state_dict: state_dict entry {key!r} must be a torch tensor; received "
                            f"{type(value).__name__}")
        suffix = key.rsplit(".", 1)[-1]
        if suffix not in _ENTRY_SUFFIXES:
            raise ValueError(f"load_state_dict: state_dict entry {key!r} (shape {tuple(value.shape)}) is not "
                             "a layer's weight, bias or BatchNorm statistic; chainrule models hold only "
                             "Linear / Conv2d / BatchNorm weights and statistics")
        if suffix != "num_batches_tracked" and not value.is_floating_point():
            raise TypeError(f"load_state_dict: state_dict entry {key!r} has dtype {value.dtype}; weights "
                            "must be floating point")

    def array(t):
        return t.detach().to(device="cpu", dtype=torch.float64).numpy()

    n_layers = len(plan.params)
    pos = 0

    def peek():
        return entries[pos] if pos < len(entries) else (None, None)

    def check_finite(label, name, arr):
        if not np.isfinite(arr).all():
            raise ValueError(f"load_state_dict: the {name} for {label} holds NaN or infinite values")
        return arr

    new = {}
    for k, (layer, _, hwc) in enumerate(plan.params):
        label = f"layer {layer.name!r} ({type(layer).__name__})"
        if pos >= len(entries):
            raise ValueError(f"load_state_dict: the state_dict has no weight for {label}: it holds weights "
                             f"for {k} layers; the model has {n_layers} layers with weights")
        if isinstance(layer, _layers.BatchNormalization):
            new[id(layer)], pos = _batchnorm_entries(layer, label, entries, pos, array, check_finite)
            continue
        torch_kind = "Conv2d" if isinstance(layer, _layers.Conv2D) else "Linear"
        key, value = entries[pos]
        if not key.endswith("weight"):
            what = "a bias" if key.endswith("bias") else "a BatchNorm statistic"
            raise ValueError(f"load_state_dict: {label} expects a {torch_kind} weight; state_dict entry "
                             f"{key!r} (shape {tuple(value.shape)}) is {what}")
        want = _torch_shape(layer, hwc)
        if tuple(value.shape) != want:
            raise ValueError(f"load_state_dict: {label} needs a {torch_kind} weight of shape {want}; "
                             f"state_dict entry {key!r} has shape {tuple(value.shape)}")
        kernel = _chainrule_kernel(layer, array(value), hwc)
        pos += 1
        units = kernel.shape[-1]
        prefix = key[: -len("weight")]
        bkey, bvalue = peek()
        if bkey == prefix + "bias":
            if tuple(bvalue.shape) != (units,):
                raise ValueError(f"load_state_dict: {label} needs a bias of shape ({units},); state_dict "
                                 f"entry {bkey!r} has shape {tuple(bvalue.shape)}")
            bias = array(bvalue)
            pos += 1
        else:
            bias = np.zeros(units)
        new[id(layer)] = {"kernel": check_finite(label, "weight", kernel), "bias": check_finite(label, "bias", bias)}
    if pos < len(entries):
        key, value = entries[pos]
        raise ValueError(f"load_state_dict: the state_dict holds more weights than the model's {n_layers} "
                         f"layers with weights: entry {key!r} (shape {tuple(value.shape)}) and "
                         f"{len(entries) - pos - 1} more are left over")
    model.set_weights([new[id(layer)][name] for layer in model._layers for name, *_ in layer.param_specs()])


_ENTRY_SUFFIXES = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _batchnorm_entries(layer, label, entries, pos, array, check_finite):
    """A BatchNormalization layer's weights from the BatchNorm entries at ``pos``: ({name:
    array}, the position after them)."""
    c = layer.input_shape[-1]
    prefix = entries[pos][0].rsplit(".", 1)[0] + "." if "." in entries[pos][0] else ""
    got = {}
    for suffix in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
        if pos < len(entries) and entries[pos][0] == prefix + suffix:
            key, value = entries[pos]
            if suffix != "num_batches_tracked":
                if tuple(value.shape) != (c,):
                    raise ValueError(f"load_state_dict: {label} needs a BatchNorm {suffix} of shape ({c},); "
                                     f"state_dict entry {key!r} has shape {tuple(value.shape)}")
                got[suffix] = check_finite(label, suffix, array(value))
            pos += 1
    for suffix in ("running_mean", "running_var"):
        if suffix not in got:
            raise ValueError(f"load_state_dict: {label} expects a BatchNorm entry {prefix}{suffix} (after "
                             f"{prefix}weight and {prefix}bias, if any); the state_dict has none there")
    if got["running_var"].min() < 0:
        raise ValueError(f"load_state_dict: the running_var for {label} holds negative values "
                         f"({got['running_var'].min()!r}); a variance is >= 0")
    out = {}
    for name, suffix, flag, neutral in (("gamma", "weight", layer.scale, 1.0), ("beta", "bias", layer.center, 0.0)):
        value = got.get(suffix, np.full(c, neutral))
        if flag:
            out[name] = value
        elif not np.all(value == neutral):
            raise ValueError(f"load_state_dict: {label} has no {name} ({'scale' if name == 'gamma' else 'center'}"
                             f"=False), so its BatchNorm {suffix} must be all {neutral:g}; state_dict entry "
                             f"{prefix}{suffix!s} is not")
    out["moving_mean"] = got["running_mean"]
    out["moving_variance"] = got["running_var"]
    return out, pos
