"""Sequential models: build, compile, fit, evaluate, predict, save and load.

This module handles configuration and data only. Each epoch of ``fit`` is a single call into
the C++ core (``train_epoch``), which shuffles, batches, runs forward, loss, backward and the
optimizer step with the GIL released; Python runs again only between epochs.
"""

from __future__ import annotations

import math
import os
import contextlib
import re
import sys
import threading
import time
import warnings

import numpy as np

from . import _checks
from . import _core
from . import callbacks as _callbacks
from . import initializers as _initializers
from . import layers as _layers
from . import losses as _losses
from . import optimizers as _optimizers
from ._progress import ProgressBar

__all__ = ["Sequential", "History", "GradientWarning", "NonFiniteWarning"]


class GradientWarning(UserWarning):
    """A layer's gradients vanished or exploded during fit."""


class NonFiniteWarning(RuntimeWarning):
    """Training left NaN or infinite weights in the model (without TerminateOnNaN, which
    stops at the last finite step instead)."""


# Guards the "which thread is training this model" marks, and build, of every model.
_TRAINING_MARK_LOCK = threading.RLock()


# A layer whose RMS kernel gradient is this many times smaller (larger) than the output
# layer's is reported as vanishing (exploding).
_VANISH_RATIO = 1e-3
_EXPLODE_RATIO = 1e3

_DTYPES = {"float32": (np.float32, _core.Network32), "float64": (np.float64, _core.Network64)}


class History:
    """Per-epoch metrics returned by :meth:`Sequential.fit`.

    ``history.history`` maps each metric name (``loss``, ``accuracy``, ``val_loss``,
    ``val_accuracy``, …) to a list with one value per epoch; ``history["loss"]`` and
    ``history.loss`` are shortcuts.
    """

    def __init__(self):
        self.history: dict[str, list] = {}
        self.epoch: list[int] = []
        self.params: dict = {}
        # layer name -> statistic -> one value per epoch: kernel_grad_norm / bias_grad_norm
        # (mean over the epoch's steps of the L2 norm), kernel_grad_norm_max,
        # kernel_update_ratio (mean ||Δw|| / ||w||), kernel_weight_norm, and for ReLU-family
        # layers dead_fraction (units never positive on any training sample of the epoch).
        self.layer_stats: dict[str, dict[str, list]] = {}

    def _record(self, epoch, logs):
        self.epoch.append(epoch)
        for k, v in logs.items():
            self.history.setdefault(k, []).append(v)

    def _record_layers(self, stats):
        for layer, values in stats.items():
            dst = self.layer_stats.setdefault(layer, {})
            for k, v in values.items():
                dst.setdefault(k, []).append(v)

    def plot(self, path=None, dpi=100):
        """Loss and accuracy (train and validation), the learning rate, and per-layer
        gradient norms on a log scale, as one matplotlib Figure (1000x800 pixels at the
        default dpi). Saves a PNG when ``path`` is given. Needs matplotlib
        (``pip install chainrule[plot]``)."""
        try:
            from matplotlib.figure import Figure
        except ImportError:
            raise ImportError("History.plot needs matplotlib: pip install matplotlib") from None
        if not self.epoch:
            raise ValueError("History.plot: the history is empty (no epoch was recorded)")
        epochs = [e + 1 for e in self.epoch]
        fig = Figure(figsize=(10, 8), dpi=dpi)
        axes = fig.subplots(2, 2)
        for ax, key, title in ((axes[0, 0], "loss", "loss"), (axes[0, 1], "accuracy", "accuracy")):
            for k, style in ((key, "-"), ("val_" + key, "--")):
                if k in self.history:
                    ax.plot(epochs, self.history[k], style, marker="o", label=k)
            ax.set_title(title)
            ax.set_xlabel("epoch")
            if ax.get_legend_handles_labels()[0]:
                ax.legend()
        ax = axes[1, 0]
        if "lr" in self.history:
            ax.plot(epochs, self.history["lr"], marker="o")
        ax.set_title("learning rate")
        ax.set_xlabel("epoch")
        ax = axes[1, 1]
        for layer, st in self.layer_stats.items():
            g = st.get("kernel_grad_norm")
            if g and any(v > 0 for v in g):
                ax.plot(epochs[: len(g)], [max(v, 1e-30) for v in g], marker="o", label=layer)
        ax.set_yscale("log")
        ax.set_title("gradient L2 norm per layer (kernel)")
        ax.set_xlabel("epoch")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
        fig.tight_layout()
        if path is not None:
            fig.savefig(os.fspath(path), format="png")
        return fig

    def __getitem__(self, key):
        return self.history[key]

    def __getattr__(self, key):
        history = self.__dict__.get("history", {})
        if key in history:
            return history[key]
        raise AttributeError(key)

    def __repr__(self):
        return f"History(epochs={len(self.epoch)}, keys={list(self.history)})"


def _epoch_seed(seed, epoch):
    a, b = np.random.SeedSequence([seed, epoch]).generate_state(2, np.uint32)
    return (int(a) << 32) | int(b)


class Sequential:
    """A linear stack of layers.

    >>> model = Sequential([Dense(128, activation="relu"), Dense(10, activation="softmax")])
    >>> model.compile(optimizer=SGD(0.05, momentum=0.9),
    ...               loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    >>> model.fit(x_train, y_train, epochs=10, batch_size=128, validation_split=0.1)

    ``dtype`` is "float32" (fast) or "float64" (for gradient checks). ``seed`` fixes the
    weight initialisation.
    """

    def __init__(self, layers=None, name=None, dtype="float32", seed=None):
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be 'float32' or 'float64'; received {dtype!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0):
            raise ValueError(f"seed must be a non-negative integer or None; received {seed!r}")
        self.name = name or "sequential"
        self.dtype = dtype
        self.seed = None if seed is None else int(seed)
        self._layers: list = []
        self._core = None
        self._input_shape = None
        self.loss = None
        self.optimizer = None
        self.metrics: list = []
        self._compiled = False
        self.history = None
        self.stop_training = False
        self._last_epoch_stats = {}
        self._training_thread = None  # the thread inside fit(), if any
        for layer in layers or []:
            self.add(layer)

    # -- structure ----------------------------------------------------------------------
    @property
    def layers(self):
        return list(self._layers)

    @property
    def built(self):
        return self._core is not None

    @property
    def input_shape(self):
        return self._input_shape

    @property
    def output_shape(self):
        return self._layers[-1].output_shape if self.built else None

    def add(self, layer):
        if not isinstance(layer, _layers.Layer):
            raise TypeError(f"Sequential.add expects a chainrule layer; received {layer!r}")
        self._check_not_training("add")
        if self.built:
            raise ValueError("cannot add layers to a model that is already built")
        if any(layer is l for l in self._layers):
            raise ValueError(f"layer {layer!r} is already in this model")
        self._layers.append(layer)

    def build(self, input_shape=None):
        """Create the weights for samples of ``input_shape`` (per sample, without the batch
        dimension; a leading None is ignored). Without it, the first layer's
        ``input_shape=`` is used."""
        with _TRAINING_MARK_LOCK:  # two threads predicting on an unbuilt model build it once
            if not self.built:
                self._build(input_shape)

    def _build(self, input_shape):
        if not self._layers:
            raise ValueError("the model has no layers: add layers before building")
        if input_shape is None:
            input_shape = self._layers[0]._declared_input_shape
            if input_shape is None:
                raise ValueError("the input shape is unknown: pass input_shape= to the first layer, "
                                 "call build(input_shape), or call fit/predict with data")
        if isinstance(input_shape, (tuple, list)) and input_shape and input_shape[0] is None:
            input_shape = input_shape[1:]
        input_shape = _layers.shape_tuple("Sequential.build", "input_shape", input_shape)
        self._assign_names()
        shape = input_shape
        for layer in self._layers:
            shape = layer.build(shape)
        _layers.check_size(f"model {self.name!r}: the parameter count",
                           (sum(layer.count_params() for layer in self._layers),))
        specs = [layer.core_spec() for layer in self._layers]
        specs = [s for s in specs if s is not None]
        if not specs:
            raise ValueError(f"model {self.name!r} has only shape layers ({', '.join(type(l).__name__ for l in self._layers)}): "
                             "add a layer that computes something (Dense, Conv2D, pooling, Dropout)")
        core = _DTYPES[self.dtype][1](specs)
        expected = [(name, tuple(shape)) for layer in self._layers for name, shape, *_ in layer.param_specs()]
        got = [(p["name"], tuple(p["shape"])) for p in core.params_info()]
        if expected != got:  # a layer's param_specs and its C++ twin disagree: a bug, not user error
            raise RuntimeError(f"internal error: parameter layout mismatch {expected} != {got}")
        self._core = core
        self._input_shape = tuple(int(d) for d in input_shape)
        self._init_params()
        if self._compiled:
            self._core.compile(_losses.code(self.loss), self.optimizer._core_config())

    def _assign_names(self):
        used = set()
        for layer in self._layers:
            if layer.name is not None:
                if layer.name in used:
                    raise ValueError(f"layer names must be unique; {layer.name!r} is used twice")
                used.add(layer.name)
        counts = {}
        for layer in self._layers:
            if layer.name is None:
                # Keras's snake case: Dense -> dense, Conv2D -> conv2d, MaxPooling2D -> max_pooling2d
                base = re.sub(r"(?<=[a-z])([A-Z])", r"_\1", type(layer).__name__).lower()
                while True:
                    k = counts.get(base, 0)
                    counts[base] = k + 1
                    cand = base if k == 0 else f"{base}_{k}"
                    if cand not in used:
                        break
                layer.name = cand
                used.add(cand)

    def _init_params(self):
        """Initial weights (seeded) and weight penalties, parameter by parameter."""
        rng = np.random.default_rng(self.seed)
        np_dtype = self._np_dtype()
        i = 0
        for layer in self._layers:
            regs = layer.regularizers()
            for name, shape, init, fan_in, fan_out in layer.param_specs():
                w = _initializers.get(init)(tuple(shape), fan_in, fan_out, rng)
                self._core.set_param(i, np.ascontiguousarray(w, dtype=np_dtype))
                if name in regs:
                    self._core.set_regularization(i, regs[name].l1, regs[name].l2)
                i += 1

    def _ensure_built(self, x_arr):
        if not self.built:
            if x_arr.ndim < 2:
                raise ValueError(f"x must have shape (n, features...); received shape {x_arr.shape}")
            self.build(x_arr.shape[1:])

    def count_params(self):
        if not self.built:
            raise ValueError("the model is not built yet: call build(input_shape) or fit first")
        return int(self._core.num_params)

    # -- compile ------------------------------------------------------------------------
    def compile(self, optimizer="sgd", loss=None, metrics=None):
        """Choose the optimizer (an Optimizer or 'sgd'), the loss (a name such as
        'sparse_categorical_crossentropy', 'categorical_crossentropy', 'binary_crossentropy',
        'mse') and metrics (['accuracy'] or none)."""
        self._check_not_training("compile")
        if loss is None:
            raise ValueError("compile: loss is required, e.g. loss='sparse_categorical_crossentropy'")
        loss_name = _losses.get(loss)
        opt = _optimizers.get(optimizer)
        metrics = [] if metrics is None else list(metrics) if isinstance(metrics, (list, tuple)) else None
        if metrics is None:
            raise TypeError(f"compile: metrics must be a list such as ['accuracy']; received {metrics!r}")
        for m in metrics:
            if m not in ("accuracy", "acc"):
                raise ValueError(f"compile: unknown metric {m!r}; supported: ['accuracy']")
        self.loss = loss_name
        self.optimizer = opt
        self.metrics = ["accuracy"] if metrics else []
        self._compiled = True
        if self.built:
            self._core.compile(_losses.code(loss_name), opt._core_config())

    def _check_not_training(self, what):
        """Changing a model that another thread is training raises; the training thread itself
        (callbacks) may change it between epochs."""
        t = self._training_thread
        if t is not None and t != threading.get_ident():
            raise RuntimeError(f"{what}: model is training (fit is running in another thread); "
                               "wait for fit to return")

    @contextlib.contextmanager
    def _training(self):
        """Marks this thread as the one training the model for the duration of fit."""
        me = threading.get_ident()
        with _TRAINING_MARK_LOCK:
            self._check_not_training("fit")
            outer = self._training_thread
            self._training_thread = me
        try:
            yield
        finally:
            with _TRAINING_MARK_LOCK:
                self._training_thread = outer

    def _require_compiled(self, what):
        if not self._compiled:
            raise ValueError(f"{what}: the model must be compiled first: call "
                             "model.compile(optimizer=..., loss=...)")

    # -- data ----------------------------------------------------------------------------
    def _np_dtype(self):
        return _DTYPES[self.dtype][0]

    def _prepare(self, x, y, sample_weight=None, xname="x", yname="y"):
        x_arr = _checks.as_array(xname, x)
        self._ensure_built(x_arr)
        X = _checks.prepare_x(xname, x_arr, self._input_shape, self._np_dtype())
        out_units = int(math.prod(self.output_shape))
        Y = _checks.prepare_y(yname, y, X.shape[0], self.loss, out_units, self._np_dtype())
        SW = _checks.prepare_sample_weight(sample_weight, X.shape[0], self._np_dtype())
        return X, Y, SW

    def _logs(self, stats, prefix=""):
        logs = {prefix + "loss": float(stats["loss"])}
        if self.metrics:
            logs[prefix + "accuracy"] = float(stats["accuracy"])
        return logs

    # -- training ------------------------------------------------------------------------
    def fit(self, x, y, epochs=1, batch_size=32, verbose=1, callbacks=None, validation_split=0.0,
            validation_data=None, shuffle=True, seed=None, sample_weight=None, class_weight=None,
            gradient_warnings=True, initial_epoch=0):
        """Train for ``epochs`` passes over (x, y) with mini-batches of ``batch_size`` (the
        last one may be smaller), in a fresh seeded random order each epoch when ``shuffle``.

        ``validation_split`` holds out the last fraction of the samples (before shuffling);
        ``validation_data=(x_val, y_val)`` gives a separate set. ``class_weight`` ({class:
        weight}) and ``sample_weight`` (one per sample) weight each sample's loss.
        ``verbose``: 0 silent, 1 a progress bar per epoch, 2 one line per epoch.
        The reported training accuracy is the running accuracy over the epoch's batches, as in
        Keras; ``lr`` is the learning rate of the epoch's last step. Per-layer gradient
        statistics go to ``History.layer_stats``; with ``gradient_warnings`` a
        :class:`GradientWarning` names any layer whose gradients vanish or explode, and a
        :class:`NonFiniteWarning` any layer left with NaN or infinite weights.

        ``initial_epoch`` (Keras's): the epoch to start at, for resuming; ``epochs`` is the
        index of the last epoch, not a count. Each epoch's shuffle order and dropout masks
        depend only on (``seed``, epoch index), so with the same seed and thread count a run
        resumed from a saved model equals an uninterrupted one bit for bit.
        Returns a :class:`History`.
        """
        self._require_compiled("fit")
        with self._training():
            return self._fit(x, y, epochs, batch_size, verbose, callbacks, validation_split,
                             validation_data, shuffle, seed, sample_weight, class_weight,
                             gradient_warnings, initial_epoch)

    def _fit(self, x, y, epochs, batch_size, verbose, callbacks, validation_split, validation_data,
             shuffle, seed, sample_weight, class_weight, gradient_warnings, initial_epoch):
        epochs = _checks.positive_int("epochs", epochs)
        if isinstance(initial_epoch, bool) or not isinstance(initial_epoch, (int, np.integer)) or initial_epoch < 0:
            raise ValueError(f"initial_epoch must be a non-negative integer; received {initial_epoch!r}")
        initial_epoch = int(initial_epoch)
        batch_size = _checks.positive_int("batch_size", batch_size)
        if verbose not in (0, 1, 2):
            raise ValueError(f"verbose must be 0, 1 or 2; received {verbose!r}")
        split = _checks.fraction("validation_split", validation_split)
        if not isinstance(shuffle, bool):
            raise TypeError(f"shuffle must be True or False; received {shuffle!r}")
        if seed is None:
            seed = int(np.random.SeedSequence().entropy % (1 << 63))
        elif isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer or None; received {seed!r}")
        callbacks = [] if callbacks is None else list(callbacks)
        for cb in callbacks:
            if not isinstance(cb, _callbacks.Callback):
                raise TypeError(f"callbacks must be chainrule.callbacks.Callback instances; received {cb!r}")
        X, Y, SW = self._prepare(x, y, sample_weight)
        if class_weight is not None:
            SW = self._apply_class_weight(class_weight, Y, SW)
        val = None
        if validation_data is not None:
            if split:
                raise ValueError("pass either validation_split or validation_data, not both")
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) not in (2, 3):
                raise ValueError("validation_data must be a tuple (x_val, y_val) or (x_val, y_val, "
                                 f"sample_weight_val); received {type(validation_data).__name__}")
            val = self._prepare(*validation_data, xname="validation_data x", yname="validation_data y")
        elif split:
            n = X.shape[0]
            split_at = int(n * (1.0 - split))
            if split_at < 1 or split_at >= n:
                raise ValueError(f"validation_split={validation_split!r} leaves {split_at} training and "
                                 f"{n - split_at} validation samples out of {n}; both must be >= 1")
            val = (X[split_at:], Y[split_at:], None if SW is None else SW[split_at:])
            X, Y = X[:split_at], Y[:split_at]
            SW = None if SW is None else SW[:split_at]

        history = History()
        steps = -(-X.shape[0] // batch_size)
        history.params = {"epochs": epochs, "batch_size": batch_size, "samples": X.shape[0], "steps": steps}
        self.history = history
        self.stop_training = False
        warned = set()
        for cb in callbacks:
            cb.set_model(self)
        try:
            for cb in callbacks:
                cb.on_train_begin({})
            for epoch in range(initial_epoch, epochs):
                for cb in callbacks:
                    cb.on_epoch_begin(epoch, {})
                # dropout masks follow (seed, epoch), as the shuffle order does
                self._core.seed_layers(_epoch_seed(seed, (1 << 31) + epoch))
                bar = None
                if verbose == 1:
                    print(f"Epoch {epoch + 1}/{epochs}", flush=True)
                    bar = ProgressBar(steps)
                t0 = time.perf_counter()
                stats = self._core.train_epoch(X, Y, SW, batch_size, shuffle, _epoch_seed(seed, epoch),
                                               bar.update if bar else None, bar.every if bar else 0)
                self._last_epoch_stats = stats
                if "nonfinite" not in warned:
                    self._warn_nonfinite(stats, f"epoch {epoch + 1}", warned)
                logs = self._logs(stats)
                if val is not None:
                    logs.update(self._logs(self._core.evaluate(val[0], val[1], val[2], max(batch_size, 256)),
                                           "val_"))
                logs["lr"] = float(stats["learning_rate"])
                layer_stats = self._layer_stats()
                history._record(epoch, logs)
                history._record_layers(layer_stats)
                if gradient_warnings:
                    self._warn_gradients(layer_stats, epoch, warned)
                if bar is not None:
                    bar.finish(logs)
                elif verbose == 2:
                    dt = time.perf_counter() - t0
                    items = " - ".join(f"{k}: {v:.4g}" if k == "lr" else f"{k}: {v:.4f}" for k, v in logs.items())
                    print(f"Epoch {epoch + 1}/{epochs} - {dt:.2f}s - {items}", file=sys.stdout, flush=True)
                for cb in callbacks:
                    cb.on_epoch_end(epoch, logs)
                if self.stop_training:
                    break
        finally:
            for cb in callbacks:
                cb.on_train_end({})
        return history

    def _apply_class_weight(self, class_weight, Y, SW):
        if not isinstance(class_weight, dict):
            raise TypeError(f"class_weight must be a dict {{class: weight}}; received {class_weight!r}")
        if self.loss == "sparse_categorical_crossentropy":
            labels = Y[:, 0].astype(np.int64)
        elif Y.shape[1] == 1:
            labels = (Y[:, 0] > 0.5).astype(np.int64)
        else:
            labels = np.argmax(Y, axis=1)
        n_classes = max(int(math.prod(self.output_shape)), 2)
        table = np.ones(n_classes, dtype=np.float64)
        for k, w in class_weight.items():
            if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= k < n_classes:
                raise ValueError(f"class_weight: keys must be class indices in [0, {n_classes}); received {k!r}")
            w = _checks.real_number(f"class_weight[{k}]", w)
            if not (math.isfinite(w) and w >= 0):
                raise ValueError(f"class_weight[{k}] must be a finite number >= 0; received {w!r}")
            table[k] = w
        weights = table[labels]
        if SW is not None:
            weights = weights * SW
        return _checks.as_finite("class_weight x sample_weight", weights, self._np_dtype())

    def _warn_nonfinite(self, stats, when, warned=None):
        """A NonFiniteWarning when the core reports NaN/inf weights after a call (noted in
        ``warned``: one per fit)."""
        k = stats.get("nonfinite_param", -1)
        if k < 0:
            return
        if warned is not None:
            warned.add("nonfinite")
        p = self._core.params_info()[k]
        layer = [l for l in self._layers if l.core_spec() is not None][p["layer"]]
        warnings.warn(f"after {when}, the {p['name']} of layer {layer.name!r} holds NaN or infinite "
                      "values: training diverged. Lower the learning rate, clip gradients "
                      "(clipnorm=...), scale the inputs, or add callbacks.TerminateOnNaN() to stop "
                      "at the last finite step.", NonFiniteWarning, stacklevel=4)

    def _layer_stats(self):
        """This epoch's gradient monitor, by layer name."""
        health = self._core.param_health()
        dead = self._core.dead_fraction()
        out = {}
        i = 0
        core_index = 0
        for layer in self._layers:
            st = {}
            for pname, shape, *_ in layer.param_specs():
                h = health[i]
                st[f"{pname}_grad_norm"] = h["grad_norm"]
                if pname == "kernel":
                    st["kernel_grad_norm_max"] = h["grad_norm_max"]
                    st["kernel_update_ratio"] = h["update_ratio"]
                    st["kernel_weight_norm"] = h["weight_norm"]
                    st["kernel_grad_rms"] = h["grad_norm"] / math.sqrt(math.prod(shape))
                i += 1
            if layer.core_spec() is not None:
                if dead[core_index] >= 0:
                    st["dead_fraction"] = dead[core_index]
                core_index += 1
            if st:
                out[layer.name] = st
        return out

    def _warn_gradients(self, layer_stats, epoch, warned):
        """One GradientWarning per kind (vanishing, exploding) and fit, naming the layers."""
        rms = [(name, st["kernel_grad_rms"], st["kernel_grad_norm"]) for name, st in layer_stats.items()
               if "kernel_grad_rms" in st]
        if not rms:
            return
        out_name, out_rms, _ = rms[-1]
        found = {"vanishing": [], "exploding": []}
        for name, r, norm in rms:
            if not math.isfinite(norm):
                found["exploding"].append(f"{name!r} (gradient norm {norm})")
            elif name != out_name and out_rms > 0 and r < _VANISH_RATIO * out_rms:
                found["vanishing"].append(f"{name!r} ({out_rms / max(r, 1e-300):.1e}x smaller than the output layer's)")
            elif name != out_name and out_rms > 0 and r > _EXPLODE_RATIO * out_rms:
                found["exploding"].append(f"{name!r} ({r / out_rms:.1e}x larger than the output layer's)")
        remedies = {
            "vanishing": "use ReLU-family activations with He initialisation, fewer layers, or normalised inputs",
            "exploding": "clip gradients (clipnorm=... on the optimizer), lower the learning rate, or use "
                         "Glorot/He initialisation",
        }
        for kind, layers in found.items():
            if layers and kind not in warned:
                warned.add(kind)
                warnings.warn(
                    f"{kind} gradients in epoch {epoch + 1}: RMS kernel gradient of layer(s) "
                    f"{', '.join(layers)}; output layer {out_name!r}: {out_rms:.2e}; "
                    f"{remedies[kind]}. Per-layer norms are in History.layer_stats.",
                    GradientWarning, stacklevel=3)

    def train_on_batch(self, x, y, sample_weight=None):
        """One optimizer step on exactly this batch; returns the loss (and accuracy if
        requested in compile) measured before the step."""
        self._require_compiled("train_on_batch")
        self._check_not_training("train_on_batch")
        X, Y, SW = self._prepare(x, y, sample_weight)
        stats = self._core.train_batch(X, Y, SW)
        self._warn_nonfinite(stats, "train_on_batch")
        return self._scalar_or_list(stats)

    def compute_gradients(self, x, y, sample_weight=None):
        """(loss, gradients) of the batch-mean loss on (x, y), gradients in the order and
        shapes of :meth:`get_weights`. The weights are not changed."""
        self._require_compiled("compute_gradients")
        X, Y, SW = self._prepare(x, y, sample_weight)
        stats = self._core.compute_gradients(X, Y, SW)
        grads = [self._core.get_param(i, True) for i in range(len(self._core.params_info()))]
        return float(stats["loss"]), grads

    def _scalar_or_list(self, stats):
        if self.metrics:
            return [float(stats["loss"]), float(stats["accuracy"])]
        return float(stats["loss"])

    def evaluate(self, x, y, batch_size=256, verbose=0, sample_weight=None, return_dict=False):
        """Loss (and accuracy if requested in compile) over (x, y)."""
        self._require_compiled("evaluate")
        batch_size = _checks.positive_int("batch_size", batch_size)
        X, Y, SW = self._prepare(x, y, sample_weight)
        stats = self._core.evaluate(X, Y, SW, batch_size)
        logs = self._logs(stats)
        if verbose:
            print(" - ".join(f"{k}: {v:.4f}" for k, v in logs.items()), flush=True)
        return logs if return_dict else self._scalar_or_list(stats)

    def predict(self, x, batch_size=256):
        """The model's outputs for x (with the final activation, e.g. softmax probabilities),
        as a numpy array of shape (n,) + output_shape."""
        batch_size = _checks.positive_int("batch_size", batch_size)
        x_arr = _checks.as_array("x", x)
        self._ensure_built(x_arr)
        X = _checks.prepare_x("x", x_arr, self._input_shape, self._np_dtype())
        out = self._core.predict(X, batch_size)
        return out.reshape((X.shape[0],) + tuple(self.output_shape))

    # -- weights -------------------------------------------------------------------------
    def get_weights(self):
        """All parameters as numpy arrays (copies), layer by layer: Dense gives
        [kernel (in, units), bias (units,)]."""
        if not self.built:
            return []
        return [self._core.get_param(i) for i in range(len(self._core.params_info()))]

    def set_weights(self, weights):
        if not self.built:
            raise ValueError("the model is not built yet: call build(input_shape) first")
        self._check_not_training("set_weights")
        info = self._core.params_info()
        weights = list(weights)
        if len(weights) != len(info):
            raise ValueError(f"set_weights expects a list of {len(info)} arrays; received {len(weights)}")
        converted = []
        for i, (w, p) in enumerate(zip(weights, info)):
            arr = _checks.as_array(f"weights[{i}]", w)
            if tuple(arr.shape) != tuple(p["shape"]):
                raise ValueError(f"weights[{i}] ({p['name']} of layer {p['layer']}) must have shape "
                                 f"{tuple(p['shape'])}; received shape {arr.shape}")
            converted.append(_checks.as_finite(f"weights[{i}]", arr, self._np_dtype()))
        for i, arr in enumerate(converted):
            self._core.set_param(i, arr)

    # -- description ---------------------------------------------------------------------
    def summary(self, print_fn=print):
        if not self.built:
            raise ValueError("the model is not built yet: call build(input_shape) or fit first")
        rows = [(f"{l.name} ({type(l).__name__})", str((None,) + tuple(l.output_shape)), str(l.count_params()))
                for l in self._layers]
        w0 = max(len("Layer (type)"), *(len(r[0]) for r in rows)) + 2
        w1 = max(len("Output Shape"), *(len(r[1]) for r in rows)) + 2
        w2 = max(len("Param #"), *(len(r[2]) for r in rows))
        line = "-" * (w0 + w1 + w2)
        out = [f'Model: "{self.name}"', line,
               "Layer (type)".ljust(w0) + "Output Shape".ljust(w1) + "Param #".rjust(w2), "=" * len(line)]
        out += [r[0].ljust(w0) + r[1].ljust(w1) + r[2].rjust(w2) for r in rows]
        out += ["=" * len(line), f"Total params: {self.count_params():,}",
                f"Input shape: {(None,) + tuple(self._input_shape)}  dtype: {self.dtype}", line]
        print_fn("\n".join(out))

    def get_config(self):
        return {"name": self.name, "dtype": self.dtype, "seed": self.seed,
                "input_shape": None if self._input_shape is None else list(self._input_shape),
                "layers": [{"class_name": type(l).__name__, "config": l.get_config()} for l in self._layers]}

    @classmethod
    def from_config(cls, config):
        if not isinstance(config, dict) or "layers" not in config:
            raise ValueError(f"Sequential.from_config expects a dict with 'layers'; received {config!r}")
        model = cls([_layers.get(c) for c in config["layers"]], name=config.get("name"),
                    dtype=config.get("dtype", "float32"), seed=config.get("seed"))
        if config.get("input_shape") is not None:
            model.build(tuple(config["input_shape"]))
        return model

    # -- persistence ---------------------------------------------------------------------
    def save(self, path):
        """Write the model (architecture, weights, compile settings, optimizer state) to
        ``path``; see :func:`chainrule.saving.save_model` for the format."""
        from .saving import save_model
        save_model(self, path)
