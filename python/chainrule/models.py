"""Sequential models: structure, build, compile, evaluate, predict, weights and config.

The model holds configuration and data handling only. ``fit`` lives in ``fit_loop.py`` (one
C++ call per epoch, with the GIL released), its record in ``history.py``, the gradient
monitor's warnings in ``diagnostics.py``, and the file format in ``saving.py``.
"""

from __future__ import annotations

import contextlib
import math
import re
import sys
import threading
import time
import warnings
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

import numpy as np

from . import _checks
from . import _core
from . import data as _data
from . import fit_loop as _fit_loop
from . import initializers as _initializers
from . import layers as _layers
from . import losses as _losses
from . import metrics as _metrics
from . import optimizers as _optimizers
from ._progress import ProgressBar
from .diagnostics import GradientWarning, NonFiniteWarning, warn_nonfinite as _warn_nonfinite
from .fit_loop import _epoch_seed  # noqa: F401  (re-exported: importable from here as before)
from .history import History

if TYPE_CHECKING:
    from ._typing import ArrayLike, Config, FloatArray, PathLike, ShapeLike
    from .callbacks import Callback
    from .trace import Trace

__all__ = ["Sequential", "History", "GradientWarning", "NonFiniteWarning"]


# Guards the "which thread is training this model" marks, and build, of every model.
_TRAINING_MARK_LOCK = threading.RLock()

_DTYPES = {"float32": (np.float32, _core.Network32), "float64": (np.float64, _core.Network64)}


class Sequential:
    """A linear stack of layers.

    >>> model = Sequential([Dense(128, activation="relu"), Dense(10, activation="softmax")])
    >>> model.compile(optimizer=SGD(0.05, momentum=0.9),
    ...               loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    >>> model.fit(x_train, y_train, epochs=10, batch_size=128, validation_split=0.1)

    ``dtype`` is "float32" (fast) or "float64" (for gradient checks). ``seed`` fixes the
    weight initialisation.
    """

    _core: Any  # the C++ network (_core.Network32/64) once built, else None
    _input_shape: tuple[int, ...] | None
    _last_epoch_stats: dict[str, Any]
    loss: str | None
    optimizer: _optimizers.Optimizer | None
    history: History | None

    def __init__(self, layers: Iterable[_layers.Layer] | None = None, name: str | None = None,
                 dtype: str = "float32", seed: int | None = None) -> None:
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be 'float32' or 'float64'; received {dtype!r}")
        self.seed = _checks.seed(seed)
        self.name = name or "sequential"
        self.dtype = dtype
        self._layers: list = []
        self._input_layer = None  # an InputLayer given as the first entry, if any
        self._core_trainable = None  # the trainable flags the core has, per core layer
        self._core = None
        self._input_shape = None
        self.loss = None           # the loss's name, or the custom loss callable
        self.optimizer = None
        self.metrics: list = []    # as given to compile
        self._loss_spec = None
        self._metric_entries: list = []
        self._core_metrics: list = []  # metric names in the order the core reports them
        self._input_range_checked = False
        self._compiled = False
        self.history = None
        self.stop_training = False
        self._last_epoch_stats = {}
        self._stop_on_nonfinite = False
        self._training_thread = None  # the thread inside fit(), if any
        self._distributed_rank = 0  # this process's rank, once a distributed fit has run
        for layer in layers or []:
            self.add(layer)

    # -- structure ----------------------------------------------------------------------
    @property
    def layers(self) -> list[_layers.Layer]:
        return list(self._layers)

    @property
    def built(self) -> bool:
        return self._core is not None

    @property
    def input_shape(self) -> tuple[int, ...] | None:
        return self._input_shape

    @property
    def output_shape(self) -> tuple[int, ...] | None:
        return self._layers[-1].output_shape if self.built else None

    def add(self, layer: _layers.Layer) -> None:
        """Append a layer. An :class:`~chainrule.layers.InputLayer` (``layers.Input(shape=...)``)
        may come first only: it sets the input shape and is not listed in :attr:`layers`."""
        if not isinstance(layer, _layers.Layer):
            raise TypeError(f"Sequential.add expects a chainrule layer; received {layer!r}")
        self._check_not_training("add")
        if self.built:
            raise ValueError("cannot add layers to a model that is already built")
        if any(layer is l for l in self._layers) or layer is self._input_layer:
            raise ValueError(f"layer {layer!r} is already in this model")
        if isinstance(layer, _layers.InputLayer):
            if self._layers or self._input_layer is not None:
                raise ValueError(f"an Input / InputLayer must be the model's first entry; model {self.name!r} "
                                 f"already has {'an Input' if self._input_layer is not None else 'layers'}")
            self._input_layer = layer
            return
        self._layers.append(layer)

    def build(self, input_shape: ShapeLike | None = None) -> None:
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
            input_shape = self._declared_input_shape()
            if input_shape is None:
                raise ValueError("the input shape is unknown: pass input_shape= to the first layer, "
                                 "call build(input_shape), or call fit/predict with data")
        if isinstance(input_shape, (tuple, list)) and input_shape and input_shape[0] is None:
            input_shape = input_shape[1:]
        input_shape = _layers.shape_tuple("Sequential.build", "input_shape", input_shape)
        if self._input_layer is not None and input_shape != self._input_layer.shape:
            raise ValueError(f"model {self.name!r} declares its input with Input(shape={self._input_layer.shape}); "
                             f"received samples of shape {input_shape}")
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
        expected = [(name, tuple(shape), name in layer._stateful)
                    for layer in self._layers for name, shape, *_ in layer.param_specs()]
        got = [(p["name"], tuple(p["shape"]), p["stateful"]) for p in core.params_info()]
        if expected != got:  # a layer's param_specs and its C++ twin disagree: a bug, not user error
            raise RuntimeError(f"internal error: parameter layout mismatch {expected} != {got}")
        self._core = core
        self._input_shape = tuple(int(d) for d in input_shape)
        self._core_trainable = None
        for layer in self._layers:
            _layers.attach(layer, self)
        self._init_params()
        self._sync_trainable()
        if self._stop_on_nonfinite:
            self._core.set_stop_on_nan(True)
        if self._compiled:
            self._compile_core()

    def _declared_input_shape(self):
        """The input shape the model's Input or first layer's ``input_shape=`` declares, or
        None."""
        if self._input_layer is not None:
            return self._input_layer.shape
        return self._layers[0]._declared_input_shape if self._layers else None

    def _assign_names(self):
        entries = ([self._input_layer] if self._input_layer is not None else []) + self._layers
        used = set()
        for layer in entries:
            if layer.name is not None:
                if layer.name in used:
                    raise ValueError(f"layer names must be unique; {layer.name!r} is used twice")
                used.add(layer.name)
        counts = {}
        for layer in entries:
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

    def _build_if_declared(self) -> bool:
        """Build from the declared input shape (Input or ``input_shape=``) if there is one, as
        Keras has built such a model already. Returns whether the model is built."""
        if not self.built and self._layers and self._declared_input_shape() is not None:
            self.build()
        return self.built

    def _require_built(self) -> None:
        """_build_if_declared, or a ValueError when the input shape is unknown."""
        if not self._build_if_declared():
            raise ValueError("the model is not built yet: call build(input_shape) or fit first")

    def count_params(self) -> int:
        """The number of parameters, trainable or not (Keras's)."""
        self._require_built()
        return int(self._core.num_params)

    def _sync_trainable(self):
        """Hand the layers' ``trainable`` flags to the core (those that changed). Runs when the
        model is built and before each training call and epoch, so a change takes effect
        without a recompile."""
        if not self.built:
            return
        flags = [layer.trainable for layer in self._layers if layer.core_spec() is not None]
        if flags == self._core_trainable:
            return
        for k, on in enumerate(flags):
            if self._core_trainable is None or self._core_trainable[k] != on:
                self._core.set_layer_trainable(k, on)
        self._core_trainable = flags

    def _weight_entries(self):
        """(layer, parameter name) of every weight, in get_weights order."""
        return [(layer, name) for layer in self._layers for name, *_ in layer.param_specs()]

    @property
    def trainable_weights(self):
        """Copies of the weights training updates, in get_weights order (Keras's): every
        weight of a trainable layer except moving statistics."""
        if not self.built:
            return []
        return [self._core.get_param(i) for i, (layer, name) in enumerate(self._weight_entries())
                if layer.weight_trainable(name)]

    @property
    def non_trainable_weights(self):
        """Copies of the weights training does not update through the optimizer: a frozen
        layer's, and BatchNormalization's moving statistics (Keras's)."""
        if not self.built:
            return []
        return [self._core.get_param(i) for i, (layer, name) in enumerate(self._weight_entries())
                if not layer.weight_trainable(name)]

    # -- compile ------------------------------------------------------------------------
    def compile(self, optimizer: str | _optimizers.Optimizer | Config = "sgd",
                loss: str | _losses.Loss | Config | Callable[..., Any] | None = None,
                metrics: Sequence[str | _metrics.Metric | Callable[..., Any]] | None = None) -> None:
        """Choose the optimizer (an Optimizer or 'sgd'), the loss and the metrics.

        ``loss``: a name ('sparse_categorical_crossentropy', 'categorical_crossentropy',
        'binary_crossentropy', 'mse'), a :mod:`chainrule.losses` object — the cross-entropies
        take ``from_logits=True`` for a linear last layer, e.g.
        ``cr.losses.SparseCategoricalCrossentropy(from_logits=True)`` — or a custom callable
        ``fn(y_true, y_pred)`` (the slower path; protocol in :mod:`chainrule.losses`).

        ``metrics``: a list of names ('accuracy', 'mae', 'mse', 'binary_accuracy',
        'categorical_accuracy', 'sparse_categorical_accuracy', 'top_k_categorical_accuracy',
        'sparse_top_k_categorical_accuracy'), :mod:`chainrule.metrics` objects, or callables
        ``fn(y_true, y_pred)`` returning per-sample values; see :mod:`chainrule.metrics`.

        A cross-entropy on probabilities (``from_logits=False``) after a last layer whose
        outputs are not probabilities (a linear, ReLU or tanh Dense or Conv2D) raises
        ValueError: it would train silently badly. ``from_logits=True`` after a softmax or
        sigmoid warns, as Keras does (the probabilities are then taken as logits)."""
        self._check_not_training("compile")
        if loss is None:
            raise ValueError("compile: loss is required, e.g. loss='sparse_categorical_crossentropy'")
        spec = _losses.resolve(loss)
        opt = _optimizers.get(optimizer)
        entries = _metrics.resolve(metrics, spec)
        self._check_output_head(spec)
        self.loss = spec.fn if spec.custom else spec.name
        self._loss_spec = spec
        self.optimizer = opt
        self.metrics = [e.metric if isinstance(e.identifier, dict) else e.identifier for e in entries]
        self._metric_entries = entries
        self._compiled = True
        if self.built:
            self._compile_core()

    def _compile_core(self):
        """The loss, optimizer and metrics into the core (after compile and after build)."""
        spec, opt = self._loss_spec, self.optimizer
        if spec.custom:
            self._core.compile_external(_losses.external(spec.fn, self._np_dtype()), opt._core_config())
        else:
            self._core.compile(_losses.code(spec.name), opt._core_config(), spec.from_logits)
        specs, custom = _metrics.core_specs(self._metric_entries, spec.name, int(math.prod(self.output_shape)))
        self._core.set_metrics(specs, len(custom), _metrics.external(custom) if custom else None)
        self._core_metrics = [e.name for e in _metrics.log_order(self._metric_entries)]

    def _output_activation(self):
        """The activation that produces the model's outputs, looking back over layers that keep
        the range of their input (Flatten, Reshape, Dropout, pooling); None when unknown."""
        keeps_range = ("Flatten", "Reshape", "Dropout", "MaxPooling2D", "AveragePooling2D",
                       "GlobalAveragePooling2D", "GlobalMaxPooling2D", "InputLayer")
        for layer in reversed(self._layers):
            act = getattr(layer, "activation", None)
            if act is not None and hasattr(act, "name"):
                return layer, act.name
            if type(layer).__name__ not in keeps_range:
                return layer, None
        return None, None

    def _check_output_head(self, spec):
        """A cross-entropy on outputs that are not probabilities is a mistake said out loud."""
        if spec.custom or spec.name not in _losses.PROBABILITY_LOSSES:
            return
        layer, act = self._output_activation()
        if act is None:
            return
        probabilities = act in ("softmax", "sigmoid")
        if not spec.from_logits and not probabilities:
            cls = "".join(w.capitalize() for w in spec.name.split("_"))
            head = "sigmoid" if spec.name == "binary_crossentropy" else "softmax"
            raise ValueError(
                f"compile: {spec.name} expects probabilities, but the last layer {layer.name or type(layer).__name__!r} "
                f"has activation {act!r}, whose outputs are not probabilities (the loss would clip them and "
                f"train badly). Either take them as logits: loss=cr.losses.{cls}(from_logits=True) "
                f"(predict then returns logits), or give the last layer activation={head!r}.")
        if spec.from_logits and probabilities:
            warnings.warn(f"{spec.name} received from_logits=True, but the last layer "
                          f"{layer.name or type(layer).__name__!r} has activation {act!r}, so its outputs are "
                          "probabilities, not logits. Was this intended?", UserWarning, stacklevel=3)

    def _loss_label(self):
        """The loss as messages name it."""
        return self.loss if isinstance(self.loss, str) or self.loss is None else "the custom loss"

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

    # -- training state (public hooks, for callbacks) -----------------------------------
    @property
    def learning_rate(self) -> float:
        """The learning rate of the next optimizer step: the optimizer's rate (its schedule's
        value at the current step) times :attr:`lr_scale`. Read-only."""
        self._require_core("learning_rate")
        return float(self._core.current_learning_rate())

    @property
    def lr_scale(self) -> float:
        """A factor on every rate the optimizer or its schedule gives (1.0 after compile;
        saved with the model). ReduceLROnPlateau lowers it; a callback may set it to any
        finite number > 0 between epochs."""
        self._require_core("lr_scale")
        return float(self._core.lr_scale)

    @lr_scale.setter
    def lr_scale(self, value: float) -> None:
        self._require_core("lr_scale")
        self._check_not_training("lr_scale")
        self._core.set_lr_scale(_checks.real_number("lr_scale", value))

    @property
    def stop_on_nonfinite(self) -> bool:
        """When True, every training step is checked: at the first NaN or infinite loss or
        weight the core puts back the weights, optimizer state and step count of the last
        finite step and ends the epoch (``last_epoch_stats["stopped_nan"]`` is then True).
        False by default; TerminateOnNaN sets it for the length of a fit."""
        return self._stop_on_nonfinite

    @stop_on_nonfinite.setter
    def stop_on_nonfinite(self, value: bool) -> None:
        value = _checks.flag("stop_on_nonfinite", value)
        self._check_not_training("stop_on_nonfinite")
        self._stop_on_nonfinite = value
        if self.built:
            self._core.set_stop_on_nan(value)

    @property
    def last_epoch_stats(self) -> dict[str, Any]:
        """What the core reported for the last epoch ``fit`` ran (a new dict; empty before
        any): ``loss`` and each compiled metric by its name (running means over the epoch's
        batches), ``samples``, ``steps``, ``learning_rate`` (of the last step),
        ``stopped_nan`` (a non-finite loss or weight ended the epoch), ``interrupted``
        (Ctrl-C), ``nonfinite_param`` (index of the first parameter holding NaN/inf after the
        epoch, or -1)."""
        return dict(self._last_epoch_stats)

    def _require_core(self, what):
        self._require_compiled(what)
        if not self.built:
            raise ValueError(f"{what}: the model is not built yet: call build(input_shape) or fit first")

    # -- data ----------------------------------------------------------------------------
    def _np_dtype(self):
        return _DTYPES[self.dtype][0]

    def _prepare(self, x, y, sample_weight=None, xname="x", yname="y"):
        x_arr = _checks.as_array(xname, x)
        self._ensure_built(x_arr)
        X = _checks.prepare_x(xname, x_arr, self._input_shape, self._np_dtype())
        out_units = int(math.prod(self.output_shape))
        Y = _checks.prepare_y(yname, y, X.shape[0], self._loss_label(), out_units, self._np_dtype())
        SW = _checks.prepare_sample_weight(sample_weight, X.shape[0], self._np_dtype())
        return X, Y, SW

    def _core_metric_names(self):
        return list(self._core_metrics)

    @property
    def metrics_names(self):
        """``["loss"]`` and the compiled metrics' names: the order of evaluate's list."""
        return ["loss"] + [e.name for e in self._metric_entries]

    def _logs(self, stats, prefix=""):
        """Loss and metrics by Keras's names (compile's order), from a core stats dict."""
        logs = {prefix + "loss": float(stats["loss"])}
        values = dict(zip(self._core_metrics, stats["metrics"]))
        for e in self._metric_entries:
            logs[prefix + e.name] = float(values[e.name])
        return logs

    def _named_stats(self, stats: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in stats.items() if k != "metrics"}
        out.update(dict(zip(self._core_metrics, (float(v) for v in stats["metrics"]))))
        return out

    # -- training ------------------------------------------------------------------------
    def fit(self, x: Any, y: ArrayLike | None = None, epochs: int = 1, batch_size: int | None = None,
            verbose: int = 1, callbacks: Sequence[Callback] | None = None, validation_split: float = 0.0,
            validation_data: Any = None, shuffle: bool = True, seed: int | None = None,
            sample_weight: ArrayLike | None = None, class_weight: dict[int, float] | None = None,
            gradient_warnings: bool = True, initial_epoch: int = 0, steps_per_epoch: int | None = None,
            validation_steps: int | None = None, stop_on_nonfinite: bool = True,
            distributed: bool | str = False) -> History:
        """Train for ``epochs`` passes over (x, y) with mini-batches of ``batch_size`` (32 when
        None; the last one may be smaller), in a fresh seeded random order each epoch when
        ``shuffle``.

        ``x`` may instead be a :class:`chainrule.data.Dataset`, an iterable or a generator
        yielding ``(x, y)`` or ``(x, y, sample_weight)`` batches (``y``, ``batch_size`` and
        ``sample_weight`` are then not given, and ``shuffle`` is the source's business); see
        :mod:`chainrule.data`. ``steps_per_epoch`` (streams only): batches per epoch (Keras's);
        an iterable is read afresh every epoch, an iterator continues where it stopped.
        ``validation_steps``: batches per validation when ``validation_data`` is a stream.

        ``validation_split`` holds out the last fraction of the samples (before shuffling; arrays
        only); ``validation_data=(x_val, y_val)`` (or a stream) gives a separate set.
        ``class_weight`` ({class: weight}) and ``sample_weight`` (one per sample) weight each
        sample's loss. ``verbose``: 0 silent, 1 a progress bar per epoch, 2 one line per epoch.
        The reported loss and metrics are running means over the epoch's batches, as in Keras;
        ``lr`` is the learning rate of the epoch's last step. Per-layer gradient statistics go to
        ``History.layer_stats``; with ``gradient_warnings`` a :class:`GradientWarning` names any
        layer whose gradients vanish or explode or whose units are all dead.

        ``stop_on_nonfinite`` (True by default): at the first step whose loss or new weights
        are NaN or infinite, the step is undone, the weights, optimizer state and step count of
        a finite step at most 32 steps earlier are put back (snapshots every 32 steps cost
        nothing measurable; with the model's :attr:`stop_on_nonfinite` set, or TerminateOnNaN,
        exactly the last finite step's), the epoch is recorded and training stops with a
        :class:`NonFiniteWarning` that says what to change. With False, training goes on through
        NaN (the model's own :attr:`stop_on_nonfinite` and TerminateOnNaN still apply), and a
        NonFiniteWarning names a layer left with non-finite weights.

        The first fit of a model warns (:class:`~chainrule.diagnostics.InputRangeWarning`) when
        the inputs reach |x| > 100, such as raw 0..255 pixels: scale them with
        ``cr.datasets.scale`` or ``cr.datasets.standardize``.

        ``initial_epoch`` (Keras's): the epoch to start at, for resuming; ``epochs`` is the
        index of the last epoch, not a count. Each epoch's shuffle order and dropout masks
        depend only on (``seed``, epoch index), so with the same seed and thread count a run
        resumed from a saved model equals an uninterrupted one bit for bit.

        ``distributed`` (needs ``chainrule[mpi]``; run the script with ``mpirun -n K``): True
        trains data-parallel over the K ranks, every rank passing the same arrays; "local",
        every rank passing its own shard. Arrays only (not streams). See
        :mod:`chainrule.distributed`.

        Returns the :class:`History` (the one among ``callbacks``, if any, as in Keras).
        """
        self._require_compiled("fit")
        with self._training():
            return _fit_loop.fit(self, x, y, epochs, batch_size, verbose, callbacks, validation_split,
                                 validation_data, shuffle, seed, sample_weight, class_weight,
                                 gradient_warnings, initial_epoch, steps_per_epoch, validation_steps,
                                 stop_on_nonfinite, distributed)

    def train_on_batch(self, x: ArrayLike, y: ArrayLike, sample_weight: ArrayLike | None = None,
                       class_weight: dict[int, float] | None = None, return_dict: bool = False) -> Any:
        """One optimizer step on exactly this batch; returns the loss (and the metrics, as a
        list, or a dict with ``return_dict``) measured before the step. A step whose loss or
        weights are not finite is taken (Keras's semantics) unless the model's
        :attr:`stop_on_nonfinite` is set."""
        self._require_compiled("train_on_batch")
        self._check_not_training("train_on_batch")
        X, Y, SW = self._prepare(x, y, sample_weight)
        if class_weight is not None:
            SW = _fit_loop._apply_class_weight(self, class_weight, Y, SW)
        self._sync_trainable()
        stats = self._core.train_batch(X, Y, SW)
        _warn_nonfinite(self, stats, "train_on_batch")
        return self._logs(stats) if return_dict else self._scalar_or_list(stats)

    def test_on_batch(self, x, y, sample_weight=None, return_dict=False):
        """Loss (and metrics) of this batch, without training: one evaluation step, as
        Keras's test_on_batch."""
        self._require_compiled("test_on_batch")
        X, Y, SW = self._prepare(x, y, sample_weight)
        stats = self._core.evaluate(X, Y, SW, X.shape[0])
        return self._logs(stats) if return_dict else self._scalar_or_list(stats)

    def compute_gradients(self, x: ArrayLike, y: ArrayLike,
                          sample_weight: ArrayLike | None = None) -> tuple[float, list[FloatArray]]:
        """(loss, gradients) of the batch-mean loss on (x, y), gradients in the order and
        shapes of :meth:`get_weights` (zero for the weights training does not update: a
        frozen layer's, moving statistics). Nothing of the model changes (BatchNormalization
        normalizes with the batch's statistics, as in training, and its moving statistics are
        left as they were)."""
        self._require_compiled("compute_gradients")
        X, Y, SW = self._prepare(x, y, sample_weight)
        self._sync_trainable()
        stats = self._core.compute_gradients(X, Y, SW)
        grads = [self._core.get_param(i, True) for i in range(len(self._core.params_info()))]
        return float(stats["loss"]), grads

    def trace(self, x: ArrayLike, y: ArrayLike, sample_weight: ArrayLike | None = None) -> Trace:
        """The numbers of the training step ``train_on_batch(x, y, sample_weight)`` would take,
        without taking it: per layer the input, pre-activation ``z``, output ``a``, error term
        ``delta`` (dL/dz; dL/d(output) for layers without an activation), the gradients (batch
        mean, regularization included) and the update the compiled optimizer would add
        (clipping, weight decay and schedule included), plus the loss and ``output_grad``:
        dL/d(last layer's pre-activation) when a final softmax/sigmoid is fused into the loss,
        else dL/d(output). Dropout uses the masks the next step will draw. Nothing of the model
        changes (weights, optimizer state, step count, dropout streams). Returns a
        :class:`chainrule.trace.Trace`."""
        from .tracing import build_trace
        self._require_compiled("trace")
        self._check_not_training("trace")
        X, Y, SW = self._prepare(x, y, sample_weight)
        self._sync_trainable()
        return build_trace(self, X, Y, SW, y)

    def _scalar_or_list(self, stats):
        """Keras's return of evaluate/train_on_batch: the loss alone without metrics, else
        [loss, metric, ...] in compile's order."""
        if not self._metric_entries:
            return float(stats["loss"])
        return list(self._logs(stats).values())

    def evaluate(self, x: Any, y: ArrayLike | None = None, batch_size: int | None = None, verbose: int = 0,
                 sample_weight: ArrayLike | None = None, steps: int | None = None,
                 return_dict: bool = False) -> Any:
        """Loss and metrics over (x, y): the loss alone without metrics, else [loss, metric,
        ...] in compile's order, or a dict by name with ``return_dict``. ``batch_size``: 256
        when None. ``x`` may be a Dataset, iterable or generator of ``(x, y)`` or ``(x, y,
        sample_weight)`` batches (one pass, or ``steps`` batches). ``verbose`` 1 or 2 prints
        the values."""
        self._require_compiled("evaluate")
        verbose = _checks.verbosity("verbose", verbose)
        if _data.is_stream(x):
            _fit_loop._check_stream_arguments("evaluate", y, batch_size, sample_weight)
            steps = None if steps is None else _checks.positive_int("steps", steps)
            stats = _fit_loop.StreamData(self, x, "x", steps, None).evaluate(self)
        else:
            if steps is not None:
                raise ValueError("evaluate: steps applies to a generator, iterable or Dataset")
            if y is None:
                raise TypeError("evaluate: y is required when x is an array")
            batch_size = 256 if batch_size is None else _checks.positive_int("batch_size", batch_size)
            X, Y, SW = self._prepare(x, y, sample_weight)
            stats = self._core.evaluate(X, Y, SW, batch_size)
        logs = self._logs(stats)
        if verbose:
            print(" - ".join(f"{k}: {v:.4f}" for k, v in logs.items()), flush=True)
        return logs if return_dict else self._scalar_or_list(stats)

    def predict(self, x: Any, batch_size: int | None = None, verbose: int | str = 0,
                steps: int | None = None) -> FloatArray:
        """The model's outputs for x (with the final activation, e.g. softmax probabilities;
        logits when the loss takes them, ``from_logits=True``), as a numpy array of shape
        (n,) + output_shape. ``batch_size``: 256 when None. ``x`` may be a Dataset, iterable
        or generator of batches (``x``, ``(x,)`` or ``(x, y, ...)``: the targets are ignored;
        one pass, or ``steps`` batches). ``verbose``: 0 silent (the default here; Keras's
        "auto" prints), 1 or "auto" a progress bar, 2 one line at the end."""
        if type(verbose) is not int or not 0 <= verbose <= 2:  # an int 0-2 needs no check
            verbose = 1 if verbose == "auto" else _checks.verbosity("verbose", verbose)
        t0 = time.perf_counter() if verbose else 0.0
        if type(x) is not np.ndarray and _data.is_stream(x):
            if batch_size is not None:
                raise ValueError("predict: batch_size must not be given when x is a generator, iterable or "
                                 "Dataset: its batches have their own size")
            steps = None if steps is None else _checks.positive_int("steps", steps)
            source = _fit_loop.StreamData(self, x, "x", steps, None, need_y=False)
            total = source.steps()
            bar = ProgressBar(total) if verbose == 1 else None
            done = [0]

            def on_batches(k, rows):
                done[0] = k
                if bar is not None:
                    bar.update(k, total, None, ())

            out = source.predict(self, on_batches)
            n_steps = done[0]
        else:
            if steps is not None:
                raise ValueError("predict: steps applies to a generator, iterable or Dataset")
            batch_size = 256 if batch_size is None else _checks.positive_int("batch_size", batch_size)
            if self._core is None:
                x = _checks.as_array("x", x)
                self._ensure_built(x)
            X = _checks.prepare_x("x", x, self._input_shape, self._np_dtype())
            n = X.shape[0]
            if verbose != 1:
                out = self._core.predict(X, batch_size)
            else:  # in about 20 chunks of whole batches, each one core call, for the bar
                steps_total = -(-n // batch_size)
                per_chunk = max(1, -(-steps_total // 20)) * batch_size
                bar = ProgressBar(steps_total)
                out = np.empty((n, int(math.prod(self.output_shape))), dtype=self._np_dtype())
                for start in range(0, n, per_chunk):
                    out[start:start + per_chunk] = self._core.predict(X[start:start + per_chunk], batch_size)
                    bar.update(min(steps_total, -(-(start + per_chunk) // batch_size)), steps_total, None, ())
            n_steps = -(-n // batch_size)
        if verbose == 1:
            bar.finish({}, n_steps)
        elif verbose == 2:
            print(f"predict: {out.shape[0]} samples - {time.perf_counter() - t0:.2f}s", file=sys.stdout, flush=True)
        shape = self._layers[-1].output_shape
        return out if len(shape) == 1 else out.reshape((out.shape[0],) + tuple(shape))

    def predict_on_batch(self, x: ArrayLike) -> FloatArray:
        """The outputs for this batch, in one forward pass (Keras's predict_on_batch)."""
        if self._core is None:
            x = _checks.as_array("x", x)
            self._ensure_built(x)
        X = _checks.prepare_x("x", x, self._input_shape, self._np_dtype())
        out = self._core.predict(X, X.shape[0])
        shape = self._layers[-1].output_shape
        return out if len(shape) == 1 else out.reshape((out.shape[0],) + tuple(shape))

    def __call__(self, x: Any, training: bool | None = False) -> FloatArray:
        """``model(x)``: the outputs for ``x`` as a numpy array, what :meth:`predict` returns
        (Keras returns a tensor). Inference only: ``training=True`` (dropout active) is not
        available outside fit and raises ValueError."""
        if training is not False and training is not None:
            raise ValueError("model(x, training=True) is not supported: the training forward pass runs "
                             "inside fit / train_on_batch; model(x) is inference (predict)")
        return self.predict(x)

    # -- weights -------------------------------------------------------------------------
    def get_weights(self) -> list[FloatArray]:
        """All parameters as numpy arrays (copies), layer by layer: Dense gives
        [kernel (in, units), bias (units,)], BatchNormalization [gamma, beta, moving_mean,
        moving_variance]. A model whose input shape is declared (Input or ``input_shape=``)
        is built first; one whose input shape is unknown has none yet ([])."""
        self._build_if_declared()
        return self._weights()

    def _weights(self):
        """get_weights without building: [] for a model not built."""
        if not self.built:
            return []
        return [self._core.get_param(i) for i in range(len(self._core.params_info()))]

    def set_weights(self, weights: Sequence[ArrayLike]) -> None:
        self._require_built()
        self._set_params(0, len(self._core.params_info()), weights, "set_weights")

    def _set_params(self, first, count, weights, what):
        """Parameters first .. first+count-1 from the list ``weights``: every array checked
        (count, shapes, finite values) before any is set."""
        self._check_not_training(what)
        info = self._core.params_info()[first:first + count]
        weights = list(weights)
        if len(weights) != len(info):
            raise ValueError(f"{what} expects a list of {len(info)} arrays; received {len(weights)}")
        converted = []
        for i, (w, p) in enumerate(zip(weights, info)):
            arr = _checks.as_array(f"weights[{i}]", w)
            if tuple(arr.shape) != tuple(p["shape"]):
                raise ValueError(f"weights[{i}] ({p['name']} of layer {p['layer']}) must have shape "
                                 f"{tuple(p['shape'])}; received shape {arr.shape}")
            arr = _checks.as_finite(f"weights[{i}]", arr, self._np_dtype())
            if p["name"] == "moving_variance" and arr.size and arr.min() < 0:
                raise ValueError(f"weights[{i}] (moving_variance of layer {p['layer']}) must be >= 0 (a "
                                 f"variance); received {arr.min()!r}")
            converted.append(arr)
        for i, arr in enumerate(converted):
            self._core.set_param(first + i, arr)

    def _layer_params(self, layer):
        """(index of the layer's first parameter, its parameter count) in get_weights order."""
        first = 0
        for l in self._layers:
            if l is layer:
                return first, len(layer.param_specs())
            first += len(l.param_specs())
        raise ValueError(f"layer {layer.name!r} is not in model {self.name!r}")

    def save_weights(self, filepath, overwrite=True):
        """Write the weights (what :meth:`get_weights` returns) to ``filepath``, which must end
        in ``.weights.npz`` (Keras 3 uses ``.weights.h5``; this is the npz equivalent). Written
        atomically. ``overwrite=False`` refuses to replace an existing file (FileExistsError).
        See :func:`chainrule.saving.save_weights`."""
        from .saving import save_weights
        save_weights(self, filepath, overwrite)

    def load_weights(self, filepath):
        """Read weights written by :meth:`save_weights` into this model, which must have the
        same layers (classes and parameter shapes, in order; names may differ). An unbuilt
        model is built for the stored input shape. Damaged or foreign files raise
        :class:`~chainrule.saving.ModelFormatError`. The optimizer state is not touched."""
        from .saving import load_weights
        load_weights(self, filepath)

    # -- description ---------------------------------------------------------------------
    def summary(self, print_fn: Callable[[str], Any] = print) -> None:
        """The layers, their output shapes and parameter counts, and the totals: all
        parameters, the trainable ones and the others (a frozen layer's, moving statistics),
        as Keras prints them."""
        self._require_built()
        rows = [(f"{l.name} ({type(l).__name__})", str((None,) + tuple(l.output_shape)), str(l.count_params()))
                for l in self._layers]
        w0 = max(len("Layer (type)"), *(len(r[0]) for r in rows)) + 2
        w1 = max(len("Output Shape"), *(len(r[1]) for r in rows)) + 2
        w2 = max(len("Param #"), *(len(r[2]) for r in rows))
        line = "-" * (w0 + w1 + w2)
        out = [f'Model: "{self.name}"', line,
               "Layer (type)".ljust(w0) + "Output Shape".ljust(w1) + "Param #".rjust(w2), "=" * len(line)]
        out += [r[0].ljust(w0) + r[1].ljust(w1) + r[2].rjust(w2) for r in rows]
        trainable = sum(l.count_params(trainable=True) for l in self._layers)
        out += ["=" * len(line), f"Total params: {self.count_params():,}",
                f"Trainable params: {trainable:,}",
                f"Non-trainable params: {self.count_params() - trainable:,}",
                f"Input shape: {(None, *(self._input_shape or ()))}  dtype: {self.dtype}", line]
        print_fn("\n".join(out))

    def get_config(self) -> Config:
        entries = ([self._input_layer] if self._input_layer is not None else []) + self._layers
        return {"name": self.name, "dtype": self.dtype, "seed": self.seed,
                "input_shape": None if self._input_shape is None else list(self._input_shape),
                "layers": [{"class_name": type(l).__name__, "config": l.get_config()} for l in entries]}

    @classmethod
    def from_config(cls, config: Config) -> Sequential:
        if not isinstance(config, dict) or "layers" not in config:
            raise ValueError(f"Sequential.from_config expects a dict with 'layers'; received {config!r}")
        model = cls([_layers.get(c) for c in config["layers"]], name=config.get("name"),
                    dtype=config.get("dtype", "float32"), seed=config.get("seed"))
        if config.get("input_shape") is not None:
            model.build(tuple(config["input_shape"]))
        return model

    # -- pickling and copying --------------------------------------------------------------
    def __getstate__(self):
        """``pickle`` and ``copy`` support. The state is the model in the model-file format
        (:func:`chainrule.saving.model_to_bytes`: config, weights, compile settings, optimizer
        state, step count and ``lr_scale``; config and compile settings only for a model not
        built yet), ``stop_on_nonfinite``, and any attributes added to the instance; unpickling
        reads the model back with :func:`~chainrule.saving.model_from_bytes`'s checks (damaged
        bytes raise :class:`~chainrule.saving.ModelFormatError`). The copy is independent of
        the original: ``copy.copy`` gives such a copy too (it cannot share the C++ core).

        Predictions of a copy equal the original's bit for bit, and so does training with the
        same thread count: ``fit`` with the same ``seed`` and ``initial_epoch`` (the model
        keeps no epoch counter: pass the epoch to resume at), and ``train_on_batch`` in a
        model without Dropout (a copy's dropout streams start afresh; ``fit`` reseeds them
        every epoch). Not copied: ``history`` and ``last_epoch_stats`` (records of the last
        ``fit``, as in Keras). Pickling a model that another thread is training (inside
        ``fit``) raises RuntimeError; the training thread's callbacks may pickle it. NaN or
        infinite weights raise ValueError."""
        from .saving import _pickle_state
        return _pickle_state(self)

    def __setstate__(self, state):
        from .saving import _restore_pickle_state
        _restore_pickle_state(self, state)

    # -- persistence ---------------------------------------------------------------------
    def save(self, path: PathLike) -> None:
        """Write the model (architecture, weights, compile settings, optimizer state) to
        ``path``; see :func:`chainrule.saving.save_model` for the format. After a distributed
        fit, only rank 0 writes (every rank holds the same model); elsewhere this does nothing."""
        if self._distributed_rank != 0:
            return
        from .saving import save_model
        save_model(self, path)

    def export(self, path, format="onnx"):
        """Write the model for inference elsewhere (Keras's ``export``). ``format``: "onnx",
        the only one (Keras's default, "tf_saved_model", needs TensorFlow). The ONNX model
        takes input "input", the array :meth:`predict` takes, and returns what it returns;
        see :mod:`chainrule.onnx_export`. Needs the onnx package."""
        from .onnx_export import export
        export(self, path, format)
