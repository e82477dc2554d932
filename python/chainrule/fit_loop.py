"""The fit loop behind ``Sequential.fit``: argument checks, training and validation data, then
per epoch the C++ core's training, validation, logging and the callbacks. Data in arrays is
trained by one core call per epoch (``train_epoch``); streamed data (a Dataset, iterable or
generator; see ``data.py``) by one core call per batch, fed by a background reader. Python
runs only between epochs and, streaming, between batches; every number is computed in the core.

With ``distributed`` (``distributed.py``) the same loop runs on every MPI rank over arrays: the
epoch is the core's data-parallel one, validation is split across the ranks, and each phase
between two C++ calls ends in the ranks' agreement (``Group.exchange``), so a failure on one
rank stops them all at the same point.
"""

from __future__ import annotations

import contextlib
import io
import math
import sys
import time
from typing import NamedTuple

import numpy as np

from . import _checks
from . import callbacks as _callbacks
from . import data as _data
from . import diagnostics
from . import distributed as _distributed
from ._progress import ProgressBar
from .history import History

# Validation runs with batches of at least this many samples: evaluation takes no optimizer
# step, so small batches buy nothing there, and bigger ones are faster (fewer, larger GEMMs).
# The same size is evaluate()'s default batch size.
VALIDATION_MIN_BATCH_SIZE = 256
DEFAULT_BATCH_SIZE = 32  # Keras's

# fit's default stop at a non-finite loss (stop_on_nonfinite=True) snapshots the weights and
# optimizer state every this many steps: the copy costs about as much as a small step, so
# taking it every step would slow small-batch training by up to ~20%; spread over 32 steps it
# is noise, and a stop goes back at most 32 steps. The model's own stop_on_nonfinite (and
# TerminateOnNaN) snapshot every step and put back exactly the last finite one.
NONFINITE_SNAPSHOT_EVERY = 32

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
    steps_per_epoch: int | None
    validation_steps: int | None
    stop_on_nonfinite: bool


def fit(model, x, y, epochs, batch_size, verbose, callbacks, validation_split, validation_data,
        shuffle, seed, sample_weight, class_weight, gradient_warnings, initial_epoch,
        steps_per_epoch, validation_steps, stop_on_nonfinite, distributed=False):
    """``Sequential.fit`` (documented there), run while the model is marked as training."""
    mode = _distributed.check_mode(distributed)
    group = _distributed.join(mode) if mode else None

    def setup():
        opts = _check_options(epochs, initial_epoch, batch_size, verbose, validation_split, shuffle,
                              seed, callbacks, gradient_warnings, steps_per_epoch, validation_steps,
                              stop_on_nonfinite)
        if _data.is_stream(x):
            if group is not None:
                raise ValueError("fit(distributed=...) trains on arrays (each rank's shard with "
                                 "distributed='local'); received a generator, iterable or Dataset as x")
            _check_stream_arguments("fit", y, batch_size, sample_weight)
            if opts.split:
                raise ValueError("fit: validation_split needs x and y as arrays; with a generator, iterable or "
                                 "Dataset pass validation_data")
            train = StreamData(model, x, "x", opts.steps_per_epoch, class_weight)
        else:
            if opts.steps_per_epoch is not None:
                raise ValueError("fit: steps_per_epoch applies to a generator, iterable or Dataset; with arrays an "
                                 "epoch is one pass over them (cr.data.Dataset(x, y, batch_size) takes "
                                 "steps_per_epoch)")
            train = ArrayData(*_prepare_arrays(model, x, y, sample_weight, class_weight))
        val = _validation(model, train, validation_data, validation_split, opts)
        if group is not None and isinstance(val, StreamData):
            raise ValueError("fit(distributed=...) validates on arrays; received a generator, iterable or "
                             "Dataset as validation_data")
        return opts, train, val

    if group is None:
        opts, train, val = setup()
        _check_input_range(model, train.sample_x)
        history, opts = _new_history(model, opts, train, train.samples)
        _run_epochs(model, opts, train, val, history)
        return history
    try:
        return _fit_distributed(model, group, setup)
    finally:
        group.close()


def _new_history(model, opts, train, samples):
    """The History this fit records into (one the user passed among the callbacks, as in
    Keras, or a new one), and the options with it last among the callbacks."""
    history = next((cb for cb in opts.callbacks if isinstance(cb, History)), None) or History()
    history.params = {"epochs": opts.epochs, "steps": train.steps(opts.batch_size),
                      "batch_size": None if isinstance(train, StreamData) else opts.batch_size,
                      "samples": samples}
    model.history = history
    model.stop_training = False
    return history, opts._replace(callbacks=[cb for cb in opts.callbacks if cb is not history] + [history])


def _fit_distributed(model, group, setup):
    """fit on every rank of ``group``: the arguments checked and the data prepared on each,
    rank 0's seed, weights and optimizer state taken by all, then the epochs."""
    here = {}

    def start():
        here["opts"], here["train"], here["val"] = setup()
        train, val = here["train"], here["val"]
        model._core.check_data(*train.arrays)  # now rather than inside the epoch, where one
        if val is not None:                    # rank failing alone would leave the others waiting
            model._core.check_data(*val.arrays)
        rows = (train.samples, 0 if val is None else val.samples)
        fingerprint = (None if group.local else
                       _distributed.data_fingerprint(train.arrays + (val.arrays if val else ())))
        return rows, fingerprint, here["opts"].seed, group.state_of_rank0(model)

    started = group.exchange("the start of fit", start)
    shard_sizes = group.agree_on_data([s[0] for s in started], [s[1] for s in started])
    group.exchange("the start of fit (rank 0's state)", lambda: group.set_state(model, started[0][3]))
    if group.rank == 0:
        _check_input_range(model, here["train"].sample_x)
    opts = here["opts"]._replace(seed=started[0][2], verbose=here["opts"].verbose if group.rank == 0 else 0)
    samples = sum(s[0][0] for s in started) if group.local else started[0][0][0]
    history, opts = _new_history(model, opts, here["train"], samples)
    if group.local:  # the global batches: ceil(all rows / batch_size)
        history.params["steps"] = -(-samples // opts.batch_size)
    group.make_transport(shard_sizes)
    model._distributed_rank = group.rank
    _run_epochs(model, opts, here["train"], here["val"], history, group)
    return history


def _check_options(epochs, initial_epoch, batch_size, verbose, validation_split, shuffle, seed,
                   callbacks, gradient_warnings, steps_per_epoch, validation_steps, stop_on_nonfinite):
    epochs = _checks.positive_int("epochs", epochs)
    initial_epoch = _checks.non_negative_int("initial_epoch", initial_epoch)
    batch_size = DEFAULT_BATCH_SIZE if batch_size is None else _checks.positive_int("batch_size", batch_size)
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
    steps_per_epoch = None if steps_per_epoch is None else _checks.positive_int("steps_per_epoch", steps_per_epoch)
    validation_steps = (None if validation_steps is None
                        else _checks.positive_int("validation_steps", validation_steps))
    stop_on_nonfinite = _checks.flag("stop_on_nonfinite", stop_on_nonfinite)
    return _Options(epochs, initial_epoch, batch_size, verbose, split, shuffle, seed, callbacks,
                    gradient_warnings, steps_per_epoch, validation_steps, stop_on_nonfinite)


def _check_stream_arguments(what, y, batch_size, sample_weight):
    """Arguments that belong to arrays, refused when x is a stream of batches (as Keras)."""
    if y is not None:
        raise ValueError(f"{what}: y must not be given when x is a generator, iterable or Dataset: its "
                         "batches carry the targets, as (x, y) or (x, y, sample_weight)")
    if batch_size is not None:
        raise ValueError(f"{what}: batch_size must not be given when x is a generator, iterable or Dataset: "
                         "its batches have their own size")
    if sample_weight is not None:
        raise ValueError(f"{what}: sample_weight must not be given when x is a generator, iterable or "
                         "Dataset: yield (x, y, sample_weight) batches instead")


# -- data -------------------------------------------------------------------------------------

def _prepare_arrays(model, x, y, sample_weight, class_weight):
    """(X, Y, SW) converted once."""
    if y is None:
        raise TypeError("fit: y is required when x is an array (or pass a generator, iterable or "
                        "cr.data.Dataset yielding (x, y) batches)")
    X, Y, SW = model._prepare(x, y, sample_weight)
    if class_weight is not None:
        SW = _apply_class_weight(model, class_weight, Y, SW)
    return X, Y, SW


def _validation(model, train, validation_data, validation_split, opts):
    """The validation data (ArrayData or StreamData) or None; with validation_split, the
    last fraction of the training arrays (train is shortened in place)."""
    if validation_data is not None:
        if opts.split:
            raise ValueError("pass either validation_split or validation_data, not both")
        if _data.is_stream(validation_data):
            if (_data.is_iterator(validation_data) and opts.validation_steps is None
                    and opts.epochs - opts.initial_epoch > 1):
                raise ValueError("fit: validation_data is an iterator, which is consumed across epochs: pass "
                                 "validation_steps (batches per validation), or an iterable or cr.data.Dataset")
            return StreamData(model, validation_data, "validation_data", opts.validation_steps, None)
        if opts.validation_steps is not None:
            raise ValueError("fit: validation_steps applies when validation_data is a generator, iterable or "
                             "Dataset")
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) not in (2, 3):
            raise ValueError("validation_data must be a tuple (x_val, y_val) or (x_val, y_val, "
                             f"sample_weight_val); received {type(validation_data).__name__}")
        return ArrayData(*model._prepare(*validation_data, xname="validation_data x",
                                         yname="validation_data y"))
    if opts.validation_steps is not None:
        raise ValueError("fit: validation_steps needs validation_data")
    if not opts.split:
        return None
    X, Y, SW = train.X, train.Y, train.SW
    n = X.shape[0]
    split_at = int(n * (1.0 - opts.split))
    if split_at < 1 or split_at >= n:
        raise ValueError(f"validation_split={validation_split!r} leaves {split_at} training and "
                         f"{n - split_at} validation samples out of {n}; both must be >= 1")
    train.X, train.Y, train.SW = X[:split_at], Y[:split_at], None if SW is None else SW[:split_at]
    return ArrayData(X[split_at:], Y[split_at:], None if SW is None else SW[split_at:])


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


def _check_input_range(model, x):
    """The first fit of a model looks at the size of its inputs, once."""
    if model._input_range_checked:
        return
    model._input_range_checked = True
    arr = np.asarray(x)
    if arr.size and np.issubdtype(arr.dtype, np.number):
        diagnostics.warn_input_range(_checks.max_abs(arr))


class ArrayData:
    """Training or validation data held in arrays, converted once: (X, Y, SW)."""

    def __init__(self, X, Y, SW):
        self.X, self.Y, self.SW = X, Y, SW
        self.ran_out = False

    @property
    def arrays(self):
        return self.X, self.Y, self.SW

    @property
    def sample_x(self):
        return self.X

    @property
    def samples(self):
        return int(self.X.shape[0])

    def steps(self, batch_size):
        return -(-self.samples // batch_size)

    def train_epoch(self, model, opts, epoch, bar):
        return model._core.train_epoch(self.X, self.Y, self.SW, opts.batch_size, opts.shuffle,
                                       _epoch_seed(opts.seed, epoch), bar.update if bar else None,
                                       bar.every if bar else 0)

    def evaluate(self, model, batch_size):
        return model._core.evaluate(self.X, self.Y, self.SW, max(batch_size, VALIDATION_MIN_BATCH_SIZE))


class StreamData:
    """Batches from a Dataset, iterable or iterator (``what`` names it in messages). The first
    batch is read at once (it builds an unbuilt model); an iterable is iterated afresh per
    pass, an iterator continues. ``steps``: batches per pass (None: until exhausted)."""

    def __init__(self, model, source, what, steps, class_weight, need_y=True):
        self.source, self.what, self.limit, self.need_y = source, what, steps, need_y
        self.is_iterator = _data.is_iterator(source)
        self._dataset = source if isinstance(source, _data.Dataset) else None
        it = self._iterate()
        try:
            first = next(it)
        except StopIteration:
            raise ValueError(f"{what} yielded no batches") from None
        if self._dataset is not None:  # batches are row indices into the Dataset's arrays
            x0 = self._dataset.arrays[0][first]
        else:
            x0 = _checks.as_array(f"{what} x", _data.unpack(first, what, need_y)[0])
        model._ensure_built(x0)
        self.sample_x = x0
        self._pending = (it, first)
        self._add, self._finish, self._row_bytes, self._verified = _batch_converter(
            model, what, class_weight, need_y, self._dataset)
        self._buffers = _data.chunk_buffers(self._row_bytes)  # allocated once, reused every pass
        self.ran_out = False

    def _iterate(self):
        if self._dataset is not None:
            return self._dataset.index_batches()
        return self.source if self.is_iterator else iter(self.source)

    @property
    def samples(self):
        return None

    def steps(self, batch_size=None):
        if self.limit is not None:
            return self.limit
        try:
            return len(self.source) if not self.is_iterator else None
        except TypeError:
            return None

    def batches(self):
        """A Prefetcher over the next pass (its first ``steps`` batches), in chunks."""
        first = _data._END
        if self._pending is not None:
            (it, first), self._pending = self._pending, None
        else:
            it = self._iterate()
        return _data.Prefetcher(it, self._add, self._finish, limit=self.limit, first=first,
                                row_bytes=self._row_bytes, buffers=self._buffers)

    def train_epoch(self, model, opts, epoch, bar):
        """One epoch, one core call per chunk of batches; None when the source had no batch
        left."""
        core = model._core
        core.begin_epoch()
        reader = self.batches()
        chunks = iter(reader)
        count = 0
        try:
            for X, Y, SW, sizes in chunks:
                used = core.train_stream_batches(X, Y, SW, sizes)
                if bar is not None and (count + used) // bar.every > count // bar.every:
                    run = core.running_stats()
                    bar.update(count + used, bar.total, run["loss"], run["metrics"])
                count += used
                if used < len(sizes):
                    break
        finally:
            chunks.close()
            stats = core.end_epoch()
        self._pass_done(count)
        self.ran_out = count == 0 or (self.limit is not None and reader.exhausted)
        return stats if count else None

    def _pass_done(self, batches):
        if self._dataset is not None and batches == len(self._dataset):
            self._verified()

    def evaluate(self, model, batch_size=None):
        """Loss and metric means over the batches of one pass, as core.evaluate gives them."""
        core = model._core
        n, loss, metrics, count = 0, 0.0, None, 0
        for X, Y, SW, sizes in self.batches():
            st = core.evaluate(X, Y, SW, max(sizes))
            count += len(sizes)
            b = int(st["samples"])
            n += b
            loss += st["loss"] * b
            m = np.asarray(st["metrics"], dtype=np.float64) * b
            metrics = m if metrics is None else metrics + m
        if n == 0:
            raise ValueError(f"{self.what} yielded no batches (an exhausted iterator? pass an iterable, a "
                             "cr.data.Dataset, or steps)")
        self._pass_done(count)
        return {"loss": loss / n, "metrics": list(metrics / n), "samples": n}

    def predict(self, model, on_batch=None):
        """The outputs for every batch of one pass, concatenated."""
        outs, count = [], 0
        for X, sizes in self.batches():
            outs.append(model._core.predict(X, max(sizes)))
            count += len(sizes)
            if on_batch is not None:
                on_batch(count, sum(len(o) for o in outs))
        return np.concatenate(outs, axis=0)


def _batch_converter(model, what, class_weight, need_y, dataset=None):
    """(add, finish, row_bytes) for a Prefetcher. add(raw_batch, buffers) checks one batch's
    shapes and copies it into the chunk's buffers (converting to the model's dtype; from a
    Dataset the batch is its rows, gathered straight into the buffers);
    finish(buffers) checks the values of the whole chunk at once (NaN and inf, class labels),
    naming the batch and row of the first bad one, and gives the chunk as (X, Y, SW, sizes)
    ((X, sizes) without need_y). Per-batch work stays a few numpy calls: the reader keeps up
    with small, fast steps."""
    dtype = np.dtype(model._np_dtype())
    sample_shape = model._input_shape
    features = math.prod(sample_shape)
    out_units = int(math.prod(model.output_shape))
    sparse = model.loss == "sparse_categorical_crossentropy"
    tc = 1 if sparse else out_units
    label = model._loss_label()
    xname, yname, swname = ((n, ) if what == "x" else (f"{what} {n}",) for n in ("x", "y", "sample_weight"))
    xname, yname, swname = xname[0], yname[0], swname[0]
    # batches read so far; whether batches carry weights; whether a Dataset's values are checked
    state = {"batches": 0, "weighted": None, "verified": False}

    def copy_into(dst, src):
        if src.dtype.kind == "f" and src.dtype.itemsize > dst.dtype.itemsize:
            with np.errstate(over="ignore"):  # beyond float32: inf, reported by finish()
                np.copyto(dst, src, casting="unsafe")
        else:
            np.copyto(dst, src, casting="unsafe")

    if dataset is not None:  # shapes checked once; every batch is rows of the same arrays
        dx, dy, dsw = dataset.arrays
        n_all = dx.shape[0]
        dx = _checks.checked_samples(xname, dx, sample_shape)
        if need_y:
            if dy is None:
                raise ValueError(f"{what}: the Dataset has no y; training and evaluation need Dataset(x, y)")
            dy = _checks.as_array(yname, dy)
            if dy.ndim == 1 and (sparse or out_units == 1):
                dy = dy.reshape(-1, 1)
            if dy.shape != (n_all, tc):
                want = f"({n_all},)" if sparse else f"({n_all}, {out_units})"
                raise ValueError(f"{yname} must have shape {want} for {label}; received shape {dy.shape}")
            state["weighted"] = dsw is not None

    def gather_into(dst, src, rows):
        if isinstance(rows, slice):
            copy_into(dst, src[rows])
        elif src.dtype == dst.dtype:
            np.take(src, rows, axis=0, out=dst, mode="clip")  # indices of a permutation: in range
        else:
            copy_into(dst, src[rows])

    def add_rows(rows, buffers):
        """A Dataset's batch is only noted here; finish() gathers the chunk's rows at once (a
        few numpy calls per chunk keep the reader idle, and the GIL free, most of the time)."""
        if not buffers.sizes:
            buffers.first_batch = state["batches"]
            buffers.pending = []
        state["batches"] += 1
        buffers.pending.append(rows)
        buffers.commit(len(range(*rows.indices(n_all))) if isinstance(rows, slice) else len(rows))

    def gather_chunk(buffers):
        parts = buffers.pending
        if all(isinstance(p, slice) for p in parts) and all(
                a.stop == b.start for a, b in zip(parts, parts[1:])):
            rows = slice(parts[0].start, parts[-1].stop)  # in order: one contiguous block
        else:
            rows = np.concatenate([np.arange(p.start, p.stop) if isinstance(p, slice) else p for p in parts])
        n = buffers.rows
        gather_into(buffers.whole("x", features, dtype).reshape((n,) + tuple(sample_shape)), dx, rows)
        if need_y:
            gather_into(buffers.whole("y", tc, dtype), dy, rows)
            if dsw is not None:
                gather_into(buffers.whole("sw", 1, dtype)[:, 0], dsw, rows)

    def add(raw, buffers):
        if not buffers.sizes:
            buffers.first_batch = state["batches"]
        state["batches"] += 1
        x, y, sw = _data.unpack(raw, what, need_y)
        samples = _checks.checked_samples(xname, x, sample_shape)
        n = samples.shape[0]
        copy_into(buffers.rows_for("x", n, features, dtype).reshape(samples.shape), samples)
        if need_y:
            ya = _checks.as_array(yname, y)
            if ya.ndim == 1 and (sparse or out_units == 1):
                ya = ya.reshape(-1, 1)
            if ya.ndim != 2 or ya.shape != (n, tc):
                if ya.ndim >= 1 and ya.shape[0] != n:
                    raise ValueError(f"{what}: x and y must have the same number of samples; received {n} "
                                     f"and {ya.shape[0]} (batch {state['batches'] - 1})")
                want = f"({n},)" if sparse else f"({n}, {out_units})"
                raise ValueError(f"{yname} must have shape {want} for {label}; received shape {ya.shape} "
                                 f"(batch {state['batches'] - 1})")
            copy_into(buffers.rows_for("y", n, tc, dtype), ya)
            if sw is not None:
                swa = _checks.as_array(swname, sw)
                if swa.shape != (n,):
                    raise ValueError(f"{swname} must have shape ({n},); received shape {swa.shape} "
                                     f"(batch {state['batches'] - 1})")
                copy_into(buffers.rows_for("sw", n, 1, dtype)[:, 0], swa)
            weighted = sw is not None
            if state["weighted"] is None:
                state["weighted"] = weighted
            elif state["weighted"] != weighted:
                raise ValueError(f"{what}: every batch must carry sample weights, or none; batch "
                                 f"{state['batches'] - 1} {'has' if weighted else 'lacks'} them")
        buffers.commit(n)

    def where(buffers, row):
        """'batch b, row r' of a row of the chunk."""
        b, start = buffers.first_batch, 0
        for size in buffers.sizes:
            if row < start + size:
                return f"batch {b}, row {row - start}"
            start += size
            b += 1
        return f"row {row}"

    def finish(buffers):
        if dataset is not None:
            gather_chunk(buffers)
        X = buffers.view("x")
        if state["verified"]:  # a Dataset whose every row passed the checks below in this fit
            Y = buffers.view("y") if need_y else None
            SW = buffers.view("sw")[:, 0] if need_y and state["weighted"] else None
            if need_y and class_weight is not None:
                SW = _class_weighted(buffers, Y, SW)
            return (X, list(buffers.sizes)) if not need_y else (X, Y, SW, list(buffers.sizes))
        # One pass without a temporary: a NaN or inf makes the sum non-finite (as can finite
        # values whose sum overflows; the exact check below then decides).
        if not np.isfinite(X.sum()) and not np.isfinite(X).all():
            r, c = (int(i) for i in np.argwhere(~np.isfinite(X))[0])
            raise ValueError(f"{xname} contains NaN or infinite values, or values beyond the {dtype} range "
                             f"(first at {where(buffers, r)}, feature {c}: {float(X[r, c])!r})")
        if not need_y:
            return X, list(buffers.sizes)
        Y = buffers.view("y")
        bad = ~np.isfinite(Y)
        if sparse:
            bad |= (Y < 0) | (Y >= out_units) | (Y != np.floor(Y))
        if bad.any():
            r, c = (int(i) for i in np.argwhere(bad)[0])
            need = (f"integer class labels in [0, {out_units}) for a model with {out_units} outputs" if sparse
                    else "finite values")
            raise ValueError(f"{yname} must hold {need}; received {float(Y[r, c])!r} at {where(buffers, r)}"
                             + ("" if sparse else f", column {c}"))
        SW = buffers.view("sw")[:, 0] if state["weighted"] else None
        if SW is not None and not (np.isfinite(SW).all() and (SW >= 0).all()):
            r = int(np.argmax(~(np.isfinite(SW) & (SW >= 0))))
            raise ValueError(f"{swname} must be finite and >= 0; received {float(SW[r])!r} at "
                             f"{where(buffers, r)}")
        if class_weight is not None:
            SW = _class_weighted(buffers, Y, SW)
        return X, Y, SW, list(buffers.sizes)

    def _class_weighted(buffers, Y, SW):
        """Each sample's class weight times its sample weight, in the chunk's buffers."""
        w = _apply_class_weight(model, class_weight, Y, SW)
        out = buffers.whole("cw", 1, dtype)[:, 0]
        out[...] = w
        return out

    def verified():
        """A pass read every row of the Dataset: its values need no checking again this fit."""
        state["verified"] = dataset is not None

    return add_rows if dataset is not None else add, finish, features * dtype.itemsize, verified


# -- epochs -------------------------------------------------------------------------------------

def _together(group, phase, fn):
    """``fn()``'s result as a list: [fn()] in a single process; in a distributed fit, every
    rank's, once all ranks have run it (``Group.exchange``, which raises on every rank when
    it raised on one). On the ranks other than 0, what ``fn`` prints (the callbacks' output)
    is dropped: a job prints its progress once, from rank 0."""
    if group is None:
        return [fn()]
    if group.rank == 0:
        return group.exchange(phase, fn)

    def quiet():
        with contextlib.redirect_stdout(io.StringIO()):
            return fn()

    return group.exchange(phase, quiet)


# Callbacks that write files: in a distributed fit, rank 0's only.
_FILE_CALLBACKS = (_callbacks.ModelCheckpoint, _callbacks.CSVLogger)


def _run_epochs(model, opts, train, val, history, group=None):
    """The epochs from initial_epoch on, with the callbacks around each; stops early when a
    callback sets ``model.stop_training`` (on any rank, in a distributed fit), the loss
    becomes non-finite (with ``stop_on_nonfinite``) or a stream runs out of batches."""
    warned = set()  # the warnings given so far: one of each kind per fit
    core = model._core
    callbacks = opts.callbacks
    if group is not None and group.rank != 0:
        callbacks = [cb for cb in callbacks if not isinstance(cb, _FILE_CALLBACKS)]
    for cb in callbacks:
        cb.set_model(model)
    guarding = opts.stop_on_nonfinite and not model._stop_on_nonfinite  # fit's own, for this fit
    if guarding:
        core.set_stop_on_nan(True, NONFINITE_SNAPSHOT_EVERY)
    try:
        _together(group, "on_train_begin", lambda: [cb.on_train_begin({}) for cb in callbacks])
        for epoch in range(opts.initial_epoch, opts.epochs):
            _together(group, f"epoch {epoch + 1} begin",
                      lambda: [cb.on_epoch_begin(epoch, {}) for cb in callbacks])
            stats, bar, t0 = _train_epoch(model, epoch, opts, train, history, group)
            if stats is None:  # a stream with no batch left
                diagnostics.warn_ran_out(train.what, epoch, opts.steps_per_epoch)
                model.stop_training = True
                break
            if group is not None:
                group.average_moving_statistics(model, f"epoch {epoch + 1} moving statistics")
            val_stats = _validate(model, epoch, opts, val, group)

            def end_epoch():
                logs = _record_epoch(model, epoch, opts, train, stats, val_stats, history, warned, bar,
                                     t0, group)
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
        try:
            _together(group, "on_train_end", lambda: [cb.on_train_end({}) for cb in callbacks])
        finally:
            if guarding:  # back to the model's own setting
                core.set_stop_on_nan(model._stop_on_nonfinite)


def _train_epoch(model, epoch, opts, train, history, group):
    """One epoch in the core (data-parallel in a distributed fit). Returns its stats (rank
    0's in a distributed fit: the same on every rank; None when a stream had no batch left),
    the progress bar and the start time."""
    core = model._core
    model._sync_trainable()  # layers frozen or unfrozen since the last epoch (callbacks)
    stream = DROPOUT_SEED_OFFSET + epoch
    core.seed_layers(_epoch_seed(opts.seed, stream) if group is None else group.dropout_seed(opts.seed, stream))
    bar = None
    if opts.verbose == 1:
        print(f"Epoch {epoch + 1}/{opts.epochs}", flush=True)
        bar = ProgressBar(history.params["steps"], model._core_metric_names())
    t0 = time.perf_counter()
    if group is None:
        return train.train_epoch(model, opts, epoch, bar), bar, t0
    transport = group.transport

    def run():
        transport.seconds = 0.0
        transport.stop_requested = False
        with group.interrupts_as_stop_requests():
            s = core.train_epoch(*train.arrays, opts.batch_size, opts.shuffle,
                                 group.shuffle_seed(opts.seed, epoch, _epoch_seed),
                                 bar.update if bar else None, bar.every if bar else 0,
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
    """Loss and metrics on the validation data, or None; split across the ranks in a
    distributed fit (each evaluates its share, the sums are combined)."""
    if val is None:
        return None
    if group is None:
        return val.evaluate(model, opts.batch_size)
    part = group.validation_part(val.arrays)

    def evaluate_part():
        if part is None:
            return 0.0, [0.0] * len(model._core_metric_names()), 0
        s = model._core.evaluate(*part, max(opts.batch_size, VALIDATION_MIN_BATCH_SIZE))
        return s["loss"], list(s["metrics"]), s["samples"]

    return group.combine_validation(group.exchange(f"epoch {epoch + 1} validation", evaluate_part))


def _record_epoch(model, epoch, opts, train, stats, val_stats, history, warned, bar, t0, group):
    """The epoch's logs, the history's layer statistics, the warnings (rank 0's only in a
    distributed fit), the progress output, and the stops that the epoch calls for (a
    non-finite loss, a stream run out). Returns the logs; the History callback records them."""
    model._last_epoch_stats = model._named_stats(stats)
    speaks = group is None or group.rank == 0
    if "nonfinite" not in warned and speaks:
        diagnostics.warn_nonfinite(model, stats, f"epoch {epoch + 1}", warned)
    logs = model._logs(stats)
    if val_stats is not None:
        logs.update(model._logs(val_stats, "val_"))
    logs["lr"] = float(stats["learning_rate"])
    layer_stats = diagnostics.layer_stats(model)
    history._record_layers(layer_stats)
    if opts.gradient_warnings and speaks:
        diagnostics.warn_gradients(layer_stats, epoch, warned)
        diagnostics.warn_dead_units(layer_stats, epoch, warned)
    if bar is not None:
        bar.finish(logs, int(stats["steps"]) + (1 if stats["stopped_nan"] else 0))
    elif opts.verbose == 2:
        _print_epoch_line(epoch, opts.epochs, time.perf_counter() - t0, logs)
    if stats["stopped_nan"] and opts.stop_on_nonfinite:
        if speaks:
            every = 1 if model._stop_on_nonfinite else NONFINITE_SNAPSHOT_EVERY
            diagnostics.warn_nonfinite_stop(model, epoch, stats, every)
        model.stop_training = True
    if train.ran_out:
        diagnostics.warn_ran_out(train.what, epoch, opts.steps_per_epoch)
        model.stop_training = True
    return logs


def _print_epoch_line(epoch, epochs, seconds, logs):
    """verbose=2: one line per epoch."""
    items = " - ".join(f"{k}: {v:.4g}" if k == "lr" else f"{k}: {v:.4f}" for k, v in logs.items())
    print(f"Epoch {epoch + 1}/{epochs} - {seconds:.2f}s - {items}", file=sys.stdout, flush=True)
