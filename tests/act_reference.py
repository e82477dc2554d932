"""numpy oracles for every activation in the core's table (chainrule._core.ACTIVATIONS), in
float64: forward y = act(z) and the vector-Jacobian product dL/dz from dL/dy. Written from
the textbook definitions, independent of the C++ formulas (which go through the output y).

The tests that use this iterate over the exported table, so an activation added in C++ is
tested everywhere at once, and fails loudly here until its oracle is written."""

import numpy as np

from chainrule import _core

NAMES = tuple(_core.ACTIVATIONS)
DEFAULT_ALPHA = dict(_core.ACTIVATION_ALPHA)
# Activations with a kink at z = 0: finite differences need inputs away from it.
KINKED = {"relu", "leaky_relu"}


def _softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


# name -> (forward(z, alpha), vjp(z, g, alpha)); softmax acts along the last axis.
_ORACLES = {
    "linear": (lambda z, a: z, lambda z, g, a: g),
    "sigmoid": (lambda z, a: _sigmoid(z), lambda z, g, a: g * _sigmoid(z) * (1 - _sigmoid(z))),
    "tanh": (lambda z, a: np.tanh(z), lambda z, g, a: g / np.cosh(z) ** 2),
    "relu": (lambda z, a: np.maximum(z, 0.0), lambda z, g, a: np.where(z > 0, g, 0.0)),
    "leaky_relu": (lambda z, a: np.where(z > 0, z, a * z), lambda z, g, a: np.where(z > 0, g, a * g)),
    "softmax": (lambda z, a: _softmax(z),
                lambda z, g, a: _softmax(z) * (g - (g * _softmax(z)).sum(axis=-1, keepdims=True))),
}


def _oracle(name):
    if name not in _ORACLES:
        raise AssertionError(f"activation {name!r} is in _core.ACTIVATIONS but has no numpy oracle "
                             "in tests/act_reference.py: write one")
    return _ORACLES[name]


def forward(name, z, alpha=None):
    return _oracle(name)[0](np.asarray(z, np.float64), DEFAULT_ALPHA.get(name, 0.0) if alpha is None else alpha)


def vjp(name, z, g, alpha=None):
    """dL/dz for dL/dy = g at pre-activation z."""
    a = DEFAULT_ALPHA.get(name, 0.0) if alpha is None else alpha
    return _oracle(name)[1](np.asarray(z, np.float64), np.asarray(g, np.float64), a)


def specs():
    """(name, alpha) of every activation in the table at its default, plus a non-default
    alpha for each that takes one."""
    out = [(n, DEFAULT_ALPHA.get(n, 0.0)) for n in NAMES]
    out += [(n, 0.3) for n in DEFAULT_ALPHA]
    return out


def spec_id(spec):
    name, alpha = spec
    return f"{name}:{alpha:g}" if name in DEFAULT_ALPHA else name


def make(spec):
    """The chainrule activation argument for a (name, alpha) spec."""
    import chainrule as cr
    name, alpha = spec
    return cr.activations.Activation(name, alpha) if name in DEFAULT_ALPHA else name
