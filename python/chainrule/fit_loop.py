"""The fit loop behind ``Sequential.fit``: argument checks, training and validation data,
then per epoch one call into the C++ core (``train_epoch``), validation, logging and the
callbacks. Python runs only between epochs; every number is computed in the core.
"""

from __future__ import annotations

import math
import sys
import time
from typing import NamedTuple

import numpy as np

from . import _checks
from . import callbacks as _callbacks
from . import diagnostics
from ._progress import ProgressBar
from .history import History

# Validation runs with batches of at least this many samples: evaluation takes no optimizer
# step, so small batches buy nothing there, and bigger ones are faster (fewer, larger GEMMs).
# The same size is evaluate()'s default batch size.
VALIDATION_MIN_BATCH_SIZE = 256

# Epoch e's dropout masks come from _epoch_seed(seed, DROPOUT_SEED_OFFSET + e), its shuffle
# order from _epoch_seed(seed, e): for any epoch below 2**31 the two draw from disjoint seed
# streams, so the masks never repeat a shuffle's random numbers.
DROPOUT_SEED_OFFSET = 1 << 31


def _epoch_seed(seed, epoch):
    """A 64-bit seed for one epoch, a function of (seed, epoch) only: a run resumed at
    ``initial_epoch`` draws exactly what an uninterrupted one would."""
    a, b = np.random.SeedSequence([seed, epoch]).generate_state(2, np.uint32)
    return (int(a) << 32) | int(b)


class _Options(NamedTuple):
    """fit's arguments other than the data, checked."""
    epochs: int
    initial_epoch: int
    batch_size: int
    verbose: int
    split: float
    shuffle: bool
    seed: int
    callbacks: list
    gradient_warnings: bool


def fit(model, x, y, epochs, batch_size, verbose, callbacks, validation_split, validation_data,
        shuffle, seed, sample_weight, class_weight, gradient_warnings, initial_epoch):
    """``Sequential.fit`` (documented there), run while the model is marked as training."""
    opts = _check_options(epochs, initial_epoch, batch_size, verbose, validation_split, shuffle,
                          seed, callbacks, gradient_warnings)
    train, val = _prepare_data(model, x, y, sample_weight, class_weight, opts.split,
                               validation_split, validation_data)
    history = History()
    n = train[0].shape[0]
    history.params = {"epochs": opts.epochs, "batch_size": opts.batch_size, "samples": n,
                      "steps": -(-n // opts.batch_size)}
    model.history = history
    model.stop_training = False
    _run_epochs(model, opts, train, val, history)
    return history


def _check_options(epochs, initial_epoch, batch_size, verbose, validation_split, shuffle, seed,
                   callbacks, gradient_warnings):
    epochs = _checks.positive_int("epochs", epochs)
    initial_epoch = _checks.non_negative_int("initial_epoch", initial_epoch)
    batch_size = _checks.positive_int("batch_size", batch_size)
    verbose = _checks.verbosity("verbose", verbose)
    split = _checks.fraction("validation_split", validation_split)
    shuffle = _checks.flag("shuffle", shuffle)
    seed = _checks.seed(seed)
    if seed is None:
        seed = int(np.random.SeedSequence().entropy % (1 << 63))
    callbacks = [] if callbacks is None else list(callbacks)
    for cb in callbacks:
        if not isinstance(cb, _callbacks.Callback):
            raise TypeError(f"callbacks must be chainrule.callbacks.Callback instances; received {cb!r}")
    return _Options(epochs, initial_epoch, batch_size, verbose, split, shuffle, seed, callbacks,
                    gradient_warnings)


def _prepare_data(model, x, y, sample_weight, class_weight, split, validation_split, validation_data):
    """(X, Y, SW) to train on and (X, Y, SW) to validate on (or None), converted once."""
    X, Y, SW = model._prepare(x, y, sample_weight)
    if class_weight is not None:
        SW = _apply_class_weight(model, class_weight, Y, SW)
    if validation_data is not None:
        if split:
            raise ValueError("pass either validation_split or validation_data, not both")
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) not in (2, 3):
            raise ValueError("validation_data must be a tuple (x_val, y_val) or (x_val, y_val, "
                             f"sample_weight_val); received {type(validation_data).__name__}")
        val = model._prepare(*validation_data, xname="validation_data x", yname="validation_data y")
        return (X, Y, SW), val
    if not split:
        return (X, Y, SW), None
    n = X.shape[0]
    split_at = int(n * (1.0 - split))
    if split_at < 1 or split_at >= n:
        raise ValueError(f"validation_split={validation_split!r} leaves {split_at} training and "
                         f"{n - split_at} validation samples out of {n}; both must be >= 1")
    val = (X[split_at:], Y[split_at:], None if SW is None else SW[split_at:])
    return (X[:split_at], Y[:split_at], None if SW is None else SW[:split_at]), val


def _apply_class_weight(model, class_weight, Y, SW):
    """Per-sample weights: each sample's class weight times its sample weight."""
    if not isinstance(class_weight, dict):
        raise TypeError(f"class_weight must be a dict {{class: weight}}; received {class_weight!r}")
    if model.loss == "sparse_categorical_crossentropy":
        labels = Y[:, 0].astype(np.int64)
    elif Y.shape[1] == 1:
        labels = (Y[:, 0] > 0.5).astype(np.int64)
    else:
        labels = np.argmax(Y, axis=1)
    n_classes = max(int(math.prod(model.output_shape)), 2)
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
    return _checks.as_finite("class_weight x sample_weight", weights, model._np_dtype())


def _run_epochs(model, opts, train, val, history):
    """The epochs from initial_epoch on, with the callbacks around each; stops early when a
    callback sets ``model.stop_training``."""
    warned = set()  # the warnings given so far: one of each kind per fit
    for cb in opts.callbacks:
        cb.set_model(model)
    try:
        for cb in opts.callbacks:
            cb.on_train_begin({})
        for epoch in range(opts.initial_epoch, opts.epochs):
            for cb in opts.callbacks:
                cb.on_epoch_begin(epoch, {})
            logs = _run_epoch(model, epoch, opts, train, val, history, warned)
            for cb in opts.callbacks:
                cb.on_epoch_end(epoch, logs)
            if model.stop_training:
                break
    finally:
        for cb in opts.callbacks:
            cb.on_train_end({})


def _run_epoch(model, epoch, opts, train, val, history, warned):
    """One epoch in the core, then validation, the history record, the gradient monitor's
    warnings and the progress output. Returns the epoch's logs."""
    core = model._core
    model._sync_trainable()  # layers frozen or unfrozen since the last epoch (callbacks)
    core.seed_layers(_epoch_seed(opts.seed, DROPOUT_SEED_OFFSET + epoch))
    bar = None
    if opts.verbose == 1:
        print(f"Epoch {epoch + 1}/{opts.epochs}", flush=True)
        bar = ProgressBar(history.params["steps"])
    t0 = time.perf_counter()
    stats = core.train_epoch(*train, opts.batch_size, opts.shuffle, _epoch_seed(opts.seed, epoch),
                             bar.update if bar else None, bar.every if bar else 0)
    model._last_epoch_stats = stats
    if "nonfinite" not in warned:
        diagnostics.warn_nonfinite(model, stats, f"epoch {epoch + 1}", warned)
    logs = model._logs(stats)
    if val is not None:
        batch_size = max(opts.batch_size, VALIDATION_MIN_BATCH_SIZE)
        logs.update(model._logs(core.evaluate(*val, batch_size), "val_"))
    logs["lr"] = float(stats["learning_rate"])
    layer_stats = diagnostics.layer_stats(model)
    history._record(epoch, logs)
    history._record_layers(layer_stats)
    if opts.gradient_warnings:
        diagnostics.warn_gradients(layer_stats, epoch, warned)
    if bar is not None:
        bar.finish(logs)
    elif opts.verbose == 2:
        _print_epoch_line(epoch, opts.epochs, time.perf_counter() - t0, logs)
    return logs


def _print_epoch_line(epoch, epochs, seconds, logs):
    """verbose=2: one line per epoch."""
    items = " - ".join(f"{k}: {v:.4g}" if k == "lr" else f"{k}: {v:.4f}" for k, v in logs.items())
    print(f"Epoch {epoch + 1}/{epochs} - {seconds:.2f}s - {items}", file=sys.stdout, flush=True)
