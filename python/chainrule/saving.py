"""Model files: ``save_model`` / ``load_model``.

A model file is an uncompressed NumPy ``.npz`` archive: ``__chainrule__`` holds UTF-8 JSON
metadata (format, version, config, compile), ``param_000``, ``param_001``, … the weights in
:meth:`Sequential.get_weights` order, and ``optimizer_000``, … the optimizer's state
(momentum, Adam moments) over the flat parameter block, so training resumes exactly.
Loading never unpickles or executes anything.
"""

from __future__ import annotations

import io
import json
import os
import tempfile

import numpy as np

from . import optimizers as _optimizers

__all__ = ["save_model", "load_model"]

_FORMAT = "chainrule.model"
_FORMAT_VERSION = 1


def save_model(model, path):
    """Write ``model`` to ``path``. The file is written to a temporary name and renamed, so a
    crash never leaves a partial file."""
    if not model.built:
        raise ValueError("the model is not built yet: nothing to save")
    path = os.fspath(path)
    meta = {"format": _FORMAT, "version": _FORMAT_VERSION, "config": model.get_config()}
    opt_state = []
    if model._compiled:
        opt_state = model._core.get_optimizer_state()
        meta["compile"] = {"loss": model.loss, "optimizer": model.optimizer.get_config(),
                           "metrics": list(model.metrics), "optimizer_step": int(model._core.step_count),
                           "lr_scale": float(model._core.lr_scale), "optimizer_slots": len(opt_state)}
    arrays = {"__chainrule__": np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)}
    for i, w in enumerate(model.get_weights()):
        arrays[f"param_{i:03d}"] = w
    for i, st in enumerate(opt_state):
        arrays[f"optimizer_{i:03d}"] = st
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".chainrule-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(buf.getvalue())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_model(path):
    """Load a model written by :meth:`Sequential.save`. Never executes code from the file."""
    from .models import Sequential

    path = os.fspath(path)
    with np.load(path, allow_pickle=False) as data:
        if "__chainrule__" not in data.files:
            raise ValueError(f"{path!r} is not a chainrule model file (no __chainrule__ entry)")
        meta = json.loads(bytes(data["__chainrule__"]).decode("utf-8"))
        if meta.get("format") != _FORMAT:
            raise ValueError(f"{path!r} is not a chainrule model file (format {meta.get('format')!r})")
        if meta.get("version", 0) > _FORMAT_VERSION:
            raise ValueError(f"{path!r} was written by a newer chainrule (format version {meta['version']})")
        weights = [data[k] for k in sorted(k for k in data.files if k.startswith("param_"))]
        opt_state = [data[k] for k in sorted(k for k in data.files if k.startswith("optimizer_"))]
    model = Sequential.from_config(meta["config"])
    if not model.built:
        raise ValueError(f"{path!r}: the saved model has no input shape")
    model.set_weights(weights)
    comp = meta.get("compile")
    if comp:
        model.compile(optimizer=_optimizers.get(comp["optimizer"]), loss=comp["loss"], metrics=comp["metrics"])
        if opt_state:
            model._core.set_optimizer_state([np.ascontiguousarray(a, dtype=model._np_dtype()) for a in opt_state])
        model._core.set_step_count(int(comp.get("optimizer_step", 0)))
        model._core.set_lr_scale(float(comp.get("lr_scale", 1.0)))
    return model
