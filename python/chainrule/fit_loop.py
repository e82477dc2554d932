"""The fit loop behind ``Sequential.fit``: argument checks, training and validation data,
then per epoch one call into the C++ core (``train_epoch``), validation, logging and the
callbacks. Python runs only between epochs; every number is computed in the core.

With ``distributed`` (``distributed.py``) the same loop runs on every MPI rank: the epoch is
the core's data-parallel one, validation is split across the ranks, and each phase between
two C++ calls ends in the ranks' agreement (``Group.exchange``), so a failure on one rank
stops them all at the same point.
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
from . import distributed as _distributed
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
        shuffle, seed, sample_weight, class_weight, gradient_warnings, initial_epoch,
        distributed=False):
    """``Sequential.fit`` (documented there), run while the model is marked as training."""
    mode = _distributed.check_mode(distributed)
    group = _distributed.join(mode) if mode else None

    def setup():
        opts = _check_options(epochs, initial_epoch, batch_size, verbose, validation_split, shuffle,
                              seed, callbacks, gradient_warnings)
        train, val = _prepare_data(model, x, y, sample_weight, class_weight, opts.split,
                                   validation_split, validation_data)
        return opts, train, val

    if group is None:
        opts, train, val = setup()
        history = _new_history(model, opts, train[0].shape[0])
        _run_epochs(model, opts, train, val, history)
        return history
    try:
        return _fit_distributed(model, group, setup)
    finally:
        group.close()


def _new_history(model, opts, n):
    history = History()
    history.params = {"epochs": opts.epochs, "batch_size": opts.batch_size, "samples": n,
                      "steps": -(-n // opts.batch_size)}
    model.history = history
    model.stop_training = False
    return history


def _fit_distributed(model, group, setup):
    """fit on every rank of ``group``: the arguments checked and the data prepared on each,
    rank 0's seed, weights and optimizer state taken by all, then the epochs."""
    here = {}

    def start():
        here["opts"], here["train"], here["val"] = setup()
        train, val = here["train"], here["val"]
        model._core.check_data(*train)  # now rather than inside the epoch, where one rank
        if val is not None:             # failing alone would leave the others waiting
            model._core.check_data(*val)
        rows = (train[0].shape[0], 0 if val is None else val[0].shape[0])
        fingerprint = None if group.local else _distributed.data_fingerprint(train + (val or ()))
        return rows, fingerprint, here["opts"].seed, group.state_of_rank0(model)

    started = group.exchange("the start of fit", start)
    shard_sizes = group.agree_on_data([s[0] for s in started], [s[1] for s in started])
    group.exchange("the start of fit (rank 0's state)", lambda: group.set_state(model, started[0][3]))
    opts = here["opts"]._replace(seed=started[0][2], verbose=here["opts"].verbose if group.rank == 0 else 0)
    history = _new_history(model, opts, sum(s[0][0] for s in started) if group.local else started[0][0][0])
    group.make_transport(shard_sizes)
    model._distributed_rank = group.rank
    _run_epochs(model, opts, here["train"], here["val"], history, group)
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


def _together(group, phase, fn):
    """``fn()``'s result as a list: [fn()] in a single process; in a distributed fit, every
    rank's, once all ranks have run it (``Group.exchange``, which raises on every rank when
    it raised on one)."""
    if group is None:
        return [fn()]
    return group.exchange(phase, fn)


def _run_epochs(model, opts, train, val, history, group=None):
    """The epochs from initial_epoch on, with the callbacks around each; stops early when a
    callback sets ``model.stop_training`` (on any rank, in a distributed fit)."""
    warned = set()  # the warnings given so far: one of each kind per fit
    callbacks = opts.callbacks
    if group is not None and group.rank != 0:  # files are written by rank 0 only
        callbacks = [cb for cb in callbacks if not isinstance(cb, _callbacks.ModelCheckpoint)]
    for cb in callbacks:
        cb.set_model(model)
    try:
        _together(group, "on_train_begin", lambda: [cb.on_train_begin({}) for cb in callbacks])
        for epoch in range(opts.initial_epoch, opts.epochs):
            _together(group, f"epoch {epoch + 1} begin",
                      lambda: [cb.on_epoch_begin(epoch, {}) for cb in callbacks])
            stats, bar, t0 = _train_epoch(model, epoch, opts, train, history, group)
            if group is not None:
                group.average_moving_statistics(model, f"epoch {epoch + 1} moving statistics")
            val_stats = _validate(model, epoch, opts, val, group)

            def end_epoch():
                logs = _record_epoch(model, epoch, opts, stats, val_stats, history, warned, bar, t0,
                                     group)
                for cb in callbacks:
                    cb.on_epoch_end(epoch, logs)
                return model.stop_training, (group.weights_checksum(model) if group else None)

            ends = _together(group, f"epoch {epoch + 1} end", end_epoch)
            if group is not None:
                if len({checksum for _, checksum in ends}) > 1:
                    raise group.agreed_error(_distributed.DistributedError(
                        f"the ranks' weights differ after epoch {epoch + 1}: the MPI library's "
                        "allreduce did not give every rank the same sums"))
                model.stop_training = any(stop for stop, _ in ends)  # every rank stops together
            if model.stop_training:
                break
    except BaseException as e:
        if group is not None and not group.agreed(e):
            group.abort(e)  # an error on this rank alone: no other rank would hear of it
        raise
    finally:
        _together(group, "on_train_end", lambda: [cb.on_train_end({}) for cb in callbacks])


def _train_epoch(model, epoch, opts, train, history, group):
    """One epoch in the core (data-parallel in a distributed fit). Returns its stats (rank
    0's in a distributed fit: the same on every rank), the progress bar and the start time."""
    core = model._core
    model._sync_trainable()  # layers frozen or unfrozen since the last epoch (callbacks)
    stream = DROPOUT_SEED_OFFSET + epoch
    core.seed_layers(_epoch_seed(opts.seed, stream) if group is None else group.dropout_seed(opts.seed, stream))
    bar = None
    if opts.verbose == 1:
        print(f"Epoch {epoch + 1}/{opts.epochs}", flush=True)
        bar = ProgressBar(history.params["steps"])
    t0 = time.perf_counter()
    progress = (bar.update if bar else None, bar.every if bar else 0)
    if group is None:
        stats = core.train_epoch(*train, opts.batch_size, opts.shuffle, _epoch_seed(opts.seed, epoch),
                                 *progress)
        return stats, bar, t0
    transport = group.transport

    def run():
        transport.seconds = 0.0
        transport.stop_requested = False
        with group.interrupts_as_stop_requests():
            s = core.train_epoch(*train, opts.batch_size, opts.shuffle,
                                 group.shuffle_seed(opts.seed, epoch, _epoch_seed), *progress,
                                 data_parallel=transport)
        if transport.stop_requested:
            raise KeyboardInterrupt
        if s["interrupted"]:
            raise KeyboardInterrupt("training was interrupted on another rank")
        return s

    everyone = group.exchange(f"epoch {epoch + 1}", run)
    stats = dict(everyone[0])
    stats["ranks"] = group.size
    stats["comm_seconds"] = transport.seconds
    return stats, bar, t0


def _validate(model, epoch, opts, val, group):
    """Loss and accuracy on the validation data, or None; split across the ranks in a
    distributed fit (each evaluates its share, the sums are combined)."""
    if val is None:
        return None
    core = model._core
    batch_size = max(opts.batch_size, VALIDATION_MIN_BATCH_SIZE)
    if group is None:
        return core.evaluate(*val, batch_size)
    part = group.validation_part(val)

    def evaluate_part():
        if part is None:
            return 0.0, 0.0, 0
        s = core.evaluate(*part, batch_size)
        return s["loss"], s["accuracy"], s["samples"]

    return group.combine_validation(group.exchange(f"epoch {epoch + 1} validation", evaluate_part))


def _record_epoch(model, epoch, opts, stats, val_stats, history, warned, bar, t0, group):
    """The epoch's logs, the history record, the gradient monitor's warnings (rank 0's only
    in a distributed fit) and the progress output. Returns the logs."""
    model._last_epoch_stats = stats
    speaks = group is None or group.rank == 0
    if "nonfinite" not in warned and speaks:
        diagnostics.warn_nonfinite(model, stats, f"epoch {epoch + 1}", warned)
    logs = model._logs(stats)
    if val_stats is not None:
        logs.update(model._logs(val_stats, "val_"))
    logs["lr"] = float(stats["learning_rate"])
    layer_stats = diagnostics.layer_stats(model)
    history._record(epoch, logs)
    history._record_layers(layer_stats)
    if opts.gradient_warnings and speaks:
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
