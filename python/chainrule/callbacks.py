"""Callbacks: Keras-style hooks at epoch boundaries (the epoch itself runs in C++).

``fit(..., callbacks=[...])`` calls, on each callback, ``set_model(model)``, then
``on_train_begin(logs)``, ``on_epoch_begin(epoch, logs)`` / ``on_epoch_end(epoch, logs)`` for
each epoch, and ``on_train_end(logs)``. Setting ``model.stop_training = True`` ends training
after the current epoch. The callbacks here use only the model's public API, which a
user-written callback can use too: ``model.learning_rate``, ``model.lr_scale``,
``model.stop_on_nonfinite``, ``model.last_epoch_stats``, ``get_weights`` / ``set_weights``,
``save``. :class:`History` (from ``history.py``) is a callback too; ``fit`` calls it last.
"""

from __future__ import annotations

import csv
import inspect
import math
import numbers
import os
import string
import sys
import warnings
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from . import _checks

if TYPE_CHECKING:
    from ._typing import FloatArray, Logs, PathLike
    from .models import Sequential

__all__ = ["Callback", "EarlyStopping", "ModelCheckpoint", "TerminateOnNaN", "LambdaCallback",
           "ReduceLROnPlateau", "CSVLogger", "LearningRateScheduler", "History"]


def __getattr__(name):
    # History lives in history.py, which imports Callback from here.
    if name == "History":
        from .history import History
        return History
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class Callback:
    """Base class: override any of the hooks. ``fit`` calls ``set_model`` before the first
    hook, so ``self.model`` is the model being trained inside every hook. ``logs`` maps metric
    names (``loss``, ``accuracy``, ``val_loss``, ..., ``lr``) to the epoch's values."""

    model: Sequential

    def __init__(self) -> None:
        self.model = None  # type: ignore[assignment]  # set by fit (set_model) before any hook

    def set_model(self, model: Sequential) -> None:
        self.model = model

    def on_train_begin(self, logs: Logs | None = None) -> None:
        pass

    def on_train_end(self, logs: Logs | None = None) -> None:
        pass

    def on_epoch_begin(self, epoch: int, logs: Logs | None = None) -> None:
        pass

    def on_epoch_end(self, epoch: int, logs: Logs | None = None) -> None:
        pass


def _real(cls: str, name: str, value: Any, lo: float = 0.0) -> float:
    """A finite real number >= lo (not a bool or a string): TypeError / ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{cls}: {name} must be a number; received {value!r}")
    try:
        v = float(value)
    except OverflowError:  # an integer too large for a float
        v = math.inf
    if not (math.isfinite(v) and v >= lo):
        raise ValueError(f"{cls}: {name} must be a finite number >= {lo}; received {value!r}")
    return v


def _count(cls: str, name: str, value: Any) -> int:
    """An integer >= 0 (not a bool): TypeError / ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{cls}: {name} must be an integer >= 0; received {value!r}")
    if value < 0:
        raise ValueError(f"{cls}: {name} must be an integer >= 0; received {value!r}")
    return int(value)


def _flag(cls: str, name: str, value: Any) -> bool:
    return _checks.flag(f"{cls}: {name}", value)


def _verbosity(cls: str, value: Any) -> int:
    return _checks.verbosity(f"{cls}: verbose", value)


def _monitor_op(cls: str, monitor: str, mode: str) -> str:
    if mode not in ("auto", "min", "max"):
        raise ValueError(f"{cls}: mode must be 'auto', 'min' or 'max'; received {mode!r}")
    if mode == "auto":
        mode = "max" if ("acc" in monitor) else "min"
    return mode


class _Monitor(Callback):
    """Tracks the best value of ``monitor`` in the direction given by ``mode``."""

    def __init__(self, monitor: str, mode: str, min_delta: float = 0.0) -> None:
        super().__init__()
        if not isinstance(monitor, str):
            raise TypeError(f"{type(self).__name__}: monitor must be a metric name; received {monitor!r}")
        self.monitor = monitor
        self.mode = _monitor_op(type(self).__name__, monitor, mode)
        if isinstance(min_delta, numbers.Real) and not isinstance(min_delta, bool) and min_delta < 0:
            min_delta = -min_delta  # Keras: the sign is ignored
        self.min_delta = _real(type(self).__name__, "min_delta", min_delta)
        self.best: float | None = None

    def _value(self, logs: Logs | None) -> float:
        if self.monitor not in (logs or {}):
            raise ValueError(f"{type(self).__name__}: monitor={self.monitor!r} is not among the logged "
                             f"metrics {sorted(logs or {})}")
        assert logs is not None
        return float(logs[self.monitor])

    def _improved(self, value: float) -> bool:
        if self.best is None:
            return math.isfinite(value)
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta


class EarlyStopping(_Monitor):
    """Stop when ``monitor`` has not improved by more than ``min_delta`` for ``patience``
    epochs; with ``restore_best_weights`` the weights of the best epoch are put back."""

    def __init__(self, monitor: str = "val_loss", min_delta: float = 0.0, patience: int = 0, mode: str = "auto",
                 restore_best_weights: bool = False, verbose: int = 0) -> None:
        super().__init__(monitor, mode, min_delta)
        self.patience = _count("EarlyStopping", "patience", patience)
        self.restore_best_weights = _flag("EarlyStopping", "restore_best_weights", restore_best_weights)
        self.verbose = _verbosity("EarlyStopping", verbose)

    def on_train_begin(self, logs: Logs | None = None) -> None:
        self.best = None
        self.wait = 0
        self.best_epoch: int | None = None
        self.best_weights: list[FloatArray] | None = None
        self.stopped_epoch: int | None = None

    def on_epoch_end(self, epoch: int, logs: Logs | None = None) -> None:
        value = self._value(logs)
        if self._improved(value):
            self.best = value
            self.best_epoch = epoch
            self.wait = 0
            if self.restore_best_weights:
                self.best_weights = self.model.get_weights()
            return
        self.wait += 1
        if self.wait >= self.patience:  # Keras: patience=0 stops at the first epoch without improvement
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def on_train_end(self, logs: Logs | None = None) -> None:
        if self.stopped_epoch is not None and self.verbose:
            if self.best is None or self.best_epoch is None:  # the monitored value was never finite
                best = f"no finite {self.monitor} in any epoch"
            else:
                best = f"best {self.monitor} {self.best:.4f} at epoch {self.best_epoch + 1}"
            print(f"Early stopping after epoch {self.stopped_epoch + 1}: {best}")
        if self.restore_best_weights and self.best_weights is not None:
            self.model.set_weights(self.best_weights)
            if self.verbose and self.best_epoch is not None:
                print(f"Restored the weights of epoch {self.best_epoch + 1}")


class ModelCheckpoint(_Monitor):
    """Save the model after each epoch (or only when ``monitor`` improves, with
    ``save_best_only``). ``filepath`` may contain ``{epoch}`` and metric names, e.g.
    ``"ckpt-{epoch:02d}-{val_loss:.3f}.crm"``. Files are written atomically
    (temporary file + rename), so a crash never leaves a half-written checkpoint. After an
    epoch that left NaN or infinite weights (``fit(stop_on_nonfinite=False)``) nothing is
    written (no model file can hold them) and a NonFiniteWarning says so."""

    def __init__(self, filepath: PathLike, monitor: str = "val_loss", save_best_only: bool = False,
                 mode: str = "auto", verbose: int = 0) -> None:
        super().__init__(monitor, mode)
        try:
            path = os.fsdecode(os.fspath(filepath))
        except TypeError:
            raise TypeError(f"ModelCheckpoint: filepath must be a path (str or os.PathLike); "
                            f"received {filepath!r}") from None
        if not path:
            raise ValueError("ModelCheckpoint: filepath must not be empty")
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(path) if f is not None]
        except ValueError as e:
            raise ValueError(f"ModelCheckpoint: filepath {path!r} is not a valid format string ({e})") from None
        for f in fields:
            if not f or f[0].isdigit():
                raise ValueError(f"ModelCheckpoint: filepath {path!r} may only hold named fields such as "
                                 f"{{epoch}} or {{val_loss:.3f}}; received the field {{{f}}}")
        self.filepath = path
        self.save_best_only = _flag("ModelCheckpoint", "save_best_only", save_best_only)
        self.verbose = _verbosity("ModelCheckpoint", verbose)

    def on_train_begin(self, logs: Logs | None = None) -> None:
        self.best = None

    def on_epoch_end(self, epoch: int, logs: Logs | None = None) -> None:
        logs = logs or {}
        if self.save_best_only:
            if not self._improved(self._value(logs)):
                return
            self.best = self._value(logs)
        try:
            path = self.filepath.format(epoch=epoch + 1, **logs)
        except (KeyError, IndexError, AttributeError, ValueError, TypeError) as e:
            raise ValueError(f"ModelCheckpoint: cannot fill in filepath {self.filepath!r} from epoch and "
                             f"the logged metrics {sorted(logs)} ({type(e).__name__}: {e})") from None
        if not all(np.isfinite(w).all() for w in self.model.get_weights()):
            # A diverged model (fit(stop_on_nonfinite=False)): a file of it could not be loaded.
            from .diagnostics import NonFiniteWarning
            warnings.warn(f"ModelCheckpoint: epoch {epoch + 1} not saved to {path}: the weights hold NaN or "
                          "infinite values (training diverged); the checkpoints already written are kept",
                          NonFiniteWarning, stacklevel=2)
            return
        self.model.save(path)
        if self.verbose:
            print(f"Epoch {epoch + 1}: saved the model to {path}")


class TerminateOnNaN(Callback):
    """Stop training as soon as the loss or a weight becomes NaN or infinite. The C++ loop
    checks every step and puts back the weights, optimizer state and step count of the last
    step whose loss and weights were finite."""

    def on_train_begin(self, logs: Logs | None = None) -> None:
        self._was_stopping = self.model.stop_on_nonfinite
        self.model.stop_on_nonfinite = True
        self.stopped_epoch: int | None = None

    def on_epoch_end(self, epoch: int, logs: Logs | None = None) -> None:
        if self.model.last_epoch_stats.get("stopped_nan") or not math.isfinite((logs or {}).get("loss", 0.0)):
            self.stopped_epoch = epoch
            self.model.stop_training = True
            print(f"TerminateOnNaN: the loss or the weights became NaN or infinite in epoch {epoch + 1}; "
                  "training stopped with the weights and optimizer state of the last finite step. "
                  "Try a lower learning rate, "
                  "gradient clipping (clipnorm=...) or normalised inputs.", file=sys.stderr)

    def on_train_end(self, logs: Logs | None = None) -> None:
        # the model's own setting back (False unless its user set it before fit)
        self.model.stop_on_nonfinite = getattr(self, "_was_stopping", False)


class LambdaCallback(Callback):
    """A callback from plain functions: ``LambdaCallback(on_epoch_end=lambda epoch, logs: ...)``."""

    def __init__(self, on_epoch_begin: Callable[[int, Logs | None], Any] | None = None,
                 on_epoch_end: Callable[[int, Logs | None], Any] | None = None,
                 on_train_begin: Callable[[Logs | None], Any] | None = None,
                 on_train_end: Callable[[Logs | None], Any] | None = None) -> None:
        super().__init__()
        for name, fn in (("on_epoch_begin", on_epoch_begin), ("on_epoch_end", on_epoch_end),
                         ("on_train_begin", on_train_begin), ("on_train_end", on_train_end)):
            if fn is not None and not callable(fn):
                raise TypeError(f"LambdaCallback: {name} must be callable; received {fn!r}")
            if fn is not None:
                setattr(self, name, fn)


class ReduceLROnPlateau(_Monitor):
    """Multiply the learning rate by ``factor`` when ``monitor`` has not improved for
    ``patience`` epochs (then wait ``cooldown`` epochs), never below ``min_lr``. Works on top
    of a schedule: it scales whatever the schedule gives."""

    def __init__(self, monitor: str = "val_loss", factor: float = 0.1, patience: int = 10, mode: str = "auto",
                 min_delta: float = 1e-4, cooldown: int = 0, min_lr: float = 0.0, verbose: int = 0) -> None:
        super().__init__(monitor, mode, min_delta)
        f = _real("ReduceLROnPlateau", "factor", factor)
        if not (0.0 < f < 1.0):
            raise ValueError(f"ReduceLROnPlateau: factor must be in (0, 1); received {factor!r}")
        self.factor = f
        self.patience = _count("ReduceLROnPlateau", "patience", patience)
        self.cooldown = _count("ReduceLROnPlateau", "cooldown", cooldown)
        self.min_lr = _real("ReduceLROnPlateau", "min_lr", min_lr)
        self.verbose = _verbosity("ReduceLROnPlateau", verbose)

    def on_train_begin(self, logs: Logs | None = None) -> None:
        self.best = None
        self.wait = 0
        self.cooldown_counter = 0

    def on_epoch_end(self, epoch: int, logs: Logs | None = None) -> None:
        value = self._value(logs)
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.wait = 0
        if self._improved(value):
            self.best = value
            self.wait = 0
            return
        if self.cooldown_counter > 0:
            return
        self.wait += 1
        if self.wait >= self.patience:
            lr = self.model.learning_rate
            if lr > self.min_lr:
                new_lr = max(lr * self.factor, self.min_lr)
                self.model.lr_scale = self.model.lr_scale * new_lr / lr
                if self.verbose:
                    print(f"Epoch {epoch + 1}: ReduceLROnPlateau lowered the learning rate to {new_lr:.3g}")
            self.cooldown_counter = self.cooldown
            self.wait = 0


class CSVLogger(Callback):
    """Append each epoch's logs to the CSV file ``filename``, one row per epoch: an ``epoch``
    column (0-based, as Keras) then the logged names in sorted order, with a header row first.
    ``append=True`` adds to an existing file (no second header when it already has content).
    The file is flushed after each row and closed at the end of training. Values missing from
    an epoch's logs are written as ``NA``."""

    def __init__(self, filename, separator=",", append=False):
        super().__init__()
        try:
            self.filename = os.fsdecode(os.fspath(filename))
        except TypeError:
            raise TypeError(f"CSVLogger: filename must be a path (str or os.PathLike); received {filename!r}") from None
        if not self.filename:
            raise ValueError("CSVLogger: filename must not be empty")
        if not isinstance(separator, str) or len(separator) != 1:
            raise ValueError(f"CSVLogger: separator must be one character; received {separator!r}")
        self.sep = separator
        self.append = _flag("CSVLogger", "append", append)
        self.keys = None
        self._file = None
        self._writer = None

    def on_train_begin(self, logs=None):
        has_content = (self.append and os.path.exists(self.filename) and os.path.getsize(self.filename) > 0)
        self._write_header = not has_content
        self._file = open(self.filename, "a" if self.append else "w", newline="", encoding="utf-8")
        self._writer = None
        self.keys = None

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self.keys is None:
            self.keys = sorted(logs)
        if self._writer is None:
            self._writer = csv.DictWriter(self._file, fieldnames=["epoch"] + self.keys, delimiter=self.sep,
                                          extrasaction="ignore")
            if self._write_header:
                self._writer.writeheader()
        row = {"epoch": epoch}
        row.update({k: logs.get(k, "NA") for k in self.keys})
        self._writer.writerow(row)
        self._file.flush()

    def on_train_end(self, logs=None):
        if self._file is not None:
            self._file.close()
            self._file = None
            self._writer = None


class LearningRateScheduler(Callback):
    """At the start of each epoch set the learning rate to ``schedule(epoch, lr)`` (epoch
    0-based, ``lr`` the current rate; a one-argument ``schedule(epoch)`` works too), as Keras.
    The rate is set through ``model.lr_scale``, so it is saved with the model and replaced by
    the next epoch's call; it must be a finite number > 0. The optimizer's learning rate must
    be a number, not a schedule (use one or the other). ``verbose=1`` prints each change.
    Adds ``learning_rate`` to the epoch's logs."""

    def __init__(self, schedule, verbose=0):
        super().__init__()
        if not callable(schedule):
            raise TypeError(f"LearningRateScheduler: schedule must be callable as schedule(epoch, lr); "
                            f"received {schedule!r}")
        self.schedule = schedule
        self.verbose = _verbosity("LearningRateScheduler", verbose)
        self._two_args = _accepts_two_args(schedule)

    def on_epoch_begin(self, epoch, logs=None):
        opt = self.model.optimizer
        base = opt.learning_rate
        if not isinstance(base, float):
            raise ValueError("LearningRateScheduler: the optimizer's learning_rate is a schedule "
                             f"({type(base).__name__}); give the optimizer a number, or drop the callback")
        lr = self.model.learning_rate
        new_lr = self.schedule(epoch, lr) if self._two_args else self.schedule(epoch)
        value = _real("LearningRateScheduler", f"the learning rate schedule(epoch={epoch}) returns", new_lr)
        if not value > 0.0:
            raise ValueError(f"LearningRateScheduler: schedule(epoch={epoch}) must return a learning rate > 0; "
                             f"received {new_lr!r}")
        self.model.lr_scale = value / base
        if self.verbose:
            print(f"\nEpoch {epoch + 1}: LearningRateScheduler setting learning rate to {value}.")

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = self.model.learning_rate


def _accepts_two_args(fn):
    """Whether fn can be called as fn(epoch, lr) (Keras tries that first, then fn(epoch))."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return True
    try:
        sig.bind(0, 0.1)
        return True
    except TypeError:
        try:
            sig.bind(0)
        except TypeError:
            raise TypeError(f"LearningRateScheduler: schedule must be callable as schedule(epoch, lr) or "
                            f"schedule(epoch); its signature is {sig}") from None
        return False
