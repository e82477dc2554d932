"""Callbacks: Keras-style hooks at epoch boundaries (the epoch itself runs in C++).

``fit(..., callbacks=[...])`` calls, on each callback, ``set_model(model)``, then
``on_train_begin(logs)``, ``on_epoch_begin(epoch, logs)`` / ``on_epoch_end(epoch, logs)`` for
each epoch, and ``on_train_end(logs)``. Setting ``model.stop_training = True`` ends training
after the current epoch.
"""

from __future__ import annotations

import math
import os
import sys

import numpy as np

__all__ = ["Callback", "EarlyStopping", "ModelCheckpoint", "TerminateOnNaN", "LambdaCallback",
           "ReduceLROnPlateau"]


class Callback:
    def __init__(self):
        self.model = None

    def set_model(self, model):
        self.model = model

    def on_train_begin(self, logs=None):
        pass

    def on_train_end(self, logs=None):
        pass

    def on_epoch_begin(self, epoch, logs=None):
        pass

    def on_epoch_end(self, epoch, logs=None):
        pass


def _monitor_op(cls, monitor, mode):
    if mode not in ("auto", "min", "max"):
        raise ValueError(f"{cls}: mode must be 'auto', 'min' or 'max'; received {mode!r}")
    if mode == "auto":
        mode = "max" if ("acc" in monitor) else "min"
    return mode


class _Monitor(Callback):
    """Tracks the best value of ``monitor`` in the direction given by ``mode``."""

    def __init__(self, monitor, mode, min_delta=0.0):
        super().__init__()
        if not isinstance(monitor, str):
            raise TypeError(f"{type(self).__name__}: monitor must be a metric name; received {monitor!r}")
        self.monitor = monitor
        self.mode = _monitor_op(type(self).__name__, monitor, mode)
        self.min_delta = abs(float(min_delta))
        self.best = None

    def _value(self, logs):
        if self.monitor not in (logs or {}):
            raise ValueError(f"{type(self).__name__}: monitor={self.monitor!r} is not among the logged "
                             f"metrics {sorted(logs or {})}")
        return float(logs[self.monitor])

    def _improved(self, value):
        if self.best is None:
            return math.isfinite(value)
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta


class EarlyStopping(_Monitor):
    """Stop when ``monitor`` has not improved by more than ``min_delta`` for ``patience``
    epochs; with ``restore_best_weights`` the weights of the best epoch are put back."""

    def __init__(self, monitor="val_loss", min_delta=0.0, patience=0, mode="auto",
                 restore_best_weights=False, verbose=0):
        super().__init__(monitor, mode, min_delta)
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 0:
            raise ValueError(f"EarlyStopping: patience must be an integer >= 0; received {patience!r}")
        self.patience = patience
        self.restore_best_weights = bool(restore_best_weights)
        self.verbose = verbose

    def on_train_begin(self, logs=None):
        self.best = None
        self.wait = 0
        self.best_epoch = None
        self.best_weights = None
        self.stopped_epoch = None

    def on_epoch_end(self, epoch, logs=None):
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

    def on_train_end(self, logs=None):
        if self.stopped_epoch is not None and self.verbose:
            print(f"Early stopping after epoch {self.stopped_epoch + 1}: best {self.monitor} "
                  f"{self.best:.4f} at epoch {self.best_epoch + 1}")
        if self.restore_best_weights and self.best_weights is not None:
            self.model.set_weights(self.best_weights)
            if self.verbose:
                print(f"Restored the weights of epoch {self.best_epoch + 1}")


class ModelCheckpoint(_Monitor):
    """Save the model after each epoch (or only when ``monitor`` improves, with
    ``save_best_only``). ``filepath`` may contain ``{epoch}`` and metric names, e.g.
    ``"ckpt-{epoch:02d}-{val_loss:.3f}.crm"``. Files are written atomically
    (temporary file + rename), so a crash never leaves a half-written checkpoint."""

    def __init__(self, filepath, monitor="val_loss", save_best_only=False, mode="auto", verbose=0):
        super().__init__(monitor, mode)
        self.filepath = os.fspath(filepath)
        self.save_best_only = bool(save_best_only)
        self.verbose = verbose

    def on_train_begin(self, logs=None):
        self.best = None

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self.save_best_only:
            if not self._improved(self._value(logs)):
                return
            self.best = self._value(logs)
        path = self.filepath.format(epoch=epoch + 1, **logs)
        self.model.save(path)
        if self.verbose:
            print(f"Epoch {epoch + 1}: saved the model to {path}")


class TerminateOnNaN(Callback):
    """Stop training as soon as the loss becomes NaN or infinite. The C++ loop checks every
    batch and puts back the weights of the last step whose loss was finite."""

    def on_train_begin(self, logs=None):
        self.model._core.set_stop_on_nan(True)
        self.stopped_epoch = None

    def on_epoch_end(self, epoch, logs=None):
        if self.model._last_epoch_stats.get("stopped_nan") or not math.isfinite(logs.get("loss", 0.0)):
            self.stopped_epoch = epoch
            self.model.stop_training = True
            print(f"TerminateOnNaN: the loss became NaN or infinite in epoch {epoch + 1}; training "
                  "stopped with the weights of the last finite step. Try a lower learning rate, "
                  "gradient clipping (clipnorm=...) or normalised inputs.", file=sys.stderr)

    def on_train_end(self, logs=None):
        self.model._core.set_stop_on_nan(False)


class LambdaCallback(Callback):
    """A callback from plain functions: ``LambdaCallback(on_epoch_end=lambda epoch, logs: ...)``."""

    def __init__(self, on_epoch_begin=None, on_epoch_end=None, on_train_begin=None, on_train_end=None):
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

    def __init__(self, monitor="val_loss", factor=0.1, patience=10, mode="auto", min_delta=1e-4,
                 cooldown=0, min_lr=0.0, verbose=0):
        super().__init__(monitor, mode, min_delta)
        factor = float(factor)
        if not (0.0 < factor < 1.0):
            raise ValueError(f"ReduceLROnPlateau: factor must be in (0, 1); received {factor!r}")
        self.factor = factor
        self.patience = int(patience)
        self.cooldown = int(cooldown)
        self.min_lr = float(min_lr)
        self.verbose = verbose

    def on_train_begin(self, logs=None):
        self.best = None
        self.wait = 0
        self.cooldown_counter = 0

    def on_epoch_end(self, epoch, logs=None):
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
            core = self.model._core
            lr = core.current_learning_rate()
            if lr > self.min_lr:
                new_lr = max(lr * self.factor, self.min_lr)
                core.set_lr_scale(core.lr_scale * new_lr / lr)
                if self.verbose:
                    print(f"Epoch {epoch + 1}: ReduceLROnPlateau lowered the learning rate to {new_lr:.3g}")
            self.cooldown_counter = self.cooldown
            self.wait = 0
