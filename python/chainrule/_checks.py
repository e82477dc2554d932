"""Input validation and conversion: every array crosses into the core once, converted
explicitly, checked first, and the caller's arrays are never modified."""

from __future__ import annotations

import math
import numbers

import numpy as np

from . import _core

_CORE_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def _fmt_shape(shape):
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def as_array(name, value):
    """``value`` as a numeric ndarray (no copy when it already is one)."""
    if value is None:
        raise TypeError(f"{name} must be an array; received None")
    if isinstance(value, np.ndarray):
        arr = value
    else:
        try:
            arr = np.asarray(value)
        except (ValueError, TypeError) as e:
            raise ValueError(f"{name} must be a rectangular array of numbers; received a "
                             f"{type(value).__name__} that numpy cannot convert ({e})") from None
    if arr.dtype.kind in "biuf":  # the common case, decided without the slower checks below
        return arr
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise TypeError(f"{name} must hold numbers; received an array of dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.complexfloating):
        raise TypeError(f"{name} must hold real numbers; received dtype {arr.dtype}")
    return arr


def check_finite(name, arr, source=None):
    """Raise if a float array holds NaN or inf. Works through the data in chunks so a large
    training set costs no second array-sized temporary. ``source``: the array ``arr`` was
    converted from; a value that is finite there overflowed the conversion (float64 values
    beyond the float32 range), and the message says so."""
    if not np.issubdtype(arr.dtype, np.floating) or arr.size == 0:
        return
    ok = _all_finite(arr.reshape(-1)) if arr.flags.c_contiguous else bool(np.isfinite(arr).all())
    if not ok:
        bad = np.argwhere(~np.isfinite(arr))[0]
        where = tuple(int(i) for i in bad)
        if source is not None and source.shape == arr.shape and np.isfinite(source[where]):
            raise ValueError(f"{name} holds values outside the {arr.dtype} range (first at index {where}: "
                             f"{source[where]!r}); scale the data or use a float64 model")
        raise ValueError(f"{name} contains NaN or infinite values (first at index {where}: {arr[where]!r})")


# check_finite and ready_x test this many elements per step: bounded temporaries (1 MiB of
# bools), and one step for any array up to a 1024-sample MNIST batch.
_FINITE_STEP = 1 << 20


def _all_finite(flat):
    """Whether the 1-D float array ``flat`` holds no NaN or inf. float32 and float64 in one
    pass of the core (no temporaries, and a one-sample predict's check costs no numpy calls);
    other float types with numpy, in bounded steps."""
    if flat.dtype in _CORE_FLOATS and flat.flags.c_contiguous:
        return _core.all_finite(flat)
    if flat.size <= _FINITE_STEP:
        return bool(np.isfinite(flat).all())
    step = _FINITE_STEP
    return all(np.isfinite(flat[i:i + step]).all() for i in range(0, flat.size, step))


def as_finite(name, arr, dtype):
    """``arr`` as a C-contiguous array of ``dtype`` (no copy when it already is one), checked
    for NaN and inf after the conversion, so nothing overflows into inf unnoticed."""
    with np.errstate(over="ignore"):  # an overflow becomes inf, which the check reports
        out = np.ascontiguousarray(arr, dtype=dtype)
    check_finite(name, out, source=arr)
    return out


def checked_samples(name, x, sample_shape):
    """``x`` as an array of samples of ``sample_shape`` (an (n, H, W) array is taken as one
    channel of (H, W, 1) images), of its own dtype: no conversion, no copy."""
    arr = as_array(name, x)
    if arr.ndim == 0 or arr.shape[0] == 0:
        raise ValueError(f"{name} is empty: received shape {_fmt_shape(arr.shape)}")
    if sample_shape is not None and tuple(arr.shape[1:]) != tuple(sample_shape):
        if len(sample_shape) == 3 and tuple(arr.shape[1:]) + (1,) == tuple(sample_shape):
            arr = arr.reshape(arr.shape + (1,))  # (n, H, W) images for (H, W, 1): one channel
    if sample_shape is not None and tuple(arr.shape[1:]) != tuple(sample_shape):
        raise ValueError(f"{name} must have shape {_fmt_shape((None,) + tuple(sample_shape))}; "
                         f"received shape {_fmt_shape(arr.shape)}")
    return arr


def prepare_x(name, x, sample_shape, dtype):
    """Check ``x`` against the per-sample shape and return a C-contiguous (n, features) array
    of ``dtype`` (the caller's array itself, or a view of it, when it already is one: a
    memory-mapped array of the right dtype is not copied)."""
    ready = ready_x(x, sample_shape, dtype)
    if ready is not None:  # the common case: nothing to convert
        return ready
    out = as_finite(name, checked_samples(name, x, sample_shape), dtype)
    return out.reshape(out.shape[0], -1)


def ready_x(x, sample_shape, dtype):
    """What prepare_x returns for ``x`` when ``x`` needs no conversion, found with a few
    attribute reads and one pass for NaN and inf: ``x`` (viewed as (n, features)) when it is
    an ndarray, not a subclass, of exactly ``dtype`` (a numpy dtype or type), C-contiguous,
    of shape (n,) + ``sample_shape`` (a tuple) with n >= 1, holding only finite values.
    None for anything else: prepare_x then converts ``x`` or raises the error naming it."""
    if type(x) is not np.ndarray or x.dtype != dtype or not x.flags.c_contiguous:
        return None
    shape = x.shape
    if shape[1:] != sample_shape or not shape[0]:
        return None
    flat = x.reshape(-1)
    if not _all_finite(flat):
        return None
    return x if len(shape) == 2 else flat.reshape(shape[0], -1)


def copy_samples_into(name, samples, out):
    """Convert ``samples`` (n, ...) into the preallocated C-contiguous (n, features) ``out``,
    then check it for NaN and inf (values beyond float32's range included)."""
    view = out.reshape(samples.shape)
    with np.errstate(over="ignore", invalid="ignore"):
        np.copyto(view, samples, casting="unsafe")
    check_finite(name, view, source=samples)
    return out


def max_abs(arr):
    """The largest |value| of a float array, in chunks (no array-sized temporary)."""
    flat = arr.reshape(-1)
    step = 1 << 20
    m = 0.0
    for i in range(0, flat.size, step):
        chunk = flat[i:i + step]
        m = max(m, float(chunk.max()), -float(chunk.min()))
    return m


def prepare_y(name, y, n, loss, out_units, dtype):
    """Targets as the (n, columns) array of ``dtype`` the core expects for ``loss``."""
    arr = as_array(name, y)
    if arr.ndim == 0 or arr.shape[0] == 0:
        raise ValueError(f"{name} is empty: received shape {_fmt_shape(arr.shape)}")
    if arr.shape[0] != n:
        raise ValueError(f"x and {name} must have the same number of samples; received {n} and {arr.shape[0]}")
    check_finite(name, arr)  # before the label checks below; again after the conversion
    if loss == "sparse_categorical_crossentropy":
        if arr.ndim == 2 and arr.shape[1] == 1:
            arr = arr[:, 0]
        if arr.ndim != 1:
            raise ValueError(f"{name} must hold integer class labels of shape ({n},) for "
                             f"sparse_categorical_crossentropy; received shape {_fmt_shape(arr.shape)}"
                             " (use categorical_crossentropy for one-hot targets)")
        if not np.issubdtype(arr.dtype, np.integer):
            if np.any(arr != np.floor(arr)):
                i = int(np.argmax(arr != np.floor(arr)))
                raise ValueError(f"{name} must hold integer class labels; received {arr[i]!r} at index {i}")
        bad = (arr < 0) | (arr >= out_units)
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(f"{name}: labels must be in [0, {out_units}) for a model with {out_units} "
                             f"outputs; received {arr[i]!r} at index {i}")
        return as_finite(name, arr, dtype).reshape(n, 1)
    if arr.ndim == 1 and out_units == 1:
        arr = arr.reshape(n, 1)
    if arr.ndim != 2 or arr.shape[1] != out_units:
        hint = ""
        if loss == "categorical_crossentropy" and arr.ndim == 1:
            hint = " (integer labels need sparse_categorical_crossentropy, or one-hot encode them)"
        raise ValueError(f"{name} must have shape ({n}, {out_units}) for {loss}; "
                         f"received shape {_fmt_shape(arr.shape)}{hint}")
    return as_finite(name, arr, dtype)


def prepare_sample_weight(sw, n, dtype):
    if sw is None:
        return None
    arr = as_array("sample_weight", sw)
    if arr.shape != (n,):
        raise ValueError(f"sample_weight must have shape ({n},); received shape {_fmt_shape(arr.shape)}")
    check_finite("sample_weight", arr)
    if (arr < 0).any():
        i = int(np.argmax(arr < 0))
        raise ValueError(f"sample_weight must be >= 0; received {arr[i]!r} at index {i}")
    return as_finite("sample_weight", arr, dtype)


# The largest float32. Every hyperparameter must fit: a float32 model computes with them in
# float32, where a larger value is inf and turns the weights into NaN on the first step.
F32_MAX = 3.4028234663852886e38


def hyper_float(value):
    """``float(value)`` for a real number that is not a bool (numpy scalars included); a
    string, None or any other object raises TypeError. A number too large for a float (such
    as ``10**400``) becomes +-inf, so the caller's range check rejects it with ValueError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"expected a real number; received {type(value).__name__}")
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


# Counts (epochs, batch sizes) above this are refused: the core indexes with int64, and no
# real count comes near it.
MAX_COUNT = 1 << 62


def positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 1 <= value <= MAX_COUNT:
        raise ValueError(f"{name} must be a positive integer; received {value!r} (the limit is 2**62)")
    return int(value)


def real_number(name, value):
    """``value`` as a float: a real number (not a bool or a string) that a float can hold."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number; received {value!r}")
    try:
        return float(value)
    except OverflowError:
        raise ValueError(f"{name} is too large for a float; received {value!r}") from None


def fraction(name, value):
    v = real_number(name, value)
    if not (0.0 <= v < 1.0):
        raise ValueError(f"{name} must be in [0, 1); received {value!r}")
    return v


def non_negative_int(name, value):
    """``value`` as an int >= 0 (not a bool); a ValueError naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer; received {value!r}")
    return int(value)


def seed(value, name="seed"):
    """A random seed: a non-negative integer (any size; numpy's SeedSequence takes it whole)
    or None. One check for every seed the model takes (Sequential, fit)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer or None; received {value!r}")
    return int(value)


def flag(name, value):
    """``value`` when it is exactly True or False (not 0, 1 or a numpy bool)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False; received {value!r}")
    return value


def verbosity(name, value):
    """A verbosity level: the integer 0 (silent), 1 or 2 (False and True count as 0 and 1)."""
    if not isinstance(value, numbers.Integral) or value not in (0, 1, 2):
        raise ValueError(f"{name} must be 0, 1 or 2; received {value!r}")
    return int(value)
