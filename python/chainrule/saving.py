"""Model files: ``save_model`` / ``load_model``, and the same format in memory:
``model_to_bytes`` / ``model_from_bytes`` (what pickling and copying a model use).

A model file is an uncompressed NumPy ``.npz`` archive: ``__chainrule__`` holds UTF-8 JSON
metadata (format, version, config, compile), ``param_000``, ``param_001``, … the weights in
:meth:`Sequential.get_weights` order, and ``optimizer_000``, … the optimizer's state
(momentum, Adam moments) over the flat parameter block, so training resumes exactly.

Loading never unpickles or executes anything, and treats the file as untrusted: a file that
exists and can be read but is damaged (truncated, bit flips), foreign (another archive) or
crafted raises :class:`ModelFormatError` (a ValueError) saying what is wrong, before anything
large is allocated. The limits:

- the metadata is at most 16 MiB of JSON nested at most 32 levels deep;
- archive entries are stored uncompressed (as ``save_model`` writes them), each of the size
  its ``.npy`` header declares;
- weights and optimizer state are float32/float64 arrays holding finite values, of exactly
  the count, shapes and dtype the saved config builds: the weights are in the file, so a small
  file never builds a large model; BatchNormalization's moving variance is >= 0;
- one sample's input and each layer's output hold at most 2**31 - 1 values, as for any model.

The bytes of :func:`model_to_bytes` are such a file's contents, read back by the same checks.
They may also hold a model that is not built yet: its config (``input_shape`` null, no
weights) and compile settings (no optimizer state, step 0). :func:`load_model` accepts only
built models, as :func:`save_model` writes only those.

Pickling a model (``pickle``, ``copy``, multiprocessing) stores these bytes, and unpickling
reads them with the same checks. That guards the model's part only: ``pickle.loads`` itself
runs whatever code its input names, so unpickle only data you trust, and exchange untrusted
models as model files or ``model_to_bytes`` bytes.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import math
import os
import re
import secrets
import stat
import zipfile
from typing import TYPE_CHECKING

import numpy as np

from . import layers as _layers
from . import losses as _losses
from . import metrics as _metrics
from . import optimizers as _optimizers

if TYPE_CHECKING:
    from .models import Sequential

__all__ = ["save_model", "load_model", "model_to_bytes", "model_from_bytes", "ModelFormatError",
           "save_weights", "load_weights", "WEIGHTS_SUFFIX"]

_FORMAT = "chainrule.model"
_FORMAT_VERSION = 1

MAX_METADATA_BYTES = 16 << 20   # the JSON metadata
MAX_METADATA_DEPTH = 32         # nesting of lists and objects in it
_MAX_NPY_HEADER = 10000         # numpy's own default bound on a .npy header
_MAX_STEP = 1 << 62             # optimizer_step bound

_ENTRY = re.compile(r"(__chainrule__|param_(\d{3,9})|optimizer_(\d{3,9}))\.npy")
_TOP_KEYS = {"format", "version", "config", "compile"}
_COMPILE_KEYS = {"loss", "optimizer", "metrics", "optimizer_step", "lr_scale", "optimizer_slots"}
# Optimizer state slots holding squared gradients (never negative), by optimizer kind; the
# slot order is the core's (csrc/optim/step_impl.h): Adam m, v, v_max; RMSprop v, momentum;
# Adagrad the accumulator.
_NONNEGATIVE_SLOTS = {"adam": (1, 2), "rmsprop": (0,), "adagrad": (0,)}
# Errors the model/layer/optimizer constructors raise on a bad config.
_CONFIG_ERRORS = (ValueError, TypeError, ArithmeticError, LookupError, AttributeError, RecursionError)


class ModelFormatError(ValueError):
    """A model file that exists and can be read is damaged, foreign or crafted: not a file
    :func:`save_model` wrote (or one changed since). The message names the file and says what
    is wrong with it."""


# -- saving ---------------------------------------------------------------------------------

def save_model(model: Sequential, path: str | os.PathLike[str]) -> None:
    """Write ``model`` to ``path``. The file is written to a temporary name in the same folder,
    flushed to disk and renamed over ``path``, so a crash never leaves a partial file. A new
    file gets the permissions ``open()`` would give it (0o666 less the umask); a file that is
    replaced keeps its permissions. Saving a model that another thread is training (inside
    ``fit``) raises RuntimeError; a callback of that ``fit`` may save it. Weights or optimizer
    state holding NaN or infinite values (a diverged fit) raise ValueError and write nothing:
    the loader would refuse such a file."""
    if not model._build_if_declared():
        raise ValueError("the model is not built yet: nothing to save")
    path = os.fspath(path)
    arrays = _model_arrays(model, "save")
    _check_finite(model, arrays, "save")  # the loader refuses them: never write such a file
    _write_atomically(path, lambda f: np.savez(f, **arrays))


def model_to_bytes(model):
    """``model`` in the model-file format (what :func:`save_model` writes), as bytes;
    :func:`model_from_bytes` reads them back. Unlike a file, the bytes may hold a model that
    is not built yet. Raises RuntimeError while another thread trains the model, and
    ValueError when its weights or optimizer state hold NaN or infinite values (the loader
    refuses those)."""
    return _to_bytes(model, "model_to_bytes")


def _to_bytes(model, what):
    arrays = _model_arrays(model, what)
    _check_finite(model, arrays, what)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _check_finite(model, arrays, what):
    """ValueError naming the first weight tensor or optimizer state slot of ``arrays`` that
    holds NaN or infinite values."""
    for key, arr in arrays.items():
        if key != "__chainrule__" and not np.isfinite(arr).all():
            if key.startswith("param_"):
                i = int(key[6:])
                layer, pname = [(l.name, n) for l in model._layers for n, *_ in l.param_specs()][i]
                entry = f"weights[{i}] ({pname} of layer {layer!r})"
            else:
                entry = f"optimizer state slot {int(key[10:])}"
            raise ValueError(f"{what}: model {model.name!r}: {entry} holds NaN or infinite values; a "
                             "serialized model holds finite values only (set finite weights first)")


def _model_arrays(model, what):
    """The archive entries of ``model``: the metadata, the weights and the optimizer state,
    read together while no other thread trains the model (``fit`` waits to start)."""
    from .models import _TRAINING_MARK_LOCK
    with _TRAINING_MARK_LOCK:
        model._check_not_training(what)
        config = model.get_config()
        meta = {"format": _FORMAT, "version": _FORMAT_VERSION, "config": config}
        opt_state = []
        if model._compiled:
            if model.built:
                opt_state = model._core.get_optimizer_state()
                step, lr_scale = int(model._core.step_count), float(model._core.lr_scale)
            else:  # compile settings only: the core (and its state) comes with build
                step, lr_scale = 0, 1.0
            meta["compile"] = {"loss": model._loss_spec.config(), "optimizer": model.optimizer.get_config(),
                               "metrics": [_metrics.config(e) for e in model._metric_entries],
                               "optimizer_step": step,
                               "lr_scale": lr_scale, "optimizer_slots": len(opt_state)}
        arrays = {"__chainrule__": np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)}
        for i, w in enumerate(model._weights()):  # an unbuilt model stays unbuilt
            arrays[f"param_{i:03d}"] = w
        for i, st in enumerate(opt_state):
            arrays[f"optimizer_{i:03d}"] = st
    return arrays


def _write_atomically(path, write):
    folder = os.path.dirname(os.path.abspath(path))
    keep_mode = None
    with contextlib.suppress(OSError):
        st = os.stat(path)
        if stat.S_ISREG(st.st_mode):
            keep_mode = stat.S_IMODE(st.st_mode)
    # os.open with mode 0o666 lets the kernel apply the umask (and a default ACL), exactly as
    # open() does; tempfile.mkstemp would force 0o600. O_EXCL: never reuse an existing name.
    flags = (os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
             | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0))
    for _ in range(100):
        tmp = os.path.join(folder, f".chainrule-{secrets.token_hex(8)}.tmp")
        try:
            fd = os.open(tmp, flags, 0o666)
            break
        except FileExistsError:
            continue
    else:
        raise FileExistsError(f"could not create a temporary file in {folder!r}")
    try:
        with os.fdopen(fd, "wb") as f:
            if keep_mode is not None and hasattr(os, "fchmod"):
                os.fchmod(f.fileno(), keep_mode)
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    # Make the rename itself durable (POSIX; best effort).
    if hasattr(os, "O_DIRECTORY"):
        with contextlib.suppress(OSError):
            dfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)


# -- loading --------------------------------------------------------------------------------

def _short(value, limit=200):
    """repr(value), cut to ``limit`` characters (values from a crafted file can be huge)."""
    try:
        r = repr(value)
    except RecursionError:
        r = f"<deeply nested {type(value).__name__}>"
    return r if len(r) <= limit else r[:limit] + "…"


def _why(e, limit=500):
    """An exception's message for inclusion in ours, cut to ``limit`` characters."""
    try:
        s = str(e) or type(e).__name__
    except RecursionError:
        s = type(e).__name__
    return s if len(s) <= limit else s[:limit] + "…"


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


class _Archive:
    """The file's zip entries, read as untrusted data: every entry is checked to be a stored
    (uncompressed) .npy array of the size its header declares before its data is read, so no
    read allocates more than the file's own size."""

    def __init__(self, source, f, kind="model"):
        self.source = source  # how messages name the data: the file's repr(path)
        self.kind = kind      # "model" or "weights": what messages call the file
        self.file_size = f.seek(0, io.SEEK_END)
        f.seek(0)
        try:
            self.zf = zipfile.ZipFile(f)
            infos = self.zf.infolist()
        except Exception as e:  # BadZipFile, EOFError, OSError, ValueError, … on any damage
            raise self.foreign(f"not a zip archive or a damaged one: {_why(e)}") from e
        self.params = {}
        self.slots = {}
        self.meta = None
        seen = set()
        unknown = []
        total = 0
        for info in infos:
            name = info.filename
            if name in seen:
                raise self.damaged(f"the archive holds entry {_short(name)} twice")
            seen.add(name)
            m = _ENTRY.fullmatch(name)
            if m is not None and m.group(1) != "__chainrule__":
                idx = int(m.group(2) or m.group(3))
                if name != (f"param_{idx:03d}.npy" if m.group(2) else f"optimizer_{idx:03d}.npy"):
                    m = None
            if m is None:
                unknown.append(name)
                continue
            if m.group(2) is not None:
                self.params[int(m.group(2))] = info
            elif m.group(3) is not None:
                self.slots[int(m.group(3))] = info
            else:
                self.meta = info
            if info.flag_bits & 0x1:
                raise self.damaged(f"archive entry {name!r} is encrypted")
            if info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size:
                raise self.damaged(f"archive entry {name!r} is compressed; model files store entries "
                                   "uncompressed")
            total += info.file_size
            if total > self.file_size:
                raise self.damaged(f"archive entry {name!r} declares {info.file_size} bytes; the entries "
                                   f"would hold more than the file's {self.file_size}")
        if self.meta is None:
            raise self.foreign("no __chainrule__ entry")
        if unknown:
            raise self.damaged(f"unexpected archive entry {_short(unknown[0])}")
        for what, entries in (("param", self.params), ("optimizer", self.slots)):
            if sorted(entries) != list(range(len(entries))):
                missing = min(set(range(len(entries))) - set(entries))
                raise self.damaged(f"the archive lacks entry {what}_{missing:03d} (it has "
                                   f"{len(entries)} {what} entries, numbered up to {max(entries):03d})")

    def foreign(self, why):
        return ModelFormatError(f"{self.source} is not a chainrule {self.kind} file ({why})")

    def damaged(self, why):
        return ModelFormatError(f"{self.source} is damaged or not a valid chainrule {self.kind} file: {why}")

    def header(self, info):
        """(open entry, shape, dtype, fortran_order) after checking the entry's size."""
        name = info.filename[:-4]
        fp = None
        try:
            fp = self.zf.open(info)
            version = np.lib.format.read_magic(fp)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp, max_header_size=_MAX_NPY_HEADER)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp, max_header_size=_MAX_NPY_HEADER)
            else:
                raise ValueError(f".npy format version {version} is not supported")
            start = fp.tell()
        except Exception as e:
            if fp is not None:
                fp.close()
            raise self.damaged(f"entry {name!r} is not a readable .npy array: {_why(e)}") from e
        try:
            if dtype.hasobject:
                raise self.damaged(f"entry {name!r} holds Python objects (pickled data); model files never "
                                   "do, and loading never unpickles them (allow_pickle=False)")
            if not isinstance(shape, tuple) or any(not _is_int(d) or d < 0 for d in shape):
                raise self.damaged(f"entry {name!r} has an invalid shape {_short(shape)}")
            nbytes = math.prod(shape) * dtype.itemsize
            if start + nbytes != info.file_size:
                raise self.damaged(f"entry {name!r} declares shape {shape} of {dtype} ({nbytes} bytes) "
                                   f"but holds {info.file_size - start} bytes of data")
        except BaseException:
            fp.close()
            raise
        return fp, shape, dtype, fortran

    def data(self, info, fp, shape, dtype, fortran):
        """The entry's array, read from ``fp`` (positioned after the header; closed here). The
        zip CRC is checked as the last byte is read."""
        name = info.filename[:-4]
        count = math.prod(shape)
        try:
            with fp:
                out = np.empty(count, dtype=dtype)
                view = out.view(np.uint8)
                pos, nbytes = 0, view.size
                while pos < nbytes:
                    chunk = fp.read(min(1 << 24, nbytes - pos))
                    if not chunk:
                        raise EOFError("the data ends early")
                    view[pos:pos + len(chunk)] = np.frombuffer(chunk, dtype=np.uint8)
                    pos += len(chunk)
                if fp.read(1):
                    raise ValueError("the entry holds more data than its header declares")
        except Exception as e:
            raise self.damaged(f"entry {name!r} could not be read: {_why(e)}") from e
        if fortran:
            return out.reshape(shape[::-1]).transpose()
        return out.reshape(shape)

    def float_array(self, info, want_shape, want_dtype, what):
        """A finite float array of ``want_shape`` in ``want_dtype`` (either byte order is
        accepted in the file)."""
        name = info.filename[:-4]
        fp, shape, dtype, fortran = self.header(info)
        try:
            if dtype.kind != "f" or dtype.itemsize != want_dtype.itemsize or dtype.fields is not None:
                raise self.damaged(f"entry {name!r} ({what}) has dtype {dtype}; the model needs {want_dtype}")
            if tuple(shape) != tuple(want_shape):
                raise self.damaged(f"entry {name!r} ({what}) has shape {tuple(shape)}; the model needs "
                                   f"shape {tuple(want_shape)}")
        except BaseException:
            fp.close()
            raise
        arr = np.ascontiguousarray(self.data(info, fp, shape, dtype, fortran), dtype=want_dtype)
        flat = arr.reshape(-1)
        step = 1 << 20  # in chunks: no array-sized temporary
        if not all(np.isfinite(flat[i:i + step]).all() for i in range(0, flat.size, step)):
            bad = tuple(int(i) for i in np.argwhere(~np.isfinite(arr))[0])
            raise self.damaged(f"entry {name!r} ({what}) holds NaN or infinite values (first at index "
                               f"{bad}: {arr[bad]!r})")
        return arr

    def metadata(self):
        info = self.meta
        fp, shape, dtype, fortran = self.header(info)
        try:
            if dtype != np.uint8 or len(shape) != 1:
                raise self.damaged(f"entry '__chainrule__' must be a 1-D uint8 array; it has shape {shape} "
                                   f"and dtype {dtype}")
            if shape[0] > MAX_METADATA_BYTES:
                raise self.damaged(f"the metadata is {shape[0]} bytes; the limit is {MAX_METADATA_BYTES}")
        except BaseException:
            fp.close()
            raise
        raw = self.data(info, fp, shape, dtype, fortran).tobytes()
        try:
            meta = json.loads(raw.decode("utf-8"))
        except RecursionError as e:
            raise self.damaged("the metadata JSON is nested too deeply") from e
        except (ValueError, UnicodeDecodeError) as e:
            raise self.damaged(f"the metadata is not valid UTF-8 JSON: {_why(e)}") from e
        if not isinstance(meta, dict):
            raise self.damaged(f"the metadata must be a JSON object; it is a {type(meta).__name__}")
        depth = _depth(meta)
        if depth > MAX_METADATA_DEPTH:
            raise self.damaged(f"the metadata JSON is nested {depth} levels deep; the limit is "
                               f"{MAX_METADATA_DEPTH}")
        return meta


def _depth(obj):
    """Nesting depth of lists and dicts (iterative: no recursion on crafted input)."""
    deepest = 0
    stack = [(obj, 1)]
    while stack:
        o, d = stack.pop()
        if isinstance(o, dict):
            o = o.values()
        elif not isinstance(o, list):
            continue
        deepest = max(deepest, d)
        if d > MAX_METADATA_DEPTH:
            return d
        stack.extend((v, d + 1) for v in o)
    return deepest


def _check_metadata(meta, ar, allow_unbuilt):
    """Types and values of every field saving.py writes; returns (config, compile or None).
    With ``allow_unbuilt``, the config of a model that is not built (``input_shape`` null,
    possibly no layers) is accepted too."""
    _check_format(meta, ar, _FORMAT, _FORMAT_VERSION, "format")
    extra = set(meta) - _TOP_KEYS
    if extra:
        raise ar.damaged(f"unexpected metadata keys {sorted(extra)}")

    from .models import Sequential
    config = meta.get("config")
    if not isinstance(config, dict):
        raise ar.damaged(f"'config' must be an object; received {_short(config)}")
    keys = set(Sequential().get_config())
    if set(config) != keys:
        missing, extra = sorted(keys - set(config)), sorted(set(config) - keys)
        raise ar.damaged("the model config " + "; ".join(
            s for s in (f"lacks keys {missing}" if missing else "", f"has unexpected keys {extra}" if extra else "")
            if s))
    if config["name"] is not None and not isinstance(config["name"], str):
        raise ar.damaged(f"config 'name' must be a string; received {_short(config['name'])}")
    if config["dtype"] not in ("float32", "float64"):
        raise ar.damaged(f"config 'dtype' must be 'float32' or 'float64'; received {_short(config['dtype'])}")
    seed = config["seed"]
    if seed is not None and (not _is_int(seed) or seed < 0):
        raise ar.damaged(f"config 'seed' must be a non-negative integer or null; received {_short(seed)}")
    shape = config["input_shape"]
    unbuilt = allow_unbuilt and shape is None
    if unbuilt:
        pass
    elif (not isinstance(shape, list) or not shape
            or any(not _is_int(d) or not 1 <= d <= _layers.MAX_SIZE for d in shape)):
        raise ar.damaged("config 'input_shape' must be a non-empty list of positive integer sizes; "
                         f"received {_short(shape)}")
    elif math.prod(shape) > _layers.MAX_SIZE:
        raise ar.damaged(f"config 'input_shape' {shape} has {math.prod(shape)} values per sample; the limit "
                         f"is {_layers.MAX_SIZE}")
    layers = config["layers"]
    if not isinstance(layers, list) or not (layers or unbuilt):
        raise ar.damaged(f"config 'layers' must be a non-empty list; received {_short(layers)}")
    for i, layer in enumerate(layers):
        if not isinstance(layer, dict) or set(layer) != {"class_name", "config"}:
            raise ar.damaged(f"config layers[{i}] must be an object with keys 'class_name' and 'config'; "
                          f"received {_short(layer)}")
        if not isinstance(layer["class_name"], str) or layer["class_name"] not in _layers._REGISTRY:
            raise ar.damaged(f"config layers[{i}] has unknown class_name {_short(layer['class_name'])}; "
                          f"known: {sorted(_layers._REGISTRY)}")
        if not isinstance(layer["config"], dict):
            raise ar.damaged(f"config layers[{i}]['config'] must be an object; received {_short(layer['config'])}")

    comp = meta.get("compile")
    if comp is None:
        return config, None
    if not isinstance(comp, dict):
        raise ar.damaged(f"'compile' must be an object or null; received {_short(comp)}")
    if set(comp) != _COMPILE_KEYS:
        missing, extra = sorted(_COMPILE_KEYS - set(comp)), sorted(set(comp) - _COMPILE_KEYS)
        raise ar.damaged("the compile settings " + "; ".join(
            s for s in (f"lack keys {missing}" if missing else "", f"have unexpected keys {extra}" if extra else "")
            if s))
    loss = comp["loss"]
    if not (isinstance(loss, str) or (isinstance(loss, dict) and set(loss) == {"name", "from_logits"}
                                      and isinstance(loss["name"], str) and isinstance(loss["from_logits"], bool))):
        raise ar.damaged(f"compile 'loss' must be a loss name or an object with 'name' and 'from_logits'; received "
                         f"{_short(comp['loss'])}")
    if not isinstance(comp["optimizer"], dict):
        raise ar.damaged(f"compile 'optimizer' must be an optimizer config object; received "
                         f"{_short(comp['optimizer'])}")
    metrics = comp["metrics"]
    if not isinstance(metrics, list) or any(
            not isinstance(m, str) and not (isinstance(m, dict) and set(m) == {"class_name", "config"}
                                            and isinstance(m["config"], dict)) for m in metrics):
        raise ar.damaged(f"compile 'metrics' must be a list of names or metric configs; received {_short(metrics)}")
    step = comp["optimizer_step"]
    if not _is_int(step) or not 0 <= step < _MAX_STEP:
        raise ar.damaged(f"compile 'optimizer_step' must be an integer in [0, 2**62); received {_short(step)}")
    lr_scale = comp["lr_scale"]
    if not _is_number(lr_scale) or not (math.isfinite(lr_scale) and lr_scale > 0):
        raise ar.damaged(f"compile 'lr_scale' must be a finite number > 0; received {_short(lr_scale)}")
    slots = comp["optimizer_slots"]
    if not _is_int(slots) or not 0 <= slots <= 16:
        raise ar.damaged(f"compile 'optimizer_slots' must be a small non-negative integer; received {_short(slots)}")
    return config, comp


def load_model(path: str | os.PathLike[str]) -> Sequential:
    """Load a model written by :meth:`Sequential.save`. Never executes code from the file.

    A missing file raises FileNotFoundError (a folder IsADirectoryError, an unreadable file
    PermissionError); a file that is damaged, foreign or crafted raises
    :class:`ModelFormatError` saying what is wrong with it."""
    path = os.fspath(path)
    st = os.stat(path)  # FileNotFoundError / PermissionError as they are
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
    if not stat.S_ISREG(st.st_mode):
        raise ModelFormatError(f"{path!r} is not a chainrule model file (not a regular file)")
    with open(path, "rb") as f:
        return _read_model(f, repr(path), allow_unbuilt=False)


def model_from_bytes(data):
    """The model in ``data``, bytes from :func:`model_to_bytes` (or a model file's contents),
    read with the same checks as :func:`load_model`: never executes code from the data, and
    damaged, foreign or crafted bytes raise :class:`ModelFormatError`."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"model_from_bytes: data must be bytes; received {type(data).__name__}")
    return _read_model(io.BytesIO(data), "the serialized model", allow_unbuilt=True)


def _read_model(f, source, allow_unbuilt):
    """The model in the open binary file ``f``; ``source`` names it in messages."""
    from .models import Sequential

    ar = _Archive(source, f)

    def invalid(e):
        return ModelFormatError(f"{source}: its model config is invalid: {_why(e)}")

    def bad_compile(e):
        return ModelFormatError(f"{source}: its compile settings are invalid: {_why(e)}")

    meta = ar.metadata()
    config, comp = _check_metadata(meta, ar, allow_unbuilt)
    if config["input_shape"] is None:
        return _read_unbuilt(ar, config, comp, invalid, bad_compile)

    # Layers and shapes in Python first: nothing is allocated until the stored arrays are
    # known to match what the config builds.
    try:
        model = Sequential.from_config({**config, "input_shape": None})
        shape = _layers.shape_tuple("the saved model", "input_shape", config["input_shape"])
        model._assign_names()
        for layer in model._layers:
            shape = layer.build(shape)
        specs = [(layer, pname, tuple(int(d) for d in pshape))
                 for layer in model._layers for pname, pshape, *_ in layer.param_specs()]
        _layers.check_size("the saved model's parameter count",
                           (sum(math.prod(s) for *_, s in specs),))
    except _CONFIG_ERRORS as e:
        raise invalid(e) from e
    np_dtype = np.dtype(config["dtype"])
    if len(ar.params) != len(specs):
        raise ar.damaged(f"it holds {len(ar.params)} weight arrays; the saved config builds a model "
                         f"with {len(specs)}")
    weights = []
    for i, (layer, pname, pshape) in enumerate(specs):
        arr = ar.float_array(ar.params[i], pshape, np_dtype, f"the {pname} of layer {layer.name!r}")
        if pname == "moving_variance" and arr.size and arr.min() < 0:
            raise ar.damaged(f"entry 'param_{i:03d}' (the moving_variance of layer {layer.name!r}) holds "
                             f"negative values ({arr.min()!r}); a variance is >= 0")
        weights.append(arr)

    optimizer = loss = None
    if comp is not None:
        try:
            _losses.get(comp["loss"])  # a built-in loss (a file never holds a custom one)
            loss = comp["loss"]
            optimizer = _optimizers.get(comp["optimizer"])
        except _CONFIG_ERRORS as e:
            raise bad_compile(e) from e
        if len(ar.slots) != comp["optimizer_slots"]:
            raise ar.damaged(f"it holds {len(ar.slots)} optimizer state arrays; its metadata says "
                             f"{comp['optimizer_slots']}")
    elif ar.slots:
        raise ar.damaged(f"it holds {len(ar.slots)} optimizer state arrays but no compile settings")

    # Build: the parameter count equals the stored weights' total size.
    try:
        model.build(tuple(config["input_shape"]))
    except _CONFIG_ERRORS as e:
        raise invalid(e) from e
    got = [tuple(p["shape"]) for p in model._core.params_info()]
    if got != [s for *_, s in specs]:
        raise RuntimeError(f"internal error: parameter layout mismatch {got} != {[s for *_, s in specs]}")
    try:
        model.set_weights(weights)
    except ValueError as e:
        raise ar.damaged(f"its weights were rejected: {_why(e)}") from e
    del weights

    if comp is not None:
        try:
            model.compile(optimizer=optimizer, loss=loss, metrics=comp["metrics"])
        except _CONFIG_ERRORS as e:
            raise bad_compile(e) from e
        expected = [int(a.size) for a in model._core.get_optimizer_state()]
        if len(ar.slots) != len(expected):
            raise ar.damaged(f"it holds {len(ar.slots)} optimizer state arrays; its optimizer "
                             f"({type(optimizer).__name__}) keeps {len(expected)}")
        nonneg = _NONNEGATIVE_SLOTS.get(optimizer.kind, ())
        state = []
        for k, n in enumerate(expected):
            arr = ar.float_array(ar.slots[k], (n,), np_dtype, f"optimizer state slot {k}")
            if k in nonneg and arr.size and arr.min() < 0:
                raise ar.damaged(f"entry 'optimizer_{k:03d}' holds negative values ({arr.min()!r}) in "
                                 f"{type(optimizer).__name__}'s running average of squared gradients")
            state.append(arr)
        try:
            if state:
                model._core.set_optimizer_state(state)
            model._core.set_step_count(comp["optimizer_step"])
            model._core.set_lr_scale(float(comp["lr_scale"]))
        except (ValueError, TypeError, OverflowError) as e:
            raise ar.damaged(f"its optimizer state was rejected: {_why(e)}") from e
    return model


def _read_unbuilt(ar, config, comp, invalid, bad_compile):
    """A model that is not built: its layers and compile settings, no weights or state."""
    from .models import Sequential

    if ar.params or ar.slots:
        raise ar.damaged(f"its model is not built (input_shape null) but it holds {len(ar.params)} weight "
                         f"and {len(ar.slots)} optimizer state arrays")
    try:
        model = Sequential.from_config(config)
    except _CONFIG_ERRORS as e:
        raise invalid(e) from e
    if comp is not None:
        if comp["optimizer_step"] != 0 or comp["lr_scale"] != 1.0 or comp["optimizer_slots"] != 0:
            raise ar.damaged("its model is not built, so its optimizer has taken no step: optimizer_step "
                             f"must be 0, lr_scale 1.0 and optimizer_slots 0; received "
                             f"{_short(comp['optimizer_step'])}, {_short(comp['lr_scale'])} and "
                             f"{_short(comp['optimizer_slots'])}")
        try:
            _losses.get(comp["loss"])  # a built-in loss (a file never holds a custom one)
            model.compile(optimizer=_optimizers.get(comp["optimizer"]), loss=comp["loss"],
                          metrics=comp["metrics"])
        except _CONFIG_ERRORS as e:
            raise bad_compile(e) from e
    return model


# -- pickling and copying -------------------------------------------------------------------
# A pickled Sequential's state: the model-file bytes, plus what a model keeps outside the
# format: stop_on_nonfinite, and the attributes a user (or a subclass) added to the instance.
_PICKLE_KEYS = {"model", "stop_on_nonfinite", "attributes"}
_OWN_ATTRIBUTES = None  # the attribute names of a new Sequential (set on first use)


def _own_attributes():
    """The attribute names a new Sequential has: what the format and the state below hold."""
    global _OWN_ATTRIBUTES
    if _OWN_ATTRIBUTES is None:
        from .models import Sequential
        _OWN_ATTRIBUTES = frozenset(vars(Sequential()))
    return _OWN_ATTRIBUTES


def _pickle_state(model):
    """``Sequential.__getstate__``: the model in the model-file format (model_to_bytes), its
    stop_on_nonfinite, and the instance attributes Sequential does not define itself. The
    history of the last ``fit`` and ``last_epoch_stats`` are records of a past run, not state,
    and are not included (as in Keras)."""
    own = _own_attributes()
    return {"model": _to_bytes(model, "pickle/copy"), "stop_on_nonfinite": bool(model._stop_on_nonfinite),
            "attributes": {k: v for k, v in vars(model).items() if k not in own}}


def _restore_pickle_state(model, state):
    """``Sequential.__setstate__``: ``model`` (an empty instance pickle made) becomes the one
    in ``state``. The model bytes go through :func:`model_from_bytes`; any damage raises
    ModelFormatError."""
    source = "the pickled model"
    if not isinstance(state, dict) or set(state) != _PICKLE_KEYS:
        got = sorted(map(str, state)) if isinstance(state, dict) else type(state).__name__
        raise ModelFormatError(f"{source} is damaged or not a chainrule model: its state must be a dict with "
                               f"keys {sorted(_PICKLE_KEYS)}; received {_short(got)}")
    data, stop, extra = state["model"], state["stop_on_nonfinite"], state["attributes"]
    if not isinstance(data, bytes):
        raise ModelFormatError(f"{source} is damaged: 'model' must be bytes; received {type(data).__name__}")
    if not isinstance(stop, bool):
        raise ModelFormatError(f"{source} is damaged: 'stop_on_nonfinite' must be True or False; "
                               f"received {_short(stop)}")
    own = _own_attributes()
    if not isinstance(extra, dict) or any(not isinstance(k, str) or k in own for k in extra):
        raise ModelFormatError(f"{source} is damaged: 'attributes' must map names that are not "
                               f"Sequential's own to values; received keys "
                               f"{_short(list(extra) if isinstance(extra, dict) else extra)}")
    loaded = _read_model(io.BytesIO(data), source, allow_unbuilt=True)
    vars(model).clear()
    vars(model).update(vars(loaded))
    model.stop_on_nonfinite = stop
    vars(model).update(extra)


# -- weights files ----------------------------------------------------------------------------
# Sequential.save_weights / load_weights: the weights alone, in the same archive layout as a
# model file (``__chainrule__`` JSON metadata, then ``param_000``, … in get_weights order), read
# with the same checks. The metadata describes the layers (class, name, parameter names and
# shapes), the dtype and the input shape, so loading checks the model it fills and can build an
# unbuilt one.

WEIGHTS_SUFFIX = ".weights.npz"
_WEIGHTS_FORMAT = "chainrule.weights"
_WEIGHTS_VERSION = 1
_WEIGHTS_KEYS = {"format", "version", "dtype", "input_shape", "layers"}


def _weights_path(path, what):
    try:
        path = os.fspath(path)
    except TypeError:
        raise TypeError(f"{what}: filepath must be a path (str or os.PathLike); received {path!r}") from None
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if not path.endswith(WEIGHTS_SUFFIX):
        raise ValueError(f"{what}: the filename must end in {WEIGHTS_SUFFIX!r} (Keras 3 uses '.weights.h5'; "
                         f"chainrule's weights files are npz archives); received {path!r}")
    return path


def _layer_table(model):
    return [{"class_name": type(l).__name__, "name": l.name,
             "params": [[pname, [int(d) for d in shape]] for pname, shape, *_ in l.param_specs()]}
            for l in model.layers]


def save_weights(model, path, overwrite=True):
    """Write ``model``'s weights to ``path`` (ending in ``.weights.npz``), atomically as
    :func:`save_model` writes. ``overwrite=False`` raises FileExistsError when ``path``
    exists. NaN or infinite weights raise ValueError (the loader refuses them)."""
    path = _weights_path(path, "save_weights")
    if not isinstance(overwrite, bool):
        raise TypeError(f"save_weights: overwrite must be True or False; received {overwrite!r}")
    if not model.built:
        raise ValueError("save_weights: the model is not built yet: nothing to save")
    if not overwrite and os.path.lexists(path):
        raise FileExistsError(errno.EEXIST, f"save_weights: {path!r} exists and overwrite=False", path)
    from .models import _TRAINING_MARK_LOCK
    with _TRAINING_MARK_LOCK:
        model._check_not_training("save_weights")
        weights = model.get_weights()
        meta = {"format": _WEIGHTS_FORMAT, "version": _WEIGHTS_VERSION, "dtype": model.dtype,
                "input_shape": list(model.input_shape), "layers": _layer_table(model)}
    arrays = {"__chainrule__": np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)}
    names = [(l.name, p) for l in model.layers for p, *_ in l.param_specs()]
    for i, w in enumerate(weights):
        if not np.isfinite(w).all():
            raise ValueError(f"save_weights: the {names[i][1]} of layer {names[i][0]!r} holds NaN or infinite "
                             "values; a weights file holds finite values only")
        arrays[f"param_{i:03d}"] = w
    _write_atomically(path, lambda f: np.savez(f, **arrays))


def _check_format(meta, ar, fmt, current, what):
    """The metadata's format name and version: ``fmt``, and a version this chainrule reads."""
    if meta.get("format") != fmt:
        raise ar.foreign(f"format {_short(meta.get('format'))}")
    version = meta.get("version")
    if not _is_int(version) or version < 1:
        raise ar.damaged(f"the format version must be a positive integer; received {_short(version)}")
    if version > current:
        raise ModelFormatError(f"{ar.source} was written by a newer chainrule ({what} version {version}); "
                               f"this one reads version {current}")


def _check_weights_metadata(meta, ar):
    _check_format(meta, ar, _WEIGHTS_FORMAT, _WEIGHTS_VERSION, "weights format")
    if set(meta) != _WEIGHTS_KEYS:
        raise ar.damaged(f"the metadata must have the keys {sorted(_WEIGHTS_KEYS)}; it has {sorted(map(str, meta))}")
    if meta["dtype"] not in ("float32", "float64"):
        raise ar.damaged(f"'dtype' must be 'float32' or 'float64'; received {_short(meta['dtype'])}")
    shape = meta["input_shape"]
    if (not isinstance(shape, list) or not shape
            or any(not _is_int(d) or not 1 <= d <= _layers.MAX_SIZE for d in shape)
            or math.prod(shape) > _layers.MAX_SIZE):
        raise ar.damaged(f"'input_shape' must be a non-empty list of positive sizes; received {_short(shape)}")
    layers = meta["layers"]
    if not isinstance(layers, list) or not layers:
        raise ar.damaged(f"'layers' must be a non-empty list; received {_short(layers)}")
    for i, l in enumerate(layers):
        ok = (isinstance(l, dict) and set(l) == {"class_name", "name", "params"} and isinstance(l["class_name"], str)
              and (l["name"] is None or isinstance(l["name"], str)) and isinstance(l["params"], list)
              and all(isinstance(p, list) and len(p) == 2 and isinstance(p[0], str) and isinstance(p[1], list)
                      and all(_is_int(d) and 0 <= d <= _layers.MAX_SIZE for d in p[1]) for p in l["params"]))
        if not ok:
            raise ar.damaged(f"'layers'[{i}] must be an object with 'class_name', 'name' and 'params' "
                             f"([[name, shape], ...]); received {_short(l)}")


def load_weights(model, path):
    """Read a file written by :func:`save_weights` into ``model`` (same layer classes and
    parameter shapes, in order; layer names may differ). An unbuilt model is built for the
    stored input shape first. Weights stored in float64 load into a float32 model and the other
    way round (values beyond float32's range raise ValueError). A missing file raises
    FileNotFoundError; a damaged, foreign or crafted one ModelFormatError; a file of another
    architecture ValueError naming the first difference. Nothing is set unless all of it checks."""
    path = _weights_path(path, "load_weights")
    st = os.stat(path)
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
    if not stat.S_ISREG(st.st_mode):
        raise ModelFormatError(f"{path!r} is not a chainrule weights file (not a regular file)")
    with open(path, "rb") as f:
        ar = _Archive(repr(path), f, kind="weights")
        meta = ar.metadata()
        _check_weights_metadata(meta, ar)
        if ar.slots:
            raise ar.damaged(f"it holds {len(ar.slots)} optimizer state arrays; a weights file holds weights only")
        stored = meta["layers"]
        n_params = sum(len(l["params"]) for l in stored)
        if len(ar.params) != n_params:
            raise ar.damaged(f"it holds {len(ar.params)} weight arrays; its metadata lists {n_params}")
        if not model.built:
            try:
                model.build(tuple(meta["input_shape"]))
            except _CONFIG_ERRORS as e:
                raise ValueError(f"load_weights: the model cannot be built for the stored input shape "
                                 f"{tuple(meta['input_shape'])}: {_why(e)}") from e
        mine = _layer_table(model)
        if len(mine) != len(stored):
            raise ValueError(f"load_weights: {path!r} holds the weights of {len(stored)} layers; model "
                             f"{model.name!r} has {len(mine)}")
        for i, (a, b) in enumerate(zip(mine, stored)):
            if a["class_name"] != b["class_name"] or [p[1] for p in a["params"]] != [p[1] for p in b["params"]]:
                raise ValueError(
                    f"load_weights: layer {i} of model {model.name!r} ({a['class_name']} {a['name']!r}, parameters "
                    f"{[tuple(p[1]) for p in a['params']]}) does not match the file's ({b['class_name']} "
                    f"{b['name']!r}, parameters {[tuple(p[1]) for p in b['params']]})")
        file_dtype = np.dtype(meta["dtype"])
        weights = []
        specs = [(l["name"], p[0], tuple(p[1])) for l in stored for p in l["params"]]
        for i, (lname, pname, shape) in enumerate(specs):
            weights.append(ar.float_array(ar.params[i], shape, file_dtype, f"the {pname} of layer {lname!r}"))
    model._set_params(0, len(weights), weights, "load_weights")
