"""Input normalisation, one-hot encoding and a deterministic train/test split.

Pure numpy + standard library.  No function here modifies its arguments in
place; every result is a fresh array.
"""

from __future__ import annotations

import math
import numbers
import operator
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from numpy.typing import ArrayLike, DTypeLike

__all__ = [
    "scale",
    "to_unit_range",
    "Standardizer",
    "standardize",
    "to_categorical",
    "train_test_split",
]

_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_CHUNK_ROWS = 4096  # rows per chunk when computing statistics (bounds temporary memory)


# --------------------------------------------------------------------------- validation


def _as_numeric(x, name: str, *, allow_bool: bool = True) -> np.ndarray:
    """Return ``x`` as an ndarray of a real numeric dtype (no copy if already one)."""
    if isinstance(x, np.ndarray):
        a = x
    else:
        try:
            a = np.asarray(x)
        except (ValueError, TypeError) as exc:  # ragged nested sequences, odd objects
            raise ValueError(f"{name} could not be converted to a numeric array: {exc}") from None
    kinds = "biuf" if allow_bool else "iuf"
    if a.dtype.kind not in kinds:
        raise TypeError(
            f"{name} must be a real numeric array, got dtype {a.dtype} "
            f"(value starts {_preview(a)})"
        )
    return a


def _preview(a: np.ndarray) -> str:
    flat = a.reshape(-1)[:3] if a.size else a.reshape(-1)
    return repr(flat.tolist()) + ("..." if a.size > 3 else "")


def _check_finite(a: np.ndarray, name: str) -> None:
    if a.dtype.kind == "f" and a.size and not np.isfinite(a).all():
        bad = np.argwhere(~np.isfinite(a))[0]
        where = tuple(int(i) for i in bad)
        raise ValueError(f"{name} contains a non-finite value {a[where].item()!r} at index {where}")


def _check_real_scalar(v, name: str) -> float:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {v!r}")
    f = float(v)
    if not math.isfinite(f):
        raise ValueError(f"{name} must be finite, got {v!r}")
    return f


def _check_float_dtype(dtype, name: str = "dtype") -> np.dtype:
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"{name} must be float32 or float64, got {dtype!r}") from None
    if dt not in _FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32 or float64, got {dtype!r}")
    return dt


# --------------------------------------------------------------------------- scaling


def scale(x: ArrayLike, lo: float = 0, hi: float = 255, *, dtype: DTypeLike = np.float32) -> np.ndarray:
    """Map ``x`` linearly so that ``lo -> 0`` and ``hi -> 1``: ``(x - lo) / (hi - lo)``.

    The defaults turn 8-bit pixel values (0..255, e.g. MNIST) into ``[0, 1]``.
    Values outside ``[lo, hi]`` are not clipped.  Returns a new array of
    ``dtype`` (float32 or float64); ``x`` is never modified.

    Raises TypeError for non-numeric ``x`` (or ``lo``/``hi``) and ValueError for
    NaN/inf in ``x`` or ``hi <= lo``.
    """
    a = _as_numeric(x, "x")
    dt = _check_float_dtype(dtype)
    lo_f = _check_real_scalar(lo, "lo")
    hi_f = _check_real_scalar(hi, "hi")
    if not hi_f > lo_f:
        raise ValueError(f"hi must be greater than lo, got lo={lo!r}, hi={hi!r}")
    _check_finite(a, "x")
    out = np.array(a, dtype=dt, copy=True)
    if lo_f != 0.0:
        out -= dt.type(lo_f)
    out /= dt.type(hi_f - lo_f)
    return out


def to_unit_range(x: ArrayLike, lo: float | None = None, hi: float | None = None, *,
                  dtype: DTypeLike = np.float32) -> np.ndarray:
    """Min-max scale ``x`` into ``[0, 1]``.

    ``lo``/``hi`` default to ``x.min()``/``x.max()``.  If the data is constant
    (``lo == hi`` from the data) the result is all zeros.  To scale a test set
    with the training range, pass the training ``lo``/``hi`` explicitly (or use
    :func:`scale`).  Returns a new array; ``x`` is never modified.
    """
    a = _as_numeric(x, "x")
    _check_finite(a, "x")
    if (lo is None or hi is None) and a.size == 0:
        raise ValueError("x is empty, so lo/hi cannot be taken from the data; pass them explicitly")
    lo_v = a.min() if lo is None else lo
    hi_v = a.max() if hi is None else hi
    lo_f = _check_real_scalar(lo_v.item() if isinstance(lo_v, np.generic) else lo_v, "lo")
    hi_f = _check_real_scalar(hi_v.item() if isinstance(hi_v, np.generic) else hi_v, "hi")
    if hi_f == lo_f and lo is None and hi is None:
        dt = _check_float_dtype(dtype)
        return np.zeros(a.shape, dtype=dt)
    return scale(a, lo_f, hi_f, dtype=dtype)


# --------------------------------------------------------------------------- standardisation


class Standardizer:
    """Per-feature standardisation ``(x - mean) / std`` with statistics from the training set.

    ``fit(x)`` takes ``x`` of shape ``(n_samples, *feature_shape)`` and stores
    ``mean_`` and ``std_`` (float64, shape ``feature_shape``), computed over axis 0.
    Features whose std is below ``eps`` (e.g. MNIST border pixels that are always
    0) get ``std_ = 1``, so they map to ``x - mean`` (0 on the training set)
    instead of dividing by zero.  ``transform`` returns a new array of ``dtype``
    (float32 by default); inputs are never modified.

    Example::

        st = Standardizer().fit(x_train)
        x_train_s, x_test_s = st.transform(x_train), st.transform(x_test)
    """

    def __init__(self, eps: float = 1e-7, dtype: DTypeLike = np.float32) -> None:
        eps_f = _check_real_scalar(eps, "eps")
        if eps_f < 0:
            raise ValueError(f"eps must be >= 0, got {eps!r}")
        self.eps = eps_f
        self.dtype = _check_float_dtype(dtype)
        self.mean_: np.ndarray | None = None
        self.std_: np.ndarray | None = None
        self.n_samples_seen_: int = 0

    # -- helpers
    def _check_x(self, x, name: str) -> np.ndarray:
        a = _as_numeric(x, name)
        if a.ndim < 2:
            raise ValueError(
                f"{name} must have shape (n_samples, n_features, ...), got shape {a.shape}; "
                "reshape a single feature with x.reshape(-1, 1)"
            )
        _check_finite(a, name)
        return a

    def _check_fitted(self) -> tuple[np.ndarray, np.ndarray]:
        """(mean_, std_); a RuntimeError before fit."""
        if self.mean_ is None or self.std_ is None:
            raise RuntimeError("this Standardizer is not fitted yet; call fit(x_train) first")
        return self.mean_, self.std_

    def _check_features(self, a: np.ndarray, name: str) -> None:
        mean, _ = self._check_fitted()
        if a.shape[1:] != mean.shape:
            raise ValueError(
                f"{name} has feature shape {a.shape[1:]} (shape {a.shape}), but the "
                f"Standardizer was fitted on feature shape {mean.shape}"
            )

    # -- API
    def fit(self, x: ArrayLike) -> Standardizer:
        a = self._check_x(x, "x")
        n = a.shape[0]
        if n == 0:
            raise ValueError(f"x must contain at least one sample, got shape {a.shape}")
        total = np.zeros(a.shape[1:], dtype=np.float64)
        for i in range(0, n, _CHUNK_ROWS):
            total += a[i : i + _CHUNK_ROWS].sum(axis=0, dtype=np.float64)
        mean = total / n
        sq = np.zeros(a.shape[1:], dtype=np.float64)
        for i in range(0, n, _CHUNK_ROWS):
            d = a[i : i + _CHUNK_ROWS].astype(np.float64) - mean
            sq += np.einsum("i...,i...->...", d, d)
        std = np.sqrt(sq / n)
        std[std < self.eps] = 1.0
        self.mean_, self.std_, self.n_samples_seen_ = mean, std, n
        return self

    def transform(self, x: ArrayLike) -> np.ndarray:
        mean, std = self._check_fitted()
        a = self._check_x(x, "x")
        self._check_features(a, "x")
        out = np.array(a, dtype=self.dtype, copy=True)
        out -= mean.astype(self.dtype)
        out /= std.astype(self.dtype)
        return out

    def fit_transform(self, x: ArrayLike) -> np.ndarray:
        return self.fit(x).transform(x)

    def inverse_transform(self, z: ArrayLike) -> np.ndarray:
        mean, std = self._check_fitted()
        a = self._check_x(z, "z")
        self._check_features(a, "z")
        out = np.array(a, dtype=self.dtype, copy=True)
        out *= std.astype(self.dtype)
        out += mean.astype(self.dtype)
        return out

    def get_config(self) -> dict[str, Any]:
        """Constructor arguments, JSON-serialisable: ``Standardizer(**cfg)`` rebuilds an unfitted copy."""
        return {"eps": self.eps, "dtype": self.dtype.name}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Standardizer:
        return cls(**config)

    def __repr__(self) -> str:
        fitted = "unfitted" if self.mean_ is None else f"fitted on {self.n_samples_seen_} samples"
        return f"Standardizer(eps={self.eps!r}, dtype={self.dtype.name}) [{fitted}]"


def standardize(x_train: ArrayLike, *others: ArrayLike, eps: float = 1e-7,
                dtype: DTypeLike = np.float32) -> tuple[np.ndarray, ...]:
    """Standardise ``x_train`` per feature and apply the *training* statistics to ``others``.

    Returns a tuple ``(x_train_s, *others_s)`` (always a tuple, also with no
    ``others``): ``x_tr, x_te = standardize(x_train, x_test)``.
    """
    st = Standardizer(eps=eps, dtype=dtype).fit(x_train)
    return (st.transform(x_train),) + tuple(st.transform(o) for o in others)


# --------------------------------------------------------------------------- labels


def to_categorical(y: ArrayLike, num_classes: int | None = None, *, dtype: DTypeLike = np.float32) -> np.ndarray:
    """One-hot encode integer labels: shape ``y.shape + (num_classes,)``, ``dtype`` float32.

    ``num_classes`` defaults to ``y.max() + 1``.  Float labels are accepted only
    if they are whole numbers.  Raises ValueError (naming ``y`` and the offending
    value) for negative labels or labels ``>= num_classes``.
    """
    a = _as_numeric(y, "y", allow_bool=False)
    _check_finite(a, "y")
    if a.dtype.kind == "f":
        frac = a != np.floor(a)
        if frac.any():
            where = tuple(int(i) for i in np.argwhere(frac)[0])
            raise ValueError(f"y must hold integer class labels, got {a[where].item()!r} at index {where}")
    if num_classes is None:
        if a.size == 0:
            raise ValueError("y is empty, so num_classes cannot be inferred; pass num_classes")
    else:
        if isinstance(num_classes, (bool, np.bool_)):
            raise TypeError(f"num_classes must be a positive integer, got {num_classes!r}")
        try:
            num_classes = operator.index(num_classes)
        except TypeError:
            raise TypeError(f"num_classes must be a positive integer, got {num_classes!r}") from None
        if num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    if a.size:
        lo_i = np.unravel_index(int(np.argmin(a)), a.shape)
        if a[lo_i] < 0:
            raise ValueError(f"y contains a negative label {a[lo_i].item()!r} at index {tuple(map(int, lo_i))}")
        hi_i = np.unravel_index(int(np.argmax(a)), a.shape)
        if num_classes is None:
            num_classes = int(a[hi_i]) + 1
        elif a[hi_i] >= num_classes:
            raise ValueError(
                f"y contains label {a[hi_i].item()!r} at index {tuple(map(int, hi_i))}, "
                f"which is >= num_classes={num_classes}"
            )
    assert num_classes is not None  # inferred above, or the empty y raised
    dt = np.dtype(dtype)
    labels = a.astype(np.int64).reshape(-1)
    out = np.zeros((labels.size, num_classes), dtype=dt)
    out[np.arange(labels.size), labels] = 1
    return out.reshape(a.shape + (num_classes,))


# --------------------------------------------------------------------------- splitting

_M64 = (1 << 64) - 1


def _splitmix64_py(z: int) -> int:
    z = (z + 0x9E3779B97F4A7C15) & _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def permutation(n: int, seed: int = 0) -> np.ndarray:
    """A pseudo-random permutation of ``range(n)`` determined only by ``(n, seed)``.

    Computed with splitmix64 hashes (not numpy's RNG), so it is identical on
    every platform and numpy version -- splits defined with it never drift.
    """
    key = _splitmix64_py(seed & _M64)
    with np.errstate(over="ignore"):
        z = np.arange(n, dtype=np.uint64) + np.uint64(key)
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    # splitmix64 is a bijection on 64-bit integers, so there are no ties
    return np.argsort(z, kind="stable").astype(np.int64)


def _n_test(test_size, n: int) -> int:
    if isinstance(test_size, (bool, np.bool_)):
        raise TypeError(f"test_size must be a float in (0, 1) or an int, got {test_size!r}")
    if isinstance(test_size, numbers.Integral):
        k = int(test_size)
        if not 1 <= k <= n - 1:
            raise ValueError(f"test_size={test_size!r} must be between 1 and n_samples - 1 = {n - 1}")
        return k
    if isinstance(test_size, numbers.Real):
        f = float(test_size)
        if not 0.0 < f < 1.0:
            raise ValueError(f"test_size={test_size!r} as a fraction must be in (0, 1)")
        k = math.ceil(f * n)
        if not 1 <= k <= n - 1:
            raise ValueError(f"test_size={test_size!r} leaves an empty train or test set for {n} samples")
        return k
    raise TypeError(f"test_size must be a float in (0, 1) or an int, got {test_size!r}")


def _split_indices(y: np.ndarray | None, n: int, test_size: float, seed: int,
                   stratify: bool) -> tuple[np.ndarray, np.ndarray]:
    """Return (train_idx, test_idx), both in shuffled order."""
    if isinstance(seed, (bool, np.bool_)):
        raise TypeError(f"seed must be a non-negative integer, got {seed!r}")
    try:
        seed = operator.index(seed)
    except TypeError:
        raise TypeError(f"seed must be a non-negative integer, got {seed!r}") from None
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    k = _n_test(test_size, n)
    order = permutation(n, seed)
    if not stratify:
        return order[k:], order[:k]
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    assert y is not None  # stratify needs the labels
    classes, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    # largest-remainder allocation of k test samples proportional to class sizes
    exact = counts * (k / n)
    quota = np.floor(exact).astype(np.int64)
    rest = k - int(quota.sum())
    if rest:
        by_remainder = np.argsort(-(exact - quota), kind="stable")
        quota[by_remainder[:rest]] += 1
    is_test = np.zeros(n, dtype=bool)
    for c in range(classes.size):
        members = np.flatnonzero(inverse == c)
        members = members[np.argsort(rank[members], kind="stable")]
        is_test[members[: quota[c]]] = True
    return order[~is_test[order]], order[is_test[order]]


def train_test_split(x: ArrayLike, y: ArrayLike, test_size: float = 0.2, seed: int = 0, *,
                     stratify: bool = False) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Split ``(x, y)`` into shuffled train and test parts: ``(x_train, y_train), (x_test, y_test)``.

    ``test_size`` is a fraction in (0, 1) (the test set gets ``ceil(test_size * n)``
    samples) or an absolute count.  The shuffle comes from :func:`permutation`,
    so a given ``(n, test_size, seed)`` always gives the same split, on any
    platform and numpy version.  ``stratify=True`` keeps class proportions
    (largest-remainder allocation per label of ``y``).  Returns copies.
    """
    xa = np.asarray(x)
    ya = np.asarray(y)
    if xa.ndim == 0 or ya.ndim == 0:
        raise ValueError(f"x and y must be arrays with a sample axis, got shapes {xa.shape} and {ya.shape}")
    if xa.shape[0] != ya.shape[0]:
        raise ValueError(
            f"x and y must have the same number of samples, got x.shape={xa.shape}, y.shape={ya.shape}"
        )
    n = xa.shape[0]
    if n < 2:
        raise ValueError(f"need at least 2 samples to split, got {n}")
    if stratify and ya.ndim != 1:
        raise ValueError(f"stratify=True needs 1-D labels y, got shape {ya.shape}")
    tr, te = _split_indices(ya if stratify else None, n, test_size, seed, stratify)
    return (xa[tr], ya[tr]), (xa[te], ya[te])
