"""Builds a :class:`~chainrule.trace.Trace` from the C++ core's record of one training step
that is not taken (``Network::trace``): reshapes the flat arrays to each layer's documented
layout and maps the core's layers back to the model's (Flatten and Reshape have no C++ twin).
Rendering lives in trace.py; the numbers are all computed in C++ except max-pooling winners.
"""

from __future__ import annotations

import math

import numpy as np

from . import layers as _layers
from .trace import LayerTrace, Trace


def _winners(layer, x, y):
    """(B, OH, OW, C) flat index into each sample's (H, W, C) input of the element that won
    the max: the first one equal to the output in row-major window order (the core's choice
    on ties, and the one its backward pass routes the gradient to)."""
    B = x.shape[0]
    H, W, C = layer.input_shape
    OH, OW, _ = layer.output_shape
    (ph, pw), (sh, sw) = layer.pool_size, layer.strides
    if layer.padding == "same":
        pad_h = max((OH - 1) * sh + ph - H, 0) // 2
        pad_w = max((OW - 1) * sw + pw - W, 0) // 2
    else:
        pad_h = pad_w = 0
    out = np.zeros((B, OH, OW, C), dtype=np.int64)
    for oh in range(OH):
        h0 = oh * sh - pad_h
        hs = range(max(h0, 0), min(h0 + ph, H))
        for ow in range(OW):
            w0 = ow * sw - pad_w
            ws = range(max(w0, 0), min(w0 + pw, W))
            found = np.zeros((B, C), dtype=bool)
            for ih in hs:
                for iw in ws:
                    hit = (x[:, ih, iw, :] == y[:, oh, ow, :]) & ~found
                    out[:, oh, ow, :][hit] = (ih * W + iw) * C + np.nonzero(hit)[1]
                    found |= hit
    return out


def build_trace(model, X, Y, SW, targets):
    """X, Y, SW as prepared for the core (flat rows); targets: y as the user gave it."""
    rec = model._core.trace(X, Y, SW)
    B = X.shape[0]
    info = model._core.params_info()
    flat_grads, flat_updates = rec["grads"], rec["updates"]
    core_layers = rec["layers"]
    weights = model.get_weights()
    # Which core layer each model layer is (None for Flatten/Reshape).
    core_index, k = [], 0
    for layer in model._layers:
        if layer.core_spec() is None:
            core_index.append(None)
        else:
            core_index.append(k)
            k += 1
    out_shape = (B,) + tuple(model.output_shape)
    output = rec["output"].reshape(out_shape)
    traced, pi, prev_a = [], 0, X.reshape((B,) + tuple(model.input_shape))
    for li, layer in enumerate(model._layers):
        ishape = (B,) + tuple(layer.input_shape)
        oshape = (B,) + tuple(layer.output_shape)
        ci = core_index[li]
        w, g, u = {}, {}, {}
        for name, shape, *_ in layer.param_specs():
            p = info[pi]
            sl = slice(p["offset"], p["offset"] + p["size"])
            w[name] = weights[pi]
            g[name] = flat_grads[sl].reshape(tuple(shape)).copy()
            u[name] = flat_updates[sl].reshape(tuple(shape)).copy()
            pi += 1
        if ci is None:
            # A shape layer: its output feeds the next core layer (dL/d its input), or is the
            # model output (the gradient at the output, as output_grad).
            nxt = next((core_index[j] for j in range(li + 1, len(model._layers)) if core_index[j] is not None), None)
            delta = (core_layers[nxt]["dinput"] if nxt is not None else rec["output_grad"]).reshape(oshape)
            inp = prev_a.reshape(ishape)
            a = output if li == len(model._layers) - 1 else inp.reshape(oshape)
            z = None
        else:
            c = core_layers[ci]
            inp = c["input"].reshape(ishape)
            a = output if li == len(model._layers) - 1 else c["a"].reshape(oshape)
            z = None if c["z"] is None else c["z"].reshape(oshape)
            delta = c["delta"].reshape(oshape)
        winners = _winners(layer, inp, a) if isinstance(layer, _layers.MaxPooling2D) else None
        traced.append(LayerTrace(name=layer.name, kind=type(layer).__name__, input=inp.copy(), z=z,
                                 a=a.copy(), delta=delta.copy(), weights=w, grads=g, updates=u,
                                 winners=winners, stateful=tuple(n for n in w if n in layer._stateful)))
        prev_a = a
    return Trace(layers=traced, loss=float(rec["loss"]), output=output,
                 output_grad=rec["output_grad"].reshape(out_shape), targets=np.array(targets, copy=True),
                 learning_rate=float(rec["learning_rate"]))
