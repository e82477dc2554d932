"""ONNX export of Sequential models (``model.export(path, format="onnx")``).

The exported graph computes exactly what :meth:`Sequential.predict` computes, on the same
input array:

* one input, ``"input"``, of shape ``(batch,) + model.input_shape`` with a dynamic batch
  dimension, in the model's dtype (float32 -> ``tensor(float)``, float64 ->
  ``tensor(double)``); images are channels-last ``(batch, height, width, channels)`` (or
  ``(batch, height, width)`` for a model built on 2-D samples), as ``predict`` takes them;
* one output, ``"output"``, of shape ``(batch,) + model.output_shape``, with the last
  layer's activation applied (softmax probabilities, sigmoid, ...);
* Dropout is the identity (inference), as in ``predict``; BatchNormalization normalizes with
  its moving statistics (inference), as in ``predict``.

ONNX convolution and pooling are channels-first, so the graph transposes NHWC -> NCHW in
front of a run of Conv/pooling nodes and back behind it (a run of such layers costs two
Transposes, not two per layer). Flatten and Reshape act on the channels-last layout, so the
Dense kernel that follows a Flatten is stored as it is in the model.

Opset 17 (ONNX 1.12, IR version 8): every operator used here has had its present meaning
since opset 13 (Softmax over one axis, Unsqueeze with an axes input), and 17 is the newest
opset that onnxruntime >= 1.12 and most other runtimes and converters load; nothing newer
is needed. The IR version is pinned to 8 (the one that goes with opset 17) so that older
runtimes accept the file.

float64 models: onnxruntime's CPU provider has no double Conv or AveragePool kernel. A
float64 export therefore keeps double precision throughout and expresses those two layers
with operators it does run in double: a convolution as im2col (Pad, one strided Slice per
kernel position, Concat along channels) and one MatMul with the kernel reshaped to
(kh*kw*channels, filters), which is how chainrule computes it; an average pool as the Sum
of the strided slices times the reciprocal of each window's count of real (unpadded)
elements. MaxPool runs in double as it is. float32 exports use Conv, MaxPool and
AveragePool. Leaky ReLU is LeakyRelu in float32 and PRelu with a double slope in float64
(LeakyRelu's alpha attribute is a float32, which would round a float64 model's alpha). For
the same reason BatchNormalization is the BatchNormalization operator in float32 and Sub, Mul,
Add with double constants in float64 (and on 2-D samples, normalized over their last axis);
GlobalAveragePooling2D is GlobalAveragePool in float32 and ReduceMean in float64.

Padding: 'same' pads as chainrule (and TensorFlow) do: total ``max((out-1)*stride + window
- size, 0)``, ``total // 2`` before and the rest after, written as explicit pads (never
``auto_pad``). Pooling never counts padded cells: MaxPool pads never win and AveragePool
has ``count_include_pad=0``.

``onnx`` is imported only when a model is exported.
"""

from __future__ import annotations

import contextlib
import json
import os

import numpy as np

from . import layers as _layers

__all__ = ["FORMATS", "INPUT_NAME", "OUTPUT_NAME", "OPSET", "IR_VERSION", "export", "to_onnx"]

FORMATS = ("onnx",)
INPUT_NAME = "input"
OUTPUT_NAME = "output"
BATCH_DIM = "batch"
OPSET = 17
IR_VERSION = 8
# Weights above this many bytes go to a side file "<path>.data" (ONNX external data): a
# protobuf message cannot exceed 2 GiB.
EXTERNAL_DATA_BYTES = 1 << 30


def _import_onnx():
    try:
        import onnx
        from onnx import helper, numpy_helper
    except ImportError as e:
        raise ImportError("exporting to ONNX needs the onnx package: pip install onnx "
                          "(and onnxruntime to run the exported model)") from e
    return onnx, helper, numpy_helper


def _same_pads(size, window, stride, padding):
    """(before, after) padding of one spatial axis, as csrc/kernels/spatial.h computes it."""
    if padding != "same":
        return 0, 0
    out = -(-size // stride)
    total = max((out - 1) * stride + window - size, 0)
    return total // 2, total - total // 2


class _GraphBuilder:
    """Nodes and initializers of one graph. Tracks the current tensor, its per-sample shape in
    chainrule's channels-last terms, and whether a 4-D tensor is held NHWC or NCHW."""

    def __init__(self, onnx, helper, numpy_helper, np_dtype):
        self.onnx, self.helper, self.numpy_helper = onnx, helper, numpy_helper
        self.np_dtype = np_dtype
        self.double = np_dtype == np.float64
        self.nodes = []
        self.initializers = []
        self._used = set()
        self.tensor = INPUT_NAME
        self.shape = None          # per sample, channels-last (as chainrule's layers see it)
        self.layout = "nhwc"       # of a 4-D tensor (batch + 3-D samples); else meaningless

    # -- naming, constants, nodes --------------------------------------------------------
    def unique(self, name):
        base, k = name, 0
        while name in self._used:
            k += 1
            name = f"{base}_{k}"
        self._used.add(name)
        return name

    def const(self, name, array):
        name = self.unique(name)
        self.initializers.append(self.numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def weight(self, name, array):
        return self.const(name, np.asarray(array, dtype=self.np_dtype))

    def ints(self, name, values):
        return self.const(name, np.asarray(values, dtype=np.int64))

    def node(self, op, inputs, name, **attrs):
        name = self.unique(name)
        out = self.unique(name + ":0")
        self.nodes.append(self.helper.make_node(op, list(inputs), [out], name=name, **attrs))
        return out

    # -- layout ------------------------------------------------------------------------
    def image(self, prefix):
        """Make the current tensor a 4-D image (a 2-D sample is one channel)."""
        if len(self.shape) == 2:
            axis = 3 if self.layout == "nhwc" else 1
            self.tensor = self.node("Unsqueeze", [self.tensor, self.ints(f"{prefix}/channel_axis", [axis])],
                                    f"{prefix}/add_channel")
            self.shape = self.shape + (1,)

    def to_layout(self, want, prefix):
        if self.shape is None or len(self.shape) != 3 or self.layout == want:
            self.layout = want
            return
        perm = [0, 3, 1, 2] if want == "nchw" else [0, 2, 3, 1]
        self.tensor = self.node("Transpose", [self.tensor], f"{prefix}/to_{want}", perm=perm)
        self.layout = want

    def channel_axis(self):
        return 1 if (self.shape is not None and len(self.shape) == 3 and self.layout == "nchw") else -1

    # -- activations ---------------------------------------------------------------------
    def activation(self, act, prefix):
        name = act.name
        x = self.tensor
        if name == "linear":
            return
        if name == "sigmoid":
            y = self.node("Sigmoid", [x], f"{prefix}/sigmoid")
        elif name == "tanh":
            y = self.node("Tanh", [x], f"{prefix}/tanh")
        elif name == "relu":
            y = self.node("Relu", [x], f"{prefix}/relu")
        elif name == "leaky_relu":
            if self.double:  # a float64 slope: the attribute of LeakyRelu is float32
                y = self.node("PRelu", [x, self.weight(f"{prefix}/alpha", [act.alpha])], f"{prefix}/leaky_relu")
            else:
                y = self.node("LeakyRelu", [x], f"{prefix}/leaky_relu", alpha=float(np.float32(act.alpha)))
        elif name == "softmax":
            y = self.node("Softmax", [x], f"{prefix}/softmax", axis=self.channel_axis())
        else:
            raise ValueError(f"export: activation {name!r} has no ONNX form in chainrule.onnx_export")
        self.tensor = y

    # -- strided windows (the float64 forms of Conv2D and AveragePooling2D) ----------------
    def window_slices(self, prefix, window, strides, out_hw):
        """The current NHWC tensor (already padded) sliced once per window position (row-major):
        slice (i, j) holds x[:, i + sh*oh, j + sw*ow, :] for every output pixel (oh, ow)."""
        (kh, kw), (sh, sw), (oh, ow) = window, strides, out_hw
        axes = self.ints(f"{prefix}/slice_axes", [1, 2])
        steps = self.ints(f"{prefix}/slice_steps", [sh, sw])
        out = []
        for i in range(kh):
            for j in range(kw):
                starts = self.ints(f"{prefix}/slice_starts", [i, j])
                ends = self.ints(f"{prefix}/slice_ends", [i + (oh - 1) * sh + 1, j + (ow - 1) * sw + 1])
                out.append(self.node("Slice", [self.tensor, starts, ends, axes, steps], f"{prefix}/window"))
        return out

    def pad_nhwc(self, prefix, pads_hw, value=0.0):
        (pt, pb), (pl, pr) = pads_hw
        if pt == pb == pl == pr == 0:
            return
        pads = self.ints(f"{prefix}/pads", [0, pt, pl, 0, 0, pb, pr, 0])
        fill = self.weight(f"{prefix}/pad_value", value)
        self.tensor = self.node("Pad", [self.tensor, pads, fill], f"{prefix}/pad", mode="constant")

    # -- layers --------------------------------------------------------------------------
    def dense(self, layer, kernel, bias):
        p = layer.name
        self.tensor = self.node("Gemm", [self.tensor, self.weight(f"{p}/kernel", kernel),
                                         self.weight(f"{p}/bias", bias)], f"{p}/gemm")
        self.shape = (layer.units,)
        self.activation(layer.activation, p)

    def conv2d(self, layer, kernel, bias):
        p = layer.name
        h, w, c = layer._image
        kh, kw = layer.kernel_size
        sh, sw = layer.strides
        pads = (_same_pads(h, kh, sh, layer.padding), _same_pads(w, kw, sw, layer.padding))
        oh, ow, f = layer.output_shape
        if not self.double:
            self.to_layout("nchw", p)
            self.image(p)
            wt = self.weight(f"{p}/kernel", kernel.transpose(3, 2, 0, 1))  # (F, C, kh, kw)
            self.tensor = self.node("Conv", [self.tensor, wt, self.weight(f"{p}/bias", bias)], f"{p}/conv",
                                    kernel_shape=[kh, kw], strides=[sh, sw],
                                    pads=[pads[0][0], pads[1][0], pads[0][1], pads[1][1]])
        else:
            self.to_layout("nhwc", p)
            self.image(p)
            self.pad_nhwc(p, pads)
            if (kh, kw, sh, sw) == (1, 1, 1, 1):
                cols = self.tensor
            else:
                parts = self.window_slices(p, (kh, kw), (sh, sw), (oh, ow))
                cols = parts[0] if len(parts) == 1 else self.node("Concat", parts, f"{p}/im2col", axis=3)
            prod = self.node("MatMul", [cols, self.weight(f"{p}/kernel", kernel.reshape(kh * kw * c, f))],
                             f"{p}/matmul")
            self.tensor = self.node("Add", [prod, self.weight(f"{p}/bias", bias)], f"{p}/bias_add")
        self.shape = (oh, ow, f)
        self.activation(layer.activation, p)

    def pooling(self, layer, kind):
        p = layer.name
        h, w, c = layer.input_shape
        ph, pw = layer.pool_size
        sh, sw = layer.strides
        pads = (_same_pads(h, ph, sh, layer.padding), _same_pads(w, pw, sw, layer.padding))
        oh, ow, _ = layer.output_shape
        if kind == "max" or not self.double:
            self.to_layout("nchw", p)
            attrs = {"kernel_shape": [ph, pw], "strides": [sh, sw],
                     "pads": [pads[0][0], pads[1][0], pads[0][1], pads[1][1]]}
            if kind == "max":
                self.tensor = self.node("MaxPool", [self.tensor], f"{p}/max_pool", **attrs)
            else:
                self.tensor = self.node("AveragePool", [self.tensor], f"{p}/average_pool",
                                        count_include_pad=0, **attrs)
        else:
            self.to_layout("nhwc", p)
            self.pad_nhwc(p, pads)
            parts = self.window_slices(p, (ph, pw), (sh, sw), (oh, ow))
            total = parts[0] if len(parts) == 1 else self.node("Sum", parts, f"{p}/window_sum")
            # 1 / (number of real elements in each window), as the core computes it.
            rows = [min(i * sh - pads[0][0] + ph, h) - max(i * sh - pads[0][0], 0) for i in range(oh)]
            cols = [min(j * sw - pads[1][0] + pw, w) - max(j * sw - pads[1][0], 0) for j in range(ow)]
            inv = 1.0 / np.multiply.outer(np.asarray(rows, np.float64), np.asarray(cols, np.float64))
            inv = inv[:, :, None]  # (oh, ow, 1): broadcast over batch and channels
            if np.all(inv == inv.flat[0]):
                inv = np.asarray(inv.flat[0])
            self.tensor = self.node("Mul", [total, self.weight(f"{p}/inv_count", inv)], f"{p}/mean")
        self.shape = (oh, ow, c)

    def batchnorm(self, layer, w):
        """Inference: the moving statistics. float32 on 1-D or image samples:
        BatchNormalization (channels-first); otherwise (float64: its epsilon attribute is a
        float32; other sample ranks) (x - moving_mean) * gamma / sqrt(moving_variance +
        epsilon) + beta over the last axis, as the core computes it."""
        p = layer.name
        c = layer.input_shape[-1]
        dt = w["moving_mean"].dtype
        gamma = w.get("gamma", np.ones(c, dtype=dt)).astype(np.float64)
        beta = w.get("beta", np.zeros(c, dtype=dt))
        mean, var = w["moving_mean"], w["moving_variance"]
        if not self.double and len(self.shape) in (1, 3):
            self.to_layout("nchw", p)
            self.tensor = self.node("BatchNormalization",
                                    [self.tensor, self.weight(f"{p}/gamma", gamma), self.weight(f"{p}/beta", beta),
                                     self.weight(f"{p}/moving_mean", mean),
                                     self.weight(f"{p}/moving_variance", var)],
                                    f"{p}/batch_norm", epsilon=float(layer.epsilon))
            return
        self.to_layout("nhwc", p)
        mul = gamma / np.sqrt(np.maximum(var.astype(np.float64), 0.0) + layer.epsilon)
        centered = self.node("Sub", [self.tensor, self.weight(f"{p}/moving_mean", mean)], f"{p}/center")
        scaled = self.node("Mul", [centered, self.weight(f"{p}/multiplier", mul)], f"{p}/scale")
        self.tensor = self.node("Add", [scaled, self.weight(f"{p}/beta", beta)], f"{p}/shift")

    def global_average_pool(self, layer):
        """float32: GlobalAveragePool (channels-first); float64: ReduceMean over height and
        width (onnxruntime has no double GlobalAveragePool)."""
        p = layer.name
        c = self.shape[2]
        if not self.double:
            self.to_layout("nchw", p)
            self.tensor = self.node("GlobalAveragePool", [self.tensor], f"{p}/global_average_pool")
            if not layer.keepdims:
                self.tensor = self.node("Flatten", [self.tensor], f"{p}/flatten", axis=1)
        else:
            self.to_layout("nhwc", p)
            self.tensor = self.node("ReduceMean", [self.tensor], f"{p}/mean", axes=[1, 2],
                                    keepdims=int(layer.keepdims))
        self.shape = tuple(layer.output_shape)
        if not layer.keepdims:
            self.layout = "nhwc"  # 1-D: the layout is moot

    def flatten(self, layer):
        self.to_layout("nhwc", layer.name)
        if len(self.shape) != 1:
            self.tensor = self.node("Flatten", [self.tensor], f"{layer.name}/flatten", axis=1)
        self.shape = tuple(layer.output_shape)

    def reshape(self, layer):
        self.to_layout("nhwc", layer.name)
        target = tuple(layer.output_shape)
        if target != self.shape:  # 0: keep the (dynamic) batch size
            shape = self.ints(f"{layer.name}/shape", (0,) + target)
            self.tensor = self.node("Reshape", [self.tensor, shape], f"{layer.name}/reshape")
        self.shape = target


def _check_model(model):
    from .models import Sequential

    if not isinstance(model, Sequential):
        raise TypeError(f"export: model must be a chainrule Sequential; received {type(model).__name__}")
    if not model._build_if_declared():
        raise ValueError(f"export: model {model.name!r} is not built yet: call build(input_shape), "
                         "fit or predict first")


def _check_format(format):
    if not isinstance(format, str):
        raise TypeError(f"export: format must be a string such as 'onnx'; received {format!r}")
    if format.lower() not in FORMATS:
        raise ValueError(f"export: unknown format {format!r}; chainrule exports {list(FORMATS)} "
                         "(Keras's 'tf_saved_model' needs TensorFlow, which chainrule does not use)")


def _check_path(path):
    """``path`` as a str, checked: a file name in an existing folder."""
    if isinstance(path, bool) or not isinstance(path, (str, bytes, os.PathLike)):
        raise TypeError(f"export: path must be a file path (str or os.PathLike); received {path!r}")
    path = os.fsdecode(os.fspath(path))
    if not path or "\0" in path:
        raise ValueError(f"export: path must be a non-empty file path; received {path!r}")
    if os.path.isdir(path):
        raise ValueError(f"export: path {path!r} is a directory; give a file name such as 'model.onnx'")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(f"export: path {path!r}: the folder {folder!r} does not exist")
    return path


def to_onnx(model):
    """The ``onnx.ModelProto`` of a built Sequential model, not yet checked or written (see
    :func:`export`); the module docstring describes its input and output."""
    _check_model(model)
    onnx, helper, numpy_helper = _import_onnx()
    model._check_not_training("export")
    from . import __version__

    np_dtype = model._np_dtype()
    elem = onnx.TensorProto.DOUBLE if np_dtype == np.float64 else onnx.TensorProto.FLOAT
    g = _GraphBuilder(onnx, helper, numpy_helper, np_dtype)
    g.shape = tuple(model.input_shape)
    weights = model.get_weights()
    i = 0
    for layer in model.layers:
        kind = type(layer)
        n = len(layer.param_specs())
        params, i = weights[i:i + n], i + n
        if kind is _layers.Dense:
            g.dense(layer, *params)
        elif kind is _layers.Conv2D:
            g.conv2d(layer, *params)
        elif kind is _layers.MaxPooling2D:
            g.pooling(layer, "max")
        elif kind is _layers.AveragePooling2D:
            g.pooling(layer, "average")
        elif kind is _layers.Flatten:
            g.flatten(layer)
        elif kind is _layers.Reshape:
            g.reshape(layer)
        elif kind is _layers.Dropout:
            pass  # the identity at inference
        elif kind is _layers.BatchNormalization:
            g.batchnorm(layer, {name: w for (name, *_), w in zip(layer.param_specs(), params)})
        elif kind is _layers.GlobalAveragePooling2D:
            g.global_average_pool(layer)
        elif kind is _layers.Activation:
            g.activation(layer.activation, layer.name)
        else:
            raise ValueError(f"export: layer {layer.name!r} of type {kind.__name__} has no ONNX form; "
                             "exportable layers: Dense, Conv2D, MaxPooling2D, AveragePooling2D, "
                             "GlobalAveragePooling2D, BatchNormalization, Activation, Flatten, Reshape, "
                             "Dropout")
        if kind not in (_layers.Dropout, _layers.Activation, _layers.BatchNormalization) \
                and tuple(g.shape) != tuple(layer.output_shape):
            raise RuntimeError(f"internal error: ONNX shape {g.shape} != {layer.output_shape} after {layer.name!r}")
    g.to_layout("nhwc", "output")
    if g.tensor == INPUT_NAME or not g.nodes:
        g.tensor = g.node("Identity", [g.tensor], "output/identity")
    g.nodes[-1].output[0] = OUTPUT_NAME  # the last node computes the output

    out_shape = tuple(model.output_shape)
    dtype_name = model.dtype
    layout = "channels-last images, " if len(model.input_shape) == 3 else ""
    graph = helper.make_graph(
        g.nodes, model.name,
        [helper.make_tensor_value_info(INPUT_NAME, elem, [BATCH_DIM, *model.input_shape])],
        [helper.make_tensor_value_info(OUTPUT_NAME, elem, [BATCH_DIM, *out_shape])],
        g.initializers,
        doc_string=f"chainrule Sequential model {model.name!r}")
    proto = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="chainrule",
        producer_version=__version__,
        doc_string=(f"chainrule Sequential model {model.name!r} ({dtype_name}). Input {INPUT_NAME!r}: "
                    f"{dtype_name} array of shape (batch, {', '.join(map(str, model.input_shape))}), "
                    f"{layout}the array Sequential.predict takes. Output {OUTPUT_NAME!r}: shape "
                    f"(batch, {', '.join(map(str, out_shape))}), what predict returns."))
    proto.ir_version = IR_VERSION
    helper.set_model_props(proto, {"chainrule.dtype": dtype_name,
                                   "chainrule.config": json.dumps(model.get_config())})
    return proto


def export(model, path, format="onnx"):
    """Write ``model`` to ``path`` as an ONNX file; ``format`` must be "onnx". The file is
    checked with ``onnx.checker.check_model`` (full check, with shape inference) and written
    atomically. Weights over ``EXTERNAL_DATA_BYTES`` go to ``<path>.data`` next to it."""
    _check_model(model)
    _check_format(format)
    path = _check_path(path)
    onnx, _, _ = _import_onnx()
    proto = to_onnx(model)
    weight_bytes = model.count_params() * np.dtype(model._np_dtype()).itemsize
    if weight_bytes <= EXTERNAL_DATA_BYTES:
        onnx.checker.check_model(proto, full_check=True)
        from .saving import _write_atomically
        data = proto.SerializeToString()
        _write_atomically(path, lambda f: f.write(data))
    else:
        location = os.path.basename(path) + ".data"
        # onnx appends to an existing data file: start from an empty one.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(os.path.dirname(os.path.abspath(path)), location))
        onnx.save_model(proto, path, save_as_external_data=True, all_tensors_to_one_file=True,
                        location=location, size_threshold=1024)
        onnx.checker.check_model(path, full_check=True)
