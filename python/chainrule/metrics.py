"""Metrics by name or object (Keras's names), and custom metrics as Python callables.

The built-in metrics are computed in the C++ training and evaluation loops (the core owns the
table: csrc/metrics/metrics.h, exported as ``_core.METRICS``), on the outputs the loss sees:
the probabilities when a softmax/sigmoid is fused into the loss or the loss takes logits
(``from_logits=True``; so a binary accuracy's threshold applies to the probability, not to
the logit). They are means over the samples, not weighted by ``sample_weight`` (Keras's
``metrics=``). In ``fit``'s logs and :class:`~chainrule.History` a metric given as a string is
named by that string (``'acc'`` logs ``acc``, ``'mae'`` logs ``mae``), a metric object by its
``name``, a function by its ``__name__``; validation values get the ``val_`` prefix.

``'accuracy'`` (or ``'acc'``) is chosen by the loss, as in Keras: sparse categorical accuracy
for ``sparse_categorical_crossentropy``, categorical accuracy for
``categorical_crossentropy``, binary accuracy for ``binary_crossentropy``, and for the other
losses binary accuracy with one output, categorical accuracy with several.

A custom metric is a callable ``fn(y_true, y_pred)`` returning the per-sample values, shape
``(batch,)`` (or one number, the batch's mean); the reported value is their mean over the
samples. It receives float64 arrays: ``y_pred`` of shape ``(batch, outputs)`` as for the
built-in metrics, ``y_true`` the targets as the loss takes them (``(batch, 1)`` class indices
for ``sparse_categorical_crossentropy``, ``(batch, outputs)`` otherwise). It is the slower
path: the C++ loop calls it once per batch with the GIL taken. It must not call the model.
"""

from __future__ import annotations

import inspect
import numbers

import numpy as np

from . import _core

__all__ = ["Metric", "BinaryAccuracy", "CategoricalAccuracy", "SparseCategoricalAccuracy",
           "TopKCategoricalAccuracy", "SparseTopKCategoricalAccuracy", "MeanAbsoluteError",
           "MeanSquaredError", "get", "NAMES"]

# name -> (code, whether its targets are class indices): the core's table.
_TABLE = {name: (int(code), bool(sparse)) for name, (code, sparse) in dict(_core.METRICS).items()}
NAMES = tuple(_TABLE)
_ALIASES = {"mae": "mean_absolute_error", "mse": "mean_squared_error"}
_ACCURACY = ("accuracy", "acc")


class Metric:
    """A built-in metric (the subclasses below). ``name`` is its key in the logs."""

    _core_name = ""

    def __init__(self, name=None):
        if name is None:
            name = self._core_name
        if not isinstance(name, str) or not name:
            raise TypeError(f"{type(self).__name__}: name must be a non-empty string; received {name!r}")
        self.name = name

    def _param(self):
        return 0.0

    def get_config(self):
        return {"name": self.name}

    def __eq__(self, other):
        return type(other) is type(self) and other.get_config() == self.get_config()

    def __hash__(self):
        return hash((type(self).__name__, tuple(sorted(self.get_config().items()))))

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


class BinaryAccuracy(Metric):
    """Mean over outputs of ``y_true == (y_pred > threshold)``."""

    _core_name = "binary_accuracy"

    def __init__(self, name="binary_accuracy", threshold=0.5):
        super().__init__(name)
        if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or not np.isfinite(float(threshold)):
            raise ValueError(f"BinaryAccuracy: threshold must be a finite number; received {threshold!r}")
        self.threshold = float(threshold)

    def _param(self):
        return self.threshold

    def get_config(self):
        return {"name": self.name, "threshold": self.threshold}


class CategoricalAccuracy(Metric):
    """``argmax(y_pred) == argmax(y_true)`` (one-hot targets)."""
    _core_name = "categorical_accuracy"

    def __init__(self, name="categorical_accuracy"):
        super().__init__(name)


class SparseCategoricalAccuracy(Metric):
    """``argmax(y_pred) == y_true`` (integer class labels)."""
    _core_name = "sparse_categorical_accuracy"

    def __init__(self, name="sparse_categorical_accuracy"):
        super().__init__(name)


class _TopK(Metric):
    def __init__(self, k, name):
        super().__init__(name)
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 1 <= k < 2**62:
            raise ValueError(f"{type(self).__name__}: k must be a positive integer; received {k!r}")
        self.k = int(k)

    def _param(self):
        return float(self.k)

    def get_config(self):
        return {"name": self.name, "k": self.k}


class TopKCategoricalAccuracy(_TopK):
    """Whether the target class (argmax of the one-hot target) is among the ``k`` largest
    outputs; ties at the k-th place count as in (TensorFlow's ``in_top_k``)."""
    _core_name = "top_k_categorical_accuracy"

    def __init__(self, k=5, name="top_k_categorical_accuracy"):
        super().__init__(k, name)


class SparseTopKCategoricalAccuracy(_TopK):
    """:class:`TopKCategoricalAccuracy` for integer class labels."""
    _core_name = "sparse_top_k_categorical_accuracy"

    def __init__(self, k=5, name="sparse_top_k_categorical_accuracy"):
        super().__init__(k, name)


class MeanAbsoluteError(Metric):
    """Mean over outputs of ``|y_pred - y_true|``."""
    _core_name = "mean_absolute_error"

    def __init__(self, name="mean_absolute_error"):
        super().__init__(name)


class MeanSquaredError(Metric):
    """Mean over outputs of ``(y_pred - y_true)**2``."""
    _core_name = "mean_squared_error"

    def __init__(self, name="mean_squared_error"):
        super().__init__(name)


_CLASSES = {cls.__name__: cls for cls in (BinaryAccuracy, CategoricalAccuracy, SparseCategoricalAccuracy,
                                          TopKCategoricalAccuracy, SparseTopKCategoricalAccuracy,
                                          MeanAbsoluteError, MeanSquaredError)}
_BY_CORE_NAME = {cls._core_name: cls for cls in _CLASSES.values()}


class _Entry:
    """One compiled metric: its log ``name`` and either a built-in metric (``metric``, or
    None for 'accuracy', chosen once the loss and output width are known) or ``fn``."""

    def __init__(self, name, identifier, metric=None, fn=None, accuracy=False):
        self.name, self.identifier, self.metric, self.fn, self.accuracy = name, identifier, metric, fn, accuracy

    def builtin(self, loss_name, outputs):
        """The built-in Metric this entry runs (resolving 'accuracy' by the loss's name, None
        for a custom loss, and the output width), or None for a callable."""
        if self.fn is not None:
            return None
        if not self.accuracy:
            return self.metric
        if loss_name == "sparse_categorical_crossentropy":
            return SparseCategoricalAccuracy(self.name)
        if loss_name == "categorical_crossentropy":
            return CategoricalAccuracy(self.name)
        if loss_name == "binary_crossentropy" or outputs == 1:
            return BinaryAccuracy(self.name)
        return CategoricalAccuracy(self.name)


def _from_string(identifier):
    key = identifier.lower()
    if key in _ACCURACY:
        return _Entry(identifier, identifier, accuracy=True)
    key = _ALIASES.get(key, key)
    if key not in _BY_CORE_NAME:
        raise ValueError(f"compile: unknown metric {identifier!r}; supported: "
                         f"{sorted(set(_ACCURACY + NAMES + tuple(_ALIASES)))} or a callable fn(y_true, y_pred)")
    return _Entry(identifier, identifier, metric=_BY_CORE_NAME[key]())


def get(config):
    """A :class:`Metric` from a config {"class_name": ..., "config": {...}} (as in a model file)."""
    if not isinstance(config, dict) or set(config) != {"class_name", "config"}:
        raise ValueError(f"metric config must be a dict with 'class_name' and 'config'; received {config!r}")
    cls = _CLASSES.get(config["class_name"]) if isinstance(config["class_name"], str) else None
    if cls is None or not isinstance(config["config"], dict):
        raise ValueError(f"unknown metric config {config!r}; known classes: {sorted(_CLASSES)}")
    return cls(**config["config"])


def _layout_hint(core_name, loss_name):
    """Why a metric's targets do not fit the loss's, and what to use instead."""
    if _TABLE[core_name][1]:
        return (f"it needs integer class labels, which only sparse_categorical_crossentropy takes; with "
                f"{loss_name} use '{core_name.replace('sparse_', '')}'")
    hint = "it needs one target per output, but sparse_categorical_crossentropy takes integer labels"
    if "sparse_" + core_name in _TABLE:
        hint += f"; use 'sparse_{core_name}'"
    return hint


def resolve(metrics, loss_spec):
    """The compiled metrics for compile's ``metrics`` list and the resolved loss: a list of
    :class:`_Entry`, names unique. Raises TypeError/ValueError naming a bad entry."""
    if metrics is None:
        return []
    if not isinstance(metrics, (list, tuple)):
        raise TypeError(f"compile: metrics must be a list such as ['accuracy']; received {metrics!r}")
    sparse_targets = loss_spec.name == "sparse_categorical_crossentropy"
    entries = []
    for m in metrics:
        if isinstance(m, str):
            entry = _from_string(m)
        elif isinstance(m, Metric):
            if type(m) not in _CLASSES.values():
                raise TypeError(f"compile: metric {m!r} is not a built-in metric; pass a callable "
                                "fn(y_true, y_pred) for a custom one")
            entry = _Entry(m.name, m, metric=m)
        elif isinstance(m, dict):
            metric = get(m)
            entry = _Entry(metric.name, m, metric=metric)
        elif callable(m) and not isinstance(m, type):
            try:
                sig = inspect.signature(m)
            except (TypeError, ValueError):
                sig = None
            if sig is not None:
                try:
                    sig.bind(None, None)
                except TypeError:
                    raise TypeError(f"compile: metric {m!r} must be callable as fn(y_true, y_pred); its "
                                    f"signature is {sig}") from None
            entry = _Entry(getattr(m, "name", None) or getattr(m, "__name__", None) or type(m).__name__, m, fn=m)
        else:
            raise TypeError(f"compile: metrics must be names such as 'accuracy', chainrule.metrics objects or "
                            f"callables fn(y_true, y_pred); received {m!r}")
        if entry.metric is not None and _TABLE[entry.metric._core_name][1] != sparse_targets:
            raise ValueError(f"compile: metric {entry.name!r} does not fit the loss: "
                             f"{_layout_hint(entry.metric._core_name, loss_spec.name or 'a custom loss')}")
        if entry.name in ("loss",) or any(e.name == entry.name for e in entries):
            raise ValueError(f"compile: metric names must be unique and not 'loss'; {entry.name!r} is used twice")
        entries.append(entry)
    return entries


def core_specs(entries, loss_name, outputs):
    """(specs, custom): the core's [(code, param)] for the built-in metrics in entry order, and
    the entries computed in Python. ``loss_name``: the built-in loss's name, None for a custom
    loss."""
    specs, custom = [], []
    for e in entries:
        m = e.builtin(loss_name, outputs)
        if m is None:
            custom.append(e)
        else:
            specs.append((_TABLE[m._core_name][0], m._param()))
    return specs, custom


def log_order(entries):
    """The entries in the order the core reports them: built-in first, then custom."""
    return [e for e in entries if e.fn is None] + [e for e in entries if e.fn is not None]


def external(entries):
    """The callable the core calls for the custom metrics: (pred, y) -> float64 sums."""
    fns = [(e.name, e.fn) for e in entries]

    def bridge(pred, y):
        y_pred = pred.astype(np.float64)
        y_true = y.astype(np.float64)
        batch = y_pred.shape[0]
        sums = np.empty(len(fns), dtype=np.float64)
        for k, (name, fn) in enumerate(fns):
            v = np.asarray(fn(y_true, y_pred), dtype=np.float64)
            if v.ndim == 0:
                sums[k] = float(v) * batch
            elif v.shape in ((batch,), (batch, 1)):
                sums[k] = float(v.sum())
            else:
                raise ValueError(f"metric {name!r} must return per-sample values of shape ({batch},) or one "
                                 f"number; received shape {v.shape}")
        return sums

    return bridge


def config(entry):
    """What a model file stores for a compiled metric: the string given, or a Metric's config."""
    if entry.fn is not None:
        raise ValueError(f"the custom metric {entry.identifier!r} is Python code and cannot be stored in a model "
                         "file; save_weights() stores the weights, and the model can be compiled again after "
                         "loading them")
    if isinstance(entry.identifier, str):
        return entry.identifier
    return {"class_name": type(entry.metric).__name__, "config": entry.metric.get_config()}
